"""What an AOT-family model remembers of a video, and the pluggable long-term memory designs.

Per E-LSTT layer a memory holds keys and values as batch-first tokens. The values are stored concatenated,
``[visual value | identity value]``, because that is how both the long-term and the short-term propagation read
them. Keys are never mask-dependent (the identity lives in the values only), so a frame's keys are the same
whatever objects it holds.

The short-term memory is always the last frame written. The long-term memory is where the designs differ; each is a
:class:`LongTermMemory` strategy that turns (old long-term memory, new frame memory) into the next long-term memory:

- ``growing`` (DeAOT): prepend every memorised frame; the memory grows by one frame per update.
- ``ref+prev``: the reference frame plus the latest memorised frame, replaced at each update (constant size).
- ``mca`` (MAVOS): the reference frame plus a *dynamic* frame; each update replaces the dynamic frame by the
  modulated cross-attention of the new frame (queries) over the old dynamic frame (context). Constant size.

New frames go in front and the reference frame stays last (the official token order, which the attention does not
care about but the golden memory dumps do). When updates happen is decided in one place, :func:`long_term_update_due`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from longvos.models.aot.config import MEMORY_DESIGNS
from longvos.models.aot.mca import ModulatedCrossAttention


@dataclass
class LayerMemory:
    """Memory of one E-LSTT layer for one or more frames, tokens ``n = frame * H*W + y * W + x``.

    ``key_BNC`` is ``(B, frames * H*W, qk_dim)``; ``value_BNC`` is ``(B, frames * H*W, 2 * value_dim)``, the
    visual value in the first half of the channels and the mask-fused identity value in the second.
    """

    key_BNC: torch.Tensor
    value_BNC: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.key_BNC.shape[1]

    @property
    def visual_value_BNC(self) -> torch.Tensor:
        return self.value_BNC[..., : self.value_BNC.shape[-1] // 2]

    @property
    def id_value_BNC(self) -> torch.Tensor:
        return self.value_BNC[..., self.value_BNC.shape[-1] // 2 :]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key_BNC, self.value_BNC

    def tokens(self, start: int, stop: int | None = None) -> "LayerMemory":
        """The memory of tokens ``[start, stop)`` (views, no copy)."""
        return LayerMemory(self.key_BNC[:, start:stop], self.value_BNC[:, start:stop])

    @staticmethod
    def cat(newest_first: list["LayerMemory"]) -> "LayerMemory":
        """Concatenate memories along the tokens, in the given order (the official order is newest first)."""
        return LayerMemory(torch.cat([m.key_BNC for m in newest_first], dim=1),
                           torch.cat([m.value_BNC for m in newest_first], dim=1))


@dataclass
class AOTMemory:
    """Everything one pass (up to ``max_objects`` objects) remembers of a video.

    ``frame_step`` counts the frames written since the first reference frame (which is step 0);
    ``last_update_step`` is the step of the last long-term update (a reference frame counts as one).
    """

    long_term: list[LayerMemory]
    short_term: list[LayerMemory]
    grid_hw: tuple[int, int]
    frame_step: int = 0
    last_update_step: int = 0

    @property
    def long_term_frames(self) -> int:
        """Frames held by the long-term memory (the same in every layer)."""
        height, width = self.grid_hw
        return self.long_term[0].num_tokens // (height * width)

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in (*self.long_term, *self.short_term) for t in layer.tensors()]

    def nbytes(self) -> int:
        return storage_nbytes(self.tensors())

    def replace(self, **changes) -> "AOTMemory":
        return dataclasses.replace(self, **changes)


def storage_nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``: right after a reference frame the long- and short-term
    memories are the same tensors, and they must be counted once."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), tensor.device)] = storage.nbytes()
    return sum(storages.values())


def long_term_update_due(frame_step: int, last_update_step: int, gap: int) -> bool:
    """The one home of the long-term schedule: update when ``frame_step - last_update_step >= gap`` (official)."""
    return frame_step - last_update_step >= gap


class LongTermMemory(Protocol):
    """A long-term memory design: how a newly memorised frame enters the long-term memory."""

    name: str
    #: Whether the memory stays the same size however long the video (``ref+prev`` and ``mca``).
    constant_size: bool
    #: The most frames the long-term memory holds (``None``: no bound, it grows); a state snapshot with more is
    #: refused.
    max_frames: int | None

    def update(self, old: list[LayerMemory], new: list[LayerMemory], grid_hw: tuple[int, int]) -> list[LayerMemory]:
        """The long-term memory after memorising the frame ``new`` (one :class:`LayerMemory` per layer)."""
        ...


class GrowingMemory:
    """DeAOT: every memorised frame is kept (prepended); memory grows with the video."""

    name = "growing"
    constant_size = False
    max_frames = None

    def update(self, old: list[LayerMemory], new: list[LayerMemory], grid_hw: tuple[int, int]) -> list[LayerMemory]:
        return [LayerMemory.cat([new_layer, old_layer]) for new_layer, old_layer in zip(new, old)]


class ReferencePlusPreviousMemory:
    """The reference frame plus the most recently memorised frame, which each update replaces."""

    name = "ref+prev"
    constant_size = True
    max_frames = 2  # the reference frame, and the latest memorised frame after the first update

    def update(self, old: list[LayerMemory], new: list[LayerMemory], grid_hw: tuple[int, int]) -> list[LayerMemory]:
        frame_tokens = grid_hw[0] * grid_hw[1]
        # The reference frame is always the last frame_tokens tokens.
        return [LayerMemory.cat([new_layer, old_layer.tokens(old_layer.num_tokens - frame_tokens)])
                for new_layer, old_layer in zip(new, old)]


class ModulatedCrossAttentionMemory:
    """MAVOS: ``[dynamic, reference]``; each update sets ``dynamic = MCA(new frame, old dynamic)``.

    The first update after the reference only concatenates (there is no dynamic frame yet to fuse with), exactly as
    the official engine does. Keys, visual values and identity values each have their own MCA block per layer.
    """

    name = "mca"
    constant_size = True
    max_frames = 2  # the reference frame, and the dynamic frame after the first update

    def __init__(self, fusion: "MemoryFusion"):
        self.fusion = fusion

    def update(self, old: list[LayerMemory], new: list[LayerMemory], grid_hw: tuple[int, int]) -> list[LayerMemory]:
        updated = []
        for layer_fusion, new_layer, old_layer in zip(self.fusion.layers, new, old):
            frame_tokens = new_layer.num_tokens
            if old_layer.num_tokens == frame_tokens:  # reference only: start the dynamic slot
                updated.append(LayerMemory.cat([new_layer, old_layer]))
                continue
            dynamic = old_layer.tokens(0, frame_tokens)
            fused = layer_fusion(new_layer, dynamic, grid_hw)
            updated.append(LayerMemory.cat([fused, old_layer.tokens(frame_tokens)]))
        return updated


class LayerMemoryFusion(nn.Module):
    """The three MCA blocks of one layer: keys, visual values and identity values are fused separately."""

    def __init__(self, qk_dim: int, value_dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.key = ModulatedCrossAttention(qk_dim, num_heads=num_heads, drop_path=drop_path)
        self.value = ModulatedCrossAttention(value_dim, num_heads=num_heads, drop_path=drop_path)
        self.id_value = ModulatedCrossAttention(value_dim, num_heads=num_heads, drop_path=drop_path)

    def forward(self, new: LayerMemory, context: LayerMemory, grid_hw: tuple[int, int]) -> LayerMemory:
        key_BNC = self.key(new.key_BNC, context.key_BNC, grid_hw)
        value_BNC = self.value(new.visual_value_BNC, context.visual_value_BNC, grid_hw)
        id_value_BNC = self.id_value(new.id_value_BNC, context.id_value_BNC, grid_hw)
        return LayerMemory(key_BNC, torch.cat([value_BNC, id_value_BNC], dim=-1))


class MemoryFusion(nn.Module):
    """MAVOS's modulated cross-attention blocks, one :class:`LayerMemoryFusion` per E-LSTT layer."""

    def __init__(self, num_layers: int, qk_dim: int, value_dim: int, num_heads: int = 4, drop_path: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            LayerMemoryFusion(qk_dim, value_dim, num_heads, drop_path) for _ in range(num_layers))

    def reset_to_identity(self) -> None:
        """Every MCA block returns its new memory unchanged (see :meth:`ModulatedCrossAttention.reset_to_identity`)."""
        for module in self.modules():
            if isinstance(module, ModulatedCrossAttention):
                module.reset_to_identity()


def make_long_term_memory(design: str, fusion: MemoryFusion | None) -> LongTermMemory:
    """The strategy object for a design name (``growing``, ``ref+prev``, ``mca``)."""
    if design == "growing":
        return GrowingMemory()
    if design == "ref+prev":
        return ReferencePlusPreviousMemory()
    if design == "mca":
        if fusion is None:
            raise ValueError("memory='mca' needs the modulated cross-attention blocks, which this model does not have")
        return ModulatedCrossAttentionMemory(fusion)
    raise ValueError(f"unknown memory design {design!r}; use one of {', '.join(MEMORY_DESIGNS)}")
