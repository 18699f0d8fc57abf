"""Sensory memory: a per-object hidden map at stride 16, updated GRU-style twice per frame.

1. In the mask decoder, from its multi-scale features (``MultiscaleSensoryUpdate``), while segmenting.
2. In the mask encoder, from the new mask value (``DeepSensoryUpdate``), while memorising.

Both share the gated update ``h' = f * h * (1 - u) + u * tanh(c)`` (forget gate ``f``, update gate ``u``,
candidate ``c``), where ``f, u, c`` are the three thirds of one conv's output channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gated_sensory_update(hidden_BNCHW: torch.Tensor, gates_BNCHW: torch.Tensor) -> torch.Tensor:
    """Apply the GRU-like update to ``hidden`` (C channels) from ``gates`` (3C channels: forget, update, candidate)."""
    dim = gates_BNCHW.shape[2] // 3
    forget_BNCHW = torch.sigmoid(gates_BNCHW[:, :, :dim])
    update_BNCHW = torch.sigmoid(gates_BNCHW[:, :, dim:2 * dim])
    candidate_BNCHW = torch.tanh(gates_BNCHW[:, :, 2 * dim:])
    return forget_BNCHW * hidden_BNCHW * (1.0 - update_BNCHW) + update_BNCHW * candidate_BNCHW


class DeepSensoryUpdate(nn.Module):
    """Update from the mask encoder's per-object value (the "deep update" done at every memory write)."""

    def __init__(self, value_dim: int, sensory_dim: int):
        super().__init__()
        self.gates = nn.Conv2d(value_dim + sensory_dim, 3 * sensory_dim, kernel_size=3, padding=1)

    def forward(self, value_BNCHW: torch.Tensor, sensory_BNCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = value_BNCHW.shape[:2]
        inputs_DCHW = torch.cat([value_BNCHW, sensory_BNCHW], dim=2).flatten(0, 1)
        gates_DCHW = self.gates(inputs_DCHW)
        return gated_sensory_update(sensory_BNCHW, gates_DCHW.view(batch, num_objects, *gates_DCHW.shape[1:]))


class MultiscaleSensoryUpdate(nn.Module):
    """Update from the mask decoder's features at strides 16, 8 and 4 (the stride-4 map carries the object's
    logit as one extra channel); the finer maps are area-pooled down to stride 16 and the three projections
    summed before the gated update."""

    def __init__(self, decoder_dims: tuple[int, int, int], sensory_dim: int):
        super().__init__()
        dim_16, dim_8, dim_4 = decoder_dims
        self.proj_16 = nn.Conv2d(dim_16, sensory_dim, kernel_size=1)
        self.proj_8 = nn.Conv2d(dim_8, sensory_dim, kernel_size=1)
        self.proj_4 = nn.Conv2d(dim_4 + 1, sensory_dim, kernel_size=1)
        self.gates = nn.Conv2d(2 * sensory_dim, 3 * sensory_dim, kernel_size=3, padding=1)

    def forward(
        self,
        features_16_BNCHW: torch.Tensor,
        features_8_BNCHW: torch.Tensor,
        features_4_BNCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> torch.Tensor:
        batch, num_objects = sensory_BNCHW.shape[:2]
        pooled_8_DCHW = F.interpolate(features_8_BNCHW.flatten(0, 1), scale_factor=1 / 2, mode="area")
        pooled_4_DCHW = F.interpolate(features_4_BNCHW.flatten(0, 1), scale_factor=1 / 4, mode="area")
        summed_DCHW = (
            self.proj_16(features_16_BNCHW.flatten(0, 1)) + self.proj_8(pooled_8_DCHW) + self.proj_4(pooled_4_DCHW)
        )
        gates_DCHW = self.gates(torch.cat([summed_DCHW, sensory_BNCHW.flatten(0, 1)], dim=1))
        return gated_sensory_update(sensory_BNCHW, gates_DCHW.view(batch, num_objects, *gates_DCHW.shape[1:]))
