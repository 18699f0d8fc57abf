"""The page's object marks (boxes and clicks, in video pixels) -> prompts for the shared GrabCut prompt code.

The page sends ``{"objects": [{"box": [x0, y0, x1, y1] or null, "points": [[x, y, 1 or 0], ...]}, ...]}``: object
``i`` (from 1) is the ``i``-th entry, a point's third value is 1 for a click on the object and 0 for a click on what
is not it. The mask then comes from :func:`longvos.io.prompts.prompt_mask`, the code behind ``segment --box``.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

from longvos.io.errors import InputError
from longvos.io.prompts import ObjectPrompt, Point

MAX_OBJECTS = 254  # ids 1..254 keep the palette PNG's 255 free, which DAVIS reads as "void"
MAX_POINTS = 1000  # clicks per object
MAX_COORDINATE = 1e6  # pixels: far outside any frame, yet every coordinate stays a small int


def objects_from_json(payload: Any) -> list[ObjectPrompt]:
    """Validate the page's request body; every error names the object (1-based) and the field."""
    objects = payload.get("objects") if isinstance(payload, dict) else None
    if not isinstance(objects, list):
        raise InputError('expected {"objects": [...]} with one entry per object')
    if len(objects) > MAX_OBJECTS:
        raise InputError(f"{len(objects)} objects: at most {MAX_OBJECTS}")
    return [_object(entry, number) for number, entry in enumerate(objects, 1)]


def _object(entry: Any, number: int) -> ObjectPrompt:
    if not isinstance(entry, dict):
        raise InputError(f"object {number}: expected an object with 'box' and/or 'points'")
    box = entry.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise InputError(f"object {number}: box must be four numbers [x0, y0, x1, y1] (finite, "
                             f"in pixels)")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"object {number}: box {box} needs x0 < x1 and y0 < y1")
        box = (x0, y0, x1, y1)
    points = entry.get("points") or []
    if not isinstance(points, list):
        raise InputError(f"object {number}: points must be a list of [x, y, 1 or 0]")
    if len(points) > MAX_POINTS:
        raise InputError(f"object {number}: {len(points)} points: at most {MAX_POINTS}")
    clicks: list[Point] = []
    for point in points:
        if not (isinstance(point, list) and len(point) == 3 and all(_is_number(v) for v in point)
                and point[2] in (0, 1)):
            raise InputError(f"object {number}: point {_short(point)} must be [x, y, 1 or 0] "
                             f"(finite, in pixels)")
        clicks.append((int(round(point[0])), int(round(point[1])), bool(point[2])))
    try:
        return ObjectPrompt(box, tuple(clicks))
    except InputError as err:
        raise InputError(f"object {number}: {err}") from None


def _is_number(value: Any) -> bool:
    """A finite coordinate (JSON allows 1e400, which Python reads as infinity, and Python's parser NaN)."""
    # abs() first: math.isfinite(10**400) would raise; NaN fails the comparison
    return isinstance(value, Real) and not isinstance(value, bool) and abs(value) <= MAX_COORDINATE \
        and math.isfinite(value)


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, (list, dict)) and (len(value) > 8 or any(isinstance(v, (list, dict)) for v in value)):
        return f"{type(value).__name__} of {len(value)} values"  # repr of deep nesting could recurse too far
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
