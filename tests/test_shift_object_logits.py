"""scripts/shift_object_logits.py, which made the bundled weights from the v3 + v8 average: it raises every object
slot's logit against the background's by exactly the offset (the decision threshold moves, nothing else), and
refuses weights without an AOT decoder in one line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from longvos.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from longvos.models.registry import create_model

from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "shift_object_logits.py"


def test_object_logits_rise_against_the_background_by_the_offset():
    torch.manual_seed(0)
    model = create_model("mavos-lite").eval()
    shifted_model = create_model("mavos-lite").eval()
    shifted_model.load_state_dict(load_script("shift_object_logits").shifted(model.state_dict(), 0.25))
    features = model.encode_image(torch.rand(1, 3, 65, 97))
    lstt_BNC = torch.randn(1, features.embedding_BCHW.shape[-2] * features.embedding_BCHW.shape[-1],
                           2 * model.config.d_model)
    with torch.no_grad():
        before, after = model.decode(features, lstt_BNC), shifted_model.decode(features, lstt_BNC)
    torch.testing.assert_close(after[:, 0], before[:, 0])  # the background's logit is kept
    torch.testing.assert_close(after[:, 1:] - before[:, 1:], torch.full_like(before[:, 1:], 0.25))


def test_the_script_writes_fp16_weights_and_refuses_others(tmp_path):
    bias = torch.tensor([0.5, -1.0, 0.0])
    save_checkpoint(tmp_path / "a.pt", {"decoder.classifier.bias": bias, "w": torch.ones(2)}, "mavos-lite", {})
    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(2)}, "livos-r50", {})
    run = [sys.executable, str(SCRIPT), str(tmp_path / "a.pt"), "0.25", str(tmp_path / "s.pt")]
    assert subprocess.run(run, capture_output=True).returncode == 0
    shifted = read_checkpoint(tmp_path / "s.pt")["state_dict"]
    assert shifted["decoder.classifier.bias"].dtype == torch.float16
    assert torch.equal(shifted["decoder.classifier.bias"].float(), torch.tensor([0.5, -0.75, 0.25]))
    assert torch.equal(shifted["w"].float(), torch.ones(2))
    run[2] = str(tmp_path / "c.pt")
    failed = subprocess.run(run, capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "not the weights of an AOT" in failed.stderr
    with pytest.raises(CheckpointError):
        load_script("shift_object_logits").shifted({"w": torch.ones(2)}, 1.0)
