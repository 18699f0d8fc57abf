"""Device and dtype policy: one place decides where and in what precision longvos computes."""
from __future__ import annotations

from pathlib import Path

import torch

_DTYPES = {
    None: None, "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
#: ``dtype="auto"``: bf16 autocast where the device computes bf16 natively (:func:`bf16_is_fast`), fp32 elsewhere.
AUTO = "auto"
#: The default compute dtype: ``auto``. Measured with the bundled ``mavos-lite`` at its default size on this
#: project's CPU (avx512_bf16): bf16 autocast moved J&F by less than 0.1 point against fp32 (dev 0.679 -> 0.679,
#: validation split 0.502 -> 0.503) at 1.7x the frame rate (3.1 -> 5.1-5.5 model FPS on one thread).
DEFAULT_DTYPE = AUTO


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast compute dtype (``None`` = full fp32). Weights and model state stay fp32. ``"auto"`` is bf16 on
    a ``device`` that computes it natively and fp32 elsewhere (and without a device)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        # autocast refuses int8 or float64 with a warning and runs fp32, while the run would record the other name
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unusable dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16")
        return dtype
    if str(dtype).lower() == AUTO:
        return torch.bfloat16 if device is not None and bf16_is_fast(device) else None
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, fp32, bf16, fp16") from None


#: CPU feature flags (``/proc/cpuinfo``) of native bf16 matrix arithmetic: AVX-512 BF16 (AMD Zen 4+, Intel Cooper
#: Lake+) or AMX (Intel Sapphire Rapids+). Without them bf16 on a CPU is emulated and slower than fp32.
_FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with the flags above
    (detected from ``/proc/cpuinfo``, not assumed; ``False`` where it cannot be read). MPS: ``False``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _FAST_BF16_CPU_FLAGS)
