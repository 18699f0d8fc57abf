"""Gated linear matching, the memory of LiVOS.

Each object keeps one matrix ``S`` (key dim x value dim) instead of a bank of past frames. With the per-pixel
feature map ``phi`` (a softmax over the key channels, so every pixel's key is a distribution over them):

    read:   readout_n(p) = S_n^T phi(q_p) / z_n,    z_n = sum_{c,p} phi(q)[c, p] * keysum_n[c, p]
    write:  S_n <- S_n * diag(g) + sum_p phi(k_p)^T v_n(p),    keysum_n <- keysum_n + phi(k)

``g`` (the gate, one value per value channel, shared by all objects) comes from the frame being written.
``z`` is the official *scalar* normaliser: one number per object and frame, position-aligned with the running
per-pixel key sum, which the gate does not decay. Each object keeps its own key sum, started on the frame it
appeared, which is what the official code computes for late objects by subtracting a key-sum snapshot.

All matching maths runs in float32 with autocast off: the sums grow with the video, and reduced precision there
would drift on long videos whatever the compute dtype of the networks around it.
"""
from __future__ import annotations

import torch
from torch import nn


class KeyProjection(nn.Module):
    """Stride-16 image features -> matching keys: a 1x1 reduction then a 3x3 conv, no activation between."""

    def __init__(self, in_dim: int, hidden_dim: int, key_dim: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_dim, hidden_dim, kernel_size=1)
        self.project = nn.Conv2d(hidden_dim, key_dim, kernel_size=3, padding=1)

    def forward(self, features_BCHW: torch.Tensor) -> torch.Tensor:
        return self.project(self.reduce(features_BCHW))


class GateProjection(nn.Module):
    """Stride-16 image features -> the gate ``g`` in (0, 1)^value_dim: per-pixel sigmoid of a 1x1 conv,
    averaged over the image (so one gate vector per frame)."""

    def __init__(self, in_dim: int, value_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, value_dim, kernel_size=1)

    def forward(self, features_BCHW: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(features_BCHW)).mean(dim=(2, 3))


def _fp32(device: torch.device) -> torch.autocast:
    """A context with autocast off on ``device``: the matching maths always runs in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def key_feature_map(key_BKHW: torch.Tensor) -> torch.Tensor:
    """``phi``: softmax over the key channels at each pixel, in float32."""
    with _fp32(key_BKHW.device):
        return torch.softmax(key_BKHW.float(), dim=1)


def read_memory(
    phi_query_BKHW: torch.Tensor, state_BNKV: torch.Tensor, key_sum_BNKHW: torch.Tensor
) -> torch.Tensor:
    """Normalised read-out ``(B, N, V, H, W)``: ``S_n^T phi(q) / z_n`` with the scalar normaliser ``z_n``."""
    with _fp32(phi_query_BKHW.device):
        phi_BKHW = phi_query_BKHW.float()
        readout_BNVHW = torch.einsum("bkhw,bnkv->bnvhw", phi_BKHW, state_BNKV)
        normaliser_BN = torch.einsum("bkhw,bnkhw->bn", phi_BKHW, key_sum_BNKHW)
        return readout_BNVHW / normaliser_BN[:, :, None, None, None]


def write_memory(
    state_BNKV: torch.Tensor,
    key_sum_BNKHW: torch.Tensor,
    phi_key_BKHW: torch.Tensor,
    value_BNVHW: torch.Tensor,
    gate_BV: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One memory write: returns the new ``(S, key sum)``. ``S`` is gated along its value axis, then the
    frame's outer products ``sum_p phi(k_p) v(p)^T`` are added; the key sum is not gated."""
    with _fp32(phi_key_BKHW.device):
        phi_BKHW = phi_key_BKHW.float()
        new_BNKV = torch.einsum("bkhw,bnvhw->bnkv", phi_BKHW, value_BNVHW.float())
        state_BNKV = state_BNKV * gate_BV.float()[:, None, None, :] + new_BNKV
        key_sum_BNKHW = key_sum_BNKHW + phi_BKHW.unsqueeze(1)
        return state_BNKV, key_sum_BNKHW
