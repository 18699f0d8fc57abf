"""Far parts: pieces of an object's predicted mask that appear away from where the object was on the frame before.

A tracker that has learnt what its object looks like more than which one it is marks look-alikes: the other red car
that drives into car-shadow, the second dog of dogs-jump. Such a false part shows up as a separate connected piece
of the object's mask, away from the object's mask on the previous frame, while a real part of the object (a limb
cut off by an occluder, the kite of a kite-surfer) either touches or overlaps where the object was, or has been
there since it was given. :func:`far_parts` finds the pieces of a frame's masks that lie farther than
``max_part_distance`` object sizes (the square root of the object's area on the previous frame) from the object's
previous mask; the session gives their pixels to the background. An object none of whose pieces is near its previous
mask (it jumped, or came back after an occlusion) keeps them all, and so does an object without a previous mask: the
rule removes extra pieces, never the whole object.

On the validation split of ``mavos-lite`` (docs/model-card.md, "Far parts") this took the DAVIS-2016 part from
0.753 to 0.756 and dogs-jump from 0.388 to 0.44; it is off for the official models, whose published numbers have
no such step (``--max-part-distance`` turns it on or off for any model).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Literal

import cv2
import numpy as np

#: ``"auto"``: the model's own (:attr:`~longvos.models.base.VOSModel.default_max_part_distance`); ``None``: off.
PartDistance = float | Literal["auto"] | None

#: Pieces within this many pixels (network resolution) of the previous mask are always near: a small object's
#: size-relative distance would otherwise be below the jitter of its boundary.
MIN_NEAR_PIXELS = 2.0


def check_part_distance(value: PartDistance) -> PartDistance:
    """``"auto"``, ``None`` (off; the string ``"none"`` too, as on the command line) or a positive finite number of
    object sizes, as a float; anything else (a bool, a string, a list, 0, nan) is a ``ValueError`` naming it."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
        return None if value.strip().lower() == "none" else "auto"
    if value is None:
        return None
    if isinstance(value, Real) and not isinstance(value, bool):
        try:
            distance = float(value)
        except OverflowError:
            distance = math.inf
        if math.isfinite(distance) and distance > 0:
            return distance
    raise ValueError(f"max_part_distance must be a positive number of object sizes, 'auto' or None (off), "
                     f"got {value!r}")


def resolve_part_distance(value: PartDistance, model_default: float | None) -> float | None:
    """The distance a session uses: :func:`check_part_distance`, with ``"auto"`` replaced by ``model_default``."""
    value = check_part_distance(value)
    return check_part_distance(model_default) if value == "auto" else value


def far_parts(labels_HW: np.ndarray, previous_ids_HW: np.ndarray, channel_ids: list[int],
              max_part_distance: float) -> np.ndarray:
    """``(H, W)`` bool: the pixels of each object's far parts.

    ``labels_HW`` holds each pixel's winning channel (0 background, ``c`` the object ``channel_ids[c - 1]``);
    ``previous_ids_HW`` the previous frame's mask as object ids, at the same size. A part is a connected piece
    (8-connectivity) of one object's pixels; it is far when no pixel of it lies within ``max_part_distance`` times
    the square root of the object's previous area (and at least :data:`MIN_NEAR_PIXELS`) of that object's previous
    mask, and some other part of the object is near.
    """
    far_HW = np.zeros(labels_HW.shape, dtype=bool)
    for channel, object_id in enumerate(channel_ids, start=1):
        previous_HW = previous_ids_HW == object_id
        previous_area = int(np.count_nonzero(previous_HW))
        if previous_area == 0:
            continue
        current_HW = (labels_HW == channel).astype(np.uint8)
        count, parts_HW = cv2.connectedComponents(current_HW, connectivity=8)
        if count <= 2:  # background + at most one part: nothing to choose between
            continue
        # Distance of every pixel to the nearest pixel of the previous mask (0 on it), exact Euclidean.
        distance_HW = cv2.distanceTransform((~previous_HW).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        reach = max(max_part_distance * float(np.sqrt(previous_area)), MIN_NEAR_PIXELS)
        near_parts = np.unique(parts_HW[(distance_HW <= reach) & (current_HW != 0)])
        if near_parts.size == 0:  # the object moved away from where it was: keep what it is now
            continue
        far_HW |= (current_HW != 0) & ~np.isin(parts_HW, near_parts)
    return far_HW
