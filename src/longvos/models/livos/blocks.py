"""Convolutional building blocks that LiVOS inherits from Cutie: the channel-attention residual block and the
feature fuser that adds per-object features to the shared pixel features.

Tensors with an object axis are ``(B, N, C, H, W)``; convolutions run on the flattened ``(B*N, C, H, W)`` view.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def eca_kernel_size(channels: int) -> int:
    """Kernel size of the ECA-style 1-D channel-attention conv: odd, about ``(log2(C) + 1) / 2`` (5 for 256)."""
    size = int((abs(math.log2(channels)) + 1) // 2)
    return size if size % 2 else size + 1


class ChannelAttentionResBlock(nn.Module):
    """Pre-activation residual block (two 3x3 convs) whose output is reweighted per channel by a sigmoid gate
    computed from its global average through a small 1-D conv across channels (ECA)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        kernel = eca_kernel_size(out_dim)
        self.channel_attention = nn.Conv1d(1, 1, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False)
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out_BCHW = self.conv2(F.relu(self.conv1(F.relu(x_BCHW))))
        batch, channels = out_BCHW.shape[:2]
        pooled_B1C = F.adaptive_avg_pool2d(out_BCHW, 1).view(batch, 1, channels)
        weight_BC11 = self.channel_attention(pooled_B1C).view(batch, channels, 1, 1).sigmoid()
        return out_BCHW * weight_BC11 + self.shortcut(x_BCHW)


class FeatureFuser(nn.Module):
    """Fuse the frame's pixel features (shared by all objects) with per-object features: project both with
    1x1 convs, add, then refine with two channel-attention residual blocks."""

    def __init__(self, pixel_dim: int, object_dim: int, out_dim: int):
        super().__init__()
        self.pixel_proj = nn.Conv2d(pixel_dim, out_dim, kernel_size=1)
        self.object_proj = nn.Conv2d(object_dim, out_dim, kernel_size=1)
        self.block1 = ChannelAttentionResBlock(out_dim, out_dim)
        self.block2 = ChannelAttentionResBlock(out_dim, out_dim)

    def forward(self, pixel_BCHW: torch.Tensor, object_BNCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = object_BNCHW.shape[:2]
        pixel_BCHW = self.pixel_proj(pixel_BCHW)
        pixel_DCHW = pixel_BCHW.unsqueeze(1).expand(-1, num_objects, -1, -1, -1).flatten(0, 1)
        fused_DCHW = pixel_DCHW + self.object_proj(object_BNCHW.flatten(0, 1))
        fused_DCHW = self.block2(self.block1(fused_DCHW))
        return fused_DCHW.view(batch, num_objects, *fused_DCHW.shape[1:])
