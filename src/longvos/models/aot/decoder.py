"""FPN decoder: E-LSTT output (stride 16) + encoder shortcuts (16, 8, 4) -> per-slot logits at stride 4."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers import onednn


class ConvGroupNorm(nn.Module):
    """``k x k`` convolution ('same' padding) followed by GroupNorm(8); the decoder applies ReLU after it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 8):
        super().__init__()
        self.conv = (onednn.PointwiseConv2d(in_channels, out_channels) if kernel_size == 1
                     else nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))
        self.gn = nn.GroupNorm(groups, out_channels)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x_BCHW))


class FPNDecoder(nn.Module):
    """Top-down decoder: at each scale add a 1x1-adapted encoder shortcut, then ConvGN + ReLU, then upsample.

    The shortcuts may have batch 1 while the E-LSTT output has batch P (several passes over one frame): the adapted
    shortcuts then broadcast over the passes, so the encoder side is computed once.
    """

    def __init__(self, in_dim: int, hidden_dim: int, shortcut_channels: tuple[int, int, int], num_classes: int,
                 align_corners: bool):
        super().__init__()
        s4_channels, s8_channels, s16_channels = shortcut_channels
        self.align_corners = align_corners
        self.input_conv = ConvGroupNorm(in_dim, hidden_dim, 1)
        self.fuse_s16 = ConvGroupNorm(hidden_dim, hidden_dim, 3)
        self.fuse_s8 = ConvGroupNorm(hidden_dim, hidden_dim // 2, 3)
        self.fuse_s4 = ConvGroupNorm(hidden_dim // 2, hidden_dim // 2, 3)
        self.adapter_s16 = onednn.PointwiseConv2d(s16_channels, hidden_dim)
        self.adapter_s8 = onednn.PointwiseConv2d(s8_channels, hidden_dim)
        self.adapter_s4 = onednn.PointwiseConv2d(s4_channels, hidden_dim // 2)
        self.classifier = onednn.PointwiseConv2d(hidden_dim // 2, num_classes)
        for param in self.parameters():  # official init
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def _upsample(self, x_BCHW: torch.Tensor, like_BCHW: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x_BCHW, size=like_BCHW.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, lstt_BCHW: torch.Tensor, s4_BCHW: torch.Tensor, s8_BCHW: torch.Tensor,
                s16_BCHW: torch.Tensor) -> torch.Tensor:
        x_BCHW = F.relu(self.input_conv(lstt_BCHW))
        x_BCHW = F.relu(self.fuse_s16(self.adapter_s16(s16_BCHW) + x_BCHW))
        x_BCHW = F.relu(self.fuse_s8(self.adapter_s8(s8_BCHW) + self._upsample(x_BCHW, s8_BCHW)))
        x_BCHW = F.relu(self.fuse_s4(self.adapter_s4(s4_BCHW) + self._upsample(x_BCHW, s4_BCHW)))
        return self.classifier(x_BCHW)
