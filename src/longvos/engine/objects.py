"""User masks as the engine sees them: validated index maps with stable user object ids of any value."""
from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from longvos.io.errors import InputError, MaskError
from longvos.io.masks import decode_mask_image


def to_index_map(mask: np.ndarray | Image.Image | torch.Tensor, size_hw: tuple[int, int], what: str) -> np.ndarray:
    """Validate a user mask against the frame size and return it as an int64 ``(H, W)`` index map.

    Booleans mean object 1; floats must hold whole numbers (an index map, not probabilities).
    """
    if isinstance(mask, Image.Image):
        mask = decode_mask_image(mask, what).ids
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        if mask.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16; whole numbers stay exact
            mask = mask.float()
        mask = mask.numpy()
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


def whole_number(value: object, what: str, error: type[InputError] = InputError) -> int:
    """``value`` as an int if it is one (a Python or NumPy integer; not a bool, float or string), else an
    :class:`InputError` naming ``what`` and the value: ``2.9`` or ``"12"`` would otherwise pick another object."""
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise error(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def object_id_list(ids: object, what: str = "object id", error: type[InputError] = InputError) -> list[int]:
    """One object id or an iterable of them as a list of positive ints, repeats dropped (first order kept); a
    string is one (invalid) id, not its characters."""
    many = isinstance(ids, Iterable) and not isinstance(ids, (str, bytes))
    if many and isinstance(ids, (np.ndarray, torch.Tensor)) and ids.ndim == 0:
        many, ids = False, ids.item()
    values = [whole_number(i, what, error) for i in ids] if many else [whole_number(ids, what, error)]
    for value in values:
        if value <= 0:
            raise error(f"{what} must be a positive integer, got {value}")
    return list(dict.fromkeys(values))


def select_objects(ids: np.ndarray, objects: Iterable[int] | None, what: str) -> list[int]:
    """The object ids a mask sets: ``objects`` if given (each must have pixels), else every non-zero id in it."""
    present = [int(i) for i in np.unique(ids) if i != 0]
    if objects is None:
        return present
    chosen = object_id_list(objects, f"{what}: object id", MaskError)
    for object_id in chosen:
        if object_id not in present:
            raise MaskError(f"{what}: object {object_id} has no pixels in the mask (ids present: {present}); "
                            f"an empty mask cannot start or re-anchor an object")
    return chosen
