"""`longvos batch` with the local backend on real DAVIS clips (mavos-lite with fixed random weights, 64 px):
every video matches a direct `segment_video` run; a missing video, a wrong-size mask and a bad manifest row fail
alone with their reasons; `--resume` skips complete videos and refuses folders made with other settings; and a
worker process killed mid-video fails only that video, while `--resume` then finishes it."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longvos.batch import BatchOptions, run_batch
from longvos.batch.items import FramesDone, VideoStarted
from longvos.cli.main import main
from longvos.engine.pipeline import segment_video
from longvos.engine.progress import PROGRESS_FILE, RunProgress
from longvos.engine.segmenter import load_segmenter
from longvos.io.masks import read_index_mask
from longvos.io.video import open_video

from conftest import annotation, copy_clip, seeded_checkpoint, write_mp4

MODEL, MAX_SIZE = "mavos-lite", 64


def direct_masks(video: Path, mask: Path, frame: int, checkpoint: Path, out: Path) -> dict[str, np.ndarray]:
    """What `segment_video` gives for one video in this process (one thread, as the batch workers use)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segmenter = load_segmenter(MODEL, checkpoint, "cpu")
        segment_video(video, {frame: mask}, out, model=segmenter, max_size=MAX_SIZE, start=frame, progress=False)
    finally:
        torch.set_num_threads(threads)
    return read_masks(out)


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_index_mask(p, allow_empty=True).ids for p in sorted(folder.glob("[0-9]*.png"))}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return seeded_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def clips(dev_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    copy_clip(dev_dir, "blackswan", 4, root)
    copy_clip(dev_dir, "car-shadow", 6, root)
    return root


@pytest.fixture(scope="module")
def first_batch(dev_dir, clips, checkpoint, tmp_path_factory):
    """One CLI run over a manifest with two good rows and three bad ones, two worker processes."""
    tmp = tmp_path_factory.mktemp("batch")
    truth = read_index_mask(annotation(dev_dir, "blackswan", 0)).ids
    Image.fromarray(truth[::2, ::2]).save(tmp / "small.png")
    manifest = tmp / "videos.csv"
    manifest.write_text("video,mask,frame,name\n"
                        f"{clips}/blackswan,{annotation(dev_dir, 'blackswan', 0)},,\n"
                        f"{clips}/car-shadow,{annotation(dev_dir, 'car-shadow', 1)},1,car\n"
                        f"{clips}/missing,{annotation(dev_dir, 'blackswan', 0)},,\n"
                        f"{clips}/blackswan,{tmp / 'small.png'},,swan-small-mask\n"
                        f"{clips}/blackswan,{annotation(dev_dir, 'blackswan', 0)},one,swan-bad-frame\n")
    out = tmp / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["batch", str(manifest), "--out", str(out), "--model", MODEL, "--checkpoint", str(checkpoint),
                     "--max-size", str(MAX_SIZE), "--devices", "cpu", "--workers", "2", "--threads", "1",
                     "--overlay", "mp4", "--quiet"])
    return code, stdout.getvalue(), manifest, out


def test_good_videos_match_segment_video_and_bad_ones_fail_alone(first_batch, dev_dir, clips, checkpoint,
                                                                   tmp_path):
    code, stdout, _, out = first_batch
    assert code == 1  # some videos failed
    with open(out / "batch-summary.csv") as file:
        rows = {row["name"]: row for row in csv.DictReader(file)}
    assert {name: row["status"] for name, row in rows.items()} == {
        "blackswan": "done", "car": "done", "missing": "failed", "swan-small-mask": "failed",
        "swan-bad-frame": "failed"}
    assert rows["blackswan"]["frames"] == "4" and rows["car"]["frames"] == "5"
    assert rows["missing"]["reason"] == f"{clips / 'missing'}: no such file or folder"
    assert "mask is 427x240 but frame 0" in rows["swan-small-mask"]["reason"]
    assert rows["swan-bad-frame"]["reason"] == "videos.csv line 6: frame must be a frame index (0, 1, ...), " \
                                               "got 'one'"
    assert not (out / "missing").exists()  # a video that cannot be opened leaves no folder behind

    lines = stdout.splitlines()
    assert lines[0].split() == ["video", "status", "frames", "seconds", "fps", "reason"]
    assert any(line.split()[:3] == ["car", "done", "5"] for line in lines)
    assert lines[-1].startswith("2 done, 0 skipped, 3 failed; 9 frames in ")

    expected_swan = direct_masks(clips / "blackswan", annotation(dev_dir, "blackswan", 0), 0, checkpoint,
                                 tmp_path / "swan")
    expected_car = direct_masks(clips / "car-shadow", annotation(dev_dir, "car-shadow", 1), 1, checkpoint,
                                tmp_path / "car")
    for name, expected in [("blackswan", expected_swan), ("car", expected_car)]:
        got = read_masks(out / name)
        assert sorted(got) == sorted(expected)
        assert all(np.array_equal(got[frame], expected[frame]) for frame in expected), name
    assert sorted(expected_car) == ["00001", "00002", "00003", "00004", "00005"]  # starts at the mask's frame
    overlay = open_video(out / "car" / "overlay.mp4")
    assert len(overlay) == 5 and overlay.frame_size == (480, 854)
    record = json.loads((out / "car" / PROGRESS_FILE).read_text())
    assert record["done"] is True and record["frames"] == 5 and record["settings"]["max_size"] == MAX_SIZE


def test_resume_skips_complete_videos_without_starting_a_worker(first_batch, checkpoint, tmp_path, capsys):
    _, _, manifest, out = first_batch
    good = tmp_path / "good.csv"
    good.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    same_command = ["batch", str(good), "--out", str(out), "--model", MODEL, "--checkpoint", str(checkpoint),
                    "--overlay", "mp4", "--resume", "--quiet"]
    code = main([*same_command, "--max-size", str(MAX_SIZE)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "0 done, 2 skipped, 0 failed" in stdout and stdout.count("already complete") == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    # Naming the model's own memory design and interval is the same run as naming none (mavos-lite: mca, 5).
    code = main([*same_command, "--max-size", str(MAX_SIZE), "--memory", "mca", "--mem-gap", "5"])
    stdout = capsys.readouterr().out
    assert code == 0 and "0 done, 2 skipped, 0 failed" in stdout, stdout

    code = main([*same_command, "--max-size", "96"])
    stdout = capsys.readouterr().out
    assert code == 1 and "0 done, 0 skipped, 2 failed" in stdout
    assert "other settings (max_size: 64 -> 96)" in (out / "batch-summary.csv").read_text()


@pytest.mark.slow
def test_killed_worker_fails_only_its_video_and_resume_finishes_it(dev_dir, checkpoint, tmp_path):
    long_clip = copy_clip(dev_dir, "car-shadow", 20, tmp_path / "clips")
    short_clip = copy_clip(dev_dir, "blackswan", 3, tmp_path / "clips")
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"video": str(long_clip), "mask": str(annotation(dev_dir, "car-shadow", 0))})
                        + "\n" + json.dumps({"video": str(short_clip),
                                             "mask": str(annotation(dev_dir, "blackswan", 0))}) + "\n")
    options = BatchOptions(model=MODEL, checkpoint=str(checkpoint), max_size=MAX_SIZE, threads=1)
    pids: dict[str, int] = {}
    killed: list[int] = []

    def kill_mid_video(event) -> None:
        if isinstance(event, VideoStarted):
            pids[event.name] = event.pid
        if isinstance(event, FramesDone) and event.name == "car-shadow" and event.frames >= 2 and not killed:
            os.kill(pids["car-shadow"], signal.SIGKILL)
            killed.append(event.frames)

    out = tmp_path / "out"
    summary = run_batch(manifest, out, options, devices=["cpu"], workers=1, progress=False, on_event=kill_mid_video)
    car, swan = summary.results
    assert killed and car.status == "failed" and car.reason.startswith("worker process cpu#0 died (exit code -9)")
    assert swan.status == "done" and swan.frames == 3  # a replacement worker took over the queue
    assert json.loads((out / "car-shadow" / PROGRESS_FILE).read_text())["done"] is False
    completed = RunProgress.load(out / "car-shadow").completed  # the segmenter's own resume record
    assert 0 < completed < 20
    # The kill can land between a frame's PNG and the record naming it complete: that frame is on disk but will be
    # redone. Every frame the record counts is on disk and must be kept as it is.
    recorded = {f"{i:05d}.png" for i in range(completed)}
    written = {p.name: p.stat().st_mtime_ns for p in (out / "car-shadow").glob("[0-9]*.png")}
    assert recorded <= set(written) and len(written) <= len(recorded) + 1

    summary = run_batch(manifest, out, options, devices=["cpu"], workers=1, progress=False, resume=True)
    car, swan = summary.results
    assert (car.status, swan.status) == ("done", "skipped")
    assert car.frames == 20 - completed  # continued after the frames that were complete
    assert sorted(p.stem for p in (out / "car-shadow").glob("[0-9]*.png")) == [f"{i:05d}" for i in range(20)]
    assert {name: (out / "car-shadow" / name).stat().st_mtime_ns for name in recorded} == \
        {name: written[name] for name in recorded}
    assert json.loads((out / "car-shadow" / PROGRESS_FILE).read_text())["done"] is True


def test_a_worker_opens_and_indexes_each_video_once(checkpoint, tmp_path, monkeypatch):
    """The worker opens the video (to fail before any folder exists and to size the progress display) and
    segment_video reuses that source: a video file is opened and its packets demuxed for the frame count once, not
    twice. The run is still recorded under the video's path, with its fingerprint, as a resume expects."""
    from longvos.batch.items import WorkItem
    from longvos.batch.workers import VideoWorker
    from longvos.io.video import VideoFileSource

    rng = np.random.default_rng(0)
    video = write_mp4([rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(5)], tmp_path / "v.mp4")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    calls = {"open": 0, "index": 0}
    real_init, real_index = VideoFileSource.__init__, VideoFileSource._build_index

    def counted_init(self, *args, **kwargs):
        calls["open"] += 1
        real_init(self, *args, **kwargs)

    def counted_index(self):
        calls["index"] += 1
        real_index(self)

    monkeypatch.setattr(VideoFileSource, "__init__", counted_init)
    monkeypatch.setattr(VideoFileSource, "_build_index", counted_index)
    threads = torch.get_num_threads()
    try:
        worker = VideoWorker(BatchOptions(model=MODEL, checkpoint=str(checkpoint), max_size=MAX_SIZE), "cpu",
                             "cpu#0", threads=1)
        events = []
        result = worker.process(WorkItem("v", str(video), str(tmp_path / "mask.png")), str(tmp_path / "out"),
                                False, events.append)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "done" and result.frames == 5, result
    assert calls == {"open": 1, "index": 1}
    assert [event.total_frames for event in events if isinstance(event, VideoStarted)] == [5]
    settings = RunProgress.load(tmp_path / "out" / "v").settings
    assert settings["video"] == str(video.resolve()) and settings["video_fingerprint"] is not None
