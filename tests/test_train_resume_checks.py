"""Training runs and their folders: a new run refuses a folder holding another run, a resume refuses a changed config
(outside the keys a resume may change) and another model's checkpoint, every process's random generators (CPU and
CUDA) travel with the checkpoint, the log is cut back to the step resumed from, and `longvos convert` names a file of
the wrong kind in one line.

Tiny settings (33-px crops, 3-frame clips, mavos-lite's architecture without pretrained weights), one torch thread.
"""
from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from longvos.checkpoints import (CheckpointError, list_checkpoints, read_training_checkpoint, restore_rng,
                                 restore_training, rng_state, save_training_checkpoint)
from longvos.cli.main import main
from longvos.train.config import load_config, resume_differences
from longvos.train.logger import TrainingLogger
from longvos.train.loop import train
from longvos.train.schedule import EMA

from conftest import TINY, config_from_dict

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs" / "mavos-lite.toml")
BUNDLED = REPO / "src" / "longvos" / "weights" / "mavos-lite.pt"


def tiny_config(data_root, out_dir, *extra: str, preset: str | None = None):
    return load_config(preset, [*TINY, f"data.root={data_root}", f"run.out_dir={out_dir}", *extra])


def small_run(width: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Dropout(0.5), nn.Linear(width, 2))
    return model, EMA(model, 0.9), torch.optim.AdamW(model.parameters(), lr=1e-2), torch.amp.GradScaler(
        "cpu", enabled=False)


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. a new run never writes into another run's folder --------------------------------------------------------

def test_a_new_run_refuses_a_folder_holding_another_runs_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    model, ema, optimizer, scaler = small_run()
    other = save_training_checkpoint(run_dir, 5000, model, ema, optimizer, scaler, {"model": {"name": "x"}}, keep=3)
    config = tiny_config(tmp_path / "no-data", run_dir)
    with pytest.raises(CheckpointError, match="already holds a training run") as info:
        train(config)
    message = str(info.value)
    assert str(run_dir) in message and "step_0005000.pt" in message and "--resume" in message
    assert "run.out_dir" in message and "\n" not in message
    assert list_checkpoints(run_dir) == [other] and not (run_dir / "config.txt").exists()

    # The command line: one line, nothing written.
    assert main(["train", PRESET, *TINY, f"data.root={tmp_path / 'no-data'}", f"run.out_dir={run_dir}"]) == 1
    assert "already holds a training run" in one_line_error(capsys.readouterr().err)
    assert list_checkpoints(run_dir) == [other]


def test_a_new_run_refuses_a_folder_holding_a_log(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.csv").write_text("step,loss\n1,0.5\n")
    with pytest.raises(CheckpointError, match=r"already holds a training run \(log.csv\)"):
        train(tiny_config(tmp_path / "no-data", run_dir))
    assert (run_dir / "log.csv").read_text() == "step,loss\n1,0.5\n"


# --- 2. a resume continues the run it was saved from ------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("run.seed=1", "run.seed"),
    ("optim.batch_size=2", "optim.batch_size"),
    ("data.size=49", "data.size"),
    ("loss.ce_weight=0.7", "loss.ce_weight"),
    ("model.name=deaot-mnv2", "model.name"),
    ("optim.ema_decay=0.5", "optim.ema_decay"),
    ("optim.lr=1e-3", "optim.lr"),
])
def test_a_resume_with_another_config_is_refused_naming_the_key(tmp_path, capsys, override, key):
    run_dir = tmp_path / "run"
    model, ema, optimizer, scaler = small_run()
    saved = tiny_config(tmp_path / "no-data", run_dir, preset=PRESET)
    checkpoint = save_training_checkpoint(run_dir, 2, model, ema, optimizer, scaler, saved.to_dict(), keep=3)
    with pytest.raises(CheckpointError, match="saved with another config") as info:
        train(tiny_config(tmp_path / "no-data", run_dir, override, preset=PRESET), resume=True)
    message = str(info.value)
    old = saved.to_dict()
    for part in key.split("."):
        old = old[part]
    assert f"{key}: checkpoint {old!r} vs now" in message and str(checkpoint) in message and "\n" not in message

    args = ["train", PRESET, "--resume", *TINY, f"data.root={tmp_path / 'no-data'}", f"run.out_dir={run_dir}"]
    assert main([*args, override]) == 1
    assert f"{key}: checkpoint" in one_line_error(capsys.readouterr().err)


def test_the_keys_a_resume_may_change():
    saved = load_config(None, list(TINY))
    allowed = load_config(None, [*TINY, "optim.steps=20000", "run.stop_after_steps=5", "run.threads=2",
                                 "run.log_every=7", "run.checkpoint_every=9", "run.keep_checkpoints=1",
                                 "run.progress=true", "run.tensorboard=true", "data.workers=4", "run.device=cpu",
                                 "run.out_dir=elsewhere", "model.init=weights.pt",
                                 "model.pretrained_encoder=true", "model.mca_identity_init=true"])
    assert resume_differences(saved.to_dict(), allowed) == []
    refused = load_config(None, [*TINY, "run.seed=3", "data.augment.scale_range=0.5,1.5", "data.holdout=a/b",
                                 "model.freeze_encoder=true", "optim.amp=false"])
    assert resume_differences(saved.to_dict(), refused) == [
        ("data.holdout", [], ["a/b"]), ("data.augment.scale_range", [0.7, 1.3], [0.5, 1.5]),
        ("model.freeze_encoder", False, True), ("optim.amp", True, False), ("run.seed", 0, 3)]
    # A key an older checkpoint does not name is not compared.
    older = saved.to_dict()
    del older["data"]["distractor_prob"]
    assert resume_differences(older, load_config(None, [*TINY, "data.distractor_prob=0.5"])) == []


def test_a_resume_may_reach_the_data_by_another_path(tmp_path):
    """``data.root`` is where the data are, not which: another session may reach them by another path (a relative
    "../shared/data/train" from another working directory, a remounted disk). Which sets a run uses still counts."""
    from longvos.train.config import RESUME_MAY_CHANGE
    from longvos.train.loop import check_resume_config

    assert "data.root" in RESUME_MAY_CHANGE
    saved = load_config(None, [*TINY, "data.root=../shared/data/train"])
    moved = load_config(None, [*TINY, f"data.root={tmp_path / 'shared' / 'data' / 'train'}"])
    assert resume_differences(saved.to_dict(), moved) == []
    check_resume_config({"config": saved.to_dict()}, moved, tmp_path / "checkpoint.pt")  # not refused
    other_sets = load_config(None, [*TINY, f"data.root={tmp_path}", "data.video_sets=davis2016-train-360p"])
    assert [key for key, *_ in resume_differences(saved.to_dict(), other_sets)] == ["data.video_sets"]
    with pytest.raises(CheckpointError, match="data.video_sets: checkpoint"):
        check_resume_config({"config": saved.to_dict()}, other_sets, tmp_path / "checkpoint.pt")


def test_another_models_checkpoint_is_one_checkpoint_error(tmp_path):
    model, ema, optimizer, scaler = small_run(width=8)
    path = save_training_checkpoint(tmp_path, 3, model, ema, optimizer, scaler, {}, keep=3)
    other, other_ema, other_optimizer, other_scaler = small_run(width=6)
    with pytest.raises(CheckpointError) as info:
        restore_training(read_training_checkpoint(path), other, other_ema, other_optimizer, other_scaler,
                         what=str(path))
    message = str(info.value)
    assert str(path) in message and "another model" in message and "wrong shape" in message
    assert "\n" not in message and len(message) < 400, message


def test_a_resume_from_another_models_weights_is_one_checkpoint_error(shared_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = tiny_config(shared_dir / "data" / "train", run_dir, preset=PRESET)
    model, ema, optimizer, scaler = small_run()
    checkpoint = save_training_checkpoint(run_dir, 2, model, ema, optimizer, scaler, config.to_dict(), keep=3)
    with pytest.raises(CheckpointError, match="holds the model weights of another model") as info:
        train(config, resume=True)
    assert str(checkpoint) in str(info.value) and "\n" not in str(info.value)
    assert main(["train", PRESET, "--resume", *TINY, f"data.root={shared_dir / 'data' / 'train'}",
                 f"run.out_dir={run_dir}"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "another model" in line and len(line) < 500, line


# --- 3. random generators: CUDA's too, and every process's ------------------------------------------------------

class FakeCuda:
    """torch.cuda's generator functions on a machine without CUDA: one state per device index."""

    def __init__(self, monkeypatch):
        self.states = {0: torch.arange(16, dtype=torch.uint8)}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[torch.device(device).index
                                                                                          or 0].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device="cuda": self.states.__setitem__(torch.device(device).index or 0,
                                                                                 state.clone()))


def test_the_cuda_generator_is_saved_and_restored_when_the_run_computes_on_cuda(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch)
    assert set(rng_state(torch.device("cpu"))) == {"cpu"}  # a CPU run does not touch CUDA
    model, ema, optimizer, scaler = small_run()
    states = [rng_state(torch.device("cuda", 0))]
    assert torch.equal(states[0]["cuda"], cuda.states[0])
    path = save_training_checkpoint(tmp_path, 1, model, ema, optimizer, scaler, {}, keep=1, rng_states=states)
    state = torch.load(path, weights_only=True)  # uint8 tensors: loadable with weights_only
    cuda.states[0] = torch.zeros(16, dtype=torch.uint8)
    cpu_before = torch.get_rng_state()
    torch.manual_seed(99)
    assert restore_rng(state, 0, torch.device("cuda", 0))
    assert torch.equal(cuda.states[0], torch.arange(16, dtype=torch.uint8))
    assert torch.equal(torch.get_rng_state(), cpu_before)


def test_each_rank_gets_its_own_saved_generators(tmp_path):
    model, ema, optimizer, scaler = small_run()
    torch.manual_seed(1)
    rank0 = rng_state()
    torch.manual_seed(2)
    rank1 = rng_state()
    path = save_training_checkpoint(tmp_path, 1, model, ema, optimizer, scaler, {}, keep=1, rng_states=[rank0, rank1])
    state = read_training_checkpoint(path)
    assert restore_rng(state, 1) and torch.equal(torch.get_rng_state(), rank1["cpu"])
    assert restore_rng(state, 0) and torch.equal(torch.get_rng_state(), rank0["cpu"])
    assert not restore_rng(state, 2)  # a process the saved run did not have
    # A checkpoint of an older version: process 0's CPU generator only.
    assert restore_rng({"torch_rng": rank1["cpu"]}, 0) and torch.equal(torch.get_rng_state(), rank1["cpu"])
    assert not restore_rng({"torch_rng": rank1["cpu"]}, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica(rank: int, world_size: int, ports: list[int], configs: list[tuple[dict, bool]], out_dir: str) -> None:
    """One process of the group running several trainings in turn (one spawn: start-up is most of the cost)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    for index, ((config, resume), port) in enumerate(zip(configs, ports)):
        os.environ["MASTER_PORT"] = str(port)
        model = train(config_from_dict(config), resume=resume)
        torch.save(model.state_dict(), os.path.join(out_dir, f"run{index}-rank{rank}.pt"))


@pytest.mark.slow
def test_a_resumed_two_process_run_equals_an_uninterrupted_one(shared_dir, tmp_path):
    """Rank 1's own draws (its clips' slot ids, dropout) continue from its saved generator, not a new seed."""
    root = shared_dir / "data" / "train"
    straight = tiny_config(root, tmp_path / "a", "optim.ema_decay=0.5")
    stopped = tiny_config(root, tmp_path / "b", "optim.ema_decay=0.5", "run.stop_after_steps=2")
    resumed = tiny_config(root, tmp_path / "b", "optim.ema_decay=0.5")
    runs = [(straight.to_dict(), False), (stopped.to_dict(), False), (resumed.to_dict(), True)]
    mp.spawn(replica, args=(2, [free_port() for _ in runs], runs, str(tmp_path)), nprocs=2, join=True)
    state = read_training_checkpoint(list_checkpoints(tmp_path / "b")[0])
    assert state["step"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])
    a = torch.load(tmp_path / "run0-rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "run2-rank0.pt", weights_only=True)
    for name, weight in a.items():
        assert torch.equal(weight, b[name]), f"the resumed run differs at {name}"


# --- 4. the log is cut back to the step resumed from ------------------------------------------------------------

def test_the_log_drops_rows_after_the_step_resumed_from(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss\n1,0.9\n2,0.8\n3,0.7\n4,0.6\n")
    logger = TrainingLogger(tmp_path, 2, 10, tensorboard=False, progress=False)
    logger.log(3, {"loss": 0.75})
    logger.close()
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,loss", "1,0.9", "2,0.8", "3,0.75"]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # no temporary left behind


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_logs_each_step_once(shared_dir, tmp_path):
    root = shared_dir / "data" / "train"
    train(tiny_config(root, tmp_path / "a"))
    train(tiny_config(root, tmp_path / "b", "run.checkpoint_every=2"))
    list_checkpoints(tmp_path / "b")[-1].unlink()  # killed after logging step 3, before its checkpoint
    train(tiny_config(root, tmp_path / "b", "run.checkpoint_every=2"), resume=True)
    with (tmp_path / "b" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    with (tmp_path / "a" / "log.csv").open() as handle:
        assert [r["loss"] for r in csv.DictReader(handle)] == [r["loss"] for r in rows]


# --- 5. `longvos convert` with a file of the wrong kind ---------------------------------------------------------

def write_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def write_list(path: Path) -> None:
    torch.save([torch.zeros(3)], path)


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_training_checkpoint(path: Path) -> None:
    model, ema, optimizer, scaler = small_run()
    written = save_training_checkpoint(path.parent / "run", 1, model, ema, optimizer, scaler, {}, keep=1)
    written.rename(path)


@pytest.mark.parametrize("write, message", [
    (write_tensor, "holds a Tensor, not a dictionary of tensors"),
    (write_list, "holds a list, not a dictionary of tensors"),
    (write_empty, "the file is empty"),
    (None, "is already a longvos checkpoint (of 'mavos-lite'): it needs no conversion"),
    (write_training_checkpoint, "is a longvos training checkpoint"),
])
def test_convert_names_a_file_of_the_wrong_kind_in_one_line(tmp_path, capsys, write, message):
    source = BUNDLED if write is None else tmp_path / "source.pt"
    if write is not None:
        write(source)
    destination = tmp_path / "out.pt"
    assert main(["convert", str(source), str(destination), "--model", "mavos-lite"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert message in line and str(source) in line and "nothing written" in line, line
    assert not destination.exists()
