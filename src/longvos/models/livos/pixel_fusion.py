"""Pixel fusion: combine the memory read-out with the sensory memory, the previous masks and the frame's pixels."""
from __future__ import annotations

import torch
from torch import nn

from longvos.models.livos.blocks import FeatureFuser


def others_union(masks_BNHW: torch.Tensor) -> torch.Tensor:
    """For each object, the union of all *other* objects' masks, ``clamp(sum - own, 0, 1)``."""
    return (masks_BNHW.sum(dim=1, keepdim=True) - masks_BNHW).clamp(0, 1)


class PixelFuser(nn.Module):
    """``fuse(pixels, readout + conv1x1([sensory, previous mask, previous others]))`` per object, at stride 16."""

    def __init__(self, pixel_dim: int, value_dim: int, sensory_dim: int):
        super().__init__()
        self.memory_proj = nn.Conv2d(sensory_dim + 2, value_dim, kernel_size=1)
        self.fuser = FeatureFuser(pixel_dim, value_dim, value_dim)

    def forward(
        self,
        pixels_BCHW: torch.Tensor,
        readout_BNCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
        previous_masks_BNHW: torch.Tensor,
    ) -> torch.Tensor:
        """``previous_masks_BNHW``: the last memorised masks, already area-pooled to the stride-16 grid."""
        batch, num_objects = readout_BNCHW.shape[:2]
        memory_BNCHW = torch.cat(
            [sensory_BNCHW, previous_masks_BNHW.unsqueeze(2), others_union(previous_masks_BNHW).unsqueeze(2)], dim=2
        )
        projected_DCHW = self.memory_proj(memory_BNCHW.flatten(0, 1))
        fused_BNCHW = readout_BNCHW + projected_DCHW.view(batch, num_objects, *projected_DCHW.shape[1:])
        return self.fuser(pixels_BCHW, fused_BNCHW)
