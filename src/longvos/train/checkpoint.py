"""Training checkpoints (save, find the latest, resume) and the export of shippable weights.

A training checkpoint holds everything needed to continue bit-for-bit where the run stopped: the model, its EMA,
the optimiser and AMP scaler states, the step, the torch RNG state and the run's config. Files are written to a
temporary name and renamed, so a run killed mid-save (a session ending, an out-of-memory kill) never leaves a
truncated checkpoint behind; only the newest ``keep`` are kept.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .schedule import EMA

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Training checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: dict,
    keep: int,
) -> Path:
    path = checkpoint_path(run_dir, step)
    model_config = getattr(model, "config", None)
    atomic_save({
        "model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else {},
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": config,
    }, path)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    missing = {"step", "model", "ema", "optimizer", "scaler", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a longvos training checkpoint (missing {', '.join(sorted(missing))})")
    return state


def restore(
    state: dict,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> int:
    """Load a checkpoint read by :func:`read_checkpoint` into the training objects; returns the step to resume at."""
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def export_weights(checkpoint: Path, destination: Path, use_ema: bool = True, half: bool = True) -> Path:
    """Write the (EMA) weights of a training checkpoint as a longvos model checkpoint (fp16 floats by default: half
    the file, and the model computes in fp32 after loading).

    The saved model config leaves out the memory design and interval, which were set for training (δ = 2): a model
    rebuilt from the file takes its registry defaults (δ = 10 for MAVOS) unless the caller overrides them.
    """
    from longvos.convert import save_checkpoint as save_model_checkpoint

    state = read_checkpoint(Path(checkpoint))
    weights = state["ema"]["weights"] if use_ema else state["model"]
    model_config = {k: v for k, v in state.get("model_config", {}).items() if k not in ("memory", "mem_gap")}
    save_model_checkpoint(destination, weights, state["config"]["model"]["name"], model_config, half=half)
    return Path(destination)
