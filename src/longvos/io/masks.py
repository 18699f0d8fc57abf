"""Reading, validating and writing object masks.

An *index mask* is an ``(H, W)`` integer map: 0 is background and every other value is one object's id.
How each kind of PNG is read (the documented behaviour for every case):

- palette (``P``) PNG: the palette indices are the ids; 255 is DAVIS "void" and is read as background. The palette
  is returned so that outputs can keep it.
- 8-bit grey (``L``): the values are the ids, except that a pure black-and-white mask (only 0 and 255) is one object
  with id 1. Grey masks that mix 255 with other non-zero values are anti-aliased or soft, and are refused, as are
  grey images with more than :data:`MAX_GREY_IDS` distinct values (a photo or a soft mask, not an index mask).
- 16/32-bit grey (``I;16``, ``I``): the values are the ids (for more than 255 objects).
- 1-bit: one object with id 1.
- RGB / RGBA: every colour must be a DAVIS palette colour and maps to its index (fully transparent pixels are
  background); pure black-and-white is one object with id 1. Other colours (often anti-aliased edges) are refused.
- A mask with no object at all is refused unless ``allow_empty``.

Masks are written as palette PNGs (the input palette if there was one, else DAVIS); masks with ids above 255 are
written as 16-bit grey PNGs. Per-object PNGs are 0/255 grey images, one folder per object id. Probabilities go to a
compressed NPZ with ``probs`` (N, H, W) float16 and ``object_ids`` (N,) int64.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from longvos.io.errors import MaskError
from longvos.io.palette import DAVIS_PALETTE, palette_to_array

#: DAVIS "void": pixels that are not annotated (object boundaries, ignored regions). The one definition; ground
#: truth reads it as background, training losses ignore it.
VOID = 255
MAX_GREY_IDS = 64
#: The largest object id a mask PNG holds (16-bit grey); smaller than 256 gives a palette PNG.
MAX_PNG_ID = 65535


@dataclass
class IndexMask:
    """An index mask read from a file, with the palette it came with (``None`` if it had none)."""

    ids: np.ndarray  # (H, W) uint8 when every id < 256, else int32
    palette: np.ndarray | None = None  # (256, 3) uint8

    @property
    def object_ids(self) -> list[int]:
        return [int(i) for i in np.unique(self.ids) if i != 0]


def read_index_mask(path: str | Path, size: tuple[int, int] | None = None, *, allow_empty: bool = False,
                    what: str = "the frame") -> IndexMask:
    """Read and validate an index mask; ``size`` is the ``(height, width)`` it must have (that of ``what``)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as err:
        raise MaskError(f"{path}: cannot read mask: {err}") from None
    mask = decode_mask_image(image, path)
    if size is not None and mask.ids.shape != tuple(size):
        raise MaskError(f"{path}: mask is {mask.ids.shape[1]}x{mask.ids.shape[0]} but {what} is {size[1]}x{size[0]}")
    if not allow_empty and not mask.ids.any():
        raise MaskError(f"{path}: mask has no object (every pixel is background or void)")
    return mask


def decode_mask_image(image: Image.Image, path: Path | str) -> IndexMask:
    """Ids of an already opened mask image by the rules above; ``path`` names it in errors."""
    if image.mode == "P":
        ids = np.array(image, dtype=np.uint8)
        ids[ids == VOID] = 0
        return IndexMask(ids, palette_to_array(image.getpalette()))
    if image.mode == "1":
        return IndexMask(np.array(image, dtype=np.uint8))
    if image.mode in ("L", "LA"):
        ids = _grey_ids(np.array(image.getchannel(0), dtype=np.uint8), path)
        if image.mode == "LA":  # a transparent pixel is background, as in an RGBA mask
            ids[np.array(image.getchannel("A")) == 0] = 0
        return IndexMask(ids)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        ids = np.array(image, dtype=np.int64)
        if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
            raise MaskError(f"{path}: mask values must lie in 0..2^31-1, found {ids.min()}..{ids.max()}")
        return IndexMask(compact_ids(ids))
    if image.mode in ("RGB", "RGBA"):
        return IndexMask(_rgb_ids(image, path))
    raise MaskError(f"{path}: unsupported mask image mode {image.mode!r}; use a palette, grey or RGB PNG")


def _grey_ids(grey: np.ndarray, path: Path | str) -> np.ndarray:
    values = np.unique(grey)
    if set(values.tolist()) <= {0, 255}:
        return (grey == 255).astype(np.uint8)  # black-and-white: one object
    if 255 in values:
        soft = values[(values != 0) & (values != 255)]
        raise MaskError(f"{path}: grey mask mixes 255 with values such as {int(soft[0])}: it looks anti-aliased or "
                        f"soft; threshold it, or save object ids 1, 2, ... as a palette PNG")
    if len(values) - 1 > MAX_GREY_IDS:
        raise MaskError(f"{path}: grey image has {len(values)} distinct values: it looks like a photo or a soft "
                        f"mask, not an index mask (one value per object)")
    return grey


def _rgb_ids(image: Image.Image, path: Path | str) -> np.ndarray:
    rgb = np.array(image.convert("RGB"), dtype=np.uint8)
    transparent = np.array(image.getchannel("A")) == 0 if image.mode == "RGBA" else None
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    colour_set = {tuple(c) for c in colours.tolist()}
    if colour_set <= {(0, 0, 0), (255, 255, 255)}:
        ids = np.all(rgb == 255, axis=-1).astype(np.uint8)
    else:
        palette_index = {tuple(c): i for i, c in enumerate(DAVIS_PALETTE.tolist())}
        palette_index[tuple(DAVIS_PALETTE[VOID].tolist())] = 0  # the void colour, as a palette PNG's void is read
        palette_index.setdefault((0, 0, 0), 0)
        unknown = [c for c in colour_set if c not in palette_index]
        if unknown:
            raise MaskError(f"{path}: RGB mask has {len(unknown)} colours that are not DAVIS palette colours "
                            f"(e.g. {unknown[0]}); anti-aliased edges do this. Save the mask as a palette PNG")
        lookup = np.array([palette_index[tuple(c)] for c in colours.tolist()], dtype=np.uint8)
        ids = lookup[inverse.ravel()].reshape(rgb.shape[:2])
    if transparent is not None:
        ids[transparent] = 0
    return ids


def compact_ids(ids: np.ndarray) -> np.ndarray:
    """The narrowest integer type for an index mask: uint8 when every id < 256, int32 below 2^31, else int64
    (never a type that would wrap an id: 2^32 as int32 would be 0, the object lost)."""
    top = int(ids.max()) if ids.size else 0
    return ids.astype(np.uint8 if top < 256 else np.int32 if top <= np.iinfo(np.int32).max else np.int64, copy=False)


def read_object_masks(paths: dict[int, str | Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """Combine per-object binary PNGs (non-zero = the object) into one index mask.

    Where objects overlap, the one listed later in ``paths`` wins (an index mask holds one id per pixel).
    """
    combined = None
    for object_id, path in paths.items():
        if object_id <= 0:
            raise MaskError(f"{path}: object ids must be positive integers, got {object_id}")
        binary = read_index_mask(path, size, what="the frame").ids != 0
        if combined is None:
            combined = np.zeros(binary.shape, dtype=np.int64)
        elif binary.shape != combined.shape:
            raise MaskError(f"{path}: per-object masks disagree in size ({binary.shape} vs {combined.shape})")
        combined[binary] = object_id
    if combined is None:
        raise MaskError("no per-object masks given")
    return compact_ids(combined)


def write_index_png(path: str | Path, ids: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an index mask as a palette PNG (ids below :data:`VOID`, 255) or a 16-bit grey PNG (ids up to
    :data:`MAX_PNG_ID`): in a palette PNG, index 255 is DAVIS's void, which reads back as background."""
    max_id = int(ids.max()) if ids.size else 0
    if max_id < VOID:
        pixels = np.ascontiguousarray(ids, dtype=np.uint8)
        image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
        image.putpalette((DAVIS_PALETTE if palette is None else palette).astype(np.uint8).ravel().tolist())
    elif max_id <= MAX_PNG_ID:
        image = Image.fromarray(ids.astype(np.uint16))  # PIL mode "I;16"
    else:
        raise MaskError(f"{path}: object id {max_id} does not fit a PNG (max {MAX_PNG_ID}); write probabilities as NPZ")
    image.save(path, format="PNG")


def write_object_png(path: str | Path, binary: np.ndarray) -> None:
    """Write one object's mask as a 0/255 grey PNG."""
    Image.fromarray(np.where(binary, 255, 0).astype(np.uint8)).save(path, format="PNG")  # PIL mode "L"


def write_probs_npz(path: str | Path, probs: np.ndarray, object_ids: list[int]) -> None:
    """Write per-object probabilities ``(N, H, W)`` (float16, compressed) with their object ids."""
    with open(path, "wb") as file:
        np.savez_compressed(file, probs=probs.astype(np.float16), object_ids=np.asarray(object_ids, dtype=np.int64))


def read_probs_npz(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """Read what :func:`write_probs_npz` wrote: ``(probs (N, H, W) float32, object_ids)``."""
    with np.load(path) as data:
        return data["probs"].astype(np.float32), [int(i) for i in data["object_ids"]]
