"""Inputs and the API (issue 15, items 10, 11, 13, 14, 15): existing paths with glob characters, float frames and
huge object ids, refusing random weights and non-finite checkpoints, fp16 on the CPU, the thread count every
command picks and reports, and the same thread settings for every batch backend."""
from __future__ import annotations

import argparse
import importlib
import shutil
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from longvos.cli.main import main
from longvos.io.errors import InputError, MaskError, VideoReadError
from longvos.io.video import open_video

pytestmark = pytest.mark.usefixtures("one_thread_module")

FAST = ["--max-size", "64", "--device", "cpu", "--quiet"]


def copy_frames(dev_dir: Path, folder: Path, count: int = 3, sequence: str = "blackswan") -> Path:
    folder.mkdir(parents=True)
    for path in sorted((dev_dir / "JPEGImages" / sequence).glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def first_mask(dev_dir: Path, sequence: str = "blackswan") -> Path:
    return dev_dir / "Annotations" / sequence / "00000.png"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "warning:" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- item 10: an existing file or folder wins over a glob -----------------------------------------------------------

def test_existing_folder_with_glob_characters_is_a_folder_not_a_glob(tmp_path):
    folder = tmp_path / "take [1]"
    folder.mkdir()
    (tmp_path / "take 1").mkdir()  # what the glob "take [1]" would match instead: an empty folder
    for index in range(3):
        Image.new("RGB", (32, 24), (index * 40, 0, 0)).save(folder / f"{index:05d}.png")
    source = open_video(folder)
    assert len(source) == 3 and source.frame_size == (24, 32)
    # A glob inside such a folder: the folder part is taken literally.
    assert len(open_video(f"{folder}/*.png")) == 3
    assert len(open_video(f"{folder}/0000[12].png")) == 2


def test_existing_video_file_with_glob_characters_opens_as_a_video(tmp_path):
    path = tmp_path / "clip [1080p].mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        for index in range(4):
            image = np.full((32, 48, 3), index * 50, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    source = open_video(path)
    assert len(source) == 4 and source.frame_size == (32, 48)
    with pytest.raises(VideoReadError, match="no image frames"):
        open_video(tmp_path / "clip [0-9].mp4")  # not a file: still a glob, and it matches nothing


def test_cli_segments_a_folder_named_like_a_glob(dev_dir, tmp_path, capsys):
    folder = copy_frames(dev_dir, tmp_path / "take [1]", 2)
    code = main(["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--out", str(tmp_path / "out"),
                 "--threads", "1", *FAST])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00000.png", "00001.png"]


# -- item 11: float frames outside [0, 1], object ids >= 2^31 --------------------------------------------------------

@pytest.fixture(scope="module")
def lite():
    from longvos.engine.segmenter import load_segmenter

    return load_segmenter("mavos-lite", device="cpu")


def test_float_frames_outside_0_1_are_refused_with_one_line(lite):
    from longvos.engine.frames import frame_to_tensor

    frame = np.random.default_rng(0).uniform(0, 255, (24, 32, 3)).astype(np.float32)
    with pytest.raises(InputError, match=r"frame: float frames must lie in \[0, 1\], found 0\.\d+\.\.2\d\d") as caught:
        frame_to_tensor(frame)
    assert "\n" not in str(caught.value) and "/ 255" in str(caught.value)
    with pytest.raises(InputError, match="NaN"):
        frame_to_tensor(np.full((24, 32, 3), np.nan, np.float32))
    assert frame_to_tensor(frame / 255).dtype == torch.float32  # in range: accepted
    mask = np.zeros((24, 32), np.uint8)
    mask[5:15, 5:20] = 1
    with lite.session(max_size=64) as session, pytest.raises(InputError, match=r"frame 0: float frames"):
        session.step(torch.from_numpy(frame), mask=mask)


def test_object_ids_of_2_31_and_more_survive_in_the_returned_mask(lite):
    frame = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.int64)
    mask[2:10, 2:12] = 2 ** 31
    mask[12:20, 14:30] = 2 ** 32
    mask[20:23, 0:5] = 2 ** 40 + 7
    with lite.session(max_size=64) as session:
        first = session.step(frame, mask=mask)
        second = session.step(frame)
    assert first.object_ids == [2 ** 31, 2 ** 32, 2 ** 40 + 7]
    assert np.array_equal(first.mask, mask)  # the given frame returns exactly the given ids
    assert set(np.unique(second.mask).tolist()) <= {0, 2 ** 31, 2 ** 32, 2 ** 40 + 7}
    assert first.mask.dtype == np.int64


def test_unsigned_ids_beyond_int64_are_refused(lite):
    mask = np.zeros((24, 32), np.uint64)
    mask[2:10, 2:12] = 2 ** 63 + 5
    frame = np.zeros((24, 32, 3), np.uint8)
    with lite.session(max_size=64) as session, pytest.raises(MaskError, match=r"0\.\.2\^63-1"):
        session.step(frame, mask=mask)


# -- item 13: random weights, non-finite checkpoints, fp16 on the CPU -----------------------------------------------

def test_a_model_without_weights_is_refused_unless_random_weights_are_allowed():
    from longvos.engine.segmenter import load_segmenter

    with pytest.raises(InputError, match="mavos-mnv2.*--checkpoint.*--allow-random-weights") as caught:
        load_segmenter("mavos-mnv2", device="cpu")
    assert "\n" not in str(caught.value)
    with pytest.warns(UserWarning, match="random weights"):
        segmenter = load_segmenter("mavos-mnv2", device="cpu", allow_random_weights=True)
    assert segmenter.name == "mavos-mnv2"


def test_cli_refuses_random_weights_without_the_flag(dev_dir, tmp_path, capsys):
    folder = copy_frames(dev_dir, tmp_path / "clip", 2)
    command = ["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--model", "mavos-mnv2", *FAST,
               "--threads", "1"]
    assert main([*command, "--out", str(tmp_path / "refused")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "mavos-mnv2" in line and "--checkpoint" in line and "--allow-random-weights" in line
    assert not list((tmp_path / "refused").glob("*.png"))
    assert main([*command, "--out", str(tmp_path / "allowed"), "--allow-random-weights"]) == 0
    assert "random weights" in capsys.readouterr().err
    assert len(list((tmp_path / "allowed").glob("*.png"))) == 2


def test_bench_allows_random_weights(capsys, dev_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["bench", "--model", "mavos-mnv2", "--frames", "2", "--size", "32", "--clip", str(dev_dir),
                     "--sequence", "blackswan", "--warmup", "0", "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    """A longvos checkpoint of NaN weights, as a file damaged (or written by an earlier longvos) would hold them:
    written around save_checkpoint, which refuses them now."""
    from longvos.checkpoints import FORMAT_MARKER, FORMAT_VERSION, write_checkpoint_file
    from longvos.models.registry import create_model

    model = create_model("mavos-lite")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    write_checkpoint_file({FORMAT_MARKER: FORMAT_VERSION, "model": "mavos-lite", "config": {},
                           "state_dict": model.state_dict()}, path)
    return path


def test_a_non_finite_checkpoint_is_refused(nan_checkpoint, dev_dir, tmp_path, capsys):
    from longvos.checkpoints import CheckpointError, load_checkpoint
    from longvos.engine.segmenter import load_segmenter
    from longvos.models.registry import create_model

    with pytest.raises(CheckpointError, match="non-finite") as caught:
        load_segmenter("mavos-lite", nan_checkpoint, device="cpu")
    assert "\n" not in str(caught.value) and str(nan_checkpoint) in str(caught.value)
    model = create_model("mavos-lite")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match=f"non-finite.*{key}"):
        load_checkpoint(model, {"longvos_checkpoint": 1, "model": "mavos-lite", "state_dict": state})

    folder = copy_frames(dev_dir, tmp_path / "clip", 1)
    assert main(["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--checkpoint", str(nan_checkpoint),
                 "--out", str(tmp_path / "out"), *FAST]) == 1
    assert "non-finite" in one_error_line(capsys.readouterr().err)


def test_fp16_on_the_cpu_warns_and_suggests_bf16():
    from longvos.engine.segmenter import load_segmenter

    with pytest.warns(UserWarning, match="fp16 on the CPU.*bf16"):
        load_segmenter("mavos-lite", device="cpu", dtype="fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_segmenter("mavos-lite", device="cpu", dtype="bf16")


# -- item 14: a thread count that does not oversubscribe, reported, and --threads everywhere ------------------------

def test_default_threads_leave_the_loaded_cores_alone(monkeypatch):
    from longvos.engine import threads
    from longvos.engine.threads import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # this process may use every core of the host
    for load, expected in [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (3.0, 1)]:
        monkeypatch.setattr("os.getloadavg", lambda load=load: (load, load, load))
        assert default_threads() == expected, load
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("os.getloadavg", lambda: (2.6, 0.0, 0.0))
    assert default_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit choice
    assert default_threads() == 3


def test_default_threads_count_only_this_processes_share_of_the_host_load(monkeypatch):
    """A container limited to 4 of a busy 64-core host's cores: the host's load average (32) is the whole host's, so
    only its share on those cores (32 * 4 / 64 = 2) keeps them busy, not 32 (which left 1 thread)."""
    from longvos.engine import threads
    from longvos.engine.threads import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.getloadavg", lambda: (32.0, 32.0, 32.0))
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 4.0)  # a cgroup quota of 4 CPUs
    assert default_threads() == 2
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)  # taskset to 8 cores
    assert default_threads() == 4  # 8 - 32 * 8 / 64
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)), raising=False)  # the whole host
    assert default_threads() == 32
    monkeypatch.setattr("os.getloadavg", lambda: (70.0, 0.0, 0.0))
    assert default_threads() == 1


@pytest.mark.parametrize("command", ["segment", "demo", "eval", "bench", "batch", "app"])
def test_every_command_that_runs_a_model_takes_threads(command):
    from longvos.cli.main import COMMANDS

    module = importlib.import_module(f"longvos.cli.{COMMANDS[command][0]}")
    parser = argparse.ArgumentParser(prog=f"longvos {command}")
    module.add_arguments(parser)
    positional = {"segment": ["v.mp4", "--out", "o"], "eval": ["data", "--model", "mavos-lite"],
                  "bench": ["--model", "mavos-lite"], "batch": ["m.csv", "--out", "o"]}.get(command, [])
    assert parser.parse_args([*positional, "--threads", "3"]).threads == 3
    assert "--allow-random-weights" in parser.format_help() or command == "bench"


def test_segment_reports_the_thread_count_it_picked(dev_dir, tmp_path, capsys, monkeypatch):
    import longvos.engine.threads as threads

    folder = copy_frames(dev_dir, tmp_path / "clip", 2)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    try:
        assert main(["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--out", str(tmp_path / "a"),
                     *FAST]) == 0
        assert "; 1 CPU thread;" in capsys.readouterr().out
        assert main(["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--out", str(tmp_path / "b"),
                     "--threads", "2", *FAST]) == 0
        assert "; 2 CPU threads;" in capsys.readouterr().out
        assert main(["segment", str(folder), "--mask", str(first_mask(dev_dir)), "--out", str(tmp_path / "c"),
                     "--threads", "0", *FAST]) == 1
        assert "--threads must be at least 1" in one_error_line(capsys.readouterr().err)
    finally:
        torch.set_num_threads(before)


# -- item 15: both batch backends run their workers with the same thread settings -----------------------------------

def test_batch_backends_resolve_the_same_worker_threads(monkeypatch):
    import longvos.engine.threads as threads
    from longvos.batch.items import BatchOptions
    from longvos.batch.workers import plan_actors, plan_workers
    from longvos.batch.runner import worker_options

    monkeypatch.setattr(threads, "default_threads", lambda: 4)
    for workers, expected in [(None, 4), (1, 4), (2, 2), (3, 1), (8, 1)]:
        options = worker_options(BatchOptions(), devices=None, workers=workers)
        assert options.threads == expected, workers
        local = plan_workers(["cpu"], workers, options.threads)
        ray_plan = plan_actors({"CPU": 4.0}, items=10, workers=workers, threads=options.threads)
        assert {spec.threads for spec in local} == {ray_plan.threads} == {expected}
    assert worker_options(BatchOptions(threads=3), devices=None, workers=2).threads == 3  # given: kept


# -- one mask digest for segment and batch records; a paused propagation generator ---------------------------------

def test_batch_records_the_mask_content_digest_that_segment_records(tmp_path):
    from longvos.batch.runner import item_settings
    from longvos.batch.items import BatchOptions, WorkItem
    from longvos.engine.progress import mask_digest
    from longvos.io.masks import read_index_mask

    ids = np.zeros((24, 32), np.uint8)
    ids[4:12, 5:20] = 1
    ids[14:20, 2:9] = 2
    image = Image.fromarray(ids, mode="P")
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (253 * 3))
    path = tmp_path / "mask.png"
    image.save(path, compress_level=9)
    read = read_index_mask(path)
    item = WorkItem("clip", str(tmp_path / "clip"), str(path))
    first = item_settings(item, BatchOptions())["mask_sha256"]
    assert first == {"0": mask_digest(read.ids, read.palette)}  # what segment_video records for the same mask
    image.save(path, compress_level=0)  # other file bytes, the same content
    assert item_settings(item, BatchOptions())["mask_sha256"] == first


def test_a_paused_propagation_generator_says_how_to_release_earlier_frames(lite, tmp_path):
    from longvos.io.errors import SessionError

    folder = tmp_path / "clip"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(np.full((48, 64, 3), 40 * index, np.uint8)).save(folder / f"{index:05d}.png")
    mask, other = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 1
    other[32:44, 45:60] = 1
    state = lite.init_state(folder, max_size=48)
    lite.add_new_mask(state, 0, 1, mask)
    generator = lite.propagate_in_video(state)
    next(generator), next(generator)  # paused at frame 1, kept in a variable
    with pytest.raises(SessionError) as caught:
        lite.add_new_mask(state, 0, 2, mask)
    message = str(caught.value)
    assert "\n" not in message and "frame 0 was already propagated" in message and "close()" in message, message
    generator.close()
    assert lite.add_new_mask(state, 0, 2, other) == (0, [1, 2])
    generator = lite.propagate_in_video(state)
    next(generator)
    del generator  # garbage-collected: the propagation ends too
    third = np.zeros((48, 64), np.uint8)
    third[2:8, 45:60] = 1  # its own pixels: a mask hiding object 2's whole mask is refused (test_api_ids.py)
    assert 3 in lite.add_new_mask(state, 0, 3, third)[1]  # frame 0 again: no longer refused


def test_init_state_takes_the_memory_design_like_session(lite, tmp_path):
    """init_state(video, max_size, mem_gap, memory) opens the same session as session(max_size, mem_gap, memory)."""
    from longvos.io.errors import InputError

    folder = tmp_path / "clip"
    folder.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "00000.png")
    default = lite.init_state(folder, max_size=48)
    growing = lite.init_state(folder, max_size=48, mem_gap=3, memory="growing")
    assert default.session.memory is None and default.session.state_is_fixed_size  # mavos-lite's own: mca
    assert growing.session.memory == "growing" and growing.session.state.memory == "growing"
    assert not growing.session.state_is_fixed_size and growing.session.mem_gap == growing.session.state.mem_gap == 3
    with pytest.raises(InputError, match="unknown memory design 'nope'"):
        lite.init_state(folder, memory="nope")
