"""The page's object marks (boxes and clicks, in video pixels) -> prompts for the shared GrabCut prompt code.

The page sends ``{"objects": [{"box": [x0, y0, x1, y1] or null, "points": [[x, y, 1 or 0], ...]}, ...]}``: object
``i`` (from 1) is the ``i``-th entry, a point's third value is 1 for a click on the object and 0 for a click on what
is not it. The mask then comes from :func:`longvos.io.prompts.prompt_mask`, the code behind ``segment --box``.
"""
from __future__ import annotations

from numbers import Real
from typing import Any

from longvos.io.errors import InputError
from longvos.io.prompts import ObjectPrompt, Point

MAX_OBJECTS = 254  # ids 1..254 keep the palette PNG's 255 free, which DAVIS reads as "void"


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
            raise InputError(f"object {number}: box must be four numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"object {number}: box {box} needs x0 < x1 and y0 < y1")
        box = (x0, y0, x1, y1)
    points = entry.get("points") or []
    if not isinstance(points, list):
        raise InputError(f"object {number}: points must be a list of [x, y, 1 or 0]")
    clicks: list[Point] = []
    for point in points:
        if not (isinstance(point, list) and len(point) == 3 and all(_is_number(v) for v in point)
                and point[2] in (0, 1)):
            raise InputError(f"object {number}: point {point!r} must be [x, y, 1 or 0]")
        clicks.append((int(round(point[0])), int(round(point[1])), bool(point[2])))
    try:
        return ObjectPrompt(box, tuple(clicks))
    except InputError as err:
        raise InputError(f"object {number}: {err}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)
