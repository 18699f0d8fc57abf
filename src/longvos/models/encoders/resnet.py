"""ResNet encoders (BasicBlock and Bottleneck families) in the torchvision parameter layout.

One configurable trunk serves every ResNet the project needs:
- MAVOS / DeAOT ``resnet50``: frozen BN, layer1..3 at strides 4/8/16 (layer4 removed, as in STM-style VOS);
- LiVOS image encoder: the same ResNet-50 trunk with trainable ``nn.BatchNorm2d`` (its checkpoints carry
  ``num_batches_tracked``);
- LiVOS mask encoder: ResNet-18 layer1..3 on a 5-channel input (RGB + this-object mask + other-objects mask).

Keys are ``conv1, bn1, layer{1..3}.{i}.{conv,bn}{1..3}, layer{i}.0.downsample.{0,1}`` (no ``fc``), so official
weights load after stripping the owner's prefix. With ``last_stage=4`` the trunk also builds ``layer4`` at stride 1
and dilation 2, keeping output stride 16 (the official AOT rule for ``output_stride=16``).
"""
from __future__ import annotations

from typing import Type, Union

import torch
from torch import nn

from longvos.models.layers import onednn
from longvos.models.layers.norm import FrozenBatchNorm2d, NormFactory


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm_layer: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        if _folds(self, x_BCHW):
            residual = x_BCHW if self.downsample is None else onednn.conv_bn(*self.downsample, x_BCHW)
            out = onednn.conv_bn(self.conv1, self.bn1, x_BCHW, "relu")
            return onednn.conv_bn(self.conv2, self.bn2, out, "relu", residual_BOHW=residual)
        residual = x_BCHW if self.downsample is None else self.downsample(x_BCHW)
        out = self.relu(self.bn1(self.conv1(x_BCHW)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, "ResNet v1.5") -> 1x1 expand x4, with a residual."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm_layer: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        if _folds(self, x_BCHW):
            residual = x_BCHW if self.downsample is None else onednn.conv_bn(*self.downsample, x_BCHW)
            out = onednn.conv_bn(self.conv1, self.bn1, x_BCHW, "relu")
            out = onednn.conv_bn(self.conv2, self.bn2, out, "relu")
            return onednn.conv_bn(self.conv3, self.bn3, out, "relu", residual_BOHW=residual)
        residual = x_BCHW if self.downsample is None else self.downsample(x_BCHW)
        out = self.relu(self.bn1(self.conv1(x_BCHW)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


def _folds(block: nn.Module, x_BCHW: torch.Tensor) -> bool:
    """Inference on CPU (:mod:`longvos.models.layers.onednn`): every norm of the block folds into its convolution,
    1x1 convolutions run as oneDNN products on channels-last maps, ReLUs and the residual add are fused."""
    norms = [module for name, module in block.named_modules() if name.startswith(("bn", "downsample.1"))]
    return onednn.usable(x_BCHW, block.conv1.weight) and all(onednn.foldable(norm) for norm in norms)


ResidualBlock = Type[Union[BasicBlock, Bottleneck]]

#: depth -> (block type, blocks per stage layer1..layer4)
_DEPTHS: dict[int, tuple[ResidualBlock, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
# Output stride 16: layer1..3 at strides 1/2/2 after the stride-4 stem; layer4 (if kept) keeps stride 16 and
# dilates by 2 instead.
_STAGE_STRIDES = (1, 2, 2, 1)
_STAGE_DILATIONS = (1, 1, 1, 2)
_STAGE_PLANES = (64, 128, 256, 512)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning ``[layer1 (s4), layer2 (s8), layer3 (s16), last stage (s16)]``.

    With ``last_stage=3`` (the default, used by MAVOS and LiVOS) the fourth map is layer3 again, the same tensor.
    """

    #: Mean/std (RGB in [0, 1]) the ImageNet weights were trained with; the VOS model applies them.
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(self, depth: int = 50, in_channels: int = 3, norm_layer: NormFactory = FrozenBatchNorm2d,
                 last_stage: int = 3) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if last_stage not in (3, 4):
            raise ValueError(f"ResNet last_stage must be 3 or 4, got {last_stage}")
        block, blocks_per_stage = _DEPTHS[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        stage_channels: list[int] = []
        channels = 64
        for index in range(last_stage):
            layer, channels = _make_stage(block, channels, _STAGE_PLANES[index], blocks_per_stage[index],
                                          _STAGE_STRIDES[index], _STAGE_DILATIONS[index], norm_layer)
            self.add_module(f"layer{index + 1}", layer)
            stage_channels.append(channels)
        self.num_stages = last_stage
        s4, s8, s16 = stage_channels[:3]
        self.channels: tuple[int, int, int, int] = (s4, s8, s16, stage_channels[-1])
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image_BCHW: torch.Tensor) -> list[torch.Tensor]:
        if onednn.usable(image_BCHW, self.conv1.weight) and onednn.foldable(self.bn1):
            # Channels-last maps from here on, so that every 1x1 convolution is a oneDNN product on the map's token
            # matrix (layers/onednn); the outputs keep that layout.
            x = self.maxpool(onednn.conv_bn(self.conv1, self.bn1, onednn.channels_last(image_BCHW), "relu"))
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(image_BCHW))))
        maps: list[torch.Tensor] = []
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
            maps.append(x)
        if self.num_stages == 3:
            maps.append(maps[-1])
        return maps


def _make_stage(block: ResidualBlock, in_channels: int, planes: int, num_blocks: int, stride: int, dilation: int,
                norm_layer: NormFactory) -> tuple[nn.Sequential, int]:
    """One ``layerN``: a first block that changes stride/width (with a projection shortcut) and identity blocks."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                   norm_layer(out_channels))
    # The first block of a dilated stage still sees the previous dilation (official AOT rule: max(d // 2, 1)).
    blocks = [block(in_channels, planes, stride, max(dilation // 2, 1), downsample, norm_layer)]
    blocks += [block(out_channels, planes, 1, dilation, None, norm_layer) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks), out_channels


def resnet50(in_channels: int = 3, norm_layer: NormFactory = FrozenBatchNorm2d) -> ResNetEncoder:
    """ResNet-50 to layer3: the MAVOS/DeAOT ``resnet50`` encoder (frozen BN) or LiVOS' image encoder
    (``norm_layer=nn.BatchNorm2d``)."""
    return ResNetEncoder(50, in_channels, norm_layer)


def resnet18(in_channels: int = 3, norm_layer: NormFactory = FrozenBatchNorm2d) -> ResNetEncoder:
    """ResNet-18 to layer3: LiVOS' mask encoder with ``in_channels=5, norm_layer=nn.BatchNorm2d``."""
    return ResNetEncoder(18, in_channels, norm_layer)
