"""The named AOT-family models: the official MAVOS and DeAOT-L configurations, and our smaller ``mavos-lite``.

Official test-time memory intervals: 10 for MAVOS, 5 for DeAOT-L (aot-benchmark ``deaotl.py``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from longvos.models.aot.config import AOTConfig
from longvos.models.aot.model import AOTModel
from longvos.models.base import PAPER_MAX_SIZE
from longvos.models.registry import register_model
from longvos.models.aot import official as _official  # noqa: F401  (registers the checkpoint key map)

_MAVOS = AOTConfig(memory="mca", mem_gap=10, mca_blocks=True)
_DEAOT = AOTConfig(memory="growing", mem_gap=5, mca_blocks=False)

class ZooEntry(NamedTuple):
    config: AOTConfig
    description: str
    max_size: int = PAPER_MAX_SIZE  # the short side the weights are most accurate at
    max_part_distance: float | None = None  # far pieces of a mask dropped (engine/parts.py); None: the official way


AOT_MODELS: dict[str, ZooEntry] = {
    "mavos-mnv2": ZooEntry(_MAVOS.replace(encoder="mobilenetv2"), "MAVOS, MobileNetV2 (official `mavos`)"),
    "mavos-r50": ZooEntry(_MAVOS.replace(encoder="resnet50"), "MAVOS, ResNet-50 (official `r50_mavos`)"),
    "mavos-swinb": ZooEntry(_MAVOS.replace(encoder="swin_base", align_corners=False),
                            "MAVOS, Swin-B (official `swinb_mavos`)"),
    "deaot-mnv2": ZooEntry(_DEAOT.replace(encoder="mobilenetv2"), "DeAOT-L, MobileNetV2 (official `deaotl`)"),
    "deaot-r50": ZooEntry(_DEAOT.replace(encoder="resnet50"), "DeAOT-L, ResNet-50 (official `r50_deaotl`)"),
    "deaot-swinb": ZooEntry(_DEAOT.replace(encoder="swin_base", align_corners=False),
                            "DeAOT-L, Swin-B (official `swinb_deaotl`)"),
    # Our default small model: MCA memory, half width; trained by longvos (no official weights), last on 321-pixel
    # crops, so it sees frames at short side 320. Its memory interval, 5, was chosen on the validation split
    # (docs/model-card.md), near how it was trained: memory written every 2 sampled frames, 2-10 video frames apart.
    # It runs one object per pass: its weights never learnt to tell the slots of one pass apart (the model card's
    # "It has not learnt object identities"), so two objects in one pass come back as a speckle of both ids. For the
    # same reason it marks look-alikes of its objects; pieces of a mask farther than half the object's size from where
    # the object was on the frame before are dropped (engine/parts.py; 0.5 chosen on the validation split).
    "mavos-lite": ZooEntry(_MAVOS.replace(encoder="efficientnet_lite0", d_model=128, mem_gap=5, objects_per_pass=1),
                           "MAVOS design, EfficientNet-Lite0, d_model 128 (longvos-trained; one object per pass)",
                           max_size=320, max_part_distance=0.5),
}


def _builder(name: str, entry: ZooEntry):
    def build(pretrained_encoder: bool = False, **overrides: Any) -> AOTModel:
        # pretrained_encoder loads bundled ImageNet weights (EfficientNet-Lite0 only); it is a build option, not
        # part of the config, because a checkpoint's weights replace it anyway.
        return AOTModel(entry.config.replace(**overrides), pretrained_encoder=pretrained_encoder, name=name,
                        default_max_size=entry.max_size, default_max_part_distance=entry.max_part_distance)

    return build


for _name, _entry in AOT_MODELS.items():
    register_model(_name, family="aot", description=_entry.description, max_size=_entry.max_size)(
        _builder(_name, _entry))
