"""Misuse of a session or of the SAM2-style offline state is a clear one-line error (``SessionError``, an
``InputError``), never a silent wrong answer: a session used after ``close()``; a mask for a frame that the running
propagation has already passed (it would be ignored, yet listed in ``object_ids``); a propagation superseded by a
newer one; a state that is not the one ``init_state`` returned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import RepeatLastMask

from longvos import SessionError
from longvos.engine.segmenter import Segmenter
from longvos.io.errors import InputError

FRAMES, HEIGHT, WIDTH = 6, 24, 32


@pytest.fixture
def segmenter() -> Segmenter:
    return Segmenter(RepeatLastMask(), device="cpu")


@pytest.fixture
def video(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(FRAMES):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 10 * index, np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def box(top: int, left: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[top:top + 6, left:left + 6] = 1
    return mask


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_a_closed_session_refuses_every_verb(segmenter):
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with segmenter.session() as session:
        session.step(frame, box(0, 0))
        session.step(frame)
    assert session.closed
    for verb, call in [("step", lambda: session.step(frame)), ("add_objects", lambda: session.add_objects(box(9, 9))),
                       ("remove_object", lambda: session.remove_object(1)), ("reset_state", session.reset_state),
                       ("enter", session.__enter__)]:
        with pytest.raises(SessionError, match=f"cannot {verb}: this session is closed") as caught:
            call()
        assert "after 2 frame(s)" in one_line(caught) and isinstance(caught.value, InputError)
    session.close()  # closing twice is harmless
    assert session.object_ids == [] and session.memory_bytes() == 0


def test_a_mask_for_a_frame_the_propagation_has_passed_is_refused(segmenter, video):
    state = segmenter.init_state(video)
    segmenter.add_new_mask(state, 0, 1, box(0, 0))
    seen = []
    propagation = segmenter.propagate_in_video(state)
    for frame_idx, obj_ids, masks in propagation:
        seen.append((frame_idx, list(obj_ids)))
        if frame_idx == 2:
            for past in (0, 2):
                with pytest.raises(SessionError, match=f"frame {past} was already propagated") as caught:
                    segmenter.add_new_mask(state, past, 7, box(9, 9))
                assert "now at frame 2" in one_line(caught)
            assert state.object_ids == [1]  # the refused object is not listed
            assert segmenter.add_new_mask(state, 4, 7, box(9, 9)) == (4, [1, 7])  # a frame ahead still works
    assert seen == [(0, [1]), (1, [1]), (2, [1]), (3, [1]), (4, [1, 7]), (5, [1, 7])]
    # Between propagations any frame can take a mask: the next propagation starts over with it.
    assert segmenter.add_new_mask(state, 1, 9, box(15, 20)) == (1, [1, 7, 9])
    assert [ids for _, ids, _ in segmenter.propagate_in_video(state)][1] == [1, 9]


def test_in_reverse_the_past_is_the_later_frames(segmenter, video):
    state = segmenter.init_state(video)
    segmenter.add_new_mask(state, 5, 1, box(0, 0))
    for frame_idx, _, _ in segmenter.propagate_in_video(state, reverse=True):
        if frame_idx == 3:
            with pytest.raises(SessionError, match="frame 4 was already propagated"):
                segmenter.add_new_mask(state, 4, 2, box(9, 9))
            segmenter.add_new_mask(state, 1, 2, box(9, 9))
    assert state.object_ids == [1, 2]


def test_a_superseded_propagation_stops_with_an_error(segmenter, video):
    state = segmenter.init_state(video)
    segmenter.add_new_mask(state, 0, 1, box(0, 0))
    first = segmenter.propagate_in_video(state)
    next(first)
    second = segmenter.propagate_in_video(state)
    assert next(second)[0] == 0
    with pytest.raises(SessionError, match="superseded") as caught:
        next(first)
    one_line(caught)
    assert [frame_idx for frame_idx, _, _ in second] == [1, 2, 3, 4, 5]  # the newer one is unaffected
    segmenter.reset_state(state)
    with pytest.raises(InputError, match="no masks to propagate"):
        next(segmenter.propagate_in_video(state))


def test_offline_verbs_need_the_state_from_init_state(segmenter):
    with segmenter.session() as session:
        with pytest.raises(SessionError, match="needs the state returned by init_state") as caught:
            segmenter.add_new_mask(session, 0, 1, box(0, 0))
        one_line(caught)
        with pytest.raises(SessionError, match="needs the state returned by init_state"):
            next(segmenter.propagate_in_video(session))
