"""`longvos train` and `longvos demo` on the command line: configs, overrides, errors, export, a short demo run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.cli.main import main

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs" / "mavos-lite.toml")


def test_show_config_applies_overrides_after_options(capsys):
    assert main(["train", PRESET, "--show-config", "optim.lr=1e-3", "data.size=97"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr = 0.001" in out and "data.size = 97" in out and "model.name = 'mavos-lite'" in out


def test_threads_option_sets_run_threads(capsys):
    assert main(["train", PRESET, "--threads", "3", "--show-config", "optim.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "run.threads = 3" in out and "optim.lr = 0.001" in out, out
    assert main(["train", PRESET, "--threads", "0", "--show-config"]) == 1
    err = capsys.readouterr().err
    assert "--threads must be at least 1" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, message", [
    ([PRESET, "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    ([PRESET, "data.clip_len=six"], "data.clip_len: expected an integer"),
    (["missing.toml"], "config file not found"),
])
def test_config_errors_are_one_line(capsys, argv, message):
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_export_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", PRESET, "--export", str(tmp_path / "w.pt"), f"run.out_dir={tmp_path}"]) == 1
    assert "no checkpoint to export" in capsys.readouterr().err


def test_training_data_errors_are_one_line(tmp_path, capsys):
    assert main(["train", PRESET, f"data.root={tmp_path / 'nothing'}", f"run.out_dir={tmp_path / 'run'}",
                 "model.pretrained_encoder=false"]) == 1
    assert "training data root not found" in capsys.readouterr().err


def test_demo_rejects_bad_frame_count(capsys):
    assert main(["demo", "--frames", "0"]) == 1
    assert "--frames must be at least 1" in capsys.readouterr().err


def test_bundled_demo_prompt_is_a_valid_first_frame_mask():
    from longvos.cli.demo import FIRST_FRAME_MASK, sample_video
    import av
    with av.open(str(sample_video())) as container:
        stream = container.streams.video[0]
        size = (stream.width, stream.height)
    with Image.open(FIRST_FRAME_MASK) as mask:
        assert mask.mode == "P" and mask.size == size
        ids = np.unique(np.array(mask))
    assert ids.tolist() == [0, 1]


@pytest.mark.slow
def test_demo_writes_masks_and_an_overlay(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "3", "--max-size", "96", "--quiet",
                 "--device", "cpu"]) == 0
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["00000.png", "00001.png", "00002.png"]
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    with Image.open(masks[-1]) as last:
        assert last.size == (1280, 720)
    assert "Blender Foundation" in capsys.readouterr().out
