"""What speed and memory figures need besides the model: resettable peak-memory meters and the environment.

Peak memory is per measured run: on CUDA, torch's ``max_memory_allocated`` after a reset; on CPU, the process's
peak resident set (``VmHWM``), which Linux lets us reset by writing ``5`` to ``/proc/self/clear_refs``. Where that
reset is unavailable the CPU peak is the process lifetime peak, and the meter says so.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from longvos.engine.resources import (
    current_rss_bytes, device_peak_bytes, peak_rss_bytes, release_free_memory, reset_device_peak,
)

_CLEAR_REFS = Path("/proc/self/clear_refs")
#: How every FPS figure of longvos is measured (the MAVOS/LiVOS papers' protocol), stated in every report.
SPEED_PROTOCOL = ("FPS = timed frames / device-synchronised seconds of the model step including the memory update; "
                  "the reference (first) frame of each video is not timed, nor are frame reading and resizing, mask "
                  "upsampling and PNG writing")


def reset_peak_rss() -> bool:
    """Restart the process's peak-RSS counter at the current RSS; ``False`` where the OS does not support it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory since :meth:`start`: process RSS (absolute and growth) and, on CUDA, torch-allocated bytes."""

    device: torch.device
    rss_at_start: int = 0
    rss_resettable: bool = False

    def start(self) -> PeakMemory:
        release_free_memory()  # what earlier runs freed must not hide this run's growth
        reset_device_peak(self.device)
        self.rss_resettable = reset_peak_rss()
        self.rss_at_start = current_rss_bytes() or peak_rss_bytes()
        return self

    def read(self) -> dict[str, int | bool | None]:
        peak = peak_rss_bytes()
        return {
            "peak_rss_bytes": peak,
            "rss_growth_bytes": max(0, peak - self.rss_at_start),
            "rss_peak_is_per_run": self.rss_resettable,
            "peak_device_bytes": device_peak_bytes(self.device),
        }


def device_description(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 ...)`` or ``cpu (<processor>, N cores)``: which hardware the numbers belong to."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({_cpu_name()}, {os.cpu_count()} logical cores)"
    return str(device)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dtype_name(dtype: torch.dtype | None) -> str:
    """The compute dtype as users write it; ``None`` (no autocast) is fp32."""
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def environment(device: torch.device, dtype: torch.dtype | None) -> dict[str, object]:
    """Everything needed to reproduce or compare a timing: hardware, precision, threads, library versions."""
    return {
        "device": device_description(device),
        "dtype": dtype_name(dtype),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
