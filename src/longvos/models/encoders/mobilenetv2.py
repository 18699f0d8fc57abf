"""MobileNetV2 encoder in the torchvision parameter layout (``features.0..18``), dilated to output stride 16.

This is the encoder of the official MAVOS / DeAOT-L ``mobilenetv2`` configs: the stride-32 part of the network
keeps stride 16 and dilates instead, and the network is cut into four stages
``features[0:4] / [4:7] / [7:14] / [14:]`` giving ``[s4 (24 ch), s8 (32), s16 (96), s16' (1280)]``.
"""
from __future__ import annotations

import torch
from torch import nn

from longvos.models.layers import onednn
from longvos.models.layers.norm import FrozenBatchNorm2d, NormFactory

# (expansion t, output channels c, repeats n, stride s) of each inverted-residual group, width multiplier 1.0.
_INVERTED_RESIDUAL_GROUPS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
#: ``features`` index where each output stage ends (exclusive): s4, s8, s16, s16'.
_STAGE_ENDS = (4, 7, 14, 19)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> norm -> ReLU6, as an ``nn.Sequential`` so keys are ``.0.weight`` / ``.1.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm_layer: NormFactory = FrozenBatchNorm2d) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
            norm_layer(out_channels),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        conv, norm = self[0], self[1]
        if not (onednn.usable(x_BCHW, conv.weight) and onednn.foldable(norm)):
            return super().forward(x_BCHW)
        # Inference on CPU: the norm folded into the convolution, the ReLU6 fused (1x1) or in place (3x3).
        return onednn.conv_bn(conv, norm, x_BCHW, "relu6")


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), with a residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, expand_ratio: int,
                 norm_layer: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        hidden_channels = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden_channels, kernel_size=1, norm_layer=norm_layer))
        layers += [
            ConvBNReLU6(hidden_channels, hidden_channels, stride=stride, dilation=dilation, groups=hidden_channels,
                        norm_layer=norm_layer),
            nn.Conv2d(hidden_channels, out_channels, 1, bias=False),
            norm_layer(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        project, norm = self.conv[-2], self.conv[-1]
        if onednn.usable(x_BCHW, project.weight) and onednn.foldable(norm):
            # Inference on CPU (see ConvBNReLU6): the projection with its norm folded in and the residual added by
            # the same oneDNN call.
            hidden_BCHW = x_BCHW
            for block in self.conv[:-2]:
                hidden_BCHW = block(hidden_BCHW)
            return onednn.conv_bn(project, norm, hidden_BCHW, residual_BOHW=x_BCHW if self.use_residual else None)
        if self.use_residual:
            return x_BCHW + self.conv(x_BCHW)
        return self.conv(x_BCHW)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 trunk returning ``[s4, s8, s16, s16']`` feature maps (see the module docstring)."""

    #: Mean/std (RGB in [0, 1]) the ImageNet weights were trained with; the VOS model applies them.
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(self, output_stride: int = 16, in_channels: int = 3,
                 norm_layer: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(in_channels, _STEM_CHANNELS, stride=2, norm_layer=norm_layer)]
        current_stride, dilation = 2, 1
        channels = _STEM_CHANNELS
        for expand_ratio, out_channels, repeats, stride in _INVERTED_RESIDUAL_GROUPS:
            # Once the output stride is reached, a strided group keeps the resolution instead: its first block
            # still uses the dilation reached so far and the later blocks use the multiplied one (official rule;
            # with output stride 16 that makes features[14] dilation 1 and features[15..17] dilation 2).
            first_dilation = dilation
            if current_stride == output_stride:
                dilation *= stride
                stride = 1
            else:
                current_stride *= stride
            for i in range(repeats):
                features.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1,
                                                 first_dilation if i == 0 else dilation, expand_ratio, norm_layer))
                channels = out_channels
        features.append(ConvBNReLU6(channels, _LAST_CHANNELS, kernel_size=1, norm_layer=norm_layer))
        self.features = nn.Sequential(*features)
        self.channels: tuple[int, int, int, int] = (24, 32, 96, _LAST_CHANNELS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, image_B3HW: torch.Tensor) -> list[torch.Tensor]:
        maps: list[torch.Tensor] = []
        x = image_B3HW
        start = 0
        for end in _STAGE_ENDS:
            x = self.features[start:end](x)
            maps.append(x)
            start = end
        return maps


def mobilenet_v2(in_channels: int = 3, norm_layer: NormFactory = FrozenBatchNorm2d) -> MobileNetV2Encoder:
    """The MAVOS / DeAOT-L MobileNetV2 encoder (output stride 16, frozen BN by default)."""
    return MobileNetV2Encoder(output_stride=16, in_channels=in_channels, norm_layer=norm_layer)
