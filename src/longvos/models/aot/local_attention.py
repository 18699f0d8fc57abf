"""DeAOT short-term propagation: every query pixel attends to a 15x15 window of the previous frame.

This is the official ``LocalGatedPropagation`` (aot-benchmark / MAVOS ``networks/layers/attention.py``) with one head,
as DeAOT and MAVOS use it. The official code builds the 225 local weights and then scatters them into a dense
``HW x HW`` matrix before multiplying by the values; here the window is gathered directly by shifting the zero-padded
key/value maps, one of the 225 offsets at a time. Extra memory is then a few ``(B, C, H, W)`` maps plus the
``(B, 225, H, W)`` weights, independent of ``HW²``, and the arithmetic is the same (225 terms per pixel).

Layouts: maps are ``(B, C, H, W)``; tokens are batch-first ``(B, N, C)`` with ``n = y * W + x``. Window index
``j = (dy + max_dis) * window + (dx + max_dis)`` for the neighbour at ``(y + dy, x + dx)``, as in the official
unfold order (row-major over the window, dy outer). Parameter names equal the official ones
(``relative_emb_k``, ``dw_conv.conv``, ``projection``), so official weights load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.attention import DepthwiseConvDropout, map_to_tokens, tokens_to_map

# The official code subtracts these constants from the logits of out-of-image neighbours rather than assigning -inf
# (1e4 in half precision, where 1e8 would overflow float16). Both make the weight exactly 0; we keep the official
# values so that the logits match the official ones exactly.
_OUTSIDE_PENALTY_FULL = 1e8
_OUTSIDE_PENALTY_HALF = 1e4


def outside_window_mask(height: int, width: int, max_dis: int, device: torch.device) -> torch.Tensor:
    """``(J, H, W)`` bool, True where window offset ``j`` of pixel ``(y, x)`` falls outside the ``H x W`` image."""
    offsets = torch.arange(-max_dis, max_dis + 1, device=device)
    row_DH = offsets[:, None] + torch.arange(height, device=device)
    col_DW = offsets[:, None] + torch.arange(width, device=device)
    rows_outside_DH = (row_DH < 0) | (row_DH >= height)
    cols_outside_DW = (col_DW < 0) | (col_DW >= width)
    outside_DDHW = rows_outside_DH[:, None, :, None] | cols_outside_DW[None, :, None, :]
    return outside_DDHW.reshape(-1, height, width)


def window_dot_products(query_BCHW: torch.Tensor, key_BCHW: torch.Tensor, max_dis: int) -> torch.Tensor:
    """``(B, J, H, W)``: ``query[y, x] · key[y + dy, x + dx]`` with zeros outside the key map (zero padding)."""
    height, width = query_BCHW.shape[-2:]
    window = 2 * max_dis + 1
    padded_key_BCHW = F.pad(key_BCHW, (max_dis, max_dis, max_dis, max_dis))
    dots = [
        (query_BCHW * padded_key_BCHW[:, :, dy : dy + height, dx : dx + width]).sum(dim=1)
        for dy in range(window)
        for dx in range(window)
    ]
    return torch.stack(dots, dim=1)


def window_weighted_sum(weights_BJHW: torch.Tensor, value_BCHW: torch.Tensor, max_dis: int) -> torch.Tensor:
    """``(B, C, H, W)``: ``sum_j weights[j, y, x] * value[y + dy_j, x + dx_j]``, zeros outside the value map."""
    height, width = value_BCHW.shape[-2:]
    window = 2 * max_dis + 1
    padded_value_BCHW = F.pad(value_BCHW, (max_dis, max_dis, max_dis, max_dis))
    dtype = torch.promote_types(weights_BJHW.dtype, value_BCHW.dtype)
    total_BCHW = value_BCHW.new_zeros(value_BCHW.shape, dtype=dtype)
    for dy in range(window):
        for dx in range(window):
            j = dy * window + dx
            # In-place accumulation keeps one (B, C, H, W) buffer instead of 225; autograd handles it.
            total_BCHW.addcmul_(
                weights_BJHW[:, j : j + 1], padded_value_BCHW[:, :, dy : dy + height, dx : dx + width]
            )
    return total_BCHW


class LocalGatedPropagation(nn.Module):
    """Short-term gated propagation over a ``(2 * max_dis + 1)²`` window (single head, as in DeAOT/MAVOS).

    ``logit_j = q · k_j / sqrt(qk_dim) + relative_emb_k(q)_j``, where the relative bias is content-dependent (a 1x1
    conv of the *unscaled* query). Softmax over the window, weighted sum of the values, times the gate, depthwise 5x5
    conv (+ Dropout2d in training), then a linear projection to ``out_dim``.
    """

    def __init__(
        self,
        qk_dim: int = 128,
        value_dim: int = 1024,
        out_dim: int = 512,
        max_dis: int = 7,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.qk_dim = qk_dim
        self.value_dim = value_dim
        self.max_dis = max_dis
        self.window = 2 * max_dis + 1
        self.relative_emb_k = nn.Conv2d(qk_dim, self.window * self.window, kernel_size=1)
        self.dw_conv = DepthwiseConvDropout(value_dim, dropout=dropout)
        self.projection = nn.Linear(value_dim, out_dim)

    def forward(
        self,
        query_BCHW: torch.Tensor,
        key_BCHW: torch.Tensor,
        value_BCHW: torch.Tensor,
        gate_BNC: torch.Tensor,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Propagate the previous frame's values to the current frame.

        Args:
            query_BCHW: current-frame query map ``(B, qk_dim, H, W)``, not yet scaled.
            key_BCHW: previous-frame key map, same shape.
            value_BCHW: previous-frame value map ``(B, value_dim, H, W)`` (DeAOT: ``[V | ID_V]``).
            gate_BNC: current-frame gate tokens ``(B, H*W, value_dim)``.
            return_weights: also return the softmax weights ``(B, J, H*W)``, ``J = window²`` (index ``j`` as in the
                module docstring; column = query token).

        Returns:
            ``(B, H*W, out_dim)`` tokens, and the weights if asked.
        """
        self._check_inputs(query_BCHW, key_BCHW, value_BCHW, gate_BNC)
        height, width = query_BCHW.shape[-2:]

        relative_bias_BJHW = self.relative_emb_k(query_BCHW)
        scaled_query_BCHW = query_BCHW / self.qk_dim**0.5
        logits_BJHW = window_dot_products(scaled_query_BCHW, key_BCHW, self.max_dis) + relative_bias_BJHW
        outside_JHW = outside_window_mask(height, width, self.max_dis, query_BCHW.device)
        half = logits_BJHW.dtype in (torch.float16, torch.bfloat16)
        penalty = _OUTSIDE_PENALTY_HALF if half else _OUTSIDE_PENALTY_FULL
        logits_BJHW = logits_BJHW - outside_JHW.to(logits_BJHW.dtype) * penalty
        weights_BJHW = torch.softmax(logits_BJHW, dim=1)

        aggregated_BCHW = window_weighted_sum(weights_BJHW, value_BCHW, self.max_dis)
        mixed_BCHW = self.dw_conv(aggregated_BCHW * tokens_to_map(gate_BNC, (height, width)))
        out_BNC = self.projection(map_to_tokens(mixed_BCHW))
        if return_weights:
            return out_BNC, weights_BJHW.flatten(2)
        return out_BNC

    def _check_inputs(
        self,
        query_BCHW: torch.Tensor,
        key_BCHW: torch.Tensor,
        value_BCHW: torch.Tensor,
        gate_BNC: torch.Tensor,
    ) -> None:
        if query_BCHW.ndim != 4 or query_BCHW.shape[1] != self.qk_dim:
            raise ValueError(f"local attention: query must be (B, {self.qk_dim}, H, W), got {tuple(query_BCHW.shape)}")
        batch, _, height, width = query_BCHW.shape
        expected = {
            "key": (key_BCHW, (batch, self.qk_dim, height, width)),
            "value": (value_BCHW, (batch, self.value_dim, height, width)),
            "gate": (gate_BNC, (batch, height * width, self.value_dim)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"local attention: {name} must have shape {shape} to match the query {tuple(query_BCHW.shape)}, "
                    f"got {tuple(tensor.shape)}"
                )
