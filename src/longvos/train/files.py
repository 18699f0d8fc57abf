"""Reading training images and label maps, with errors that name the file; and the held-out-data guard."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from longvos.io.errors import InputError

#: Folder names that hold evaluation data. Training must never read below one of them: scores on them would lie.
HELD_OUT_FOLDERS = ("dev",)


class TrainingDataError(InputError):
    """Training data that cannot be used (missing, unreadable, held out); the message names the file or folder."""


def check_not_held_out(path: Path) -> Path:
    """Refuse a training path inside a held-out folder (``.../data/dev/...``): dev exists to measure, not to fit."""
    resolved = Path(path).resolve()
    for part in resolved.parts:
        if part in HELD_OUT_FOLDERS:
            raise TrainingDataError(f"refusing to train on {path}: it lies in the held-out folder {part!r}")
    return resolved


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    check_not_held_out(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TrainingDataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """HxW uint8 index map from a palette (``P``) or grayscale (``L``) PNG: 0 background, k object k, 255 void."""
    check_not_held_out(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise TrainingDataError(f"mask {path} has mode {image.mode}; expected an index PNG (mode P or L)")
            label = np.array(image, dtype=np.uint8)
    except OSError as err:
        raise TrainingDataError(f"cannot read mask {path}: {err}") from None
    if expected_hw is not None and label.shape != tuple(expected_hw):
        raise TrainingDataError(f"mask {path} is {label.shape[1]}x{label.shape[0]} but its image is "
                                f"{expected_hw[1]}x{expected_hw[0]}")
    return label
