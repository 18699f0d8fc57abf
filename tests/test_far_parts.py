"""Far parts (``max_part_distance``, :mod:`longvos.engine.parts`): a piece of an object's mask that appears farther
than that many object sizes from where the object was on the frame before is given to the background; pieces that
are near, or that were there before, are kept, and an object that moved away as a whole is kept. A session that
drops far parts resumes from its snapshot bit for bit; a run recorded before far parts existed is refused with a
line naming the option that continues it.

An exact scripted model (its masks are given per frame) and, for the records, the bundled mavos-lite at 64 px.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from longvos.checkpoints import meta_model
from longvos.engine.parts import far_parts, resolve_part_distance
from longvos.engine.pipeline import SegmentationError, segment_video
from longvos.engine.progress import PROGRESS_FILE, RunProgress
from longvos.engine.segmenter import Segmenter, load_segmenter
from longvos.io.errors import InputError, SessionError
from longvos.models.base import VOSModel

from conftest import moving_square_clip, stop_after_frames

pytestmark = pytest.mark.usefixtures("one_thread_module")

HEIGHT, WIDTH = 48, 64


def square(top: int, left: int, size: int, object_id: int = 1) -> np.ndarray:
    ids_HW = np.zeros((HEIGHT, WIDTH), np.int64)
    ids_HW[top:top + size, left:left + size] = object_id
    return ids_HW


@dataclass
class ScriptState:
    object_ids: list[int] = field(default_factory=list)
    frame: int = 0

    def nbytes(self) -> int:
        return 0

    def to_snapshot(self) -> dict:
        return {"object_ids": list(self.object_ids), "frame": self.frame}

    @classmethod
    def from_snapshot(cls, data: dict, device: torch.device) -> ScriptState:
        return cls(list(data["object_ids"]), int(data["frame"]))


class ScriptedModel(VOSModel):
    """Predicts ``script[frame]`` (an id map at the network size, which is the frame size here) with certainty."""

    name = "scripted"
    default_max_part_distance = 0.5

    def __init__(self, script: list[np.ndarray]):
        super().__init__()
        self.script = script

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def new_state(self, mem_gap: int | None = None) -> ScriptState:
        return ScriptState()

    def step(self, state, image_B3HW, masks=None):
        for object_id in masks or {}:
            if object_id not in state.object_ids:
                state.object_ids.append(object_id)
        ids_HW = torch.from_numpy(self.script[state.frame])
        state.frame += 1
        channels = [torch.zeros(ids_HW.shape)] + [(ids_HW == i).float() for i in state.object_ids]
        channels[0] = 1 - torch.stack(channels[1:]).sum(0)
        return torch.stack(channels)

    def remove_objects(self, state, object_ids):
        state.object_ids = [i for i in state.object_ids if i not in object_ids]


def frames(count: int) -> list[np.ndarray]:
    return [np.full((HEIGHT, WIDTH, 3), 80, np.uint8) for _ in range(count)]


def run(script: list[np.ndarray], max_part_distance="auto", first_mask: np.ndarray | None = None,
        return_probs: bool = False):
    segmenter = Segmenter(ScriptedModel(script), device="cpu", dtype="fp32")
    session = segmenter.session(max_size=None, max_part_distance=max_part_distance)
    results = []
    for index, frame in enumerate(frames(len(script))):
        mask = (script[0] if first_mask is None else first_mask) if index == 0 else None
        results.append(session.step(frame, mask, return_probs=return_probs))
    return results


# A 10x10 object (size 10: half a size is 5 pixels) and, on frame 2, a blob 20 pixels away and one 3 pixels away.
OBJECT = square(10, 10, 10)
WITH_BLOBS = OBJECT.copy()
WITH_BLOBS[12:16, 40:44] = 1  # far: 20 px from the object's right edge
WITH_BLOBS[12:16, 23:25] = 1  # near: 3 px from it (x 20-22 are background, so it is a separate piece)


def test_a_far_piece_is_dropped_and_a_near_one_kept():
    results = run([OBJECT, OBJECT, WITH_BLOBS, WITH_BLOBS], return_probs=True)
    expected = OBJECT.copy()
    expected[12:16, 23:25] = 1
    np.testing.assert_array_equal(results[2].mask, expected)
    np.testing.assert_array_equal(results[3].mask, expected)  # it stays far: dropped again
    probs = results[2].probs[0]  # the object's probability: given to the background on the far piece
    assert probs[12:16, 40:44].max() == 0.0 and probs[12:16, 23:25].min() == 1.0


def test_without_max_part_distance_every_piece_is_kept():
    results = run([OBJECT, OBJECT, WITH_BLOBS], max_part_distance=None)
    np.testing.assert_array_equal(results[2].mask, WITH_BLOBS)
    results = run([OBJECT, OBJECT, WITH_BLOBS], max_part_distance=3.0)  # 30 px reach: the far blob is near
    np.testing.assert_array_equal(results[2].mask, WITH_BLOBS)


def test_pieces_the_object_had_before_and_an_object_that_moved_away_are_kept():
    two_pieces = OBJECT.copy()
    two_pieces[30:40, 45:55] = 1  # a second piece given on the first frame (a kite far from its surfer)
    shifted = np.roll(two_pieces, 2, axis=1)  # both pieces move a little
    results = run([two_pieces, two_pieces, shifted])
    np.testing.assert_array_equal(results[2].mask, shifted)
    jumped = square(30, 40, 10)  # the whole object 20 px away from where it was, in two pieces
    jumped[30:40, 52:54] = 1
    results = run([OBJECT, OBJECT, jumped])
    np.testing.assert_array_equal(results[2].mask, jumped)


def test_each_object_is_judged_against_its_own_previous_mask():
    two = square(10, 10, 10) + square(10, 40, 10, object_id=2)
    blob_of_1_near_2 = two.copy()
    blob_of_1_near_2[24:27, 44:47] = 1  # object 1's piece next to object 2: far from object 1
    results = run([two, two, blob_of_1_near_2])
    np.testing.assert_array_equal(results[2].mask, two)


def test_far_parts_measures_in_object_sizes():
    previous_HW = square(10, 10, 10)  # area 100: one object size is 10 px
    labels_HW = (square(10, 10, 10) + square(10, 28, 4)).astype(np.int64)  # a piece 9 px to the right
    assert far_parts(labels_HW, previous_HW, [1], 0.5).sum() == 16
    assert far_parts(labels_HW, previous_HW, [1], 1.0).sum() == 0
    assert far_parts(labels_HW, np.zeros_like(previous_HW), [1], 0.5).sum() == 0  # nothing before: keep
    assert resolve_part_distance("auto", 0.5) == 0.5 and resolve_part_distance("auto", None) is None
    assert resolve_part_distance(None, 0.5) is None and resolve_part_distance("None", 0.5) is None
    assert resolve_part_distance(2, None) == 2.0 and resolve_part_distance(np.float32(0.25), None) == 0.25
    for bad in (0, -1, float("nan"), float("inf"), 10**400, True, "far", "0.5", [0.5], 1j):
        with pytest.raises(ValueError, match="max_part_distance"):
            resolve_part_distance(bad, 0.5)


def test_a_bad_distance_is_one_input_error_line_before_anything_is_read(tmp_path):
    segmenter = Segmenter(ScriptedModel([OBJECT]), device="cpu", dtype="fp32")
    for bad in (-2, [0.5], 10**400):
        with pytest.raises(InputError, match="max_part_distance must be a positive number"):
            segmenter.session(max_part_distance=bad)
    with pytest.raises(InputError, match="max_part_distance must be a positive number"):
        segment_video(tmp_path / "no-such-video.mp4", tmp_path / "no-mask.png", tmp_path / "out", model=segmenter,
                      max_part_distance=True)


def test_removing_an_object_forgets_its_previous_mask():
    two = square(10, 10, 10) + square(10, 40, 10, object_id=2)
    script = [two, two, two]
    segmenter = Segmenter(ScriptedModel(script), device="cpu", dtype="fp32")
    session = segmenter.session(max_size=None)
    session.step(frames(1)[0], two)
    session.step(frames(1)[0])
    session.remove_object(1)
    assert not (session._previous_ids == 1).any()
    assert set(np.unique(session.step(frames(1)[0]).mask)) == {0, 2}


def test_a_session_that_drops_far_parts_resumes_from_its_snapshot_exactly():
    script = [OBJECT, OBJECT, np.roll(OBJECT, 3, axis=1), np.roll(WITH_BLOBS, 3, axis=1), WITH_BLOBS]
    whole = [r.mask for r in run(script)]
    segmenter = Segmenter(ScriptedModel(script), device="cpu", dtype="fp32")
    first = segmenter.session(max_size=None)
    for index, frame in enumerate(frames(3)):
        first.step(frame, script[0] if index == 0 else None)
    snapshot = first.snapshot()
    assert snapshot["previous_ids"].shape == (HEIGHT, WIDTH)
    resumed = segmenter.session(max_size=None)
    resumed.restore(snapshot)
    rest = [resumed.step(frame).mask for frame in frames(2)]
    for got, expected in zip(rest, whole[3:]):
        np.testing.assert_array_equal(got, expected)
    assert (whole[3] != np.roll(WITH_BLOBS, 3, axis=1)).any()  # the far blob was dropped after the restore point

    with pytest.raises(SessionError, match="previous_ids must be an integer map"):
        segmenter.session(max_size=None).restore(dict(snapshot, previous_ids=torch.zeros(3, 3, dtype=torch.int64)))
    with pytest.raises(SessionError, match="taken with max_part_distance 0.5 cannot be continued by a session with "
                                           "2.0"):
        segmenter.session(max_size=None, max_part_distance=2).restore(snapshot)
    off = segmenter.session(max_size=None, max_part_distance=None)
    for step in frames(3):
        off.step(step, script[0] if off.frames_processed == 0 else None)
    kept_every_piece = off.snapshot()
    assert "previous_ids" not in kept_every_piece  # as earlier longvos versions wrote their snapshots
    with pytest.raises(SessionError, match="taken with max_part_distance None cannot be continued"):
        segmenter.session(max_size=None).restore(kept_every_piece)
    segmenter.session(max_size=None, max_part_distance=None).restore(kept_every_piece)


# -- what a run records --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite():
    return load_segmenter("mavos-lite", device="cpu")


def test_mavos_lite_drops_far_parts_and_a_run_records_the_distance_it_used(lite, tmp_path):
    assert lite.model.default_max_part_distance == 0.5
    assert meta_model("mavos-mnv2").default_max_part_distance is None  # the official models: published numerics
    mask = moving_square_clip(tmp_path / "clip", 4, seed=1, height=64, width=96)
    for name, distance, expected in (("auto", "auto", 0.5), ("off", None, None), ("two", 2, 2.0)):
        segment_video(tmp_path / "clip", mask, tmp_path / name, model=lite, max_size=64, progress=False, threads=1,
                      max_part_distance=distance)
        # Nothing recorded where every piece is kept: such a run reads as an earlier longvos's (its snapshot too).
        assert RunProgress.load(tmp_path / name).settings.get("max_part_distance", "absent") == (
            "absent" if expected is None else expected)


def test_a_run_recorded_before_far_parts_is_refused_naming_the_option_that_continues_it(lite, tmp_path):
    mask = moving_square_clip(tmp_path / "clip", 6, seed=2, height=64, width=96)
    out = tmp_path / "out"
    options = dict(model=lite, max_size=64, progress=False, snapshot_every=2, threads=1)
    # A run that keeps every piece is recorded and snapshotted as an earlier longvos's were.
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), max_part_distance=None, **options)
    assert "max_part_distance" not in RunProgress.load(out).settings
    with pytest.raises(InputError) as refused:
        segment_video(tmp_path / "clip", mask, out, resume=True, **options)
    message = str(refused.value)
    assert "\n" not in message and "max_part_distance: None -> 0.5" in message
    assert "add --max-part-distance none to continue it" in message
    summary = segment_video(tmp_path / "clip", mask, out, resume=True, max_part_distance=None, **options)
    assert (summary.resumed_after, summary.restored_from) == (3, 2)  # continued from its snapshot
    assert RunProgress.load(out).done


def test_a_difference_the_advice_cannot_mend_is_named_first(lite, tmp_path):
    mask = moving_square_clip(tmp_path / "clip", 6, seed=2, height=64, width=96)
    out = tmp_path / "out"
    options = dict(model=lite, max_size=64, progress=False, snapshot_every=2, threads=1, max_part_distance=None)
    with pytest.raises(SegmentationError):
        segment_video(tmp_path / "clip", mask, out, on_frame=stop_after_frames(3), **options)
    path = out / PROGRESS_FILE  # an older record still: the memory interval recorded as None
    record = json.loads(path.read_text())
    record["settings"]["mem_gap"] = None
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"\(mem_gap: None -> 5\).*cannot be continued exactly"):
        segment_video(tmp_path / "clip", mask, out, resume=True, **dict(options, max_part_distance="auto"))


def test_far_parts_advice_comes_after_every_difference_it_cannot_mend():
    from longvos.engine.options import earlier_record_note
    from longvos.engine.progress import settings_difference

    # A record of a version that resolved the memory interval but recorded neither objects_per_pass nor far parts.
    saved = {"model": "mavos-lite", "memory": "mca", "mem_gap": 5, "max_size": 320}
    current = dict(saved, objects_per_pass=1, max_part_distance=0.5)
    difference = settings_difference(saved, current)
    assert difference == "objects_per_pass: None -> 1"
    assert "cannot be continued exactly" in earlier_record_note(saved, difference, "mca", 5, 1, 0.5)
    difference = settings_difference(saved, dict(saved, max_part_distance=0.5))
    assert "--max-part-distance none" in earlier_record_note(saved, difference, "mca", 5, None, 0.5)


def test_batch_records_the_distance_as_segment_does(lite, tmp_path):
    from longvos.batch.items import BatchOptions, WorkItem
    from longvos.batch.runner import is_complete, item_settings, resume_conflict

    mask = moving_square_clip(tmp_path / "clip", 2, seed=3, height=64, width=96)
    item = WorkItem(name="clip", video=str(tmp_path / "clip"), mask=str(mask), frame=0)
    assert item_settings(item, BatchOptions(model="mavos-lite"))["max_part_distance"] == 0.5
    kept = item_settings(item, BatchOptions(model="mavos-lite", max_part_distance=None))
    assert "max_part_distance" not in kept
    assert "max_part_distance" not in item_settings(item, BatchOptions(model="mavos-mnv2"))
    # A finished video made with far parts dropped is not a finished video of a batch that keeps every piece.
    segment_video(tmp_path / "clip", mask, tmp_path / "made", model=lite, max_size=64, progress=False, threads=1)
    made = RunProgress.load(tmp_path / "made").settings
    assert made["max_part_distance"] == 0.5 and is_complete(tmp_path / "made", made)
    keeping = {key: value for key, value in made.items() if key != "max_part_distance"}
    assert not is_complete(tmp_path / "made", keeping)
    assert "max_part_distance: 0.5 -> None" in resume_conflict(tmp_path / "made", keeping)


def test_the_cli_reads_auto_none_and_numbers_and_refuses_the_rest(tmp_path):
    import argparse

    from longvos.cli.options import parse_part_distance

    assert parse_part_distance("auto") == "auto" and parse_part_distance("None") is None
    assert parse_part_distance("0.75") == 0.75
    for bad in ("0", "-1", "nan", "far"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of object sizes"):
            parse_part_distance(bad)
