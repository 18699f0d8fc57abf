"""scripts/interpolate_weights.py, which made the bundled weights: its ends are the two inputs, its middle is the
mean, counters are kept, and weights of different models or shapes are refused in one line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from longvos.checkpoints import CheckpointError, read_checkpoint, save_checkpoint

from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "interpolate_weights.py"


def test_interpolated_ends_middle_and_counters():
    interpolated = load_script("interpolate_weights").interpolated
    a = {"w": torch.tensor([0.0, 2.0]), "count": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "count": torch.tensor(9)}
    assert torch.equal(interpolated(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolated(a, b, 1.0)["w"], b["w"])
    middle = interpolated(a, b, 0.5)
    assert torch.equal(middle["w"], torch.tensor([2.0, 4.0])) and int(middle["count"]) == 3
    with pytest.raises(CheckpointError, match="w: shape"):
        interpolated(a, {"w": torch.zeros(3), "count": b["count"]}, 0.5)


def test_the_script_writes_fp16_weights_and_refuses_other_models(tmp_path):
    save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(2)}, "mavos-lite", {})
    save_checkpoint(tmp_path / "b.pt", {"w": torch.ones(2)}, "mavos-lite", {})
    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(2)}, "livos-r50", {})
    run = [sys.executable, str(SCRIPT), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "0.25", str(tmp_path / "m.pt")]
    assert subprocess.run(run, capture_output=True).returncode == 0
    mixed = read_checkpoint(tmp_path / "m.pt")
    assert mixed["model"] == "mavos-lite" and mixed["state_dict"]["w"].dtype == torch.float16
    assert torch.equal(mixed["state_dict"]["w"].float(), torch.full((2,), 0.25))
    run[3] = str(tmp_path / "c.pt")
    failed = subprocess.run(run, capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "livos-r50" in failed.stderr
