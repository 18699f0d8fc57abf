"""DeAOT's gated propagation module (the paper's E-LSTT): the layers that carry object identities to a new frame.

Each layer has two branches of tokens, *visual* (what the frame looks like) and *identity* (which object is where),
and three propagations:

1. long-term: global attention from the frame's queries to every long-term memory token;
2. short-term: 15 x 15 local attention to the previous frame, with a content-dependent relative bias;
3. self-propagation: global attention of the frame over itself.

The first two read values ``[visual | identity]`` from memory, gated by the frame's own gates; their sum is added to
both branches. Keys equal queries (one shared projection), so a frame's keys never depend on its mask. Layer 0 has
no identity input: its identity branch starts at zero and its identity gate is the constant one.

On a reference frame (``id_emb_BNC`` given) each layer reads its own keys/values as both memories.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from longvos.models.aot.config import AOTConfig
from longvos.models.aot.local_attention import LocalGatedPropagation
from longvos.models.aot.memory import LayerMemory
from longvos.models.layers import onednn
from longvos.models.layers.attention import GatedPropagation, GatedSelfPropagation, tokens_to_map
from longvos.models.layers.drop import DropPath


@dataclass
class FrameParts:
    """What one layer computed on a frame that its memory will need once the frame's mask is known."""

    key_BNC: torch.Tensor  # (B, H*W, qk_dim)
    value_BNC: torch.Tensor  # (B, H*W, value_dim): the visual value
    id_input_BNC: torch.Tensor | None  # the layer's normalised identity input (None in layer 0)


@dataclass
class Propagation:
    """The E-LSTT result on one frame."""

    output_BNC: torch.Tensor  # (B, H*W, 2 * d_model) last layer [visual | identity] after GroupNorm: decoder input
    layer_outputs: list[torch.Tensor]  # raw [visual | identity] of every layer (no norm), for inspection
    parts: list[FrameParts]  # per layer, to build this frame's memory once its mask is known
    grid_hw: tuple[int, int]
    reference_memory: list[LayerMemory] | None = None  # a reference frame's own memory (already mask-fused)


class GatedPropagationLayer(nn.Module):
    """One E-LSTT layer (official ``GatedPropagationModule``, single head)."""

    def __init__(self, config: AOTConfig, first: bool):
        super().__init__()
        d_model, qk_dim, value_dim = config.d_model, config.qk_dim, config.value_dim
        self.first = first
        self.qk_dim, self.value_dim = qk_dim, value_dim

        self.visual_norm = nn.LayerNorm(d_model)
        self.query_value = onednn.Linear(d_model, qk_dim + value_dim)
        self.visual_gate = onednn.Linear(d_model, value_dim)
        if first:
            self.id_value = onednn.Linear(d_model, value_dim)
        else:
            self.id_norm = nn.LayerNorm(d_model)
            self.id_value = onednn.Linear(2 * d_model, value_dim)
            self.id_gate = onednn.Linear(d_model, value_dim)

        # Memory values are [visual | identity] (2 * value_dim); outputs are [visual | identity] (2 * d_model).
        self.long_term = GatedPropagation(2 * value_dim, 2 * d_model, dwconv_dropout=config.dwconv_dropout)
        self.short_term = LocalGatedPropagation(qk_dim, 2 * value_dim, 2 * d_model,
                                                max_dis=config.local_window // 2, dropout=config.dwconv_dropout)

        self.self_visual_norm = nn.LayerNorm(d_model)
        self.self_id_norm = nn.LayerNorm(d_model)
        self.self_propagation = GatedSelfPropagation(2 * d_model, qk_dim, 2 * value_dim,
                                                     dwconv_dropout=config.dwconv_dropout)
        self.droppath = DropPath(config.droppath)

    def memory_from(self, parts: FrameParts, id_emb_BNC: torch.Tensor) -> LayerMemory:
        """This layer's memory of a frame: keys, and values with the identity fused from the frame's mask."""
        id_source_BNC = id_emb_BNC if parts.id_input_BNC is None else torch.cat([parts.id_input_BNC, id_emb_BNC], -1)
        id_value_BNC = onednn.linear(id_source_BNC, self.id_value.weight, self.id_value.bias, "silu")
        # The key is a slice of the query/value projection: copy it so the memory does not keep the whole output.
        return LayerMemory(parts.key_BNC.contiguous(), torch.cat([parts.value_BNC, id_value_BNC], dim=-1))

    def forward(self, visual_BNC: torch.Tensor, identity_BNC: torch.Tensor | None,
                long_term: LayerMemory | None, short_term: LayerMemory | None, grid_hw: tuple[int, int],
                id_emb_BNC: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, FrameParts, LayerMemory | None]:
        """Returns the new visual and identity tokens, this frame's parts and, on a reference frame, its memory."""
        normed_BNC = self.visual_norm(visual_BNC)
        # One projection makes queries (= keys) and values; computed as two products (row slices of the weight), so
        # that the values get their SiLU fused and the keys come out contiguous for the memory.
        weight, bias = self.query_value.weight, self.query_value.bias
        query_BNQ = onednn.linear(normed_BNC, weight[: self.qk_dim], bias[: self.qk_dim])
        value_BNV = onednn.linear(normed_BNC, weight[self.qk_dim :], bias[self.qk_dim :], "silu")
        visual_gate_BNV = onednn.linear(normed_BNC, self.visual_gate.weight, self.visual_gate.bias, "silu")
        if identity_BNC is None:  # layer 0: no identity yet, the identity half of the read-out is not gated
            id_input_BNC = None
            gate_BNG = torch.cat([visual_gate_BNV, torch.ones_like(visual_gate_BNV)], dim=-1)
        else:
            id_input_BNC = self.id_norm(identity_BNC)
            id_gate_BNV = onednn.linear(id_input_BNC, self.id_gate.weight, self.id_gate.bias, "silu")
            gate_BNG = torch.cat([visual_gate_BNV, id_gate_BNV], dim=-1)
        parts = FrameParts(query_BNQ, value_BNV, id_input_BNC)  # keys are the queries

        own_memory = None
        if id_emb_BNC is not None:
            own_memory = self.memory_from(parts, id_emb_BNC)
            long_term = short_term = own_memory
        if long_term is None or short_term is None:
            raise ValueError("propagation needs a memory to read, or an identity embedding (reference frame)")

        long_BNO = self.long_term(query_BNQ, long_term.key_BNC, long_term.value_BNC, gate_BNG, grid_hw)
        short_BNO = self.short_term(tokens_to_map(query_BNQ, grid_hw), tokens_to_map(short_term.key_BNC, grid_hw),
                                    tokens_to_map(short_term.value_BNC, grid_hw), gate_BNG)
        read_visual_BNC, read_identity_BNC = (long_BNO + short_BNO).chunk(2, dim=-1)
        visual_BNC = visual_BNC + read_visual_BNC
        identity_BNC = read_identity_BNC if identity_BNC is None else identity_BNC + read_identity_BNC

        both_BNO = torch.cat([self.self_visual_norm(visual_BNC), self.self_id_norm(identity_BNC)], dim=-1)
        self_visual_BNC, self_identity_BNC = self.self_propagation(both_BNO, grid_hw).chunk(2, dim=-1)
        visual_BNC = visual_BNC + self.droppath(self_visual_BNC)
        identity_BNC = identity_BNC + self.droppath(self_identity_BNC)
        return visual_BNC, identity_BNC, parts, own_memory


class GatedPropagationStack(nn.Module):
    """The E-LSTT: ``num_layers`` gated propagation layers, then GroupNorm(2) over ``[visual | identity]``."""

    def __init__(self, config: AOTConfig):
        super().__init__()
        self.layers = nn.ModuleList(GatedPropagationLayer(config, first=i == 0) for i in range(config.num_layers))
        self.output_norm = nn.GroupNorm(2, 2 * config.d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        # Official init: Xavier-uniform for every matrix; norms and biases keep the PyTorch defaults.
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def memory_from(self, parts: list[FrameParts], id_emb_BNC: torch.Tensor) -> list[LayerMemory]:
        """Every layer's memory of a frame, given the frame's identity embedding (from its mask)."""
        return [layer.memory_from(layer_parts, id_emb_BNC) for layer, layer_parts in zip(self.layers, parts)]

    def forward(self, tokens_BNC: torch.Tensor, grid_hw: tuple[int, int],
                long_term: list[LayerMemory] | None = None, short_term: list[LayerMemory] | None = None,
                id_emb_BNC: torch.Tensor | None = None) -> Propagation:
        reference = id_emb_BNC is not None
        if not reference and (long_term is None or short_term is None):
            raise ValueError("propagation needs a memory to read, or an identity embedding (reference frame)")
        visual_BNC, identity_BNC = tokens_BNC, None
        layer_outputs, parts, own_memories = [], [], []
        for index, layer in enumerate(self.layers):
            visual_BNC, identity_BNC, layer_parts, own_memory = layer(
                visual_BNC, identity_BNC,
                None if reference else long_term[index], None if reference else short_term[index],
                grid_hw, id_emb_BNC)
            layer_outputs.append(torch.cat([visual_BNC, identity_BNC], dim=-1))
            parts.append(layer_parts)
            own_memories.append(own_memory)
        output_BNC = self.output_norm(layer_outputs[-1].transpose(1, 2)).transpose(1, 2)
        return Propagation(output_BNC, layer_outputs, parts, grid_hw, own_memories if reference else None)
