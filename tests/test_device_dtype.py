"""dtype ``auto``: bf16 only where the device computes it natively, detected from the CPU's flags, never assumed."""
from __future__ import annotations

import pytest
import torch

from longvos import device as device_policy
from longvos.device import bf16_is_fast, resolve_dtype

CPU = torch.device("cpu")


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(device_policy, "_FAST_BF16_CPU_FLAGS", ("no_such_flag",))
    assert not bf16_is_fast(CPU) and resolve_dtype("auto", CPU) is None
    monkeypatch.setattr(device_policy, "_FAST_BF16_CPU_FLAGS", ("fpu",))  # every x86 CPU has it
    if "fpu" not in open("/proc/cpuinfo").read():
        pytest.skip("not an x86 Linux machine")
    assert bf16_is_fast(CPU) and resolve_dtype("AUTO", CPU) == torch.bfloat16


def test_auto_is_fp32_without_a_device_or_on_mps_and_names_stay_exact():
    assert resolve_dtype("auto") is None
    assert not bf16_is_fast(torch.device("mps"))
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_dtype("int8")


def test_segmenter_resolves_auto_on_its_device(monkeypatch):
    from longvos.engine.segmenter import load_segmenter
    monkeypatch.setattr(device_policy, "_FAST_BF16_CPU_FLAGS", ("no_such_flag",))
    assert load_segmenter("mavos-lite", device="cpu", dtype="auto").dtype is None
