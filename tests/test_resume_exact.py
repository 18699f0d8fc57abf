"""``segment --resume`` is exact: a run killed with SIGKILL at a random frame and resumed writes the same bytes, PNG
for PNG, as an uninterrupted run, because the model state is snapshotted with the progress record and restored (the
``mca`` memory of the bundled mavos-lite, with its fused dynamic frame, included). A resume whose inputs changed
(the mask file's content at the same path) is refused with one line.

Runs the real CLI and batch tool in subprocesses on a generated clip (no ../shared data needed), one torch thread,
about 30 s on a loaded 2-core CPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longvos.engine.progress import PROGRESS_FILE, STATE_FILE

from conftest import stop_after_frames

#: The long-term memory interval of these runs, named rather than left to mavos-lite's default (which has changed
#: before): long-term updates at frames 5 (concatenation), 10, 15, ..., 40 (MCA fusions).
MEM_GAP = 5
FRAMES = 44
EVERY = 3  # snapshot interval of these runs (frames)
FAST = ["--max-size", "96", "--device", "cpu", "--quiet", "--snapshot-every", str(EVERY)]


def make_clip(folder: Path, frames: int = FRAMES, seed: int = 0) -> Path:
    """A textured background with a red disk and a green square moving across: two objects; returns the mask."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    height, width = 120, 160
    background = (rng.random((height, width, 3)) * 80 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for index in range(frames):
        image = background.copy()
        disk = (xx - (40 + 2.0 * index)) ** 2 + (yy - (60 + 15 * np.sin(index / 6))) ** 2 < 18 ** 2
        square = (abs(xx - (120 - index)) < 12) & (abs(yy - 30) < 12)
        image[disk], image[square] = (220, 60, 40), (40, 200, 90)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
        if index == 0:
            mask = np.zeros((height, width), np.uint8)
            mask[disk], mask[square] = 1, 2
            Image.fromarray(mask).save(folder.parent / "mask.png")
    return folder.parent / "mask.png"


def command(clip: Path, mask: Path, out: Path, *extra: str, mem_gap: int | None = MEM_GAP) -> list[str]:
    """``longvos segment`` of ``clip`` with the tests' options (``mem_gap`` None: no --mem-gap, the model's own)."""
    interval = [] if mem_gap is None else ["--mem-gap", str(mem_gap)]
    return [sys.executable, "-m", "longvos", "segment", str(clip), "--mask", str(mask), "--out", str(out), *FAST,
            *interval, *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same threads in every run


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=120)


def pngs(out: Path) -> list[Path]:
    return sorted(out.glob("[0-9]*.png"))


def md5s(out: Path) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in pngs(out)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("resume") / "clip"
    return folder, make_clip(folder)


@pytest.fixture(scope="module")
def clean(clip, tmp_path_factory) -> dict[str, str]:
    """md5 of every PNG of an uninterrupted run."""
    out = tmp_path_factory.mktemp("clean") / "out"
    result = run(command(*clip, out))
    assert result.returncode == 0, result.stderr
    assert not (out / STATE_FILE).exists()  # a finished run leaves no snapshot behind
    sums = md5s(out)
    assert len(sums) == FRAMES
    return sums


def kill_after(args: list[str], out: Path, frames: int, env: dict[str, str] | None = None,
               errors: list[str] | None = None) -> int:
    """Start ``args``, SIGKILL it as soon as ``frames`` PNGs exist; returns how many PNGs it left (its stderr goes
    to ``errors`` if given)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or environment())
    deadline = time.monotonic() + 120
    try:
        while len(pngs(out)) < frames:
            assert process.poll() is None, f"the run ended before it was killed: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        if errors is not None:
            errors.append(process.stderr.read().decode(errors="replace"))
        process.stderr.close()
    return len(pngs(out))


def test_sigkill_at_a_random_frame_then_resume_is_byte_identical(clip, clean, tmp_path):
    seed = random.randrange(1 << 30)
    # Well after the first MCA fusion (frame 2 * MEM_GAP = 10): the snapshot holds a fused memory.
    target = random.Random(seed).randint(27, 36)
    out = tmp_path / "out"
    left = kill_after(command(*clip, out), out, target)
    assert left < FRAMES, f"seed {seed}: the run finished before the kill"
    record = json.loads((out / PROGRESS_FILE).read_text())
    assert not record["done"] and record["completed"] <= left  # the record never counts more than was written
    snapshot = torch.load(out / STATE_FILE, weights_only=True)  # plain tensors, ints and strings: no pickled class
    restored_at = snapshot["completed"]
    assert 24 <= restored_at <= record["completed"] and restored_at % EVERY == 0, (seed, restored_at, record)
    state = snapshot["session"]["state"]
    assert state["mem_gap"] == MEM_GAP and record["settings"]["mem_gap"] == MEM_GAP
    memory = state["passes"][0]["memory"]
    # Two long-term updates or more (a concatenation, then fusions): the dynamic frame is an MCA fusion.
    assert memory["frame_step"] >= 21 and memory["last_update_step"] >= 2 * MEM_GAP, memory["last_update_step"]

    result = run(command(*clip, out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert f"resumed after {record['completed']}" in result.stdout
    resumed = md5s(out)
    differing = sorted(name for name in clean if resumed.get(name) != clean[name])
    assert not differing and resumed.keys() == clean.keys(), f"seed {seed}, killed at {left}: {differing}"
    assert not (out / STATE_FILE).exists()


def test_resume_with_changed_mask_content_is_refused(clip, tmp_path):
    folder, mask = clip
    changed = tmp_path / "mask.png"
    changed.write_bytes(mask.read_bytes())
    out = tmp_path / "out"
    left = kill_after(command(folder, changed, out), out, 5)
    original = changed.read_bytes()
    ids = np.array(Image.open(changed))
    ids[ids == 2] = 0  # the same path, another content: only the disk
    Image.fromarray(ids).save(changed)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    result = run(command(folder, changed, out, "--resume"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mask of frame 0 changed content" in lines[0] and str(changed) in lines[0], lines
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before  # nothing was touched
    assert len(pngs(out)) == left
    # Other options are refused the same way (an interval other than the run's); the original inputs resume.
    changed.write_bytes(original)
    result = run(command(folder, changed, out, "--resume", mem_gap=MEM_GAP + 2))
    assert result.returncode == 1 and f"mem_gap: {MEM_GAP} -> {MEM_GAP + 2}" in result.stderr, result.stderr
    result = run(command(folder, changed, out, "--resume"))
    assert result.returncode == 0 and len(pngs(out)) == FRAMES, result.stderr


def test_batch_worker_killed_mid_video_then_resume_is_byte_identical(clip, clean, tmp_path, monkeypatch):
    """Batch workers run ``segment_video``: a worker SIGKILLed mid-video and ``--resume`` give the same bytes as an
    uninterrupted ``segment`` (the default snapshot interval, 25, falls before the kill), also where the resumed
    batch would pick another thread count (the video keeps the count it recorded); a mask whose content changed is
    then refused for that video. Batch and segment records hash the mask the same way (its content)."""
    import longvos.engine.threads as thread_policy
    from longvos.batch import BatchOptions, run_batch
    from longvos.batch.items import FramesDone, VideoStarted
    from longvos.engine.progress import RunProgress

    folder, original = clip
    mask = tmp_path / "mask.png"
    mask.write_bytes(original.read_bytes())
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"video": str(folder), "mask": str(mask)}) + "\n")
    options = BatchOptions(model="mavos-lite", max_size=96, threads=1, mem_gap=MEM_GAP)  # as the `clean` run
    pids: list[int] = []
    killed: list[int] = []

    def kill_mid_video(event) -> None:
        if isinstance(event, VideoStarted):
            pids.append(event.pid)
        # 27 PNGs on disk: the writer has written the snapshot after 25 frames (it writes in order).
        if isinstance(event, FramesDone) and len(pngs(out / "clip")) >= 27 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(event.frames)

    out = tmp_path / "out"
    (result,) = run_batch(manifest, out, options, devices=["cpu"], workers=1, progress=False,
                          on_event=kill_mid_video).results
    assert killed and result.status == "failed", result
    record = RunProgress.load(out / "clip")
    assert record is not None and record.snapshot == 25 and 25 <= record.completed < FRAMES, record
    assert record.threads == 1
    assert RunProgress.load(out / "clip").settings["mask_sha256"] == record.settings["mask_sha256"]

    # No --threads this time, and the driver would pick 2: the interrupted video still runs with its 1.
    monkeypatch.setattr(thread_policy, "default_threads", lambda: 2)
    (result,) = run_batch(manifest, out, BatchOptions(model="mavos-lite", max_size=96, mem_gap=MEM_GAP),
                          devices=["cpu"], workers=1, progress=False, resume=True).results
    assert result.status == "done" and result.frames == FRAMES - record.completed, result
    assert result.threads == 1, result
    assert md5s(out / "clip") == clean

    ids = np.array(Image.open(mask))
    ids[ids == 2] = 0  # the same path, another content
    Image.fromarray(ids).save(mask)
    (result,) = run_batch(manifest, out, options, devices=["cpu"], workers=1, progress=False, resume=True).results
    assert result.status == "failed" and "mask of frame 0 changed content" in result.reason, result


@pytest.mark.parametrize("name, overrides", [("livos-r50", {}), ("mavos-lite", {"memory": "ref+prev", "mem_gap": 2}),
                                             ("deaot-mnv2", {"mem_gap": 2}), ("mavos-lite", {"mem_gap": 2})])
def test_session_snapshot_round_trip_continues_bit_for_bit(name, overrides):
    """Every model family's state goes through torch.save / torch.load(weights_only=True) and continues exactly:
    objects added before and after the snapshot, long-term updates (and MCA fusions) on both sides of it."""
    import io

    from longvos.engine.segmenter import Segmenter
    from longvos.models.registry import create_model

    torch.manual_seed(0)
    segmenter = Segmenter(create_model(name, **overrides), "cpu")
    rng = np.random.default_rng(0)
    frames = [(rng.random((64, 96, 3)) * 255).astype(np.uint8) for _ in range(10)]
    first, later = np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)
    first[10:30, 10:40] = 1
    later[35:60, 50:90] = 5
    masks = {0: first, 2: later, 7: later * 2}  # object 10 enters after the snapshot
    session, probs, stored = segmenter.session(64), [], None
    for index, frame in enumerate(frames):
        probs.append(session.step(frame, masks.get(index), return_probs=True).probs)
        if index == 4:
            buffer = io.BytesIO()
            torch.save(session.snapshot(), buffer)
            stored = buffer.getvalue()
    restored = segmenter.session(64)
    restored.restore(torch.load(io.BytesIO(stored), weights_only=True))
    assert restored.frames_processed == 5 and restored.object_ids == [1, 5]
    for index in range(5, len(frames)):
        result = restored.step(frames[index], masks.get(index), return_probs=True)
        assert np.array_equal(result.probs, probs[index]), index
    assert restored.object_ids == session.object_ids == [1, 5, 10]


# -- the thread count a run recorded is the one its resume uses ------------------------------------------------------

#: Runs the CLI with ``default_threads`` faked to ``{threads}`` (the load average after a SIGKILL still counts the
#: killed run, so a real resume often picks fewer threads than the run it continues).
FAKED_DEFAULT = ("import sys; import longvos.engine.threads as t; t.default_threads = lambda: {threads}; "
                 "from longvos.cli.main import main; sys.exit(main(sys.argv[1:]))")


def with_default_threads(threads: int, args: list[str]) -> list[str]:
    """``args`` (a ``python -m longvos ...`` command) run with ``threads`` as the default thread count."""
    return [sys.executable, "-c", FAKED_DEFAULT.format(threads=threads), *args[3:]]


def without_thread_variables() -> dict[str, str]:
    return {key: value for key, value in environment().items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def test_resume_uses_the_thread_count_the_interrupted_run_recorded(clip, tmp_path):
    env = without_thread_variables()
    out = tmp_path / "out"
    kill_after(with_default_threads(2, command(*clip, out)), out, 6, env=env)
    assert json.loads((out / PROGRESS_FILE).read_text())["threads"] == 2
    result = subprocess.run(with_default_threads(1, command(*clip, out, "--resume")), capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "; 2 CPU threads;" in result.stdout and "warning" not in result.stderr, (result.stdout, result.stderr)


def test_resume_with_an_explicit_other_thread_count_warns_and_records_it(clip, tmp_path):
    env = without_thread_variables()
    out = tmp_path / "out"
    left = kill_after(with_default_threads(2, command(*clip, out)), out, 6, env=env)
    errors: list[str] = []
    kill_after(with_default_threads(2, command(*clip, out, "--resume", "--threads", "1")), out, left + 6, env=env,
               errors=errors)
    assert "warning: resuming with 1 CPU threads where the interrupted run used 2" in errors[0], errors
    assert json.loads((out / PROGRESS_FILE).read_text())["threads"] == 1  # the count the newest frames used
    result = subprocess.run(with_default_threads(2, command(*clip, out, "--resume")), capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and "; 1 CPU thread;" in result.stdout, (result.stdout, result.stderr)


# -- a state that grows with the video is not snapshotted ------------------------------------------------------------



def test_growing_memory_takes_no_snapshots_and_still_resumes_exactly(tmp_path):
    from longvos.engine.pipeline import SegmentationError, segment_video
    from longvos.engine.progress import RunProgress
    from longvos.engine.segmenter import load_segmenter
    from longvos.models.registry import create_model

    assert create_model("deaot-mnv2").state_is_fixed_size is False  # DeAOT's default: growing
    assert create_model("deaot-mnv2", memory="ref+prev").state_is_fixed_size is True
    assert create_model("mavos-lite").state_is_fixed_size is True
    with pytest.warns(UserWarning, match="random weights"):
        deaot = load_segmenter("deaot-mnv2", device="cpu", allow_random_weights=True)
    mask = make_clip(tmp_path / "clip", frames=8)
    run = dict(model=deaot, max_size=64, progress=False, snapshot_every=2, mem_gap=2)
    segment_video(tmp_path / "clip", mask, tmp_path / "clean", **run)
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(6), **run)
    record = RunProgress.load(out)
    assert record.completed >= 5 and record.snapshot == 0 and not (out / STATE_FILE).exists(), record
    summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    assert summary.restored_from == 0 and summary.resumed_after == record.completed
    assert md5s(out) == md5s(tmp_path / "clean") and len(pngs(out)) == 8


def test_naming_the_models_own_memory_design_resumes_a_run_that_named_none(tmp_path):
    from longvos.engine.pipeline import SegmentationError, segment_video
    from longvos.engine.segmenter import load_segmenter
    from longvos.io.errors import InputError

    segmenter = load_segmenter("mavos-lite", device="cpu")
    mask = make_clip(tmp_path / "clip", frames=6)
    run = dict(model=segmenter, max_size=64, progress=False)
    segment_video(tmp_path / "clip", mask, tmp_path / "clean", **run)
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **run)
    model = segmenter.model
    summary = segment_video(tmp_path / "clip", mask, out, resume=True, memory=model.default_memory,
                            mem_gap=model.default_mem_gap, **run)
    assert summary.resumed_after >= 2 and md5s(out) == md5s(tmp_path / "clean")
    with pytest.raises(InputError, match="other settings"):  # another design is another run
        segment_video(tmp_path / "clip", mask, out, resume=True, memory="ref+prev", **run)


# -- the weights file is part of the settings --------------------------------------------------------------------------

def test_resume_with_changed_bundled_or_downloaded_weights_is_refused(tmp_path, monkeypatch):
    import shutil

    import longvos.checkpoints as checkpoints_module
    from longvos.batch.runner import item_settings, resume_conflict
    from longvos.batch.items import BatchOptions, WorkItem
    from longvos.engine.pipeline import SegmentationError, segment_video
    from longvos.engine.progress import RunProgress
    from longvos.io.errors import InputError

    weights = tmp_path / "cache" / "mavos-lite.pt"  # stands for the bundled file or `longvos download`'s cache
    weights.parent.mkdir()
    shutil.copy(checkpoints_module.bundled_checkpoint("mavos-lite"), weights)
    monkeypatch.setattr(checkpoints_module, "bundled_checkpoint", lambda name: weights)
    mask = make_clip(tmp_path / "clip", frames=6)
    run = dict(model="mavos-lite", device="cpu", max_size=64, progress=False)
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **run)
    recorded = RunProgress.load(out).settings["weights"]
    assert recorded["path"] == str(weights.resolve()) and recorded["size"] == weights.stat().st_size
    item = WorkItem("clip", str(tmp_path / "clip"), str(mask))
    batch_before = item_settings(item, BatchOptions())
    assert batch_before["weights"] == recorded

    original = weights.read_bytes()
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    tensors = checkpoint["state_dict"]
    name = next(key for key, value in tensors.items() if torch.is_tensor(value) and value.is_floating_point())
    tensors[name] = tensors[name] + 0.01  # a new download: other numbers at the same path
    torch.save(checkpoint, weights)
    with pytest.raises(InputError, match="the weights .*mavos-lite.pt changed content since that run") as caught:
        segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    assert "\n" not in str(caught.value)
    batch_after = item_settings(item, BatchOptions())
    assert batch_after["weights"]["sha256"] != recorded["sha256"]
    (out / ".longvos-batch.json").write_text(json.dumps({"version": 1, "settings": batch_before, "done": False,
                                                         "frames": 0, "seconds": 0.0}))
    assert "changed content since that run" in resume_conflict(out, batch_after)
    weights.write_bytes(original)  # the weights the run started with: it continues
    summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    assert summary.resumed_after >= 2 and len(pngs(out)) == 6


# -- a snapshot that cannot be restored: the resume recomputes from the first frame, as exactly --------------------

def _drop(key: str):
    return lambda session: session.pop(key)


def _reshape_memory(which: str, part: int, change):
    """Replace the key (``part`` 0) or value (1) of the first layer of the first pass's ``which`` memory."""
    def damage(session: dict) -> None:
        pair = session["state"]["passes"][0]["memory"][which][0]
        pair[part] = change(pair[part])
    return damage


#: Damage done to the session part of a snapshot that still belongs to its run (same settings digest and frame count).
UNUSABLE_SNAPSHOTS = {
    "intact": None,  # the control: the snapshot is restored, nothing is recomputed
    "lacking frame_hw": _drop("frame_hw"),
    "of another model": lambda session: session.update(model="deaot-mnv2"),
    "a state lacking its passes": lambda session: session["state"].pop("passes"),
    "another network size": lambda session: session.update(network_hw=[session["network_hw"][0] + 32,
                                                                        session["network_hw"][1]]),
    "another frame size": lambda session: session.update(frame_hw=[session["frame_hw"][0] * 2,
                                                                    session["frame_hw"][1]]),
    # fields of the wrong type
    "frames_processed not a number": lambda session: session.update(frames_processed="four"),
    "frame_hw not a list": lambda session: session.update(frame_hw=120),
    "passes not a list": lambda session: session["state"].update(passes=7),
    "a memory layer that is a string": lambda session: session["state"]["passes"][0]["memory"].update(
        long_term="x"),
    # tensors of the wrong shape for the model's state
    "a long-term key with other channels": _reshape_memory("long_term", 0, lambda t: t[..., :-8]),
    "a long-term value with other channels": _reshape_memory("long_term", 1, lambda t: t[..., :-8]),
    "a short-term key with more tokens": _reshape_memory("short_term", 0, lambda t: torch.cat([t, t], dim=1)),
    "a short-term value with another batch": _reshape_memory("short_term", 1, lambda t: torch.cat([t, t], dim=0)),
    "a memory tensor that is a scalar": _reshape_memory("long_term", 0, lambda t: torch.tensor(1.0)),
    "another memory grid": lambda session: session["state"]["passes"][0]["memory"].update(grid_hw=[3, 10]),
}


def _whole(change):
    """Damage done to the whole snapshot (its header included), keeping it a file torch.load reads."""
    def damage(path: Path) -> None:
        data = torch.load(path, weights_only=True)
        change(data)
        torch.save(data, path)
    return damage


def _session(change):
    return _whole(lambda data: change(data["session"]))


#: Damage done to the snapshot file itself: every way a snapshot can be unusable, each recomputed with one warning.
UNUSABLE_SNAPSHOT_FILES = {
    **{name: None if damage is None else _session(damage) for name, damage in UNUSABLE_SNAPSHOTS.items()},
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:200]),
    "not a torch file": lambda path: path.write_text("{}"),
    "empty": lambda path: path.write_bytes(b""),
    "missing while the record names it": lambda path: path.unlink(),
    "completed not a number": _whole(lambda data: data.update(completed="four")),
    "completed a list": _whole(lambda data: data.update(completed=[4])),
    "completed None": _whole(lambda data: data.update(completed=None)),
    "a list": lambda path: torch.save([1, 2], path),
    "lacking its header": _whole(lambda data: (data.clear(), data.update(version=1))),
    "session not a dict": _whole(lambda data: data.update(session="x")),
    "of another run": _whole(lambda data: data.update(settings_sha256="0" * 64)),
    "of a newer version": _whole(lambda data: data.update(version=99)),
    "describing more frames than are complete": _whole(lambda data: (data.update(completed=6),
                                                                      data["session"].update(frames_processed=6))),
}


@pytest.fixture(scope="module")
def interrupted_with_snapshot(tmp_path_factory):
    """A clean run of a 6-frame clip, and the same run stopped after 4 frames with a snapshot of those 4 (the
    bundled mavos-lite, loaded once)."""
    from longvos.engine.pipeline import SegmentationError, segment_video
    from longvos.engine.progress import RunProgress
    from longvos.engine.segmenter import load_segmenter

    root = tmp_path_factory.mktemp("unusable")
    mask = make_clip(root / "clip", frames=6)
    run = dict(model=load_segmenter("mavos-lite", device="cpu"), max_size=64, progress=False, snapshot_every=2,
               threads=1)
    segment_video(root / "clip", mask, root / "clean", **run)
    with pytest.raises(SegmentationError):
        segment_video(root / "clip", mask, root / "stopped", on_frame=stop_after_frames(4), **run)
    record = RunProgress.load(root / "stopped")
    assert record.completed == 4 and record.snapshot == 4, record
    return root, mask, run


@pytest.mark.parametrize("damage", UNUSABLE_SNAPSHOT_FILES.values(), ids=UNUSABLE_SNAPSHOT_FILES.keys())
def test_resume_with_an_unusable_snapshot_recomputes_from_the_start_byte_identical(interrupted_with_snapshot,
                                                                                   tmp_path, damage):
    import shutil
    import warnings

    from longvos.engine.pipeline import segment_video

    root, mask, run = interrupted_with_snapshot
    out = tmp_path / "out"
    shutil.copytree(root / "stopped", out)
    if damage is not None:
        damage(out / STATE_FILE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_video(root / "clip", mask, out, resume=True, **run)
    messages = [str(warning.message) for warning in caught]
    assert summary.resumed_after == 4 and summary.frames == 2
    if damage is None:
        assert summary.restored_from == 4 and not messages, messages
    else:
        assert summary.restored_from == 0  # recomputed from the first frame
        unusable = [m for m in messages if "snapshot cannot be restored" in m]
        assert len(unusable) == 1 and "recomputing the 4 complete frame(s)" in unusable[0], messages
        assert STATE_FILE in unusable[0] and "\n" not in unusable[0], messages
        assert not any("differs from the one written before" in m for m in messages), messages
    assert md5s(out) == md5s(root / "clean") and len(pngs(out)) == 6
    assert not (out / STATE_FILE).exists()


def test_a_mask_deleted_after_the_run_is_written_again_not_reported_complete(clip, clean, tmp_path):
    """A resume of a finished run whose folder lost a mask file said "already complete" with the file missing (the
    batch too: it skipped the video). Now the resume writes it again, byte-identical, from the first missing frame."""
    from longvos.batch import BatchOptions, WorkItem, run_batch

    out = tmp_path / "out"
    assert run(command(*clip, out)).returncode == 0
    (out / "00007.png").unlink()
    (out / "00030.png").unlink()
    resumed = run(command(*clip, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "already complete" not in resumed.stdout + resumed.stderr
    assert "the mask files of frame 00007, which this run wrote, are missing" in resumed.stderr
    assert md5s(out) == clean

    folder, mask = clip
    options = BatchOptions(model="mavos-lite", max_size=96, device="cpu", threads=1, mem_gap=MEM_GAP,
                           snapshot_every=EVERY)
    items = [WorkItem(video=str(folder), mask=str(mask), name="clip")]
    batch_out = tmp_path / "batch"
    assert run_batch(items, batch_out, options, devices=["cpu"], workers=1, progress=False).ok
    (batch_out / "clip" / "00012.png").unlink()
    again = run_batch(items, batch_out, options, devices=["cpu"], workers=1, resume=True, progress=False)
    assert [r.status for r in again.results] == ["done"]  # not "skipped": a file was missing
    assert md5s(batch_out / "clip") == md5s(out)
