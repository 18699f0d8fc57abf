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


def test_overlay_refuses_an_existing_file_it_may_not_replace(tmp_path):
    """A file of the user's at the overlay path, or a link there, stays as it is: one line, nothing written."""
    mine = tmp_path / "mine.mp4"
    mine.write_bytes(b"the user's own video")
    (tmp_path / "link.mp4").symlink_to(mine)
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    for path in (mine, tmp_path / "link.mp4", tmp_path / "dangling.mp4"):
        with pytest.raises(InputError, match="already exists: give another path") as caught:
            OverlayWriter(path, fps=24, replaceable=[tmp_path / "other.mp4"])
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert mine.read_bytes() == b"the user's own video" and (tmp_path / "dangling.mp4").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.mp4", "link.mp4", "mine.mp4"]


def test_overlay_never_replaces_an_input_even_one_named_replaceable(tmp_path):
    """The run's video or mask, however its path is spelled (another spelling, a link to it), is never written
    over, even where the caller names it replaceable (an overlay an earlier run wrote, used as this run's video)."""
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(b"the input video")
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.mp4").symlink_to(victim)
    for path in (victim, tmp_path / "sub" / ".." / "victim.mp4", tmp_path / "alias.mp4"):
        with pytest.raises(InputError, match="an input of this run") as caught:
            OverlayWriter(path, fps=24, inputs=[tmp_path / "frames", victim], replaceable=[victim])
        assert "\n" not in str(caught.value)
    assert victim.read_bytes() == b"the input video"


def test_overlay_replaces_the_file_named_replaceable(tmp_path, swan):
    image, mask = swan
    earlier = tmp_path / "overlay.mp4"
    earlier.write_bytes(b"an overlay an earlier run wrote")
    writer = OverlayWriter(tmp_path / "." / "overlay.mp4", fps=24, replaceable=[earlier.resolve()])
    for _ in range(3):
        writer.write(image, mask)
    writer.close()
    assert len(open_video(earlier)) == 3


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
