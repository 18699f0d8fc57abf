"""The DAVIS palette (the PASCAL VOC colour map): the default colours of index-mask PNGs.

Index 0 is black (background) and 255 is (224, 224, 192), the DAVIS "void" colour. The map is generated rather
than stored: the three low bits of the index feed the most significant bits of R, G and B, the next three bits
the next ones, and so on, which spreads neighbouring ids over clearly different colours.
"""
from __future__ import annotations

import numpy as np


def _voc_colour(index: int) -> tuple[int, int, int]:
    red = green = blue = 0
    bits = index
    for shift in range(7, -1, -1):
        red |= (bits & 1) << shift
        green |= ((bits >> 1) & 1) << shift
        blue |= ((bits >> 2) & 1) << shift
        bits >>= 3
    return red, green, blue


#: (256, 3) uint8 RGB colours, read-only.
DAVIS_PALETTE: np.ndarray = np.array([_voc_colour(i) for i in range(256)], dtype=np.uint8)
DAVIS_PALETTE.setflags(write=False)


def palette_to_array(palette: list[int] | bytes | np.ndarray | None) -> np.ndarray:
    """A PIL-style flat palette (up to 768 values) as a (256, 3) uint8 array, padded with the DAVIS colours."""
    if palette is None:
        return DAVIS_PALETTE.copy()
    flat = np.asarray(list(palette) if isinstance(palette, (bytes, bytearray)) else palette, dtype=np.uint8).ravel()
    colours = flat[: (len(flat) // 3) * 3].reshape(-1, 3)[:256]
    full = DAVIS_PALETTE.copy()
    full[: len(colours)] = colours
    return full
