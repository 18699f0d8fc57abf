"""What a user marked on the first frame, object by object, and how it is drawn; the mask comes from the shared
prompt code (:func:`longvos.prompts.prompt_mask`, GrabCut, as behind ``longvos segment --box``).

A :class:`Marks` value is immutable: every edit returns a new one, with the previous one kept for Undo. It is what
a Gradio session keeps between events (small: boxes and clicks, no images). Object ``k`` (from 1) of the list is id
``k`` in the masks, so the ids never shift when an earlier object has no marks yet.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from longvos.io.errors import InputError
from longvos.io.overlay import render_overlay
from longvos.io.palette import DAVIS_PALETTE
from longvos.prompts import MAX_POINTS, Box, ObjectPrompt, Point

BOX, POSITIVE, NEGATIVE = "box", "positive", "negative"  # the tools
MAX_UNDO = 100
#: Objects a user may mark (well below the masks' 254 ids): each is a GrabCut run, on the one image worker all
#: sessions share. A mask file may hold more.
MAX_MARKED_OBJECTS = 32


@dataclass(frozen=True)
class ObjectMarks:
    box: Box | None = None
    points: tuple[Point, ...] = ()

    @property
    def marked(self) -> bool:
        """Whether the marks define an object (a box, or a click on it)."""
        return self.box is not None or any(positive for _, _, positive in self.points)


@dataclass(frozen=True)
class Marks:
    """The marks of one video: objects in id order, the one being marked, a box's first corner while it is drawn.
    ``mask_file``: the first-frame mask is this uploaded PNG (its name in the job's folder, one per upload, so that
    Undo brings back the right one), not these marks (which are then empty)."""

    objects: tuple[ObjectMarks, ...] = (ObjectMarks(),)
    current: int = 0  # index into objects
    corner: tuple[int, int] | None = None
    mask_file: str | None = None
    previous: Marks | None = None  # for Undo

    @property
    def from_file(self) -> bool:
        """Whether the first-frame mask is an uploaded file (:attr:`mask_file`)."""
        return self.mask_file is not None

    # -- edits ----------------------------------------------------------------------------------------------------

    def click(self, x: int, y: int, tool: str) -> Marks:
        """A click at pixel ``(x, y)`` of the first frame with ``tool``: a box's corner (the second corner
        completes the box), or a click on the object (+) or on what is not it (-)."""
        if tool == BOX:
            if self.corner is None:
                return self._edit(corner=(x, y))
            (x0, y0), (x1, y1) = self.corner, (x, y)
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)  # both corners inside: x1, y1 past
            return self.set_box(box)
        if tool not in (POSITIVE, NEGATIVE):
            raise InputError(f"unknown tool {tool!r}")
        points = self.objects[self.current].points
        if len(points) >= MAX_POINTS:
            raise InputError(f"object {self.current + 1}: at most {MAX_POINTS} clicks")
        return self._with_current(replace(self.objects[self.current], points=(*points, (x, y, tool == POSITIVE))))

    def set_box(self, box: Box) -> Marks:
        """The current object's box (replacing its earlier one)."""
        return self._with_current(replace(self.objects[self.current], box=box))

    def new_object(self) -> Marks:
        """Start the next object (the current one stays, unless it has no marks yet: then it is the one to mark)."""
        if not self.objects[self.current].marked:
            return self
        if len(self.objects) >= MAX_MARKED_OBJECTS:
            raise InputError(f"at most {MAX_MARKED_OBJECTS} objects can be marked (a mask file may hold more)")
        return self._edit(objects=(*self.objects, ObjectMarks()), current=len(self.objects))

    def from_mask_file(self, name: str) -> Marks:
        """The first-frame mask is now the uploaded file ``name`` (in the job's folder): the marks are cleared (Undo
        brings them back)."""
        return self._edit(objects=(ObjectMarks(),), current=0, mask_file=name)

    def mask_files(self) -> set[str]:
        """The uploaded mask files this value and the ones Undo can go back to use."""
        names, marks = set(), self
        while marks is not None:
            if marks.mask_file is not None:
                names.add(marks.mask_file)
            marks = marks.previous
        return names

    def undo(self) -> Marks:
        return self.previous if self.previous is not None else self

    def _with_current(self, marks: ObjectMarks) -> Marks:
        objects = (*self.objects[: self.current], marks, *self.objects[self.current + 1:])
        return self._edit(objects=objects, mask_file=None)

    def _edit(self, **changes: object) -> Marks:
        """A new value with ``changes``; a completed mark ends a box being drawn. The undo chain is cut at
        :data:`MAX_UNDO` edits (each link holds only a few boxes and clicks)."""
        changes.setdefault("corner", None)
        return replace(self, **changes, previous=_trimmed(self, MAX_UNDO - 1))

    # -- what the marks mean --------------------------------------------------------------------------------------

    def prompts(self) -> tuple[list[ObjectPrompt], list[int]]:
        """The marked objects as prompts for :func:`~longvos.prompts.prompt_mask`, with their ids (1-based
        positions: an object without marks yet keeps its id free)."""
        marked = [(ObjectPrompt(o.box, o.points), number) for number, o in enumerate(self.objects, 1) if o.marked]
        return [prompt for prompt, _ in marked], [number for _, number in marked]

    def segment_command(self) -> str | None:
        """The ``longvos segment`` command with the same first mask, where every object is a box alone (clicks
        have no command-line form)."""
        objects = list(self.objects)
        while objects and objects[-1] == ObjectMarks():  # a new object not marked yet
            objects.pop()
        if not objects or any(o.box is None or o.points for o in objects):
            return None
        boxes = " ".join(f"--box {','.join(map(str, o.box))}" for o in objects)
        return f"longvos segment video.mp4 {boxes} --out masks/"

    def describe(self) -> str:
        """One line for the page: what is marked and what the next click does."""
        if self.from_file:
            return "The first-frame mask is the uploaded file. Marking the frame replaces it."
        marked = sum(o.marked for o in self.objects)
        parts = [f"{marked} object{'s' if marked != 1 else ''} ready" if marked else "No object marked yet"]
        parts.append(f"marking object {self.current + 1}")
        if self.corner is not None:
            parts.append("click the opposite corner of the box")
        return "; ".join(parts) + "."

    def listing(self) -> str:
        """The objects and their marks, one Markdown list item each (``box x0,y0,x1,y1; clicks +x,y -x,y``)."""
        lines = []
        for number, marks in enumerate(self.objects, 1):
            parts = [f"box {','.join(map(str, marks.box))}"] if marks.box is not None else []
            if marks.points:
                parts.append("clicks " + " ".join(f"{'+' if positive else '-'}{x},{y}"
                                                  for x, y, positive in marks.points))
            being_marked = " (being marked)" if number == self.current + 1 else ""
            lines.append(f"{number}. {'; '.join(parts) or 'no marks yet'}{being_marked}")
        return "\n".join(lines)


def _trimmed(marks: Marks, keep: int) -> Marks:
    """``marks`` with at most ``keep`` earlier values behind it."""
    chain = []
    while marks is not None and len(chain) <= keep:
        chain.append(marks)
        marks = marks.previous
    result = None
    for value in reversed(chain):
        result = replace(value, previous=result)
    return result


def draw_marks(image: np.ndarray, ids: np.ndarray | None, marks: Marks,
               palette: np.ndarray | None = None) -> np.ndarray:
    """The first frame with the current mask over it (as in the overlay video) and the marks on top: each box in
    its object's colour, clicks as dots (white ring: on the object; black: not it), a box's first corner as a
    cross."""
    palette = DAVIS_PALETTE if palette is None else palette
    out = render_overlay(image, ids, palette) if ids is not None else image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 240))
    radius = max(3, 2 * thickness + 1)
    for number, marks_of_object in enumerate(marks.objects, 1):
        colour = tuple(int(c) for c in palette[number % 256])
        if marks_of_object.box is not None:
            x0, y0, x1, y1 = marks_of_object.box
            cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        for x, y, positive in marks_of_object.points:
            cv2.circle(out, (x, y), radius, colour, -1)
            cv2.circle(out, (x, y), radius, (255, 255, 255) if positive else (0, 0, 0), thickness)
    if marks.corner is not None:
        colour = tuple(int(c) for c in palette[(marks.current + 1) % 256])
        cv2.drawMarker(out, marks.corner, colour, cv2.MARKER_CROSS, 4 * radius, thickness)
    return out
