"""Checkpoint conversion (official -> longvos) with its strict key report, the longvos format, and the CLI."""
from __future__ import annotations

import json

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
