"""The benchmark's input: a real clip held in memory at the benchmark size, played back and forth to any length."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from longvos.engine.frames import shrunk_size
from longvos.eval.dataset import resolve_sequence_names
from longvos.eval.masks import ground_truth_ids
from longvos.io.davis import DavisLayout
from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask
from longvos.io.video import ImageSequenceSource, open_video


@dataclass(frozen=True)
class Clip:
    """Frames (RGB uint8, already at the benchmark size) and the first frame's index mask."""

    name: str
    frames: tuple[np.ndarray, ...]
    first_mask: np.ndarray

    @classmethod
    def shrunk(cls, name: str, frames: Iterable[np.ndarray], first_mask: np.ndarray, size: int | None,
               mask_name: str) -> Clip:
        """Shrink every frame (and the mask) once so the short side is ``size``; smaller clips stay as they are.

        Doing it up front keeps frame resizing and mask upsampling out of the stream (they are not timed anyway),
        so the benchmark's wall time goes to the model.
        """
        if not first_mask.any():
            raise InputError(f"{mask_name}: the clip's first mask has no object")
        height, width = first_mask.shape
        new_hw = shrunk_size(height, width, size)  # the session's own rule, done once here
        new_wh = None if new_hw == (height, width) else new_hw[::-1]
        if new_wh is not None:
            first_mask = cv2.resize(first_mask, new_wh, interpolation=cv2.INTER_NEAREST)
        kept = []
        for index, frame in enumerate(frames):
            if frame.shape[:2] != (height, width):
                raise InputError(f"{mask_name}: mask is {width}x{height} but frame {index} of clip {name} is "
                                 f"{frame.shape[1]}x{frame.shape[0]}")
            kept.append(frame if new_wh is None else cv2.resize(frame, new_wh, interpolation=cv2.INTER_AREA))
        return cls(name, tuple(kept), first_mask)

    @classmethod
    def from_dataset(cls, data_root: str | Path, sequence: str | None = None, size: int | None = None) -> Clip:
        """A DAVIS-layout sequence (default: the first by name) with its first annotation."""
        layout = DavisLayout.at(data_root)
        name = sequence or resolve_sequence_names(layout.annotations_root)[0]
        source = ImageSequenceSource.from_folder(layout.frames_dir(name))
        annotations = layout.annotation_paths(name)
        first = source.frame_name(0)
        if first not in annotations:
            raise InputError(f"{layout.annotations_root / name}: the clip's first frame {first} has no annotation")
        frames = (frame.image for frame in source.frames())
        return cls.shrunk(name, frames, ground_truth_ids(annotations[first]), size, str(annotations[first]))

    @classmethod
    def from_video(cls, video: str | Path, first_mask: str | Path, size: int | None = None) -> Clip:
        """Any video file or frame folder (see :func:`longvos.io.video.open_video`) with its first frame's mask."""
        source = open_video(video)
        mask = read_index_mask(first_mask, source.frame_size, what=f"frame 0 of {video}").ids
        if int(mask.max()) > 255:
            raise InputError(f"{first_mask}: object ids above 255 are not supported by the benchmark")
        with source:
            return cls.shrunk(Path(video).stem, (frame.image for frame in source.frames()), mask.astype(np.uint8),
                              size, str(first_mask))


def ping_pong(num_frames: int, length: int) -> Iterator[int]:
    """Clip indices of a ``length``-frame video made by playing the clip forwards, backwards, forwards..."""
    period = 2 * (num_frames - 1)
    for t in range(length):
        position = t % period if period else 0
        yield position if position < num_frames else period - position
