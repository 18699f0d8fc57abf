"""Typed configuration of an AOT-family model (DeAOT, MAVOS and our own smaller variants)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from longvos.models.base import ModelConfig

#: Long-term memory designs (see :mod:`longvos.models.aot.memory`).
MEMORY_DESIGNS = ("growing", "ref+prev", "mca")


@dataclass(frozen=True)
class AOTConfig(ModelConfig):
    """Every width and switch of an AOT-family model; the official models are instances with the paper's values.

    ``attention_dim`` is the query/key width of the single-head attentions; the official models derive it as
    ``d_model // 2``, which is what ``None`` means.
    """

    family: ClassVar[str] = "AOT"

    encoder: str = "mobilenetv2"
    d_model: int = 256
    attention_dim: int | None = None
    num_layers: int = 3
    max_objects: int = 10  # object slots per pass (decoder channels 1..max_objects); more objects use more passes
    # Objects one pass carries (None: max_objects, as the official engine packs them). 1 runs every object in its own
    # pass, as foreground against everything else (Cutie/XMem-style): for weights that never learnt to tell the
    # slots of one pass apart (mavos-lite, docs/model-card.md), at one E-LSTT run per object and frame.
    objects_per_pass: int | None = None
    align_corners: bool = True  # bilinear upsampling mode; also selects the ID-bank kernel and the size rounding
    expand_ratio: int = 2  # value/gate width per branch = expand_ratio * d_model
    local_window: int = 15  # short-term attention window (15 = max displacement 7)
    memory: str = "mca"
    mem_gap: int = 10  # long-term memory update interval (delta), in frames
    mca_blocks: bool = True  # whether the model has the 3 x 3 modulated cross-attention blocks (MAVOS)
    mca_heads: int = 4
    droppath: float = 0.1  # E-LSTT self-propagation DropPath, active in train mode only
    dwconv_dropout: float = 0.1  # Dropout2d after each depthwise conv of the gated propagations (train mode)
    mca_droppath: float = 0.1
    max_stride: int = 16  # output stride of the encoder: the token grid is the input / 16

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_DESIGNS:
            raise ValueError(f"unknown memory design {self.memory!r}; use one of {', '.join(MEMORY_DESIGNS)}")
        if self.memory == "mca" and not self.mca_blocks:
            raise ValueError(
                "memory='mca' needs the modulated cross-attention blocks, which this model does not have "
                "(DeAOT checkpoints carry no MCA weights); use memory='growing' or 'ref+prev'")
        if self.mem_gap < 1:
            raise ValueError(f"mem_gap must be >= 1 frame, got {self.mem_gap}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.objects_per_pass is not None and not 1 <= self.objects_per_pass <= self.max_objects:
            raise ValueError(f"objects_per_pass must be from 1 to max_objects ({self.max_objects}), "
                             f"got {self.objects_per_pass}")
        if self.local_window % 2 != 1:
            raise ValueError(f"local_window must be odd, got {self.local_window}")

    @property
    def qk_dim(self) -> int:
        """Query/key width of the (single-head) attentions."""
        return self.attention_dim if self.attention_dim is not None else self.d_model // 2

    @property
    def value_dim(self) -> int:
        """Value/gate width of one branch (visual or identity)."""
        return self.expand_ratio * self.d_model

    @property
    def pass_capacity(self) -> int:
        """How many objects one pass carries."""
        return self.max_objects if self.objects_per_pass is None else self.objects_per_pass

    @property
    def num_classes(self) -> int:
        """Decoder output channels: background + one per object slot."""
        return self.max_objects + 1
