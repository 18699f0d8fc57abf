"""Frame and mask geometry between the user's resolution and the network's.

Frames are shrunk so that their short side is at most ``max_size`` (the papers evaluate at 480p; small videos are
never enlarged), then snapped to the size the model accepts (``VOSModel.input_size``). Images are resampled
bicubically, like the official AOT preprocessing (OpenCV ``INTER_CUBIC``, which uses the same kernel and pixel
centres as ``torch`` bicubic without anti-aliasing); masks by nearest neighbour so ids never blend; probabilities
come back to the original size bilinearly.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from longvos.io.errors import InputError


def frame_to_tensor(frame: np.ndarray | Image.Image | torch.Tensor, what: str = "frame") -> torch.Tensor:
    """An RGB frame as a ``(3, H, W)`` tensor: uint8 stays uint8 (cheaper to move), floats must be in [0, 1].

    Accepts an ``(H, W, 3)`` uint8 or float array, a PIL image, or a ``(3, H, W)`` / ``(H, W, 3)`` tensor.
    """
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"{what}: expected an (H, W, 3) RGB array, got shape {frame.shape}")
        if not frame.dtype.isnative:  # big-endian data (read from a file): torch takes native byte order only
            frame = frame.astype(frame.dtype.newbyteorder("="))
        if not frame.flags.writeable:  # e.g. np.asarray(PIL image); torch wants memory it may own
            frame = frame.copy()
        if frame.dtype == bool or not (frame.dtype == np.uint8 or np.issubdtype(frame.dtype, np.floating)):
            raise InputError(f"{what}: frames must be uint8 (0..255) or float (0..1), got {frame.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    elif isinstance(frame, torch.Tensor):
        if frame.ndim == 3 and frame.shape[0] == 3:
            tensor = frame
        elif frame.ndim == 3 and frame.shape[2] == 3:
            tensor = frame.permute(2, 0, 1)
        else:
            raise InputError(f"{what}: expected a (3, H, W) or (H, W, 3) tensor, got shape {tuple(frame.shape)}")
    else:
        raise InputError(f"{what}: unsupported frame type {type(frame).__name__}; use a numpy array, PIL image "
                         f"or tensor")
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InputError(f"{what}: frames must be uint8 (0..255) or float (0..1), got {tensor.dtype}")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise InputError(f"{what}: the frame is empty ({tensor.shape[2]}x{tensor.shape[1]} pixels)")
    if tensor.is_floating_point():
        _check_unit_range(tensor, what)
    return tensor


def _check_unit_range(tensor: torch.Tensor, what: str) -> None:
    """Float frames are RGB in [0, 1]: a [0, 255] frame would be clipped to white and lose every object."""
    if tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{what}: float frame holds NaN or infinite values; pass RGB in [0, 1] or uint8 (0..255)")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"{what}: float frames must lie in [0, 1], found {low:.4g}..{high:.4g}; pass uint8 "
                         f"(0..255) or divide by 255 (frame / 255)")


def to_network_input(image_3HW: torch.Tensor, size_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``(1, 3, h, w)`` float32 RGB in [0, 1] on ``device`` at the network size."""
    image_3HW = image_3HW.to(device, non_blocking=True)
    image_13HW = (image_3HW.float() / 255.0 if image_3HW.dtype == torch.uint8 else image_3HW.float())[None]
    if tuple(image_13HW.shape[-2:]) != tuple(size_hw):
        image_13HW = F.interpolate(image_13HW, size=size_hw, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return image_13HW


#: ``max_size`` everywhere: pixels (short side), ``None`` or 0 for the native size, or ``"auto"`` for the size the
#: model was trained to see (``VOSModel.default_max_size``, from the model registry).
MaxSize = int | None | Literal["auto"]


def check_max_size(max_size: MaxSize) -> MaxSize:
    """The one rule for a ``max_size`` (CLI ``--max-size``, options, sessions): ``"auto"`` stays, 0 and ``None`` are
    ``None`` (native), a positive number of pixels stays; anything else is a ``ValueError`` naming it."""
    if max_size == "auto" or max_size is None:
        return max_size
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be 0 (native) or a positive number of pixels, got {max_size!r} ('auto': "
                         f"the size the model's weights were trained for)")
    return max_size or None


def resolve_max_size(max_size: MaxSize, model_default: int) -> int | None:
    """The short-side cap a session uses: :func:`check_max_size`, with ``"auto"`` replaced by ``model_default``."""
    max_size = check_max_size(max_size)
    return model_default if max_size == "auto" else max_size


def shrunk_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """The size with the short side at most ``max_size`` (``None`` or <= 0: unchanged), aspect ratio kept."""
    short = min(height, width)
    if not max_size or max_size <= 0 or short <= max_size:
        return height, width
    scale = max_size / short
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_ids_nearest(ids_HW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map by indexing (exact for any id, unlike float interpolation).

    Source pixel = floor(destination * in / out), the rule of ``F.interpolate(mode="nearest")`` and OpenCV.
    """
    height, width = ids_HW.shape
    if (height, width) == tuple(size_hw):
        return ids_HW
    def source_indices(out_size: int, in_size: int) -> torch.Tensor:
        positions = torch.arange(out_size, device=ids_HW.device) * (in_size / out_size)
        return positions.floor().long().clamp_(max=in_size - 1)

    return ids_HW[source_indices(size_hw[0], height)][:, source_indices(size_hw[1], width)]


def upsample_probs(probs_KHW: torch.Tensor, size_hw: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``(K, H, W)`` probabilities to ``size_hw`` in float32 (they stay a distribution)."""
    probs_KHW = probs_KHW.float()
    if tuple(probs_KHW.shape[-2:]) == tuple(size_hw):
        return probs_KHW
    return F.interpolate(probs_KHW[None], size=size_hw, mode="bilinear", align_corners=align_corners)[0]
