"""scripts/average_weights.py, whose halfway average of v3 and v8 the bundled weights are: the mean of one file is
itself, of two the halfway point (bit for bit the earlier ``torch.lerp`` interpolation that made them), a mix weighs
its inputs, counters are kept; weights of different models or shapes, a bad mix and files that are not longvos
weights are refused in one line (by this script and scripts/shift_object_logits.py alike)."""
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
    with pytest.raises(CheckpointError, match="the mix needs 2"):
        averaged([a, b], [1.0])
    with pytest.raises(CheckpointError, match="finite"):
        averaged([a, b], [float("nan"), 1.0])


def test_the_halfway_average_is_the_lerp_that_made_the_bundled_weights():
    averaged = load_script("average_weights").averaged
    generator = torch.Generator().manual_seed(0)
    # fp16 weights over many magnitudes, as in a weights file
    a = (torch.randn(4096, generator=generator) * 10 ** torch.randint(-6, 3, (4096,), generator=generator)).half()
    b = (torch.randn(4096, generator=generator) * 10 ** torch.randint(-6, 3, (4096,), generator=generator)).half()
    halfway = averaged([{"w": a}, {"w": b}])["w"].half()
    assert torch.equal(halfway, torch.lerp(a.float(), b.float(), 0.5).half())


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
    assert no_mix.returncode == 1 and no_mix.stderr.count("\n") == 1 and "the mix needs 2" in no_mix.stderr


@pytest.mark.parametrize("script", ["average_weights.py", "shift_object_logits.py"])
def test_training_and_official_checkpoints_are_refused_in_one_line(tmp_path, script):
    weights = {"decoder.classifier.bias": torch.zeros(11)}
    torch.save({"step": 300, "model": weights, "ema": {"weights": weights}, "optimizer": {}, "scaler": {},
                "config": {}}, tmp_path / "step_0000300.pt")
    torch.save({"state_dict": weights}, tmp_path / "official.pt")
    for name, expected in (("step_0000300.pt", "training checkpoint: export its EMA weights"),
                           ("official.pt", "not a longvos weights file")):
        args = [str(tmp_path / name), "--out", str(tmp_path / "x.pt")] if script == "average_weights.py" else \
            [str(tmp_path / name), "0.25", str(tmp_path / "x.pt")]
        failed = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and expected in failed.stderr, failed.stderr
        assert not (tmp_path / "x.pt").exists()
