"""The named LiVOS models: the official ``LIVOS(model_type='base')`` (ResNet-50 image encoder)."""
from __future__ import annotations

from typing import Any

from longvos.models.livos.config import LiVOSConfig
from longvos.models.livos.model import LiVOS
from longvos.models.registry import register_model


@register_model("livos-r50", family="livos",
                description="LiVOS, ResNet-50 image / ResNet-18 mask encoder (official `livos-*-480p` weights)")
def build_livos_r50(**overrides: Any) -> LiVOS:
    return LiVOS(LiVOSConfig().replace(**overrides))
