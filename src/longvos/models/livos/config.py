"""Typed configuration of a LiVOS model; the defaults are the official ``LIVOS(model_type='base')``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LiVOSConfig:
    image_encoder: str = "resnet50"  # to layer3: features at strides 4, 8, 16
    mask_encoder: str = "resnet18"  # 5-channel input (RGB, this object, the other objects)
    key_dim: int = 64  # matching keys: the rows of each object's state S
    value_dim: int = 256  # mask values (the columns of S), read-out and object-transformer width
    pixel_dim: int = 256  # pixel-feature projection (also the key projection's hidden width)
    sensory_dim: int = 256
    num_queries: int = 16  # object queries / summaries per object (half foreground, half background)
    num_blocks: int = 3  # object-transformer blocks
    num_heads: int = 8
    ff_dim: int = 2048
    decoder_dims: tuple[int, int] = (128, 128)  # mask-decoder widths at strides 8 and 4
    pe_scale: float = 32.0  # positional encoding: coordinates span [0, pe_scale]
    pe_temperature: float = 128.0
    stride: int = 16  # frames are zero-padded to a multiple of this

    def __post_init__(self) -> None:
        if self.value_dim % self.num_heads:
            raise ValueError(f"value_dim ({self.value_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.value_dim % 4:
            raise ValueError(f"value_dim must be a multiple of 4 (2-D sine encoding), got {self.value_dim}")
        if self.num_queries < 2 or self.num_queries % 2:
            raise ValueError(f"num_queries must be even and >= 2 (fg/bg halves), got {self.num_queries}")

    @property
    def summary_dim(self) -> int:
        """Width of one object-memory summary: ``value_dim`` weighted sums plus the area."""
        return self.value_dim + 1

    def replace(self, **changes: Any) -> "LiVOSConfig":
        """A copy with some fields changed; unknown field names give a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown LiVOS config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it can sit in a ``weights_only`` checkpoint."""
        return dataclasses.asdict(self)
