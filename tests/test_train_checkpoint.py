"""Checkpoints: resume continues exactly, rotation, atomic writes, clear errors, export of fp16 weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from longvos.checkpoints import CheckpointError, export_weights, latest_checkpoint, list_checkpoints
from longvos.checkpoints import read_training_checkpoint as read_checkpoint
from longvos.checkpoints import restore_training as restore
from longvos.checkpoints import save_training_checkpoint as save_checkpoint
from longvos.train.config import TrainConfig
from longvos.train.schedule import EMA


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, EMA(model, 0.9), optimizer, torch.amp.GradScaler("cpu", enabled=False)


def train_steps(model, ema, optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(3, 4)).pow(2).mean()  # random data and dropout both draw from the torch RNG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)


def test_resume_continues_exactly(tmp_path):
    model, ema, optimizer, scaler = make_run()
    train_steps(model, ema, optimizer, 3)
    save_checkpoint(tmp_path, 3, model, ema, optimizer, scaler, TrainConfig().to_dict(), keep=2)
    train_steps(model, ema, optimizer, 2)

    model2, ema2, optimizer2, scaler2 = make_run(seed=123)  # different init and RNG: all must come from the file
    step = restore(read_checkpoint(latest_checkpoint(tmp_path)), model2, ema2, optimizer2, scaler2)
    assert step == 3
    train_steps(model2, ema2, optimizer2, 2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(ema.shadow[0].weight, ema2.shadow[0].weight)


def test_rotation_keeps_the_newest_and_leaves_no_temporaries(tmp_path):
    model, ema, optimizer, scaler = make_run()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model, ema, optimizer, scaler, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000030.pt", "step_0000040.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000030.pt", "step_0000040.pt"]
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_unusable_checkpoints_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_checkpoint(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a longvos training checkpoint"):
        read_checkpoint(foreign)


def test_export_writes_fp16_ema_weights(tmp_path):
    model, ema, optimizer, scaler = make_run()
    train_steps(model, ema, optimizer, 2)
    path = save_checkpoint(tmp_path, 2, model, ema, optimizer, scaler, TrainConfig().to_dict(), keep=1)
    exported = torch.load(export_weights(path, tmp_path / "w.pt"), weights_only=True)
    assert exported["model"] == "mavos-lite" and exported["longvos_checkpoint"] == 1
    weights = exported["state_dict"]
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert torch.allclose(weights["0.weight"].float(), ema.shadow[0].weight, atol=1e-3)
    assert not torch.allclose(weights["0.weight"].float(), model[0].weight, atol=1e-4)


def test_export_never_writes_over_its_checkpoint_nor_non_finite_weights(tmp_path):
    """--export onto the newest checkpoint replaced the run's state with bare weights; a diverged run's NaN weights
    were written (and refused only when loaded)."""
    model, ema, optimizer, scaler = make_run()
    train_steps(model, ema, optimizer, 2)
    path = save_checkpoint(tmp_path, 2, model, ema, optimizer, scaler, TrainConfig().to_dict(), keep=1)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="is the training checkpoint being exported"):
        export_weights(path, path)
    assert path.read_bytes() == before
    with torch.no_grad():
        ema.shadow[0].weight[0, 0] = float("nan")
    diverged = save_checkpoint(tmp_path, 3, model, ema, optimizer, scaler, TrainConfig().to_dict(), keep=2)
    with pytest.raises(CheckpointError, match=r"w\.pt \(as it would be written\) holds non-finite weights"):
        export_weights(diverged, tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()
