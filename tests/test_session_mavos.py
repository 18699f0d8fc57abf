"""The streaming API with the real mavos-mnv2 (random weights) on real DAVIS footage: 1, 3 and 12 objects, user ids,
objects appearing later and removed, constant memory, the SAM2-style verbs, autocast.

Random weights make the masks meaningless, so the tests check behaviour (ids, shapes, memory, given frames) rather
than accuracy. Frames are shrunk to a short side of 64-96 pixels to keep each step fast on a busy CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from longvos import load_segmenter
from longvos.io.errors import InputError, MaskError
from longvos.io.masks import read_index_mask
from longvos.io.video import open_video

SMALL = 64


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def segmenter():
    with pytest.warns(UserWarning, match="random"):
        return load_segmenter("mavos-mnv2", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def bmx(dev_dir):
    """The first 12 bmx-trees frames and their masks."""
    frames = [f.image for f in open_video(dev_dir / "JPEGImages" / "bmx-trees").frames(0, 12)]
    masks = [read_index_mask(dev_dir / "Annotations" / "bmx-trees" / f"{i:05d}.png").ids for i in range(12)]
    return frames, masks


def split_into_pieces(mask: np.ndarray, rows: int, cols: int, ids: list[int]) -> np.ndarray:
    """Cut a one-object mask into a rows x cols grid of pieces holding equal pixel counts (so none is empty):
    horizontal bands at the quantiles of the object's rows, each band cut at the quantiles of its columns."""
    pieces = np.zeros(mask.shape, dtype=np.int64)
    ys, xs = np.nonzero(mask)
    band_of = np.minimum((np.argsort(np.argsort(ys, kind="stable")) * rows) // len(ys), rows - 1)
    ids_left = iter(ids)
    for band in range(rows):
        in_band = band_of == band
        band_ys, band_xs = ys[in_band], xs[in_band]
        cell_of = np.minimum((np.argsort(np.argsort(band_xs, kind="stable")) * cols) // len(band_xs), cols - 1)
        for cell in range(cols):
            pieces[band_ys[cell_of == cell], band_xs[cell_of == cell]] = next(ids_left)
    return pieces


def test_one_object_streams_at_original_size_in_constant_memory(segmenter, bmx):
    frames, masks = bmx
    session = segmenter.session(max_size=SMALL)
    sizes = []
    for index, frame in enumerate(frames[:8]):
        result = session.step(frame, masks[0] if index == 0 else None, return_probs=True)
        assert result.mask.shape == (480, 854) and result.mask.dtype == np.uint8
        assert result.object_ids == [1] and result.frame_index == index and result.model_seconds > 0
        assert result.probs.shape == (1, 480, 854) and 0 <= result.probs.min() and result.probs.max() <= 1 + 1e-5
        assert set(np.unique(result.mask)) <= {0, 1}
        if index == 0:
            assert np.array_equal(result.mask, masks[0])  # the given mask is the output of its frame
        sizes.append(session.memory_bytes())
    assert sizes[0] > 0 and len(set(sizes[2:])) == 1  # mca memory: constant once reference + dynamic slot exist


def test_three_objects_with_arbitrary_ids(segmenter, bmx):
    frames, masks = bmx
    first = split_into_pieces(masks[0], 1, 3, [5, 42, 300])
    session = segmenter.session(max_size=SMALL)
    result = session.step(frames[0], first)
    assert result.object_ids == [5, 42, 300] and result.mask.dtype == np.int32
    assert np.array_equal(result.mask, first)
    for frame in frames[1:4]:
        result = session.step(frame, return_probs=True)
        assert set(np.unique(result.mask)) <= {0, 5, 42, 300} and result.probs.shape == (3, 480, 854)
        np.testing.assert_array_less(result.probs.sum(axis=0), 1 + 1e-4)


def test_twelve_objects_use_two_passes(segmenter, bmx):
    frames, masks = bmx
    ids = list(range(1, 13))
    first = split_into_pieces(masks[0], 4, 3, ids)
    session = segmenter.session(max_size=SMALL)
    result = session.step(frames[0], first)
    assert result.object_ids == ids and np.array_equal(result.mask, first)
    twelve_bytes = session.memory_bytes()
    for frame in frames[1:3]:
        result = session.step(frame, return_probs=True)
        assert result.probs.shape == (12, 480, 854) and set(np.unique(result.mask)) <= set([0] + ids)
    single = segmenter.session(max_size=SMALL)
    single.step(frames[0], masks[0])
    assert twelve_bytes > single.memory_bytes()  # a second pass has its own memory


def test_object_appearing_later_then_removed(segmenter, bmx):
    frames, masks = bmx
    halves = split_into_pieces(masks[0], 1, 2, [1, 2])
    later = split_into_pieces(masks[4], 1, 2, [1, 2])
    session = segmenter.session(max_size=SMALL)
    assert session.step(frames[0], np.where(halves == 1, 1, 0)).object_ids == [1]
    for frame in frames[1:4]:
        assert 2 not in session.step(frame).mask
    result = session.step(frames[4], later, objects=[2])  # object 2 enters on frame 4 with its own mask
    assert result.object_ids == [1, 2] and np.array_equal(result.mask == 2, later == 2)
    assert (session.step(frames[5]).mask == 2).any()
    session.remove_object(1)
    for frame in frames[6:8]:
        result = session.step(frame)
        assert result.object_ids == [2] and 1 not in result.mask
    with pytest.raises(InputError, match="not tracked"):
        session.remove_object(1)


def test_given_mask_with_unknown_object_and_wrong_size(segmenter, bmx):
    frames, masks = bmx
    session = segmenter.session(max_size=SMALL)
    with pytest.raises(MaskError, match="object 3 has no pixels"):
        session.step(frames[0], masks[0], objects=[3])
    with pytest.raises(MaskError, match="but the frame is 854x480"):
        session.step(frames[0], masks[0][:-1])


def test_sam2_style_verbs_stream_objects_appearing_later(segmenter, dev_dir, bmx):
    _, masks = bmx
    state = segmenter.init_state(dev_dir / "JPEGImages" / "bmx-trees", max_size=SMALL)
    assert state.num_frames == 80
    assert segmenter.add_new_mask(state, 0, 7, masks[0]) == (0, [7])
    assert segmenter.add_new_mask(state, 3, 9, split_into_pieces(masks[3], 1, 2, [1, 2]) == 2) == (3, [7, 9])
    seen = []
    for frame_idx, obj_ids, masks_NHW in segmenter.propagate_in_video(state):
        seen.append((frame_idx, obj_ids))
        assert masks_NHW.shape == (len(obj_ids), 480, 854) and masks_NHW.dtype == bool
        if frame_idx == 4:
            assert segmenter.remove_object(state, 7) == [9]  # mid-propagation: gone from the next frame on
        if frame_idx == 6:
            break
    assert seen == [(0, [7]), (1, [7]), (2, [7]), (3, [7, 9]), (4, [7, 9]), (5, [9]), (6, [9])]

    segmenter.reset_state(state)
    with pytest.raises(InputError, match="call add_new_mask first"):
        next(segmenter.propagate_in_video(state))
    segmenter.add_new_mask(state, 3, 1, masks[3])
    backwards = [(i, ids) for i, ids, _ in segmenter.propagate_in_video(state, reverse=True)]
    assert backwards == [(3, [1]), (2, [1]), (1, [1]), (0, [1])]
    with pytest.raises(MaskError, match="the mask is empty"):
        segmenter.add_new_mask(state, 2, 4, np.zeros_like(masks[0]))
    with pytest.raises(InputError, match="frame 80 does not exist"):
        segmenter.add_new_mask(state, 80, 4, masks[0])
    with pytest.raises(InputError, match="cannot remove object 4: unknown"):
        segmenter.remove_object(state, 4)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_runs_without_dtype_mismatch(dtype, bmx):
    frames, masks = bmx
    with pytest.warns(UserWarning, match="random"):
        segmenter = load_segmenter("mavos-mnv2", device="cpu", dtype=dtype, allow_random_weights=True)
    session = segmenter.session(max_size=SMALL, mem_gap=2)
    for index, frame in enumerate(frames[:5]):  # at gap 2, frames 2 and 4 go through the MCA memory write
        result = session.step(frame, masks[0] if index == 0 else None, return_probs=True)
    assert result.probs.dtype == np.float32 and np.isfinite(result.probs).all()


def test_mem_gap_is_per_session_and_shares_the_model(segmenter, bmx):
    frames, masks = bmx
    sessions = {gap: segmenter.session(max_size=SMALL, mem_gap=gap) for gap in (2, None)}
    for index, frame in enumerate(frames[:4]):
        for session in sessions.values():
            session.step(frame, masks[0] if index == 0 else None)
    for gap, session in sessions.items():
        assert session.model is segmenter.model and segmenter.model.config.mem_gap == 10
        assert session.state.mem_gap == (gap or 10)
    # frames 1..3 after the reference: at gap 2 the long-term memory was updated on frame 2, at gap 10 never
    assert sessions[2].state.passes[0].memory.last_update_step == 2
    assert sessions[None].state.passes[0].memory.last_update_step == 0
    with pytest.raises(InputError, match="model mavos-mnv2: mem_gap must be >= 1 frame, got 0"):
        segmenter.session(mem_gap=0)
