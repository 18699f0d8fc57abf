"""LiVOS inside the engine contract, on a tiny random-weight configuration (fast): constant memory, objects added
and removed mid-video, float32 state under autocast, and clear errors on bad input."""
from __future__ import annotations

import pytest
import torch

import numpy as np
from PIL import Image

from conftest import DEV
from longvos.engine.segmenter import Segmenter
from longvos.models.base import TrackerState, VOSModel
from longvos.models.livos import LiVOS, LiVOSConfig, LiVOSState

TINY = LiVOSConfig(
    image_encoder="resnet18", key_dim=8, value_dim=16, pixel_dim=16, sensory_dim=16, num_queries=4, num_blocks=1,
    num_heads=2, ff_dim=32, decoder_dims=(8, 8),
)
HEIGHT, WIDTH = 40, 56  # not multiples of 16: padded to 48 x 64, a 3 x 4 grid


@pytest.fixture(scope="module")
def model() -> LiVOS:
    torch.manual_seed(0)
    return LiVOS(TINY).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions gain nothing from threads, and on a shared machine thread sync costs ~10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(count: int, seed: int = 0, size: tuple[int, int] = (HEIGHT, WIDTH)):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield torch.rand(1, 3, *size, generator=generator)


def box_mask(top: int, left: int, size: int = 12) -> torch.Tensor:
    mask = torch.zeros(HEIGHT, WIDTH)
    mask[top:top + size, left:left + size] = 1
    return mask


def run(model: LiVOS, state: LiVOSState, count: int, seed: int = 0, size=(HEIGHT, WIDTH)) -> torch.Tensor:
    prob = None
    with torch.inference_mode():
        for image in frames(count, seed, size):
            prob = model.step(state, image)
    return prob


def start(model: LiVOS, ids=(1, 2)) -> LiVOSState:
    state = model.new_state()
    masks = {object_id: box_mask(4 + 14 * index, 4 + 20 * index) for index, object_id in enumerate(ids)}
    with torch.inference_mode():
        model.step(state, next(frames(1, seed=99)), masks)
    return state


def test_implements_the_engine_contract(model):
    assert isinstance(model, VOSModel)
    state = model.new_state()
    assert isinstance(state, TrackerState)
    assert model.input_size(HEIGHT, WIDTH) == (HEIGHT, WIDTH)  # padding is internal


def test_frames_before_any_object_are_background_and_cost_nothing(model):
    state = model.new_state()
    with torch.inference_mode():
        prob = model.step(state, next(frames(1)))
    assert torch.equal(prob, torch.ones(1, HEIGHT, WIDTH))
    assert state.nbytes() == 0 and state.object_ids == []


def test_first_frame_returns_the_given_masks_as_probabilities(model):
    state = model.new_state()
    masks = {7: box_mask(0, 0), 3: box_mask(20, 30)}
    with torch.inference_mode():
        prob = model.step(state, next(frames(1)), masks)
    assert state.object_ids == [7, 3]
    assert prob.shape == (3, HEIGHT, WIDTH)
    assert torch.equal(prob[1], masks[7]) and torch.equal(prob[2], masks[3])
    assert torch.allclose(prob.sum(0), torch.ones(HEIGHT, WIDTH))


@pytest.mark.slow  # ~12 s alone on 2 cores; several times that on a shared machine
def test_memory_is_the_same_after_50_and_500_frames(model):
    size = (32, 32)  # a 2 x 2 grid keeps 500 frames to seconds
    state = model.new_state()
    with torch.inference_mode():
        model.step(state, next(frames(1, seed=99, size=size)), {1: (torch.rand(size) > 0.5).float()})
    run(model, state, 49, size=size)
    shapes_50 = {name: tuple(t.shape) for name, t in state.tensors().items()}
    bytes_50 = state.nbytes()
    prob = run(model, state, 450, seed=1, size=size)
    assert {name: tuple(t.shape) for name, t in state.tensors().items()} == shapes_50
    assert state.nbytes() == bytes_50
    # Exactly the per-object sizes of the design, in float32: S, key sum, sensory, object memory, last mask.
    assert state.grid_size == (2, 2) and bytes_50 == model_state_bytes(state, objects=1)
    # Nothing else hangs on the state either (no per-frame list or cache).
    assert set(vars(state)) == {f for f in LiVOSState.__dataclass_fields__}
    assert torch.isfinite(prob).all() and torch.allclose(prob.sum(0), torch.ones(size), atol=1e-5)


def test_state_stays_float32_under_bf16_autocast(model):
    state = start(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for image in frames(3):
            prob = model.step(state, image)
        model.step(state, next(frames(1, seed=5)), {9: box_mask(30, 40, 8)})
    assert prob.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in state.tensors().values())


def test_object_added_mid_video_is_normalised_from_its_first_frame(model):
    state = start(model)
    run(model, state, 3)
    image = next(frames(1, seed=7))
    with torch.inference_mode():
        prob = model.step(state, image, {5: box_mask(26, 40, 10)})
        phi_BKhw = model.encode_frame(image).phi_key_BKhw
    assert state.object_ids == [1, 2, 5]
    assert prob.shape == (4, HEIGHT, WIDTH)
    assert torch.equal(prob[3], box_mask(26, 40, 10))
    assert (prob[:3, 26:36, 40:50] == 0).all()  # every other channel is zeroed under the new object
    assert torch.allclose(prob.sum(0), torch.ones(HEIGHT, WIDTH), atol=1e-6)
    # Its key sum holds only the frame it appeared on; the older objects' sums hold all five frames.
    assert torch.equal(state.key_sum_BNKhw[0, 2], phi_BKhw[0])
    assert torch.allclose(state.key_sum_BNKhw[0, 0].sum(), torch.tensor(5.0 * 12), atol=1e-4)


def test_reanchoring_an_existing_object_replaces_its_mask_without_a_new_slot(model):
    state = start(model)
    run(model, state, 2)
    new_mask = box_mask(20, 10, 6)
    with torch.inference_mode():
        prob = model.step(state, next(frames(1, seed=3)), {2: new_mask})
    assert state.object_ids == [1, 2]
    assert torch.equal(prob[2], new_mask)
    assert torch.allclose(state.last_masks_BNhw[0, 1].sum(), new_mask.sum() / 256)


def test_removed_objects_leave_the_state_and_the_output(model):
    state = start(model, ids=(1, 2, 3))
    run(model, state, 2)
    model.remove_objects(state, [2])
    assert state.object_ids == [1, 3]
    assert all(t.shape[1] == 2 for t in state.tensors().values())
    prob = run(model, state, 2)
    assert prob.shape == (3, HEIGHT, WIDTH)
    model.remove_objects(state, [1, 3])
    assert state.nbytes() == 0 and state.object_ids == []
    assert torch.equal(run(model, state, 1), torch.ones(1, HEIGHT, WIDTH))


def test_removal_keeps_the_remaining_objects_memory_unchanged(model):
    state = start(model, ids=(1, 2, 3))
    run(model, state, 2)
    before = {name: t[:, [0, 2]].clone() for name, t in state.tensors().items()}
    model.remove_objects(state, [2])
    for name, tensor in state.tensors().items():
        assert torch.equal(tensor, before[name]), name


def test_removing_an_unknown_object_names_it(model):
    state = start(model)
    with pytest.raises(ValueError, match=r"\[4\].*tracked ids: \[1, 2\]"):
        model.remove_objects(state, [4])


def test_a_frame_size_change_is_refused_clearly(model):
    state = start(model)
    with pytest.raises(ValueError, match="frame size changed mid-video"), torch.inference_mode():
        model.step(state, torch.rand(1, 3, HEIGHT + 32, WIDTH))


def test_bad_mask_shape_names_the_object(model):
    state = model.new_state()
    with pytest.raises(ValueError, match="mask of object 4 has shape"):
        model.step(state, next(frames(1)), {4: torch.ones(HEIGHT, WIDTH + 1)})


def test_bad_image_shape_is_refused(model):
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        model.step(model.new_state(), torch.rand(3, HEIGHT, WIDTH))


def test_a_session_runs_livos_on_a_real_clip_with_objects_joining_and_leaving(model):
    """Through the engine: frames at their own size, user ids, a late object, a removal (tiny random weights,
    so only the bookkeeping is checked, not the masks)."""
    names = sorted(p.stem for p in (DEV / "JPEGImages" / "blackswan").glob("*.jpg"))[:4]
    frames_rgb = [np.array(Image.open(DEV / "JPEGImages" / "blackswan" / f"{n}.jpg")) for n in names]
    first = np.array(Image.open(DEV / "Annotations" / "blackswan" / f"{names[0]}.png")).astype(np.int64) * 7
    late = np.zeros_like(first)
    late[:40, :60] = 3
    with Segmenter(model, device="cpu").session(max_size=72) as session:
        result = session.step(frames_rgb[0], first)
        assert result.object_ids == [7] and result.mask.shape == first.shape
        assert set(np.unique(result.mask)) == {0, 7}
        result = session.step(frames_rgb[1], late)
        assert result.object_ids == [7, 3] and (result.mask[:40, :60] == 3).all()
        session.remove_object(7)
        result = session.step(frames_rgb[2], return_probs=True)
        assert result.object_ids == [3] and result.probs.shape == (1, *first.shape)
        assert set(np.unique(result.mask)) <= {0, 3}
        assert session.memory_bytes() == model_state_bytes(session.state, objects=1)


def model_state_bytes(state: LiVOSState, objects: int) -> int:
    height, width = state.grid_size
    grid = height * width
    per_object = (TINY.key_dim * TINY.value_dim + TINY.key_dim * grid + TINY.sensory_dim * grid
                  + TINY.num_queries * TINY.summary_dim + grid)
    return objects * per_object * 4
