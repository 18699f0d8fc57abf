"""Mask reading/validation/writing: every documented rule of longvos.io.masks, on real DAVIS annotations."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from longvos.io.errors import MaskError
from longvos.io.masks import (
    read_index_mask, read_object_masks, read_probs_npz, write_index_png, write_object_png, write_probs_npz,
)
from longvos.io.palette import DAVIS_PALETTE


@pytest.fixture(scope="module")
def swan_mask(dev_dir) -> np.ndarray:
    return read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png").ids


def test_davis_palette_is_the_one_in_the_dataset(dev_dir):
    with Image.open(dev_dir / "Annotations" / "blackswan" / "00000.png") as image:
        dataset_palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(DAVIS_PALETTE[: len(dataset_palette)], dataset_palette)
    assert tuple(DAVIS_PALETTE[255]) == (224, 224, 192)


def test_real_annotation_reads_as_index_mask(dev_dir, swan_mask):
    mask = read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png", (480, 854))
    assert mask.ids.dtype == np.uint8 and mask.object_ids == [1]
    assert np.array_equal(mask.palette, DAVIS_PALETTE)


def test_palette_png_round_trip_keeps_a_custom_palette(tmp_path, swan_mask):
    palette = DAVIS_PALETTE.copy()
    palette[3] = (10, 200, 30)
    ids = swan_mask * 3
    write_index_png(tmp_path / "m.png", ids, palette)
    back = read_index_mask(tmp_path / "m.png")
    assert np.array_equal(back.ids, ids) and tuple(back.palette[3]) == (10, 200, 30)


def test_void_is_background_in_palette_masks(tmp_path, swan_mask):
    ids = swan_mask.copy()
    ids[:10] = 255
    image = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")  # index = value: 255 is void
    image.putpalette(DAVIS_PALETTE.ravel().tolist())
    image.save(tmp_path / "void.png")
    assert read_index_mask(tmp_path / "void.png").object_ids == [1]


def test_ids_above_255_round_trip_through_16_bit_png(tmp_path, swan_mask):
    ids = swan_mask.astype(np.int32) * 1000
    ids[:20, :20] = 255  # a real id here, not void: 16-bit masks hold ids literally
    write_index_png(tmp_path / "big.png", ids)
    back = read_index_mask(tmp_path / "big.png")
    assert back.ids.dtype == np.int32 and np.array_equal(back.ids, ids) and back.object_ids == [255, 1000]
    with pytest.raises(MaskError, match="does not fit a PNG"):
        write_index_png(tmp_path / "huge.png", ids * 100)


def test_black_and_white_grey_mask_is_object_one(tmp_path, swan_mask):
    Image.fromarray(swan_mask * 255).save(tmp_path / "bw.png")
    assert np.array_equal(read_index_mask(tmp_path / "bw.png").ids, swan_mask)


def test_anti_aliased_grey_mask_is_refused(tmp_path, swan_mask):
    blurred = np.asarray(Image.fromarray(swan_mask * 255).resize((427, 240), Image.BILINEAR))
    Image.fromarray(blurred).save(tmp_path / "aa.png")
    with pytest.raises(MaskError, match="anti-aliased or soft"):
        read_index_mask(tmp_path / "aa.png")


def test_greyscale_photo_is_refused(tmp_path, dev_dir):
    photo = Image.open(dev_dir / "JPEGImages" / "blackswan" / "00000.jpg").convert("L")
    photo.point(lambda v: min(v, 254)).save(tmp_path / "photo.png")
    with pytest.raises(MaskError, match="not an index mask"):
        read_index_mask(tmp_path / "photo.png")


def test_rgb_mask_in_palette_colours_maps_to_ids(tmp_path, swan_mask):
    ids = swan_mask * 2
    ids[:30, :30] = 5
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")
    assert np.array_equal(read_index_mask(tmp_path / "rgb.png").ids, ids)
    Image.fromarray(np.repeat(swan_mask[..., None] * 255, 3, axis=2)).save(tmp_path / "white.png")
    assert np.array_equal(read_index_mask(tmp_path / "white.png").ids, swan_mask)


def test_rgb_mask_with_other_colours_is_refused(tmp_path, swan_mask):
    rgb = np.asarray(Image.fromarray(DAVIS_PALETTE[swan_mask]).resize((427, 240), Image.BILINEAR))
    Image.fromarray(rgb).save(tmp_path / "rgb_aa.png")
    with pytest.raises(MaskError, match="not DAVIS palette colours"):
        read_index_mask(tmp_path / "rgb_aa.png")


def test_transparent_rgba_pixels_are_background(tmp_path, swan_mask):
    rgba = np.concatenate([DAVIS_PALETTE[swan_mask], np.full((*swan_mask.shape, 1), 255, np.uint8)], axis=2)
    rgba[:, :400, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    ids = read_index_mask(tmp_path / "rgba.png").ids
    assert not ids[:, :400].any() and np.array_equal(ids[:, 400:], swan_mask[:, 400:])


def test_wrong_size_and_empty_masks_are_refused(tmp_path, swan_mask):
    write_index_png(tmp_path / "m.png", swan_mask)
    with pytest.raises(MaskError, match=r"m\.png: mask is 854x480 but frame 3 is 427x240"):
        read_index_mask(tmp_path / "m.png", (240, 427), what="frame 3")
    write_index_png(tmp_path / "empty.png", np.zeros_like(swan_mask))
    with pytest.raises(MaskError, match="has no object"):
        read_index_mask(tmp_path / "empty.png")
    assert read_index_mask(tmp_path / "empty.png", allow_empty=True).object_ids == []


def test_unreadable_mask_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(MaskError, match=r"bad\.png: cannot read mask"):
        read_index_mask(tmp_path / "bad.png")


def test_per_object_pngs_round_trip_and_later_objects_win_overlaps(tmp_path, swan_mask):
    second = np.zeros_like(swan_mask)
    second[100:300, 200:500] = 1
    write_object_png(tmp_path / "a.png", swan_mask == 1)
    write_object_png(tmp_path / "b.png", second == 1)
    combined = read_object_masks({7: tmp_path / "a.png", 300: tmp_path / "b.png"})
    assert combined.dtype == np.int32
    assert np.array_equal(combined == 300, second == 1)
    assert np.array_equal(combined == 7, (swan_mask == 1) & (second == 0))


def test_probabilities_npz_round_trip(tmp_path):
    probs = np.random.default_rng(0).random((3, 48, 64), dtype=np.float32)
    write_probs_npz(tmp_path / "p.npz", probs, [4, 9, 1000])
    back, ids = read_probs_npz(tmp_path / "p.npz")
    assert ids == [4, 9, 1000] and back.dtype == np.float32 and np.abs(back - probs).max() < 1e-3


def test_object_255_round_trips_and_void_colours_and_transparency_are_background(tmp_path, swan_mask):
    """Index 255 of a palette PNG is DAVIS's void: object 255 written there came back as background (a resume then
    redrew the overlay without it). It is written at 16 bits; the void colour of an RGB mask is void, as in a
    palette PNG, and a transparent pixel of a grey + alpha mask is background, as in an RGBA one."""
    ids = swan_mask.astype(np.int64) * 255
    ids[:20, :20] = 3
    write_index_png(tmp_path / "ids.png", ids)
    assert np.array_equal(read_index_mask(tmp_path / "ids.png").ids, ids)
    rgb = DAVIS_PALETTE[swan_mask].copy()
    rgb[:10] = DAVIS_PALETTE[255]  # a band of void colour
    Image.fromarray(rgb).save(tmp_path / "void.png")
    expected = swan_mask.copy()
    expected[:10] = 0
    assert np.array_equal(read_index_mask(tmp_path / "void.png").ids, expected)
    grey_alpha = np.stack([np.full(swan_mask.shape, 255, np.uint8), swan_mask.astype(np.uint8) * 255], axis=2)
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(read_index_mask(tmp_path / "la.png").ids, swan_mask)
    top = swan_mask.astype(np.int64) * 65535  # 16 bits hold ids: the largest a PNG can hold round-trips too
    write_index_png(tmp_path / "top.png", top)
    assert np.array_equal(read_index_mask(tmp_path / "top.png").ids, top)
