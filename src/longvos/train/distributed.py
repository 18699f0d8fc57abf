"""Process-group setup for ``torchrun`` (single or multi node), and the single-process fallback.

``torchrun --nproc_per_node=G [--nnodes=N --node_rank=R --rdzv_endpoint=HOST:PORT] -m longvos train CONFIG`` sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; with them present we join the group
(NCCL on CUDA, gloo on CPU), without them we are the only process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from longvos.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size, resolved)


def teardown(state: Distributed) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_processes(values: dict[str, float], state: Distributed) -> dict[str, float]:
    """Average logged numbers over all processes (one small all-reduce), so the logs describe the whole batch."""
    if not state.enabled:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=state.device)
    dist.all_reduce(tensor)
    return {k: float(v) / state.world_size for k, v in zip(keys, tensor.tolist())}


def gather_objects(value: Any, state: Distributed) -> list[Any]:
    """Every process's ``value`` (picklable), by rank, on every process: ``[value]`` alone without a group."""
    if not state.enabled:
        return [value]
    gathered: list[Any] = [None] * state.world_size
    dist.all_gather_object(gathered, value)
    return gathered
