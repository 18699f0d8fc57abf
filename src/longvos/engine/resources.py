"""Process memory figures for summaries and benchmarks (no psutil: /proc on Linux, getrusage elsewhere)."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int | None:
    """Resident memory of this process now (``VmRSS``); ``None`` where /proc is not available."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """Highest resident memory of this process so far."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def release_free_memory() -> bool:
    """Collect garbage and hand the C allocator's free pages back to the OS (glibc ``malloc_trim``).

    Without it, memory freed by one benchmarked design stays resident and the next design grows into it unseen, so
    its RSS growth reads near zero. Returns ``False`` where there is no glibc (macOS, musl): only ``gc`` then ran.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def reset_device_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_bytes(device: torch.device) -> int | None:
    """Peak memory allocated by torch on a CUDA device since the last reset; ``None`` for other devices."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def format_bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"

