"""Reading index masks for scoring: exactly the pixel values the official evaluator sees, or a clear error.

A mask PNG holds one object id per pixel (0 = background, 255 = void in ground truth). The official code takes
``np.array(Image.open(path))`` as is; we do the same for single-channel images and refuse anything else (RGB
renderings of masks, 16-bit images) with a message naming the file, rather than scoring garbage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from longvos.io.errors import MaskError
from longvos.io.masks import VOID

_INDEX_MODES = ("P", "L", "1")
#: Up to this largest id, probing each id is faster than a histogram of all 256 values.
_FEW_IDS = 16


def read_raw_ids(path: Path, role: str = "mask") -> np.ndarray:
    """``(H, W)`` uint8 object ids of a palette, grayscale or 1-bit PNG, void (255) kept, exactly as the official
    evaluator reads them (unlike :func:`longvos.io.masks.read_index_mask`, which validates user masks and reads void
    as background). ``role`` names the file in errors."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _INDEX_MODES:
                raise MaskError(f"{path}: {role} must be a single-channel index PNG (palette or grayscale, one "
                                f"object id per pixel), but its mode is {mode}")
            ids_HW = np.array(image)
    except FileNotFoundError:
        raise MaskError(f"{path}: {role} file is missing") from None
    except OSError as err:  # truncated or not an image at all
        raise MaskError(f"{path}: cannot read {role}: {err}") from None
    return ids_HW.astype(np.uint8, copy=False)


#: The name this function had; ``tests/test_eval_golden.py`` (frozen) still imports it.
read_index_mask = read_raw_ids


def ground_truth_ids(path: Path) -> np.ndarray:
    """Ground-truth ids with void turned into background, as the semi-supervised protocol prescribes."""
    ids_HW = read_raw_ids(path, "ground truth")
    ids_HW[ids_HW == VOID] = 0  # void counts as background in the semi-supervised task
    return ids_HW


def present_ids(ids_HW: np.ndarray) -> tuple[int, ...]:
    """Sorted non-zero ids that occur in an index mask."""
    largest = int(ids_HW.max()) if ids_HW.size else 0
    if largest <= _FEW_IDS:  # the usual case: a handful of objects; one comparison per id beats a histogram
        return tuple(i for i in range(1, largest + 1) if (ids_HW == i).any())
    counts = np.bincount(ids_HW.ravel(), minlength=largest + 1)
    return tuple(int(i) for i in np.flatnonzero(counts[1:]) + 1)
