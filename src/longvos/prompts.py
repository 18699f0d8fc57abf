"""User prompts on a frame -> a first mask, without a mask: boxes, +/- clicks, GrabCut.

The one home of prompt code, shared by ``longvos segment --box`` (:func:`parse_box`), the engine (the boxes of
``segment_video``) and the web app (:mod:`longvos.app.marks`: the page's boxes and clicks). Each box (or
:class:`ObjectPrompt`) becomes one object (ids 1, 2, ... in order unless given); where objects overlap and GrabCut
claims a pixel for several, the later one wins. GrabCut's colour models start from a random k-means seeding, so the
seed is fixed before every call: the same prompt always gives the same mask (``--resume`` and the web app's preview
rely on that). GrabCut runs on a copy of the frame scaled down to at most :data:`GRABCUT_MAX_PIXELS` (its cost grows
with the pixels; a frame that small is not scaled), and its result is scaled back up; the certain pixels (outside a
box, the disks under clicks) are kept exact at full size. Each object is segmented on its own
(:func:`object_foreground`), so a caller can keep the results of the objects that did not change
(:func:`compose_mask` puts them together).
"""
from __future__ import annotations

import math
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
#: GrabCut runs on a copy of the frame with at most this many pixels (about 1 MP; larger frames are scaled down).
GRABCUT_MAX_PIXELS = 1 << 20


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
    except (ValueError, OverflowError):  # OverflowError: "1e400" is infinite
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
    object_ids = list(range(1, len(objects) + 1)) if object_ids is None else list(object_ids)
    if len(object_ids) != len(objects):
        raise InputError(f"{len(objects)} prompts but {len(object_ids)} object ids")
    small = scaled_for_grabcut(image)
    foregrounds = [object_foreground(image, prompt, object_id, iterations, small=small)
                   for prompt, object_id in zip(objects, object_ids)]
    return compose_mask(image.shape[:2], foregrounds, object_ids)


def compose_mask(shape: tuple[int, int], foregrounds: list[np.ndarray], object_ids: list[int]) -> np.ndarray:
    """An index mask of ``shape`` from each object's foreground (:func:`object_foreground`), in order: where
    objects overlap, the later one wins."""
    ids = np.zeros(shape, dtype=np.uint8 if max(object_ids, default=0) < 256 else np.int32)
    for foreground, object_id in zip(foregrounds, object_ids):
        ids[foreground] = object_id
    return ids


def grabcut_scale(height: int, width: int, max_pixels: int = GRABCUT_MAX_PIXELS) -> float:
    """The factor GrabCut's copy of a ``height`` x ``width`` frame is scaled by: 1 up to ``max_pixels``."""
    pixels = height * width
    return 1.0 if pixels <= max_pixels else (max_pixels / pixels) ** 0.5


def scaled_for_grabcut(image: np.ndarray, max_pixels: int = GRABCUT_MAX_PIXELS) -> np.ndarray:
    """The BGR copy of ``image`` (RGB) that GrabCut works on: at most ``max_pixels`` (:func:`grabcut_scale`)."""
    height, width = image.shape[:2]
    scale = grabcut_scale(height, width, max_pixels)
    bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV works in BGR
    if scale == 1.0:
        return bgr
    size = (max(1, int(width * scale)), max(1, int(height * scale)))  # floor: at most max_pixels
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def object_foreground(image: np.ndarray, prompt: ObjectPrompt, object_id: int = 1, iterations: int = 5, *,
                      small: np.ndarray | None = None) -> np.ndarray:
    """Where the object of ``prompt`` is in ``image`` ((H, W, 3) uint8 RGB), as a boolean (H, W) array, by GrabCut
    on ``small`` (:func:`scaled_for_grabcut` of ``image``; made here where not given); ``object_id`` names the
    object in errors. Prompts are in ``image``'s pixels."""
    height, width = image.shape[:2]
    for x, y, _ in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"click ({x}, {y}) for object {object_id}: outside the {width}x{height} frame")
    rect = None if prompt.box is None else _clip_box(prompt.box, object_id, width, height)
    what = f"{f'box {prompt.box}' if prompt.box is not None else 'clicks'} for object {object_id}"  # in errors
    small = scaled_for_grabcut(image) if small is None else small
    if small.shape[:2] == (height, width):
        return _object_foreground(small, prompt, rect, what, iterations)
    # GrabCut on the smaller copy, in its pixels; scaled back up, then the certain pixels made exact.
    small_height, small_width = small.shape[:2]
    sx, sy = small_width / width, small_height / height
    points = tuple((min(int(x * sx), small_width - 1), min(int(y * sy), small_height - 1), positive)
                   for x, y, positive in prompt.points)
    small_rect = None if rect is None else _scaled_box(rect, sx, sy, small_width, small_height)
    small_prompt = ObjectPrompt(box=small_rect, points=points)
    found = _object_foreground(small, small_prompt, small_rect, what, iterations)
    foreground = cv2.resize(found.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128
    if rect is not None:  # outside the box is certain background (but for the disks under clicks, below)
        inside = np.zeros_like(foreground)
        inside[rect[1]:rect[3], rect[0]:rect[2]] = True
        foreground &= inside
    if prompt.points:  # the disks under the clicks are certain, as GrabCut saw them: at full size
        certain = _click_disks(prompt, height, width)
        foreground[certain == cv2.GC_FGD] = True
        foreground[certain == cv2.GC_BGD] = False
    if rect is not None and not foreground.any():  # nothing left at full size (a speck in a small box): the box
        foreground[rect[1]:rect[3], rect[0]:rect[2]] = True
    return foreground


def _scaled_box(rect: Box, sx: float, sy: float, width: int, height: int) -> Box:
    """``rect`` in a copy scaled by ``sx``, ``sy`` (``width`` x ``height``): covering it, and at least
    :data:`MIN_BOX_SIDE` on each side (GrabCut needs some pixels to learn the object from)."""
    x0, y0 = int(rect[0] * sx), int(rect[1] * sy)
    x1, y1 = max(x0 + 1, math.ceil(rect[2] * sx)), max(y0 + 1, math.ceil(rect[3] * sy))

    def widened(start: int, end: int, size: int) -> tuple[int, int]:
        missing = MIN_BOX_SIDE - (end - start)
        if missing > 0:
            start = max(0, start - (missing + 1) // 2)
            end = min(size, start + MIN_BOX_SIDE)
            start = max(0, end - MIN_BOX_SIDE)
        return start, end

    (x0, x1), (y0, y1) = widened(x0, x1, width), widened(y0, y1, height)
    return x0, y0, x1, y1


def _object_foreground(bgr: np.ndarray, prompt: ObjectPrompt, rect: Box | None, what: str,
                       iterations: int) -> np.ndarray:
    """GrabCut on ``bgr`` for ``prompt`` (in its pixels; ``rect``: its box, checked and clipped; ``what``: the
    prompt, as errors name it)."""
    height, width = bgr.shape[:2]
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
        raise InputError(f"{what}: GrabCut failed; leave some background outside "
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
    radius = _click_radius(height, width)
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
    _draw_click_disks(labels, prompt, radius)
    return labels


def _click_radius(height: int, width: int) -> int:
    return max(2, round(CLICK_RADIUS * min(height, width)))


def _draw_click_disks(labels: np.ndarray, prompt: ObjectPrompt, radius: int) -> None:
    for x, y, positive in prompt.points:
        cv2.circle(labels, (int(x), int(y)), radius, int(cv2.GC_FGD if positive else cv2.GC_BGD), thickness=-1)


def _click_disks(prompt: ObjectPrompt, height: int, width: int) -> np.ndarray:
    """The disks under the clicks (``GC_FGD``: on the object, ``GC_BGD``: not it; elsewhere ``GC_PR_BGD``), drawn
    as :func:`_click_labels` draws them for a frame of this size."""
    labels = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
    _draw_click_disks(labels, prompt, _click_radius(height, width))
    return labels


def _regions_under(foreground: np.ndarray, points: list[tuple[int, int]]) -> np.ndarray:
    """The connected parts of ``foreground`` that contain one of ``points``."""
    _, components = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8)
    keep = {int(components[y, x]) for x, y in points} - {0}
    return np.isin(components, list(keep)) if keep else np.zeros_like(foreground)


# -- limits of the web app's marks -------------------------------------------------------------------------------

MAX_OBJECTS = VOID - 1  # ids 1..254 keep the palette PNG's 255 free, which DAVIS reads as "void"
MAX_POINTS = 1000  # clicks per object
