"""One temporal order for frame files, whoever lists them: the frame reader, the DAVIS layout (frames and masks)
and so the batch manifest, which pairs a sequence's first mask with the reader's frame of that index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from longvos.batch.manifest import read_manifest
from longvos.io.davis import DavisLayout
from longvos.io.video import open_video

#: Frame names with dots: sorting whole file names puts "1.5.jpg" before "1.jpg" ("." before ".jpg").
DOTTED = ["1", "1.5", "2", "2.5", "3"]


def dotted_davis(root: Path, masks: list[str]) -> Path:
    """A DAVIS-layout root with one sequence of frames named :data:`DOTTED` and masks for ``masks``."""
    frames, annotations = root / "JPEGImages" / "seq", root / "Annotations" / "seq"
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in reversed(DOTTED):  # created out of order: the listing order must not matter
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(frames / f"{name}.jpg")
    for name in masks:
        ids = np.zeros((16, 24), np.uint8)
        ids[4:12, 6:18] = 1
        Image.fromarray(ids, mode="L").save(annotations / f"{name}.png")
    return root


def test_dotted_frame_names_are_read_in_numeric_order_by_folder_and_glob(tmp_path):
    frames = dotted_davis(tmp_path, []) / "JPEGImages" / "seq"
    assert [frame.name for frame in open_video(frames)] == DOTTED
    assert [frame.name for frame in open_video(str(frames / "*.jpg"))] == DOTTED


def test_the_davis_layout_orders_frames_and_masks_as_the_reader_does(tmp_path):
    layout = DavisLayout.of(dotted_davis(tmp_path, ["2", "1.5", "1"]))
    reader = open_video(layout.frames_dir("seq"))
    assert layout.frame_names("seq") == [reader.frame_name(i) for i in range(len(reader))] == DOTTED
    assert [mask.stem for mask in layout.annotations("seq")] == ["1", "1.5", "2"]


def test_a_davis_batch_gives_the_first_mask_to_the_frame_of_its_name(tmp_path):
    """Mask 1.png, not 1.5.png, is the first annotation, and the item's frame index is frame 1's in the reader."""
    (item,) = read_manifest(dotted_davis(tmp_path, ["1.5", "1"]))
    assert Path(item.mask).stem == "1"
    assert open_video(item.video).frame_name(item.frame) == "1"
