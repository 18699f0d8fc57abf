"""Checkpoint conversion (official -> longvos) with its strict key report, the longvos format, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longvos.cli.main import main
from longvos.checkpoints import (CheckpointError, convert_checkpoint, load_checkpoint, model_from_checkpoint,
                                 read_checkpoint, save_model)
from longvos.models.registry import create_model


def official_state_dict(golden_dir, config: str) -> dict[str, torch.Tensor]:
    """Zeros under the official key names and shapes of a golden keys file (values do not matter here)."""
    spec = json.loads((golden_dir / "mavos" / f"keys_{config}.json").read_text())
    return {entry["key"]: torch.zeros(entry["shape"]) for entry in spec["keys"]}


@pytest.fixture(scope="module")
def deaot_official(golden_dir) -> dict[str, torch.Tensor]:
    return official_state_dict(golden_dir, "deaotl")


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "optimizer": {}},
    lambda sd: {"model": sd},
    lambda sd: sd,
    lambda sd: {"state_dict": {f"module.{key}": value for key, value in sd.items()}},
])
def test_official_layouts_convert_completely(deaot_official, wrap):
    state_dict, report = convert_checkpoint(wrap(deaot_official), "deaot-mnv2")
    assert report.ok and report.matched == len(deaot_official) == len(state_dict) == 399
    assert "propagation.layers.1.self_propagation.value_id.weight" in state_dict


def test_mavos_keys_cover_the_mca_blocks(golden_dir):
    _, report = convert_checkpoint(official_state_dict(golden_dir, "mavos"), "mavos-mnv2")
    assert report.ok and report.matched == 579


def test_deaot_checkpoint_into_mavos_reports_every_missing_mca_key(deaot_official):
    """The official loader silently leaves the 9 MCA blocks random here; ours names all 180 tensors."""
    _, report = convert_checkpoint(deaot_official, "mavos-mnv2", strict=False)
    assert not report.ok and report.unexpected == [] and report.shape_mismatches == []
    assert len(report.missing) == 180 and all(key.startswith("memory_fusion.layers.") for key in report.missing)
    with pytest.raises(CheckpointError, match=r"missing: memory_fusion\.layers\.2\.id_value\.mlp\.fc2\.bias"):
        convert_checkpoint(deaot_official, "mavos-mnv2")


def test_unexpected_and_misshaped_keys_are_reported(deaot_official):
    tampered = dict(deaot_official)
    tampered["LSTT.layers.0.bogus.weight"] = torch.zeros(3)
    tampered["decoder.conv_out.weight"] = torch.zeros(12, 128, 1, 1)
    del tampered["id_norm.bias"]
    _, report = convert_checkpoint(tampered, "deaot-mnv2", strict=False)
    assert report.unexpected == ["LSTT.layers.0.bogus.weight"]
    assert report.missing == ["identity.norm.bias"]
    assert len(report.shape_mismatches) == 1 and "decoder.conv_out.weight" in report.shape_mismatches[0]
    text = str(report)
    assert "unexpected: LSTT.layers.0.bogus.weight" in text and "missing: identity.norm.bias" in text


def test_longvos_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_model("deaot-mnv2", d_model=32)
    full, half = tmp_path / "full.pth", tmp_path / "half.pth"
    save_model(model, full)
    save_model(model, half, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size

    rebuilt = model_from_checkpoint(full)  # name and config (d_model=32) come from the file
    assert rebuilt.name == "deaot-mnv2" and rebuilt.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key

    target = create_model("deaot-mnv2", d_model=32)
    load_checkpoint(target, half)
    for key, value in model.state_dict().items():
        loaded = target.state_dict()[key]
        assert loaded.dtype == value.dtype
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(loaded, expected), key


def test_load_checkpoint_detects_official_checkpoints(deaot_official, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"state_dict": deaot_official}, path)
    model = create_model("deaot-mnv2")
    load_checkpoint(model, path)
    assert model.decoder.classifier.weight.abs().sum() == 0  # the zeros were loaded
    mavos = create_model("mavos-mnv2")
    with pytest.raises(CheckpointError, match="180 missing"):
        load_checkpoint(mavos, path)


def test_unreadable_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        read_checkpoint(broken)


def test_cli_convert(deaot_official, tmp_path, capsys):
    source, destination = tmp_path / "deaotl.pth", tmp_path / "out" / "deaot.pth"
    torch.save({"state_dict": deaot_official}, source)
    assert main(["convert", str(source), str(destination), "--model", "deaot-mnv2"]) == 0
    assert "all 399 tensors matched" in capsys.readouterr().out
    checkpoint = torch.load(destination, weights_only=True)
    assert checkpoint["model"] == "deaot-mnv2" and checkpoint["config"]["memory"] == "growing"

    refused = tmp_path / "refused.pth"
    assert main(["convert", str(source), str(refused), "--model", "mavos-mnv2"]) == 1
    err = capsys.readouterr().err
    assert "missing: memory_fusion.layers.0.key.norm_l.weight" in err and "nothing written" in err
    assert not refused.exists()
    assert main(["convert", str(source), str(refused), "--model", "mavos-tiny"]) == 1
    assert "unknown model 'mavos-tiny'" in capsys.readouterr().err
    before = source.read_bytes()
    for same in (source, tmp_path / "." / "deaotl.pth"):  # the official file is never converted over itself
        assert main(["convert", str(source), str(same), "--model", "deaot-mnv2"]) == 1
        err = capsys.readouterr().err
        assert "is the checkpoint being converted" in err and "nothing written" in err and "Traceback" not in err
    assert source.read_bytes() == before
    assert main(["convert", str(tmp_path / "nope.pth"), str(source), "--model", "deaot-mnv2"]) == 1
    assert "not found" in capsys.readouterr().err  # a missing source is named as before, beside an existing file


def test_cli_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("mavos-mnv2", "deaot-swinb", "mavos-lite"))
    assert any(line.startswith("mavos-lite") and " 320p " in line for line in out.splitlines())


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("AUTO", "auto"), ("0", None), ("320", 320)])
def test_max_size_option_accepts_pixels_zero_and_auto(text, expected):
    from longvos.cli.options import parse_max_size

    assert parse_max_size(text) == expected


def test_max_size_option_rejects_other_values(capsys):
    for bad, why in (("-1", "must be 0 (native) or a positive number of pixels, got -1"),
                     ("big", "expected a number of pixels, 0 (native) or auto, got 'big'")):
        with pytest.raises(SystemExit):
            main(["segment", "video.mp4", "--mask", "mask.png", "--out", "out", "--max-size", bad])
        assert why in capsys.readouterr().err



# -- the saved config must agree with the model it loads into -------------------------------------------------------

def _with_config(source: Path, destination: Path, drop: tuple[str, ...] = (), **changes) -> Path:
    """A copy of a longvos checkpoint whose saved config has ``changes`` (and lacks the fields in ``drop``)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    config = {key: value for key, value in checkpoint["config"].items() if key not in drop}
    checkpoint["config"] = {**config, **changes}
    torch.save(checkpoint, destination)
    return destination


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("config") / "deaot.pth"
    save_model(create_model("deaot-mnv2", d_model=32), path)
    return path


def test_a_config_that_changes_no_shape_is_refused_not_loaded_into_another_model(small_checkpoint, tmp_path):
    """mca_heads and droppath change no tensor shape: weights trained with other values loaded silently into the
    registry's model. Now one rule (config_differences) refuses them, naming every differing field."""
    other = _with_config(small_checkpoint, tmp_path / "other.pth", droppath=0.2, mca_heads=2)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(create_model("deaot-mnv2", d_model=32), other)
    message = str(caught.value)
    assert "droppath: checkpoint 0.2 vs model 0.1" in message and "mca_heads: checkpoint 2 vs model 4" in message
    assert "\n" not in message and "model_from_checkpoint" in message
    rebuilt = model_from_checkpoint(other)  # built from the saved config: the same rule finds nothing to refuse
    assert rebuilt.config.droppath == 0.2 and rebuilt.config.mca_heads == 2
    chosen = model_from_checkpoint(other, mca_heads=4)  # a field the caller sets on purpose is its choice
    assert chosen.config.mca_heads == 4 and chosen.config.droppath == 0.2


def test_run_choice_fields_and_fields_a_checkpoint_does_not_name_are_not_binding(small_checkpoint, tmp_path):
    """memory and mem_gap are chosen per video (exported training weights carry none, or the training value), and
    objects_per_pass per model (weights saved from a one-object-per-pass build load into a packed one); a checkpoint
    saved before a config field existed keeps the model's value for it."""
    for changes in ({"memory": "ref+prev", "mem_gap": 2, "objects_per_pass": 1},
                    {"drop": ("memory", "mem_gap", "max_stride", "objects_per_pass")}):
        path = _with_config(small_checkpoint, tmp_path / "ok.pth", **changes)
        model = create_model("deaot-mnv2", d_model=32)
        assert load_checkpoint(model, path).ok and model.config.memory == "growing"
        assert model.config.objects_per_pass is None
    unknown = _with_config(small_checkpoint, tmp_path / "unknown.pth", future_switch=True)
    with pytest.raises(CheckpointError, match=r"future_switch: checkpoint True vs model \(no such field\)"):
        load_checkpoint(create_model("deaot-mnv2", d_model=32), unknown)


def test_load_segmenter_and_the_cli_apply_the_same_config_rule(tmp_path, capsys):
    """load_segmenter used to build the registry model and load any checkpoint whose shapes fit; it goes through
    load_checkpoint's rule now, and the CLI prints it as one line. The bundled weights still load."""
    from longvos.checkpoints import bundled_checkpoint
    from longvos.engine.segmenter import load_segmenter

    bundled = bundled_checkpoint("mavos-lite")
    assert load_segmenter("mavos-lite", device="cpu").weights["path"] == str(bundled.resolve())
    other = _with_config(bundled, tmp_path / "other.pt", mca_heads=2)  # MAVOS's MCA heads: no shape changes
    with pytest.raises(CheckpointError, match="mca_heads: checkpoint 2 vs model 4"):
        load_segmenter("mavos-lite", other, device="cpu")
    import numpy as np
    from PIL import Image

    (tmp_path / "clip").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "clip" / "00000.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:20] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code = main(["segment", str(tmp_path / "clip"), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--checkpoint", str(other), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "mca_heads: checkpoint 2 vs model 4" in err, err


# -- every checkpoint file is written atomically --------------------------------------------------------------------

def test_a_checkpoint_write_that_fails_part_way_leaves_the_old_file_and_no_fragment(small_checkpoint, tmp_path,
                                                                                   monkeypatch):
    """save_checkpoint (convert, download, export) and training checkpoints go through write_checkpoint_file: a save
    killed part-way leaves the file that was there, and no truncated file under the real name."""
    from longvos.checkpoints import save_checkpoint, write_checkpoint_file

    real_save = torch.save
    target = tmp_path / "weights" / "model.pt"
    save_checkpoint(target, {"w": torch.ones(3)}, "deaot-mnv2")
    before = target.read_bytes()

    def killed_half_way(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # truncated, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_half_way)
    for write in (lambda: save_checkpoint(target, {"w": torch.zeros(3)}, "deaot-mnv2"),
                  lambda: write_checkpoint_file({"step": 1}, target)):
        with pytest.raises(KeyboardInterrupt):
            write()
        assert target.read_bytes() == before and sorted(target.parent.iterdir()) == [target]
    new = tmp_path / "new" / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, {"w": torch.zeros(3)}, "deaot-mnv2")
    assert not new.exists() and list(new.parent.iterdir()) == []
