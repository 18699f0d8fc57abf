"""The mask decoder: per-object features at stride 16 -> per-object logits at stride 4, with image skips.

It also performs the first of the two per-frame sensory-memory updates, from its multi-scale features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.livos.sensory import MultiscaleSensoryUpdate


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of per-object features, plus the (shared) projected image skip, then a residual
    pair of 3x3 conv + GELU (a 1x1 conv on the residual path when the width changes)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, features_BNCHW: torch.Tensor, skip_BCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = features_BNCHW.shape[:2]
        up_DCHW = F.interpolate(features_BNCHW.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
        up_BNCHW = up_DCHW.view(batch, num_objects, *up_DCHW.shape[1:]) + skip_BCHW.unsqueeze(1)
        x_DCHW = up_BNCHW.flatten(0, 1)
        out_DCHW = self.shortcut(x_DCHW) + F.gelu(self.conv2(F.gelu(self.conv1(x_DCHW))))
        return out_DCHW.view(batch, num_objects, *out_DCHW.shape[1:])


@dataclass
class DecoderOutput:
    logits_BNHW: torch.Tensor  #: per-object logits at stride 4 (before sigmoid / aggregation)
    sensory_BNCHW: torch.Tensor  #: sensory memory after the decoder's update


class MaskDecoder(nn.Module):
    def __init__(self, image_dims: tuple[int, int, int], decoder_dims: tuple[int, int, int], sensory_dim: int):
        """``image_dims``: widths of the image features at strides 16, 8, 4; ``decoder_dims``: widths of the
        decoder at strides 16 (its input), 8 and 4."""
        super().__init__()
        self.skip_proj_8 = nn.Conv2d(image_dims[1], decoder_dims[0], kernel_size=1)
        self.skip_proj_4 = nn.Conv2d(image_dims[2], decoder_dims[1], kernel_size=1)
        self.up_16_to_8 = UpsampleBlock(decoder_dims[0], decoder_dims[1])
        self.up_8_to_4 = UpsampleBlock(decoder_dims[1], decoder_dims[2])
        self.logit_head = nn.Conv2d(decoder_dims[2], 1, kernel_size=1)
        self.sensory_update = MultiscaleSensoryUpdate(decoder_dims, sensory_dim)

    def forward(
        self,
        features_16_BNCHW: torch.Tensor,
        image_8_BCHW: torch.Tensor,
        image_4_BCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> DecoderOutput:
        batch, num_objects = features_16_BNCHW.shape[:2]
        features_8_BNCHW = self.up_16_to_8(features_16_BNCHW, self.skip_proj_8(image_8_BCHW))
        features_4_BNCHW = self.up_8_to_4(features_8_BNCHW, self.skip_proj_4(image_4_BCHW))
        logits_D1HW = self.logit_head(features_4_BNCHW.flatten(0, 1))
        logits_BNHW = logits_D1HW.view(batch, num_objects, *logits_D1HW.shape[-2:])
        sensory_BNCHW = self.sensory_update(
            features_16_BNCHW,
            features_8_BNCHW,
            torch.cat([features_4_BNCHW, logits_BNHW.unsqueeze(2)], dim=2),
            sensory_BNCHW,
        )
        return DecoderOutput(logits_BNHW, sensory_BNCHW)
