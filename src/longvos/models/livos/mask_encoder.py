"""The mask encoder: (frame, one object's mask, the other objects' masks) -> that object's value at stride 16.

A 5-channel ResNet-18 (to layer3) sees the normalised RGB frame, the object's soft mask and the union of the
other objects' masks; its features are fused with the frame's pixel features. The value then deep-updates the
sensory memory (the second sensory update of each frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from longvos.models.encoders import build_encoder
from longvos.models.livos.blocks import FeatureFuser
from longvos.models.livos.pixel_fusion import others_union
from longvos.models.livos.sensory import DeepSensoryUpdate


@dataclass
class EncodedMask:
    value_BNCHW: torch.Tensor
    sensory_BNCHW: torch.Tensor  #: sensory memory after the deep update


class MaskEncoder(nn.Module):
    def __init__(self, backbone_name: str, pixel_dim: int, value_dim: int, sensory_dim: int):
        super().__init__()
        # Frozen BN: numerically the same as the official eval-mode BatchNorm2d, and immune to `.train()`.
        self.backbone = build_encoder(backbone_name, in_channels=5, frozen_bn=True)
        self.fuser = FeatureFuser(pixel_dim, self.backbone.channels[2], value_dim)
        self.sensory_update = DeepSensoryUpdate(value_dim, sensory_dim)

    def forward(
        self,
        image_norm_B3HW: torch.Tensor,
        pixels_BCHW: torch.Tensor,
        masks_BNHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> EncodedMask:
        """``image_norm_B3HW``: the mean/std-normalised frame; ``masks_BNHW``: soft masks at its resolution."""
        batch, num_objects = masks_BNHW.shape[:2]
        inputs_BN5HW = torch.cat(
            [
                image_norm_B3HW.unsqueeze(1).expand(-1, num_objects, -1, -1, -1),
                masks_BNHW.unsqueeze(2).to(image_norm_B3HW.dtype),
                others_union(masks_BNHW).unsqueeze(2).to(image_norm_B3HW.dtype),
            ],
            dim=2,
        )
        features_DCHW = self.backbone(inputs_BN5HW.flatten(0, 1))[2]
        features_BNCHW = features_DCHW.view(batch, num_objects, *features_DCHW.shape[1:])
        value_BNCHW = self.fuser(pixels_BCHW, features_BNCHW)
        return EncodedMask(value_BNCHW, self.sensory_update(value_BNCHW, sensory_BNCHW))
