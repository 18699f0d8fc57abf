"""The named LiVOS models: the official ``LIVOS(model_type='base')`` (ResNet-50 image encoder)."""
from __future__ import annotations

from typing import Any

from longvos.models.livos.config import LiVOSConfig
from longvos.models.livos.model import LiVOS
from longvos.models.registry import register_model
from longvos.models.livos import official as _official  # noqa: F401  (registers the checkpoint key map)

#: LiVOS's only memory design, under the name other tools (``bench --memory``) label it with.
MEMORY_DESIGN = "linear"


@register_model("livos-r50", family="livos",
                description="LiVOS, ResNet-50 image / ResNet-18 mask encoder (official `livos-*-480p` weights)")
def build_livos_r50(memory: str | None = None, mem_gap: int | None = None, **overrides: Any) -> LiVOS:
    if memory not in (None, MEMORY_DESIGN):
        raise ValueError(f"LiVOS has one memory design, the gated linear state ({MEMORY_DESIGN!r}); "
                         f"memory={memory!r} does not apply")
    if mem_gap not in (None, 1):
        raise ValueError(f"LiVOS writes its memory on every frame; mem_gap={mem_gap} does not apply")
    return LiVOS(LiVOSConfig().replace(**overrides), name="livos-r50")
