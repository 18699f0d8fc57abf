"""The masks that start a ``segment_video`` run: files or arrays keyed by frame, or GrabCut boxes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longvos.engine.objects import to_index_map
from longvos.io.errors import InputError, MaskError
from longvos.io.masks import MAX_PNG_ID, IndexMask, read_index_mask
from longvos.io.video import FrameSource
from longvos.prompts import Box, grabcut_mask

MaskInput = str | Path | np.ndarray | IndexMask  # a PNG, an index map, or an index map with its palette


@dataclass
class PromptMask:
    """One frame's starting mask: its index map, the palette its file had, and where it came from."""

    ids: np.ndarray
    palette: np.ndarray | None
    origin: str  # a path, "array:<digest>" or "boxes:<...>": what identifies the run for --resume


def load_prompts(source: FrameSource, masks: MaskInput | dict[int | None, MaskInput] | None,
                 boxes: list[Box] | None, frame_range: tuple[int, int], first_frame: int) -> dict[int, PromptMask]:
    """Read and validate every starting mask before any model runs, so bad input fails fast.

    A single mask (not a dict), or the dict key ``None``, is for ``first_frame``, the first frame processed.
    ``boxes`` make the first frame's mask with GrabCut (one object per box) and cannot be combined with a mask for
    that frame.
    """
    if masks is None:
        masks = {}
    elif not isinstance(masks, dict):
        masks = {first_frame: masks}
    elif None in masks:
        if first_frame in masks:
            raise InputError(f"two masks for frame {first_frame}, the first frame processed")
        masks = {first_frame if key is None else key: value for key, value in masks.items()}
    start, stop = frame_range
    prompts: dict[int, PromptMask] = {}
    for frame_index, mask in masks.items():
        if not isinstance(frame_index, (int, np.integer)) or not start <= frame_index < stop:
            raise InputError(f"mask {_describe(mask)} is for frame {frame_index}, outside the frames processed "
                             f"[{start}, {stop})")
        what = f"frame {frame_index} of {source.description}"
        if isinstance(mask, (str, Path)):
            read = read_index_mask(mask, source.frame_size, what=what)
            prompts[int(frame_index)] = PromptMask(read.ids, read.palette, str(Path(mask).resolve()))
        else:
            palette = mask.palette if isinstance(mask, IndexMask) else None
            ids = to_index_map(mask.ids if isinstance(mask, IndexMask) else mask, source.frame_size,
                               f"mask for {what}")
            if not ids.any():
                raise InputError(f"mask for {what} has no object (all background)")
            digest = hashlib.sha1(np.ascontiguousarray(ids).tobytes()).hexdigest()[:16]
            prompts[int(frame_index)] = PromptMask(ids, palette, f"array:{digest}")
        _check_output_ids(prompts[int(frame_index)].ids, f"mask {_describe(mask)} for {what}")
    if boxes:
        if first_frame in prompts:
            raise InputError(f"frame {first_frame} has both a mask and boxes; give one or the other")
        image = source.read(first_frame).image
        prompts[first_frame] = PromptMask(grabcut_mask(image, boxes), None, f"boxes:{boxes}")
    if not prompts:
        raise InputError("nothing to segment: give a mask (--mask) or boxes (--box) for the first frame")
    return prompts


def _check_output_ids(ids: np.ndarray, what: str) -> None:
    """Refuse, before any model loads, object ids the output PNGs cannot hold (they would fail at the first write;
    a session, ``Segmenter.session``, takes ids up to 2^63-1)."""
    top = int(ids.max()) if ids.size else 0
    if top > MAX_PNG_ID:
        raise MaskError(f"{what}: object id {top} cannot be written as a mask PNG (segment_video's outputs hold ids "
                        f"1..{MAX_PNG_ID}; renumber the objects, or use a session, which takes any id)")


def _describe(mask: MaskInput) -> str:
    if isinstance(mask, IndexMask):
        mask = mask.ids
    return str(mask) if isinstance(mask, (str, Path)) else f"array {getattr(mask, 'shape', '')}"
