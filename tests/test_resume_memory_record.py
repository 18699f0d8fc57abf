"""A run records the memory design and interval it used, resolved (the model's own where none is named), in
``segment`` and ``batch`` alike: naming the model's own is the same run as naming none, and a run recorded by an
earlier longvos with ``None`` for the model's own (whose own interval may have changed since: mavos-lite's went from
10 to 5) is refused with one line advising ``--overwrite``, never continued at another interval.

And the snapshot hooks of a state class are ``to_snapshot``, ``from_snapshot(data, device)`` and, optionally,
``check_snapshot(data, *, model, input_hw, like, dtype)``: a model family registered by a user with the first two
alone resumes from its snapshot.

Small clips, the bundled mavos-lite at 64 px and the exact fake model of the engine tests; one torch thread.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

from longvos.engine.pipeline import SegmentationError, segment_video
from longvos.engine.progress import PROGRESS_FILE, STATE_FILE, RunProgress
from longvos.engine.segmenter import Segmenter, load_segmenter
from longvos.io.errors import InputError
from longvos.models.registry import create_model

from conftest import RepeatLastMask, RepeatState, moving_square_clip, stop_after_frames

pytestmark = pytest.mark.usefixtures("one_thread_module")

HEIGHT, WIDTH = 64, 96


def make_clip(folder: Path, frames: int = 6) -> Path:
    return moving_square_clip(folder, frames, seed=2, height=HEIGHT, width=WIDTH)


def pngs(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("[0-9]*.png"))}


@pytest.fixture(scope="module")
def lite():
    return load_segmenter("mavos-lite", device="cpu")


def stopped_run(lite, root: Path, out: Path, **options) -> tuple[Path, dict]:
    """A mavos-lite run of a 6-frame clip stopped after 3 frames (a snapshot after 2); returns the mask and the
    run's options."""
    mask = make_clip(root / "clip")
    run = dict(model=lite, max_size=HEIGHT, progress=False, snapshot_every=2, threads=1, **options)
    with pytest.raises(SegmentationError):
        segment_video(root / "clip", mask, out, on_frame=stop_after_frames(3), **run)
    return mask, run


def as_recorded_before(out: Path) -> None:
    """Rewrite the run's record as longvos recorded the model's own memory design and interval before: ``None``."""
    path = out / PROGRESS_FILE
    record = json.loads(path.read_text())
    record["settings"].update(memory=None, mem_gap=None)
    path.write_text(json.dumps(record))


def test_a_run_records_the_memory_design_and_interval_it_used(lite, tmp_path):
    model = lite.model
    assert model.default_memory == "mca" and model.default_mem_gap is not None
    stopped_run(lite, tmp_path, tmp_path / "none")
    settings = RunProgress.load(tmp_path / "none").settings
    assert (settings["memory"], settings["mem_gap"]) == (model.default_memory, model.default_mem_gap)
    snapshot = torch.load(tmp_path / "none" / STATE_FILE, weights_only=True)
    assert snapshot["session"]["state"]["mem_gap"] == settings["mem_gap"]  # the interval the frames were made at
    other = model.default_mem_gap + 2
    stopped_run(lite, tmp_path / "b", tmp_path / "other", mem_gap=other, memory="ref+prev")
    settings = RunProgress.load(tmp_path / "other").settings
    assert (settings["memory"], settings["mem_gap"]) == ("ref+prev", other)


def test_a_run_recorded_with_none_by_an_earlier_version_is_refused_advising_overwrite(lite, tmp_path):
    """The reviewer's case: a run interrupted before mavos-lite's interval changed (its frames and snapshot at 10,
    recorded as None) is not continued at the new interval: one line, nothing touched; --overwrite redoes it."""
    out = tmp_path / "out"
    mask, run = stopped_run(lite, tmp_path, out, mem_gap=10)  # the interval the model's own was then
    as_recorded_before(out)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    for naming in ({}, {"mem_gap": 10}, {"mem_gap": lite.model.default_mem_gap, "memory": "mca"}):
        with pytest.raises(InputError) as caught:
            segment_video(tmp_path / "clip", mask, out, resume=True, **run | naming)
        message = str(caught.value)
        assert "\n" not in message and "holds a run with other settings (mem_gap: None -> " in message, message
        assert "earlier longvos" in message and "--overwrite" in message, message
    assert f"(it is {lite.model.default_mem_gap!r} now)" in message
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before  # nothing was touched
    summary = segment_video(tmp_path / "clip", mask, out, overwrite=True, **run)
    assert summary.frames == 6 and RunProgress.load(out).settings["mem_gap"] == 10


def test_another_interval_than_the_recorded_one_is_refused_without_the_earlier_version_note(lite, tmp_path):
    out = tmp_path / "out"
    mask, run = stopped_run(lite, tmp_path, out)
    own = lite.model.default_mem_gap
    with pytest.raises(InputError) as caught:
        segment_video(tmp_path / "clip", mask, out, resume=True, **run | {"mem_gap": own + 2})
    message = str(caught.value)
    assert f"(mem_gap: {own} -> {own + 2})" in message and "earlier longvos" not in message, message
    # The model's own, named or not, continues the run.
    summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run | {"mem_gap": own, "memory": "mca"})
    assert summary.resumed_after == 3 and summary.restored_from == 2


def test_naming_livos_one_design_is_the_same_run_as_naming_none(tmp_path):
    """LiVOS has no choice of memory: a run that named none resumes with its one design and interval named, and the
    other way round, to the same bytes as an uninterrupted run."""
    livos = load_segmenter("livos-r50", device="cpu", allow_random_weights=True)
    mask = make_clip(tmp_path / "clip")
    run = dict(model=livos, max_size=HEIGHT, progress=False, snapshot_every=2, threads=1)
    segment_video(tmp_path / "clip", mask, tmp_path / "clean", **run)
    for index, (first, then) in enumerate((({}, {"memory": "linear", "mem_gap": 1}),
                                           ({"memory": "linear", "mem_gap": 1}, {}))):
        out = tmp_path / f"out{index}"
        with pytest.raises(SegmentationError):
            segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **run | first)
        settings = RunProgress.load(out).settings
        assert (settings["memory"], settings["mem_gap"]) == (None, None)
        summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run | then)
        assert summary.resumed_after == 3 and pngs(out) == pngs(tmp_path / "clean")
    with pytest.raises(ValueError, match="one memory design"):  # what it cannot run is still refused
        segment_video(tmp_path / "clip", mask, tmp_path / "bad", **run | {"memory": "mca"})


def test_batch_records_and_compares_the_memory_settings_as_segment_does(lite, tmp_path):
    from longvos.batch.items import BatchOptions, WorkItem
    from longvos.batch.runner import item_settings, resume_conflict

    out = tmp_path / "out"
    mask, _ = stopped_run(lite, tmp_path, out)
    recorded = RunProgress.load(out).settings
    item = WorkItem("clip", str(tmp_path / "clip"), str(mask))
    model = lite.model
    for options in (BatchOptions(max_size=HEIGHT), BatchOptions(max_size=HEIGHT, memory=model.default_memory,
                                                                mem_gap=model.default_mem_gap)):
        settings = item_settings(item, options)
        assert (settings["memory"], settings["mem_gap"]) == (recorded["memory"], recorded["mem_gap"])
        assert resume_conflict(out, settings) is None
    other = item_settings(item, BatchOptions(max_size=HEIGHT, mem_gap=model.default_mem_gap + 2))
    conflict = resume_conflict(out, other)
    assert f"(mem_gap: {model.default_mem_gap} -> {model.default_mem_gap + 2})" in conflict
    assert "earlier longvos" not in conflict

    as_recorded_before(out)
    conflict = resume_conflict(out, item_settings(item, BatchOptions(max_size=HEIGHT)))
    assert conflict is not None and f"(mem_gap: None -> {model.default_mem_gap})" in conflict, conflict
    assert "earlier longvos" in conflict and "--overwrite" in conflict and "\n" not in conflict


def with_second_object(mask: Path) -> Path:
    """The clip's mask with a second object (id 2) in a corner of the frame."""
    ids = np.array(Image.open(mask))
    ids[2:12, 70:90] = 2
    Image.fromarray(ids).save(mask)
    return mask


def drop_from_record(out: Path, key: str) -> None:
    path = out / PROGRESS_FILE
    record = json.loads(path.read_text())
    del record["settings"][key]
    path.write_text(json.dumps(record))


def test_a_run_of_several_objects_records_how_many_share_a_pass_and_an_earlier_record_is_refused(lite, tmp_path):
    """mavos-lite went from packing its objects into one pass to one object per pass, which changes the masks of a
    run with several objects: such a run recorded before (no objects_per_pass in its record) is not continued with
    the new setting -- one line advising --overwrite, in segment and batch alike."""
    from longvos.batch.items import BatchOptions, WorkItem
    from longvos.batch.runner import item_settings, resume_conflict

    out = tmp_path / "out"
    make_clip(tmp_path / "clip")
    mask = with_second_object(tmp_path / "mask.png")
    run = dict(model=lite, max_size=HEIGHT, progress=False, snapshot_every=2, threads=1)
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **run)
    assert RunProgress.load(out).settings["objects_per_pass"] == lite.model.objects_per_pass == 1
    item = WorkItem("clip", str(tmp_path / "clip"), str(mask))
    assert resume_conflict(out, item_settings(item, BatchOptions(max_size=HEIGHT))) is None
    drop_from_record(out, "objects_per_pass")
    with pytest.raises(InputError) as caught:
        segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    message = str(caught.value)
    assert "(objects_per_pass: None -> 1)" in message and "earlier longvos" in message, message
    assert "--overwrite" in message and "\n" not in message
    conflict = resume_conflict(out, item_settings(item, BatchOptions(max_size=HEIGHT)))
    assert conflict is not None and "(objects_per_pass: None -> 1)" in conflict and "earlier longvos" in conflict


@pytest.mark.parametrize("model", ["mavos-lite, one object", "mavos-mnv2, two objects (packed)"])
def test_where_passes_cannot_change_the_masks_nothing_is_recorded_and_an_earlier_run_resumes_from_its_snapshot(
        lite, model, tmp_path):
    """One object is one pass either way, and a model that packs its objects as its design does runs as earlier
    versions did: neither records objects_per_pass, so their records and snapshots read as those of earlier
    versions (which recorded none), and such a run is continued from its snapshot, not recomputed."""
    if model.startswith("mavos-lite"):
        segmenter = lite
    else:
        torch.manual_seed(0)
        segmenter = Segmenter(create_model("mavos-mnv2", d_model=32), "cpu", dtype=None)
    out = tmp_path / "out"
    make_clip(tmp_path / "clip")
    mask = tmp_path / "mask.png"
    if "two objects" in model:
        with_second_object(mask)
    run = dict(model=segmenter, max_size=HEIGHT, progress=False, snapshot_every=2, threads=1)
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **run)
    assert "objects_per_pass" not in RunProgress.load(out).settings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unusable snapshot would warn and recompute
        summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    assert summary.resumed_after == 3 and summary.restored_from == 2


# -- the snapshot hooks of a state class -------------------------------------------------------------------------

@dataclass
class SnapshotState(RepeatState):
    """A user's state class with the two hooks a model family had before ``check_snapshot`` (no check)."""

    def to_snapshot(self) -> dict:
        return {"object_ids": list(self.object_ids), "masks_NHW": self.masks_NHW,
                "seen_sizes": [list(size) for size in self.seen_sizes]}

    @classmethod
    def from_snapshot(cls, data: dict, device: torch.device | None = None) -> SnapshotState:
        masks = data["masks_NHW"]
        return cls(object_ids=[int(i) for i in data["object_ids"]],
                   masks_NHW=None if masks is None else masks.to(device),
                   seen_sizes=[tuple(size) for size in data["seen_sizes"]])


class SnapshotModel(RepeatLastMask):
    name = "repeat-with-snapshots"

    def new_state(self, mem_gap: int | None = None) -> SnapshotState:
        super().new_state(mem_gap)
        return SnapshotState()


@dataclass
class CheckedState(SnapshotState):
    """With the optional check: refuses a snapshot whose object ids are not ``allowed``; records its calls."""

    calls = []  # noqa: RUF012 - shared by the class, read by the test
    allowed = (1,)

    @classmethod
    def check_snapshot(cls, data, *, model, input_hw, like, dtype) -> None:
        cls.calls.append(dict(model=model, input_hw=input_hw, like=like, dtype=dtype))
        if any(i not in cls.allowed for i in data["object_ids"]):
            raise ValueError(f"object_ids {data['object_ids']} are not all in {list(cls.allowed)}")


class CheckedModel(SnapshotModel):
    name = "repeat-with-checked-snapshots"

    def new_state(self, mem_gap: int | None = None) -> CheckedState:
        super().new_state(mem_gap)
        return CheckedState()


def frames_and_mask() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    frames = [(rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8) for _ in range(4)]
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[10:30, 10:40] = 1
    return frames, mask


def test_a_state_with_the_two_argument_from_snapshot_and_no_check_is_restored():
    segmenter = Segmenter(SnapshotModel(), "cpu", dtype=None)
    frames, mask = frames_and_mask()
    session = segmenter.session(HEIGHT)
    session.step(frames[0], mask)
    session.step(frames[1])
    restored = segmenter.session(HEIGHT)
    restored.restore(session.snapshot())
    assert restored.frames_processed == 2 and restored.object_ids == [1]
    for frame in frames[2:]:
        assert np.array_equal(restored.step(frame).mask, session.step(frame).mask)


def test_segment_resumes_a_user_family_from_its_snapshot(tmp_path):
    """Its resume restores the snapshot (no warning, no recomputed frame) and writes the uninterrupted run's bytes."""
    mask = make_clip(tmp_path / "clip", frames=7)
    run = dict(model=Segmenter(SnapshotModel(), "cpu"), max_size=HEIGHT, progress=False, snapshot_every=2)
    segment_video(tmp_path / "clip", mask, tmp_path / "clean", **run)
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(5), **run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_video(tmp_path / "clip", mask, out, resume=True, **run)
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    assert summary.restored_from == 4 and summary.resumed_after == 5
    assert pngs(out) == pngs(tmp_path / "clean") and len(pngs(out)) == 7


def test_the_optional_check_is_called_with_the_session_and_refuses_before_anything_changes():
    model = CheckedModel()
    segmenter = Segmenter(model, "cpu", dtype=None)
    frames, mask = frames_and_mask()
    session = segmenter.session(HEIGHT)
    session.step(frames[0], mask * 3)  # object 3: not allowed
    snapshot = session.snapshot()
    CheckedState.calls.clear()
    fresh = segmenter.session(HEIGHT)
    with pytest.raises(ValueError, match=r"object_ids \[3\] are not all in \[1\]"):
        fresh.restore(snapshot)
    assert fresh.frames_processed == 0 and fresh.object_ids == [] and fresh.network_size is None
    (call,) = CheckedState.calls
    assert call["model"] is model and call["input_hw"] == session.network_size and call["dtype"] is None
    assert isinstance(call["like"], CheckedState) and call["like"].object_ids == []
    good = segmenter.session(HEIGHT)
    good.step(frames[0], mask)
    fresh.restore(good.snapshot())
    assert fresh.frames_processed == 1 and fresh.object_ids == [1] and len(CheckedState.calls) == 2
