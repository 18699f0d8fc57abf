"""scripts/average_weights.py, which made the bundled weights: the mean of one file is itself, of two the halfway
point, a mix weighs its inputs, counters are kept, and weights of different models or shapes are refused in one
line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from longvos.checkpoints import CheckpointError, read_checkpoint, save_checkpoint

from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "average_weights.py"


def test_averaged_means_mixes_and_counters():
    averaged = load_script("average_weights").averaged
    a = {"w": torch.tensor([0.0, 2.0]), "count": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "count": torch.tensor(9)}
    c = {"w": torch.tensor([2.0, -2.0]), "count": torch.tensor(1)}
    assert torch.equal(averaged([a])["w"], a["w"])
    middle = averaged([a, b])
    assert torch.equal(middle["w"], torch.tensor([2.0, 4.0])) and int(middle["count"]) == 3
    assert torch.allclose(averaged([a, b, c])["w"], torch.tensor([2.0, 2.0]))
    assert torch.allclose(averaged([a, b], [3, 1])["w"], torch.tensor([1.0, 3.0]))  # normalised: 0.75 a + 0.25 b
    assert torch.equal(averaged([a, b], [0, 1])["w"], b["w"])
    with pytest.raises(CheckpointError, match="w: shape"):
        averaged([a, {"w": torch.zeros(3), "count": b["count"]}])
    with pytest.raises(CheckpointError, match="different tensors"):
        averaged([a, {"w": b["w"]}])
    with pytest.raises(CheckpointError, match="--mix needs 2"):
        averaged([a, b], [1.0])


def test_the_script_writes_fp16_weights_and_refuses_other_models(tmp_path):
    save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(2)}, "mavos-lite", {})
    save_checkpoint(tmp_path / "b.pt", {"w": torch.ones(2)}, "mavos-lite", {})
    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(2)}, "livos-r50", {})
    run = [sys.executable, str(SCRIPT), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--mix", "3", "1",
           "--out", str(tmp_path / "m.pt")]
    assert subprocess.run(run, capture_output=True).returncode == 0
    mixed = read_checkpoint(tmp_path / "m.pt")
    assert mixed["model"] == "mavos-lite" and mixed["state_dict"]["w"].dtype == torch.float16
    assert torch.equal(mixed["state_dict"]["w"].float(), torch.full((2,), 0.25))
    run[3] = str(tmp_path / "c.pt")
    failed = subprocess.run(run, capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "livos-r50" in failed.stderr
    no_mix = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--mix", "1",
                             "--out", str(tmp_path / "n.pt")], capture_output=True, text=True)
    assert no_mix.returncode == 1 and no_mix.stderr.count("\n") == 1 and "--mix needs 2" in no_mix.stderr
