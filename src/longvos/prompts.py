"""User prompts on a frame -> a first mask, without a mask: boxes, +/- clicks, GrabCut.

The one home of prompt code, shared by ``longvos segment --box`` (:func:`parse_box`), the engine (the boxes of
``segment_video``) and the web app (:mod:`longvos.app.marks`: the page's boxes and clicks). Each box (or
:class:`ObjectPrompt`) becomes one object (ids 1, 2, ... in order unless given); where objects overlap and GrabCut
claims a pixel for several, the later one wins. GrabCut's colour models start from a random k-means seeding, so the
seed is fixed before every call: the same prompt always gives the same mask (``--resume`` and the web app's preview
rely on that).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from longvos.io.errors import InputError
from longvos.io.masks import VOID

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

Point = tuple[int, int, bool]  # x, y in pixels; True: a click on the object, False: a click on what is not it

MIN_BOX_SIDE = 4
#: Around positive clicks, GrabCut may look for the object within this fraction of the frame's short side.
CLICK_REACH = 0.1
#: Radius of the certain foreground/background disk under each click, as a fraction of the frame's short side.
CLICK_RADIUS = 0.01
GRABCUT_SEED = 0


@dataclass(frozen=True)
class ObjectPrompt:
    """What a user marked for one object on a frame: a box, clicks, or a box refined by clicks."""

    box: Box | None = None
    points: tuple[Point, ...] = ()

    def __post_init__(self) -> None:
        if self.box is None and not any(positive for _, _, positive in self.points):
            raise InputError("an object needs a box or at least one click on it")


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
    return prompt_mask(image, [ObjectPrompt(box=box) for box in boxes], object_ids, iterations)


def prompt_mask(image: np.ndarray, objects: list[ObjectPrompt], object_ids: list[int] | None = None,
                iterations: int = 5) -> np.ndarray:
    """An index mask with one object per prompt, segmented by GrabCut from ``image`` ((H, W, 3) uint8 RGB).

    A box alone is GrabCut's rectangle mode. Clicks pin their pixels to the object (positive) or the background
    (negative); clicks without a box let GrabCut search near the positive ones, and the object is then the
    connected region(s) under them, so a click never yields far-away blobs of similar colour.
    """
    height, width = image.shape[:2]
    object_ids = list(range(1, len(objects) + 1)) if object_ids is None else list(object_ids)
    if len(object_ids) != len(objects):
        raise InputError(f"{len(objects)} prompts but {len(object_ids)} object ids")
    ids = np.zeros((height, width), dtype=np.uint8 if max(object_ids, default=0) < 256 else np.int32)
    bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV works in BGR
    for prompt, object_id in zip(objects, object_ids):
        ids[_object_foreground(bgr, prompt, object_id, iterations)] = object_id
    return ids


def _object_foreground(bgr: np.ndarray, prompt: ObjectPrompt, object_id: int, iterations: int) -> np.ndarray:
    height, width = bgr.shape[:2]
    for x, y, _ in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"click ({x}, {y}) for object {object_id}: outside the {width}x{height} frame")
    rect = None if prompt.box is None else _clip_box(prompt.box, object_id, width, height)
    if rect is not None and not prompt.points:
        labels, mode = np.zeros((height, width), dtype=np.uint8), cv2.GC_INIT_WITH_RECT
    else:
        labels, mode = _click_labels(prompt, rect, height, width), cv2.GC_INIT_WITH_MASK
    background_model, foreground_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(GRABCUT_SEED)
    try:
        cv2.grabCut(bgr, labels, None if rect is None else (rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]),
                    background_model, foreground_model, iterations, mode)
    except cv2.error as err:  # e.g. a box covering the whole frame leaves no background to learn from
        what = f"box {prompt.box}" if prompt.box is not None else "clicks"
        raise InputError(f"{what} for object {object_id}: GrabCut failed; leave some background outside "
                         f"the box (OpenCV: {err.err})") from None
    foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    positives = [(x, y) for x, y, positive in prompt.points if positive]
    if positives and rect is None:
        foreground = _regions_under(foreground, positives)
    if not foreground.any():
        # GrabCut found no contrast: keep the box itself, or the disks under the clicks, rather than no object.
        if rect is not None:
            foreground[rect[1]:rect[3], rect[0]:rect[2]] = True
        else:
            foreground = _click_labels(prompt, None, height, width) == cv2.GC_FGD
    return foreground


def _clip_box(box: Box, object_id: int, width: int, height: int) -> Box:
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        raise InputError(f"box {box} for object {object_id}: smaller than {MIN_BOX_SIDE} px inside the "
                         f"{width}x{height} frame")
    return x0, y0, x1, y1


def _click_labels(prompt: ObjectPrompt, rect: Box | None, height: int, width: int) -> np.ndarray:
    """GrabCut's initial labels: where the object may be (inside the box, or near the positive clicks), and
    certain disks under the clicks."""
    short_side = min(height, width)
    radius = max(2, round(CLICK_RADIUS * short_side))
    if rect is not None:
        labels = np.full((height, width), cv2.GC_BGD, dtype=np.uint8)
        labels[rect[1]:rect[3], rect[0]:rect[2]] = cv2.GC_PR_FGD
    else:
        labels = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
        positives = np.array([(x, y) for x, y, positive in prompt.points if positive], dtype=np.int32)
        reach = max(radius + 1, round(CLICK_REACH * short_side))
        # The hull covers the span between several clicks; thick lines round it out by the reach.
        hull = cv2.convexHull(positives.reshape(-1, 1, 2))
        cv2.fillPoly(labels, [hull], int(cv2.GC_PR_FGD))
        cv2.polylines(labels, [hull], True, int(cv2.GC_PR_FGD), thickness=2 * reach)
    for x, y, positive in prompt.points:
        cv2.circle(labels, (int(x), int(y)), radius, int(cv2.GC_FGD if positive else cv2.GC_BGD), thickness=-1)
    return labels


def _regions_under(foreground: np.ndarray, points: list[tuple[int, int]]) -> np.ndarray:
    """The connected parts of ``foreground`` that contain one of ``points``."""
    _, components = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8)
    keep = {int(components[y, x]) for x, y in points} - {0}
    return np.isin(components, list(keep)) if keep else np.zeros_like(foreground)


# -- limits of the web app's marks -------------------------------------------------------------------------------

MAX_OBJECTS = VOID - 1  # ids 1..254 keep the palette PNG's 255 free, which DAVIS reads as "void"
MAX_POINTS = 1000  # clicks per object
