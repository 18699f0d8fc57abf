"""Training configs: defaults, presets, key=value overrides and their errors."""
from __future__ import annotations

import json

import pytest

from longvos.train.config import ConfigError, TrainConfig, describe_config, load_config

from conftest import config_from_dict

REPO_CONFIGS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_overrides_are_parsed_by_field_type():
    config = load_config(None, ["optim.lr=1e-4", "data.clip_len=5", "run.tensorboard=false",
                                "data.augment.scale_range=0.8,1.2", "data.video_sets=a,b", "model.name=mavos-lite",
                                "optim.steps=2e3"])
    assert config.optim.lr == pytest.approx(1e-4) and isinstance(config.optim.lr, float)
    assert config.data.clip_len == 5
    assert config.run.tensorboard is False
    assert config.data.augment.scale_range == (0.8, 1.2)
    assert config.data.video_sets == ("a", "b")
    assert config.optim.steps == 2000 and isinstance(config.optim.steps, int)


def test_integer_field_given_a_float_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="data.clip_len"):
        load_config(None, ["data.clip_len=2.5"])


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "lrr"),                 # typo
    ("optimizer.lr=1", "optimizer"),        # unknown section
    ("optim=3", "section"),                 # a section is not a value
    ("optim.lr", "key=value"),              # no '='
    ("run.tensorboard=maybe", "true or false"),
    ("data.augment.scale_range=1,2,3", "expected 2 values"),
])
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("optim.lr=Infinity", "optim.lr: expected a finite number"),  # json.loads reads it
    ("optim.lr=NaN", "optim.lr: expected a finite number"),
    ("optim.lr=0", "optim.lr must be a positive number"),
    ("optim.steps=-5", "optim.steps must be at least 1"),
    ("run.log_every=0", "run.log_every must be at least 1"),  # a modulo by zero after the first step
    ("run.checkpoint_every=0", "run.checkpoint_every must be at least 1"),
    ("data.clip_len=1", "data.clip_len must be at least 2"),
])
def test_values_no_run_can_use_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_json_preset_must_be_an_object(tmp_path):
    preset = tmp_path / "list.json"
    preset.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list\.json: the top level must be an object of sections"):
        load_config(preset)


def test_file_then_overrides(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[optim]\nsteps = 50\nlr = 3e-4\n[data]\nsize = 97\n[data.augment]\nblur_prob = 0.0\n')
    config = load_config(preset, ["optim.lr=1e-3"])
    assert (config.optim.steps, config.optim.lr, config.data.size, config.data.augment.blur_prob) == (50, 1e-3, 97, 0.0)


def test_unknown_key_in_file_names_the_file(tmp_path):
    preset = tmp_path / "bad.json"
    preset.write_text(json.dumps({"optim": {"stepz": 3}}))
    with pytest.raises(ConfigError, match=r"bad\.json.*optim\.stepz"):
        load_config(preset)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_round_trip_through_dict():
    config = load_config(None, ["data.size=129", "loss.long_term_gap=3"])
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert "data.size = 129" in describe_config(again)


@pytest.mark.parametrize("preset", REPO_CONFIGS, ids=lambda p: p.name)
def test_shipped_presets_load(preset):
    assert isinstance(load_config(preset), TrainConfig)
