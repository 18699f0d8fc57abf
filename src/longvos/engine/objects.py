"""User masks as the engine sees them: validated index maps with stable user object ids of any value."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from longvos.io.errors import MaskError
from longvos.io.masks import decode_mask_image


def to_index_map(mask: np.ndarray | Image.Image | torch.Tensor, size_hw: tuple[int, int], what: str) -> np.ndarray:
    """Validate a user mask against the frame size and return it as an int64 ``(H, W)`` index map.

    Booleans mean object 1; floats must hold whole numbers (an index map, not probabilities).
    """
    if isinstance(mask, Image.Image):
        mask = decode_mask_image(mask, what).ids
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise MaskError(f"{what}: a mask must be an (H, W) index map, got shape {mask.shape}")
    if mask.shape != tuple(size_hw):
        raise MaskError(f"{what}: mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {size_hw[1]}x{size_hw[0]}")
    if mask.dtype == bool:
        return mask.astype(np.int64)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
            raise MaskError(f"{what}: mask holds fractional values; pass an index map (0 = background, k = object "
                            f"k), not probabilities or an anti-aliased image")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise MaskError(f"{what}: unsupported mask dtype {mask.dtype}")
    if mask.dtype.kind in "uf" and mask.size and mask.max() >= 2 ** 63:  # would wrap to a negative int64
        raise MaskError(f"{what}: object ids must lie in 0..2^63-1, found {mask.max()}")
    ids = mask.astype(np.int64)
    if ids.min() < 0:
        raise MaskError(f"{what}: object ids must be positive, found {int(ids.min())}")
    return ids


def select_objects(ids: np.ndarray, objects: Iterable[int] | None, what: str) -> list[int]:
    """The object ids a mask sets: ``objects`` if given (each must have pixels), else every non-zero id in it."""
    present = [int(i) for i in np.unique(ids) if i != 0]
    if objects is None:
        return present
    chosen = [int(i) for i in objects]
    for object_id in chosen:
        if object_id <= 0:
            raise MaskError(f"{what}: object ids must be positive integers, got {object_id}")
        if object_id not in present:
            raise MaskError(f"{what}: object {object_id} has no pixels in the mask (ids present: {present}); "
                            f"an empty mask cannot start or re-anchor an object")
    return chosen
