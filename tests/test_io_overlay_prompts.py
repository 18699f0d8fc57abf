"""Overlay videos and GrabCut box prompts on real footage."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask
from longvos.io.overlay import OverlayWriter, render_overlay
from longvos.io.palette import DAVIS_PALETTE
from longvos.prompts import grabcut_mask, parse_box
from longvos.io.video import open_video


@pytest.fixture(scope="module")
def swan(dev_dir) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 of blackswan and its mask at 427x240 (odd width on purpose)."""
    image = Image.open(dev_dir / "JPEGImages" / "blackswan" / "00000.jpg").convert("RGB").resize((427, 240))
    mask = read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png").ids
    return np.asarray(image), np.asarray(Image.fromarray(mask).resize((427, 240), Image.NEAREST))


def test_render_overlay_tints_objects_only(swan):
    image, mask = swan
    out = render_overlay(image, mask * 3)
    assert np.array_equal(out[mask == 0], image[mask == 0])
    inside = (mask == 1) & np.roll(mask == 1, 1, 0) & np.roll(mask == 1, -1, 0) & np.roll(mask == 1, -1, 1)
    expected = np.round(0.5 * image[inside] + 0.5 * DAVIS_PALETTE[3]).astype(np.uint8)
    assert np.abs(out[inside].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_overlay_video_streams_odd_sized_frames(tmp_path, swan, suffix):
    image, mask = swan
    writer = OverlayWriter(tmp_path / f"o{suffix}", fps=24)
    for _ in range(5):
        writer.write(image, mask)
    writer.close()
    video = open_video(tmp_path / f"o{suffix}")
    assert len(video) == 5 and video.frame_size == (240, 428)  # padded to even for 4:2:0


def test_overlay_refuses_unknown_container(tmp_path):
    with pytest.raises(InputError, match="overlay must be one of"):
        OverlayWriter(tmp_path / "o.gif", fps=24)


def test_grabcut_box_finds_the_swan(swan):
    image, mask = swan
    ys, xs = np.nonzero(mask)
    box = (xs.min() - 5, ys.min() - 5, xs.max() + 6, ys.max() + 6)
    second = (5, 5, 60, 60)
    ids = grabcut_mask(image, [box, second], object_ids=[4, 9])
    swan_iou = ((ids == 4) & (mask == 1)).sum() / ((ids == 4) | (mask == 1)).sum()
    assert swan_iou > 0.4  # GrabCut is no VOS model, but it must land on the swan
    assert (ids == 9).any() and not (ids == 9)[100:].any()  # the second box stays inside its box


@pytest.mark.parametrize("text, message", [("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"),
                                           ("10,10,5,20", "x0 < x1")])
def test_bad_box_text(text, message):
    with pytest.raises(InputError, match=message):
        parse_box(text)


def test_box_outside_or_covering_the_frame(swan):
    image, _ = swan
    with pytest.raises(InputError, match="smaller than"):
        grabcut_mask(image, [(500, 300, 600, 400)])
    with pytest.raises(InputError, match="leave some background"):
        grabcut_mask(image, [(0, 0, 427, 240)])
    assert parse_box("1.4,2,30,40.6") == (1, 2, 30, 41)
