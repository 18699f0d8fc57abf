"""How many CPU threads torch may use: the cores this process may run on, less those other work keeps busy.

torch's default (one thread per core) oversubscribes a loaded machine: on a 2-core machine with a training run on
one core, 2 threads ran at 1 fps where 1 thread ran at 9 fps (OpenMP workers spin while they wait for each other).
:func:`default_threads` leaves the busy cores alone; every command that runs a model sets it (or ``--threads``) and
reports it. Batch workers get their count from the driver, so that every backend runs them with the same settings
and the same input gives the same bits whichever backend ran it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def default_threads() -> int:
    """The thread count that does not oversubscribe: ``OMP_NUM_THREADS`` if the user set it, else the available
    cores less the 1-minute load average (rounded), at least 1: ``min(cores, max(1, cores - round(load)))``.

    The load average counts the whole host, so where this process may use only some of its cores (a container's
    CPU quota, a CPU affinity) it is scaled by ``cores / os.cpu_count()``: the share of the host's load that falls
    on this process's cores if the load is spread evenly (a busy host no longer leaves a container 1 thread)."""
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    host_cores = os.cpu_count() or cores
    if host_cores > cores:
        load *= cores / host_cores
    return min(cores, max(1, cores - round(load)))


def set_threads(threads: int | None, interop: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (``None``: :func:`default_threads`) and, if given, its
    inter-op threads (possible only before torch's first parallel work in the process); returns the intra-op count."""
    import torch

    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    if interop is not None and torch.get_num_interop_threads() != interop:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError:  # inter-op work already started in this process: it keeps its pool
            pass
    return count


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, or ``None``."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None
