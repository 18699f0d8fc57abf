"""Centred zero-padding to a multiple of the network stride, and its inverse (the official LiVOS rule)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``(left, right, top, bottom)`` pixels added, the order ``F.pad`` takes for the last two dims.
Padding = tuple[int, int, int, int]


def stride_padding(height: int, width: int, stride: int) -> Padding:
    """Padding that brings ``height x width`` up to multiples of ``stride``; the odd pixel goes right/bottom."""
    extra_h, extra_w = -height % stride, -width % stride
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2


def pad(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Zero-pad the last two dims. LiVOS pads the [0, 1] image *before* normalising it, so padded pixels reach
    the network as ``-mean / std``, as in training."""
    return F.pad(x, padding) if any(padding) else x


def unpad(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Crop what :func:`pad` added."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]
