"""Clip augmentations: geometry as 3x3 homographies (one warp per frame), photometry per frame.

Every geometric change of a frame -- resize, crop, flip, synthetic motion -- is composed into a single homography that
maps source pixel coordinates to output pixel coordinates. The image and its label are warped by the *same* matrix
(image bilinear, label nearest), so masks stay aligned with frames by construction and each pixel is resampled once.

Images are ``HxWx3`` uint8 RGB, labels ``HxW`` uint8 (0 background, k object k, 255 void).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from longvos.io.masks import VOID

from .config import AugmentConfig

#: Image fill outside the source (about the ImageNet mean, as in the AOT recipe): padding looks like "nothing".
FILL_RGB = (124, 116, 104)

cv2.setNumThreads(1)  # DataLoader workers are separate processes; nested OpenCV threads would only oversubscribe


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def crop_homography(
    source_hw: tuple[int, int],
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    keep_point_xy: tuple[float, float] | None = None,
    hflip: bool = False,
) -> np.ndarray:
    """Scale the source so its short side is ``size * zoom`` (zoom drawn from ``scale_range``), then cut a
    ``size x size`` window; if ``keep_point_xy`` (source coordinates) is given the window contains that point, which is
    how a crop is made to keep an object visible without retrying."""
    height, width = source_hw
    scale = size / min(height, width) * rng.uniform(*scale_range)
    scaled_w, scaled_h = width * scale, height * scale
    offsets = []
    for extent, point in ((scaled_w, None if keep_point_xy is None else keep_point_xy[0] * scale),
                          (scaled_h, None if keep_point_xy is None else keep_point_xy[1] * scale)):
        # The window [o, o + size) may range over the scaled image; when the image is smaller it is centred-ish.
        low, high = min(0.0, extent - size), max(0.0, extent - size)
        if point is not None:  # the point must fall inside the window, with a small margin where possible
            margin = min(size * 0.1, size / 2)
            low, high = max(low, point - size + margin), min(high, point - margin)
            if low > high:
                low = high = point - size / 2
        offsets.append(rng.uniform(low, high))
    matrix = np.array([[scale, 0.0, -offsets[0]], [0.0, scale, -offsets[1]], [0.0, 0.0, 1.0]])
    if hflip:
        matrix = horizontal_flip(size) @ matrix
    return matrix


def horizontal_flip(size: int) -> np.ndarray:
    """Mirror the output window; pixel centres x -> size - 1 - x."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def motion_step(size: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A small random homography about the window centre: the motion from one synthetic frame to the next."""
    angle = math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
    shear = math.radians(rng.uniform(-cfg.shear_degrees, cfg.shear_degrees))
    zoom = rng.uniform(1.0 - cfg.zoom, 1.0 + cfg.zoom)
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * size
    centre = (size - 1) / 2.0
    to_origin = np.array([[1.0, 0.0, -centre], [0.0, 1.0, -centre], [0.0, 0.0, 1.0]])
    rotate = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1.0]])
    shear_m = np.array([[1.0, math.tan(shear), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    back = np.array([[zoom, 0.0, centre + shift[0]], [0.0, zoom, centre + shift[1]], [0.0, 0.0, 1.0]])
    affine = back @ rotate @ shear_m @ to_origin
    return perspective_jitter(size, rng, cfg.perspective) @ affine


def perspective_jitter(size: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Move the four window corners by up to ``strength * size``: a mild out-of-plane tilt."""
    if strength <= 0:
        return np.eye(3)
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=np.float32)
    moved = corners + rng.uniform(-strength, strength, size=(4, 2)).astype(np.float32) * size
    return cv2.getPerspectiveTransform(corners, moved).astype(np.float64)


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.warpPerspective(image, matrix, (size, size), flags=interpolation,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=FILL_RGB)


def warp_label(label: np.ndarray, matrix: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour so ids are never blended; outside the source is ``fill`` (background by default)."""
    return cv2.warpPerspective(label, matrix, (size, size), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def random_object_point(label: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    """(x, y) of a random object pixel, or None when the label has no object."""
    ys, xs = np.nonzero((label > 0) & (label != VOID))
    if len(xs) == 0:
        return None
    pick = rng.integers(len(xs))
    return float(xs[pick]), float(ys[pick])


# ---------------------------------------------------------------------------------------------------------------
# Photometry


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Colour jitter (brightness, contrast, saturation, hue), random grayscale, Gaussian blur; uint8 in and out."""
    out = image.astype(np.float32) / 255.0
    if rng.random() < cfg.jitter_prob:
        out = colour_jitter(out, rng, cfg)
    if rng.random() < cfg.grayscale_prob:
        out = np.repeat(gray(out)[..., None], 3, axis=2)
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def relight_clip(frames: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> list[np.ndarray]:
    """With probability ``cfg.relight_prob``, light the clip unevenly and let the light change over time.

    Global jitter cannot make what breaks a tracker in real footage: an object in shadow on its reference frame that
    walks into the sun (or the reverse). This multiplies each frame by a smooth gain field (a coarse random grid of
    log-gains in ``+-cfg.relight_strength``, upsampled) that blends linearly from one field on the first frame to
    another on the last, so patches of the object change brightness differently and progressively."""
    if cfg.relight_prob <= 0 or rng.random() >= cfg.relight_prob:
        return frames
    height, width = frames[0].shape[:2]
    first, last = (relight_field((height, width), rng, cfg.relight_strength) for _ in range(2))
    out = []
    for t, frame in enumerate(frames):
        blend = t / max(len(frames) - 1, 1)
        gain_HW1 = (1 - blend) * first + blend * last
        out.append(np.clip(frame.astype(np.float32) * gain_HW1 + 0.5, 0, 255).astype(np.uint8))
    return out


def relight_field(hw: tuple[int, int], rng: np.random.Generator, strength: float, grid: int = 3) -> np.ndarray:
    """``HxWx1`` float32 gains: exp of a ``grid x grid`` uniform draw in ``+-strength``, bicubically upsampled (so
    light and shadow vary over about a third of the frame), clipped to the drawn range against cubic overshoot."""
    log_gains = rng.uniform(-strength, strength, size=(grid, grid)).astype(np.float32)
    field = cv2.resize(log_gains, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    return np.exp(np.clip(field, -strength, strength))[..., None]


def gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """``image`` float RGB in [0, 1]; each factor is drawn uniformly in ``1 +- strength``, applied in random order."""
    ops = ["brightness", "contrast", "saturation", "hue"]
    for op in rng.permutation(ops):
        if op == "brightness" and cfg.brightness > 0:
            image = image * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        elif op == "contrast" and cfg.contrast > 0:
            mean = gray(image).mean()
            image = (image - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
        elif op == "saturation" and cfg.saturation > 0:
            luma = gray(image)[..., None]
            image = (image - luma) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + luma
        elif op == "hue" and cfg.hue > 0:
            hsv = cv2.cvtColor(np.clip(image, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue) * 360.0) % 360.0
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        image = np.clip(image, 0, 1)
    return image
