"""Per-frame region similarity J and boundary F-measure, exactly as the official DAVIS-2017 evaluator defines them.

Everything here works on boolean ``(H, W)`` masks of one object and computes in float64, so results agree with the
official numbers to ~1e-12. The boundary rules are subtle and each one is load-bearing for exactness:

- the boundary map marks a pixel that differs from its right, lower or lower-right neighbour, with neighbours
  outside the image counted as equal (replicate padding), so the image border is never a boundary;
- the match tolerance is a discrete disk of radius ``ceil(0.008 * diagonal)``, not a square and not ``floor + 1``;
- an empty boundary on exactly one side scores 0, on both sides 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: Fraction of the image diagonal within which boundary pixels match (the DAVIS ``bound_th``).
BOUNDARY_TOLERANCE = 0.008


def tolerance_radius(height: int, width: int, fraction: float = BOUNDARY_TOLERANCE) -> int:
    """Boundary match radius in pixels: ``ceil(fraction * sqrt(H^2 + W^2))`` in float64 (800x600 gives exactly 8)."""
    return int(math.ceil(fraction * math.sqrt(height * height + width * width)))


@lru_cache(maxsize=16)
def disk(radius: int) -> np.ndarray:
    """The discrete disk ``{(dy, dx): dy^2 + dx^2 <= r^2}`` as a ``(2r+1, 2r+1)`` uint8 structuring element."""
    offsets = np.arange(-radius, radius + 1)
    element = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius
    element = element.astype(np.uint8)
    element.flags.writeable = False  # cached and shared: nobody may modify it
    return element


def boundary_map(mask_HW: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, placed towards the origin (see module docstring).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour. Comparing only
    in-image neighbours is the same as replicate padding, because the padded neighbours of the last row/column
    duplicate a comparison that is already made (or compare a pixel with itself).
    """
    mask_HW = np.asarray(mask_HW, dtype=bool)
    boundary_HW = np.zeros(mask_HW.shape, dtype=bool)
    boundary_HW[:, :-1] |= mask_HW[:, :-1] != mask_HW[:, 1:]
    boundary_HW[:-1, :] |= mask_HW[:-1, :] != mask_HW[1:, :]
    boundary_HW[:-1, :-1] |= mask_HW[:-1, :-1] != mask_HW[1:, 1:]
    return boundary_HW


def _dilate(boundary_HW: np.ndarray, radius: int) -> np.ndarray:
    # cv2.dilate's default border is "minus infinity" for dilation, i.e. pixels outside the image are ignored.
    return cv2.dilate(boundary_HW.view(np.uint8), disk(radius)).astype(bool)


def region_similarity(pred_HW: np.ndarray, gt_HW: np.ndarray) -> float:
    """Jaccard index J = |P & G| / |P | G|; 1 when the object is absent from both masks."""
    union = int(np.count_nonzero(pred_HW | gt_HW))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred_HW & gt_HW)) / union


@dataclass(frozen=True)
class BoundaryMatch:
    """Boundary pixel counts of one prediction/ground-truth pair (integers: these must match the reference exactly)."""

    radius: int
    n_pred: int  #: |Bp|
    n_gt: int  #: |Bg|
    n_pred_matched: int  #: |Bp & dilate(Bg)|
    n_gt_matched: int  #: |Bg & dilate(Bp)|

    @property
    def f_measure(self) -> float:
        """Harmonic mean of boundary precision and recall, with the official conventions for empty boundaries."""
        if self.n_pred == 0 and self.n_gt == 0:
            return 1.0
        if self.n_pred == 0 or self.n_gt == 0:
            return 0.0  # precision 1 and recall 0 (or the reverse): F = 0
        precision = self.n_pred_matched / float(self.n_pred)
        recall = self.n_gt_matched / float(self.n_gt)
        if precision + recall == 0:
            return 0.0
        return 2 * precision * recall / (precision + recall)


def boundary_match(pred_HW: np.ndarray, gt_HW: np.ndarray, radius: int | None = None) -> BoundaryMatch:
    """Count boundary pixels of both masks and how many of each lie within ``radius`` of the other's boundary."""
    height, width = gt_HW.shape
    radius = tolerance_radius(height, width) if radius is None else radius
    pred_boundary_HW = boundary_map(pred_HW)
    gt_boundary_HW = boundary_map(gt_HW)
    n_pred = int(np.count_nonzero(pred_boundary_HW))
    n_gt = int(np.count_nonzero(gt_boundary_HW))
    # Dilating an empty map is wasted work (F is decided by the empty-boundary rules alone).
    n_pred_matched = n_gt_matched = 0
    if n_pred and n_gt:
        window = _boundary_window(pred_boundary_HW | gt_boundary_HW, radius)
        pred_boundary_hw, gt_boundary_hw = pred_boundary_HW[window], gt_boundary_HW[window]
        n_pred_matched = int(np.count_nonzero(pred_boundary_hw & _dilate(gt_boundary_hw, radius)))
        n_gt_matched = int(np.count_nonzero(gt_boundary_hw & _dilate(pred_boundary_hw, radius)))
    return BoundaryMatch(radius, n_pred, n_gt, n_pred_matched, n_gt_matched)


def _boundary_window(boundary_HW: np.ndarray, radius: int) -> tuple[slice, slice]:
    """Bounding box of all boundary pixels grown by ``radius`` and clipped to the image.

    Dilating inside this window is exact: everything the dilation can reach from a boundary pixel lies within it,
    and the pixels cut off are all zero, which is what the dilation assumes outside the image anyway.
    """
    rows = np.flatnonzero(boundary_HW.any(axis=1))
    cols = np.flatnonzero(boundary_HW.any(axis=0))
    height, width = boundary_HW.shape
    return (slice(max(rows[0] - radius, 0), min(rows[-1] + radius + 1, height)),
            slice(max(cols[0] - radius, 0), min(cols[-1] + radius + 1, width)))


def boundary_f_measure(pred_HW: np.ndarray, gt_HW: np.ndarray, radius: int | None = None) -> float:
    """Boundary F-measure of one object on one frame (see :class:`BoundaryMatch` for the conventions)."""
    return boundary_match(pred_HW, gt_HW, radius).f_measure
