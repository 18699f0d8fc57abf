"""Engine semantics that need an exact oracle: a fake model that repeats the last mask it was given.

With it, every output is predictable, so these tests pin down geometry (what size the network sees, how results
return to the original size), frame types, user ids, staging and errors. The real model is in test_session_mavos.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RepeatLastMask

from longvos.engine import Segmenter
from longvos.engine.frames import resize_ids_nearest, shrunk_size, to_network_input
from longvos.io.errors import InputError, MaskError
from longvos.io.masks import read_index_mask


@pytest.fixture
def segmenter() -> Segmenter:
    return Segmenter(RepeatLastMask(), device="cpu")


@pytest.fixture(scope="module")
def swan(dev_dir) -> tuple[np.ndarray, np.ndarray]:
    image = np.array(Image.open(dev_dir / "JPEGImages" / "blackswan" / "00000.jpg").convert("RGB"))
    return image, read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png").ids


def test_network_sees_short_side_max_size_then_model_rounding(segmenter, swan):
    image, mask = swan
    session = segmenter.session(max_size=200)
    result = session.step(image, mask)
    assert shrunk_size(480, 854, 200) == (200, 356)
    assert session.state.seen_sizes == [(200, 352)]
    assert result.mask.shape == (480, 854)
    assert np.array_equal(result.mask, mask)  # on the given frame the user's mask wins at full resolution
    small = segmenter.session(max_size=1000)
    small.step(image, mask)
    assert small.state.seen_sizes == [(480, 848)]  # never enlarged


def test_auto_max_size_is_the_models_trained_size_and_zero_is_native(swan):
    image, mask = swan
    model = RepeatLastMask()
    model.default_max_size = 240
    segmenter = Segmenter(model, device="cpu")
    sizes = {}
    for max_size in ("auto", 0, None, 120):
        session = segmenter.session(max_size=max_size)
        session.step(image, mask)
        sizes[max_size] = session.state.seen_sizes[0]
    assert sizes == {"auto": (240, 424), 0: (480, 848), None: (480, 848), 120: (120, 208)}
    assert segmenter.session().max_size == 240  # "auto" is the default
    for bad in (-5, "big", 1.5):
        with pytest.raises(InputError, match=rf"model repeat-last-mask: max_size must be .*{bad!r}"):
            segmenter.session(max_size=bad)


def test_registered_models_declare_their_trained_size():
    from longvos.models.registry import create_model, model_entry

    assert model_entry("mavos-lite").max_size == 320  # trained on small crops; most accurate at 320 (model card)
    assert model_entry("mavos-mnv2").max_size == model_entry("livos-r50").max_size == 480  # official: 480p
    assert create_model("mavos-lite").default_max_size == 320


def test_prediction_returns_to_original_size(segmenter, swan):
    image, mask = swan
    session = segmenter.session(max_size=240)
    session.step(image, mask * 9)
    result = session.step(image, return_probs=True)
    assert result.mask.dtype == np.uint8 and result.object_ids == [9] and result.frame_index == 1
    assert result.probs.shape == (1, 480, 854) and result.probs.dtype == np.float32
    # Bilinear upsampling moves boundaries by at most a pixel or two; the object is where it was.
    agreement = (result.mask == mask * 9).mean()
    assert agreement > 0.995
    assert np.array_equal(result.mask == 9, result.probs[0] > 0.5)


def test_frame_types_give_identical_results(segmenter, swan):
    image, mask = swan
    as_float = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    outputs = []
    for frame in (image, Image.fromarray(image), torch.from_numpy(image), as_float):
        session = segmenter.session(max_size=120)
        session.step(frame, mask)
        outputs.append(session.step(frame, return_probs=True).probs)
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], atol=1e-5)


def test_any_user_ids_and_int32_masks(segmenter, swan):
    image, mask = swan
    ids = mask.astype(np.int64) * 70000
    ids[:40, :40] = 3
    session = segmenter.session(max_size=240)
    first = session.step(image, ids)
    assert first.object_ids == [3, 70000] and first.mask.dtype == np.int32 and np.array_equal(first.mask, ids)
    second = session.step(image, return_probs=True)
    assert set(np.unique(second.mask)) == {0, 3, 70000}
    assert np.array_equal(second.mask == 3, second.probs[0] > 0.5)  # probs follow object_ids order


@pytest.mark.parametrize("ids, expected", [
    ([7, 255], np.uint8),  # every id < 256
    ([3, 256], np.int32),
    ([3, 2 ** 31], np.int64),  # never a type that would wrap an id
])
def test_mask_dtype_is_the_narrowest_for_the_ids_on_the_frame(segmenter, ids, expected):
    """A frame's mask has the narrowest type for the ids it holds: an object whose id needs a wider type and that is
    absent from the frame (covered by another) does not widen it."""
    frame = np.zeros((48, 64, 3), np.uint8)
    given = np.zeros((48, 64), np.int64)
    given[4:20, 4:20], given[24:40, 30:60] = ids
    session = segmenter.session(max_size=None)
    first = session.step(frame, given)
    assert first.mask.dtype == expected and np.array_equal(first.mask, given)
    covered = np.zeros((48, 64), np.int64)
    covered[24:40, 30:60] = ids[0]  # the first object now covers the second, which leaves the frame
    second = session.step(frame, covered, objects=[ids[0]])
    assert session.object_ids == ids and second.mask.dtype == np.uint8 and ids[1] not in second.mask
    assert np.array_equal(second.mask, covered)


def test_objects_argument_selects_from_the_mask(segmenter, swan):
    image, mask = swan
    ids = mask * 2
    ids[:40, :40] = 5
    session = segmenter.session(max_size=120)
    assert session.step(image, ids, objects=[5]).object_ids == [5]
    with pytest.raises(MaskError, match="object 7 has no pixels"):
        session.step(image, ids, objects=[7])
    with pytest.raises(InputError, match="without a mask"):
        session.step(image, objects=[5])


def test_add_objects_stages_for_the_next_frame(segmenter, swan):
    image, mask = swan
    session = segmenter.session(max_size=120)
    session.step(image, mask)
    staged = np.zeros_like(mask)
    staged[200:260, 600:700] = 4
    assert session.add_objects(staged) == [4]
    assert session.object_ids == [1]  # nothing happens before the next frame
    result = session.step(image)
    assert result.object_ids == [1, 4] and np.array_equal(result.mask == 4, staged == 4)
    session.add_objects(staged)
    session.remove_object(4)  # a staged object can be withdrawn before it is used
    assert session.step(image).object_ids == [1]


def test_bad_masks_and_frames_are_clear_errors(segmenter, swan):
    image, mask = swan
    session = segmenter.session(max_size=120)
    with pytest.raises(InputError, match="add_objects needs the frame size"):
        session.add_objects(mask)
    with pytest.raises(MaskError, match="mask is 427x240 but the frame is 854x480"):
        session.step(image, mask[::2, ::2])
    with pytest.raises(MaskError, match="fractional values"):
        session.step(image, mask * 0.5)
    with pytest.raises(MaskError, match="must be positive"):
        session.step(image, mask.astype(np.int64) * -1)
    with pytest.raises(MaskError, match="has no object"):
        session.step(image, np.zeros_like(mask))
    with pytest.raises(InputError, match=r"expected an \(H, W, 3\) RGB array"):
        session.step(image[..., 0])
    session.step(image, mask)
    with pytest.raises(InputError, match="frame 1 is 427x240 but this session's frames are 854x480"):
        session.step(image[::2, ::2])
    with pytest.raises(InputError, match=r"cannot remove object\(s\) \[2\]: not tracked \(tracked: \[1\]\)"):
        session.remove_object(2)


def test_reset_and_memory_bytes(segmenter, swan):
    image, mask = swan
    with segmenter.session(max_size=120) as session:
        session.step(image, mask)
        assert session.memory_bytes() == 1 * 120 * 208 * 4
        session.reset_state()
        assert session.memory_bytes() == 0 and session.object_ids == []
        assert session.step(image).object_ids == []  # a frame with no object is all background


def test_mask_resize_is_exact_nearest_for_any_id():
    ids = torch.randint(0, 50, (97, 173))
    for size in [(48, 86), (121, 217), (33, 300)]:
        reference = torch.nn.functional.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0]
        assert torch.equal(resize_ids_nearest(ids, size), reference.long())
    huge = ids + 2**40  # float interpolation would merge ids this large; indexing keeps them
    assert torch.equal(resize_ids_nearest(huge, (48, 86)) - 2**40, resize_ids_nearest(ids, (48, 86)))


def test_image_resize_matches_opencv_cubic_of_the_official_preprocessing(swan):
    image, _ = swan
    network = to_network_input(torch.from_numpy(image).permute(2, 0, 1), (241, 433), torch.device("cpu"))
    reference = cv2.resize(image.astype(np.float32) / 255, (433, 241), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    np.testing.assert_allclose(network[0].permute(1, 2, 0).numpy(), reference, atol=1e-4)
