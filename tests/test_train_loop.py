"""The training loop end to end on a tiny setting: it learns, logs, checkpoints, and resumes exactly."""
from __future__ import annotations

import csv

import pytest
import torch

from longvos.checkpoints import save_model
from longvos.checkpoints import list_checkpoints
from longvos.checkpoints import read_training_checkpoint as read_checkpoint
from longvos.train.config import TrainConfig, load_config
from longvos.train import loop
from longvos.train.loop import build_optimizer, train

from conftest import TINY

def tiny_config(shared_dir, out_dir, *extra: str) -> TrainConfig:
    return load_config(None, [*TINY, f"data.root={shared_dir / 'data' / 'train'}", f"run.out_dir={out_dir}", *extra])


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(shared_dir, tmp_path):
    straight = train(tiny_config(shared_dir, tmp_path / "a"))
    train(tiny_config(shared_dir, tmp_path / "b", "run.stop_after_steps=2"))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000002.pt"]
    resumed = train(tiny_config(shared_dir, tmp_path / "b"), resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with (tmp_path / "b" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3"]  # the resumed run appends to the same log
    with (tmp_path / "a" / "log.csv").open() as handle:
        assert [r["loss"] for r in csv.DictReader(handle)] == [r["loss"] for r in rows]
    final = read_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert final["step"] == 3 and final["ema"]["updates"] == 3


def initial_weights(monkeypatch) -> dict[str, torch.Tensor]:
    """Filled with the weights the loop starts from, when it builds its model."""
    captured: dict[str, torch.Tensor] = {}
    real_build = loop.build_model

    def build_and_capture(config):
        model = real_build(config)
        captured.update({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "build_model", build_and_capture)
    return captured


def test_frozen_encoder_gets_no_gradient_and_does_not_move(shared_dir, tmp_path, monkeypatch):
    config = tiny_config(shared_dir, tmp_path, "model.freeze_encoder=true", "optim.steps=1")
    before = initial_weights(monkeypatch)
    after = train(config).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith("encoder.") for k in moved)
    assert any(k.startswith("memory_fusion.") for k in moved) is False  # 3 frames: the MCA never fires
    assert any(k.startswith("propagation.") for k in moved) and any(k.startswith("decoder.") for k in moved)


def test_optimizer_groups_split_encoder_and_decay(shared_dir, tmp_path):
    config = tiny_config(shared_dir, tmp_path)
    model = loop.build_model(config)
    groups = build_optimizer(model, config).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            assert group["encoder"] == names[id(parameter)].startswith("encoder.")
            if parameter.ndim == 1:
                assert group["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_mca_blocks_learn_with_six_frame_clips(shared_dir, tmp_path, monkeypatch):
    """At δ = 2 the MCA fuses at frame 4 and frame 5 reads it: the 9 MCA blocks must receive gradients."""
    config = tiny_config(shared_dir, tmp_path, "data.clip_len=6", "optim.steps=1", "model.freeze_encoder=true")
    before = initial_weights(monkeypatch)
    after = train(config).state_dict()
    fusion = [k for k in before if k.startswith("memory_fusion.")]
    assert sum(not torch.equal(before[k], after[k]) for k in fusion) > 0.9 * len(fusion)


def test_train_only_moves_just_the_named_modules(shared_dir, tmp_path, monkeypatch):
    """Fine-tuning the MCA blocks alone: everything outside ``memory_fusion.`` keeps its weights."""
    save_model(loop.build_model(tiny_config(shared_dir, tmp_path)), tmp_path / "stage1.pt")
    config = tiny_config(shared_dir, tmp_path, "data.clip_len=6", "optim.steps=1", "model.train_only=memory_fusion",
                         f"model.init={tmp_path / 'stage1.pt'}")
    before = initial_weights(monkeypatch)
    after = train(config).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("memory_fusion.") for k in moved)


def test_train_only_errors_name_the_problem(shared_dir, tmp_path):
    with pytest.raises(loop.ConfigError, match="model.train_only freezes the rest of the model, so it needs"):
        loop.build_model(tiny_config(shared_dir, tmp_path, "model.train_only=memory_fusion"))
    save_model(loop.build_model(tiny_config(shared_dir, tmp_path)), tmp_path / "stage1.pt")
    with pytest.raises(loop.ConfigError, match="model.train_only: no parameter name starts with 'memory_fuson'"):
        loop.build_model(tiny_config(shared_dir, tmp_path, "model.train_only=decoder, memory_fuson",
                                     f"model.init={tmp_path / 'stage1.pt'}"))


def test_mca_identity_init_zeroes_the_fusion_branches_and_needs_mca_blocks(shared_dir, tmp_path):
    model = loop.build_model(tiny_config(shared_dir, tmp_path, "model.mca_identity_init=true"))
    outputs = [p for n, p in model.named_parameters()
               if n.startswith("memory_fusion.") and (".proj." in n or ".fc2." in n)]
    assert len(outputs) == 3 * 3 * 2 * 2 and all(not p.any() for p in outputs)  # layers x K/V/ID_V x branches x w/b
    with pytest.raises(loop.ConfigError, match="model.mca_identity_init: 'deaot-mnv2' has no MCA blocks"):
        loop.build_model(tiny_config(shared_dir, tmp_path, "model.name=deaot-mnv2", "model.mca_identity_init=true"))


def test_unknown_amp_dtype_is_a_config_error(shared_dir, tmp_path):
    with pytest.raises(loop.ConfigError, match="optim.amp_dtype must be bf16 or fp16, got 'fp8'"):
        train(tiny_config(shared_dir, tmp_path, "optim.amp_dtype=fp8"))


@pytest.mark.slow
def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(shared_dir, tmp_path):
    """The end of a stop_after_steps invocation logged a row (step 1 here) that the uninterrupted run does not."""
    train(tiny_config(shared_dir, tmp_path / "a", "run.log_every=2"))
    train(tiny_config(shared_dir, tmp_path / "b", "run.log_every=2", "run.stop_after_steps=1"))
    train(tiny_config(shared_dir, tmp_path / "b", "run.log_every=2"), resume=True)
    rows = {}
    for name in ("a", "b"):
        with (tmp_path / name / "log.csv").open() as handle:
            rows[name] = [(r["step"], r["loss"]) for r in csv.DictReader(handle)]
    assert [step for step, _ in rows["a"]] == ["2", "3"] and rows["b"] == rows["a"]


def test_a_loss_that_is_not_finite_stops_the_run_in_one_line(shared_dir, tmp_path, monkeypatch):
    real = loop.ClipUnroll

    class Diverged(real):
        def forward(self, *args, **kwargs):
            loss, stats = super().forward(*args, **kwargs)
            return loss * float("nan"), stats

    monkeypatch.setattr(loop, "ClipUnroll", Diverged)
    with pytest.raises(loop.TrainingDiverged, match=r"the loss is nan at step 1: training diverged"):
        train(tiny_config(shared_dir, tmp_path / "run", "run.log_every=1"))
    assert not list_checkpoints(tmp_path / "run")  # nothing saved from the diverged step
