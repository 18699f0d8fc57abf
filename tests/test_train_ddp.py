"""DistributedDataParallel: two CPU processes (gloo) train a few steps and must end with identical weights."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from longvos.checkpoints import read_training_checkpoint as read_checkpoint
from longvos.train.config import load_config
from longvos.train.loop import train

from conftest import TINY, config_from_dict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_replica(rank: int, world_size: int, port: int, config: dict, out_dir: str) -> None:
    """One process of the group, with the environment torchrun would give it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    model = train(config_from_dict(config))
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_end_identical(shared_dir, tmp_path):
    config = load_config(None, [*TINY, "optim.steps=2", "optim.ema_decay=0.5",
                                f"data.root={shared_dir / 'data' / 'train'}", f"run.out_dir={tmp_path / 'run'}"])
    mp.spawn(run_replica, args=(2, free_port(), config.to_dict(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, weight in rank0.items():
        assert torch.equal(weight, rank1[name]), f"replicas differ at {name}"

    # Sanity: they trained (the EMA, which started from the initial weights, lags behind), and only rank 0 wrote
    # checkpoints and logs.
    ema = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002.pt")["ema"]["weights"]
    assert any(not torch.equal(ema[k], rank0[k]) for k in rank0 if k.startswith("decoder."))
    assert (tmp_path / "run" / "checkpoints" / "step_0000002.pt").is_file()
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3
