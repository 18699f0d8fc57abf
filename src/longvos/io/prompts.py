"""Making a first mask without a mask: OpenCV GrabCut inside user boxes.

Shared by ``longvos segment --box`` and the web app. Each box becomes one object (ids 1, 2, ... in order unless
given); where boxes overlap and GrabCut claims a pixel for several objects, the later box wins.
"""
from __future__ import annotations

import cv2
import numpy as np

from longvos.io.errors import InputError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

MIN_BOX_SIDE = 4


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` -> a box (integers, with x0 < x1 and y0 < y1)."""
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise InputError(f"box {text!r}: expected four numbers x0,y0,x1,y1") from None
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {text!r}: needs x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def grabcut_mask(image: np.ndarray, boxes: list[Box], object_ids: list[int] | None = None,
                 iterations: int = 5) -> np.ndarray:
    """An index mask with one object per box, segmented by GrabCut from ``image`` ((H, W, 3) uint8 RGB)."""
    height, width = image.shape[:2]
    object_ids = list(range(1, len(boxes) + 1)) if object_ids is None else list(object_ids)
    if len(object_ids) != len(boxes):
        raise InputError(f"{len(boxes)} boxes but {len(object_ids)} object ids")
    ids = np.zeros((height, width), dtype=np.uint8 if max(object_ids, default=0) < 256 else np.int32)
    bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV works in BGR
    for box, object_id in zip(boxes, object_ids):
        x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)
        if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
            raise InputError(f"box {box} for object {object_id}: smaller than {MIN_BOX_SIDE} px inside the "
                             f"{width}x{height} frame")
        labels = np.zeros((height, width), dtype=np.uint8)
        background_model, foreground_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(bgr, labels, (x0, y0, x1 - x0, y1 - y0), background_model, foreground_model, iterations,
                        cv2.GC_INIT_WITH_RECT)
        except cv2.error as err:  # e.g. a box covering the whole frame leaves no background to learn from
            raise InputError(f"box {box} for object {object_id}: GrabCut failed; leave some background outside "
                             f"the box (OpenCV: {err.err})") from None
        foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        if not foreground.any():
            # GrabCut found no contrast inside the box: keep the box itself rather than an empty object.
            foreground[y0:y1, x0:x1] = True
        ids[foreground] = object_id
    return ids
