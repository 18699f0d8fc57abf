"""Object ids, frame indices and other values given to the public API are taken for exactly what they are, or refused
in one line before anything changes: ``"12"`` is not objects 1 and 2, ``2.9`` is not object 2, a repeated id is
removed once, a mask that hides another object's whole mask is refused rather than dropping that object, and a
refused first call leaves a session as new. Found by a hostile review of the API (each test failed before its fix)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RepeatLastMask

from longvos import load_segmenter
from longvos.engine.segmenter import Segmenter
from longvos.io.errors import InputError, MaskError, SessionError
from longvos.io.writer import BackgroundWriter

HEIGHT, WIDTH = 32, 48


def frame(value: int = 90) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    image[4:20, 4:20] = (value, 30, 30)
    image[12:28, 26:44] = (30, 30, value)
    return image


def two_objects(first: int, second: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.int64)
    mask[4:20, 4:20] = first
    mask[12:28, 26:44] = second
    return mask


@pytest.fixture
def segmenter() -> Segmenter:
    return Segmenter(RepeatLastMask(), device="cpu")


@pytest.fixture(scope="module")
def mavos():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random"):
        return load_segmenter("mavos-mnv2", device="cpu", dtype="fp32", allow_random_weights=True)


@pytest.mark.usefixtures("one_thread")
def test_a_repeated_id_is_removed_once_and_the_session_stays_whole(mavos):
    def run(removed) -> tuple[list[np.ndarray], int, dict]:
        session = mavos.session(max_size=None)
        session.step(frame(), two_objects(3, 250))
        session.remove_object(removed)
        probs = [session.step(frame(100 + 10 * i), return_probs=True).probs for i in range(2)]
        return probs, session.memory_bytes(), session.snapshot()

    once, memory_once, _ = run(250)
    twice, memory_twice, snapshot = run([250, 250])
    assert memory_twice == memory_once  # no pass left behind holding memory
    for a, b in zip(once, twice):
        assert np.array_equal(a, b)
    restored = mavos.session(max_size=None)
    restored.restore(snapshot)  # its snapshots stay restorable
    assert restored.object_ids == [3]


def test_an_id_is_a_whole_number_not_a_string_or_a_float(segmenter):
    session = segmenter.session()
    mask = two_objects(1, 2)
    mask[0:2, 0:2] = 12
    session.step(frame(), mask)
    for bad in ("12", 2.9, None, True):
        with pytest.raises(InputError, match="must be an integer"):
            session.remove_object(bad)
    assert session.object_ids == [1, 2, 12]  # nothing removed by a refused call
    session.remove_object(np.int64(12))  # NumPy integers are ids
    assert session.object_ids == [1, 2]
    with pytest.raises(MaskError, match="must be an integer, got '12'"):
        session.step(frame(), mask, objects="12")
    session.step(frame(), mask, objects=12)  # one id without a list
    assert session.object_ids == [1, 2, 12]


def test_a_refused_first_step_leaves_the_session_as_new(segmenter):
    session = segmenter.session()
    with pytest.raises(MaskError, match="mask is 48x16 but the frame is 48x32"):
        session.step(frame(), np.ones((16, WIDTH), np.int64))
    assert session.network_size is None
    small = np.zeros((16, WIDTH, 3), np.uint8)
    session.step(small, np.ones((16, WIDTH), np.int64))  # another size is still a first frame
    assert session.frames_processed == 1


def test_frames_and_masks_in_unusual_but_valid_types_are_read(segmenter):
    session = segmenter.session()
    mask = torch.from_numpy(two_objects(1, 2)).to(torch.bfloat16)
    big_endian = (frame() / 255.0).astype(">f4")
    result = session.step(big_endian, mask)
    assert sorted(result.object_ids) == [1, 2]
    with pytest.raises(InputError, match="the frame is empty"):
        session.step(np.zeros((0, 5, 3), np.uint8))


def test_unusable_dtypes_and_model_names_are_input_errors():
    with pytest.raises(InputError, match="unusable dtype torch.int8"):
        load_segmenter("mavos-lite", device="cpu", dtype=torch.int8)
    with pytest.raises(InputError, match="unknown dtype 'bf32'"):
        load_segmenter("mavos-lite", device="cpu", dtype="bf32")
    with pytest.raises(InputError, match="unknown model 'mavos-litee'; did you mean mavos-lite"):
        load_segmenter("mavos-litee", device="cpu")


def test_a_snapshot_that_is_not_one_is_a_session_error(segmenter, mavos):
    session = segmenter.session()
    with pytest.raises(SessionError, match="got NoneType"):
        mavos.session().restore(None)
    with pytest.raises(SessionError, match="lacks frames_processed, frame_hw, network_hw, state"):
        mavos.session().restore({"model": "mavos-mnv2"})
    source = mavos.session(max_size=None, memory="ref+prev")
    source.step(frame(), two_objects(1, 2))
    with pytest.raises(SessionError, match="memory is 'ref\\+prev', this session's is the model's own design"):
        mavos.session(max_size=None).restore(source.snapshot())
    assert session.frames_processed == 0


@pytest.fixture
def video(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(frame(100 + 10 * index)).save(folder / f"{index:05d}.png")
    return folder


def test_sam2_indices_are_whole_numbers(segmenter, video):
    state = segmenter.init_state(video)
    mask = two_objects(1, 0)
    with pytest.raises(InputError, match="frame_idx must be an integer, got 2.5"):
        segmenter.add_new_mask(state, 2.5, 7, mask)
    with pytest.raises(MaskError, match="obj_id must be an integer, got 1.2"):
        segmenter.add_new_mask(state, 0, 1.2, mask)
    assert state.object_ids == []  # nothing was added by the refused calls
    segmenter.add_new_mask(state, 0, 1, mask)
    with pytest.raises(InputError, match="start_frame_idx must be an integer"):
        next(segmenter.propagate_in_video(state, start_frame_idx=0.5))


def test_sam2_the_last_mask_given_wins_and_no_object_is_hidden(segmenter, video):
    state = segmenter.init_state(video)
    first = np.zeros((HEIGHT, WIDTH), np.uint8)
    first[4:20, 4:20] = 1
    second = np.zeros_like(first)
    second[10:26, 10:26] = 1
    overlap = (first > 0) & (second > 0)
    segmenter.add_new_mask(state, 0, 1, first)
    segmenter.add_new_mask(state, 0, 2, second)
    segmenter.add_new_mask(state, 0, 1, first)  # given again: now it is the last one given
    _, ids, masks = next(segmenter.propagate_in_video(state))
    assert ids == [1, 2] and masks[0][overlap].all() and not masks[1][overlap].any()

    state = segmenter.init_state(video)
    segmenter.add_new_mask(state, 0, 5, first)
    cover = np.ones_like(first)
    with pytest.raises(MaskError, match=r"cover every pixel of object\(s\) \[5\]"):
        segmenter.add_new_mask(state, 0, 6, cover)
    assert state.object_ids == [5]


def test_a_writer_queue_is_always_bounded(tmp_path):
    from longvos import segment_video

    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        BackgroundWriter(max_pending=0)
    with pytest.raises(InputError, match="max_pending_writes must be at least 1 frame, got 0"):
        segment_video(tmp_path / "none", tmp_path / "none.png", tmp_path / "out", max_pending_writes=0)
