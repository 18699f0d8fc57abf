"""Gated global propagation (DeAOT's ``GatedPropagation``) on batch-first tokens, over exact single-head attention.

A gated propagation reads values through single-head softmax attention, multiplies the read-out by a gate computed
from the query frame, mixes it spatially with a 5x5 depthwise convolution over the token grid, and projects it.
DeAOT uses it twice per layer: against the long-term memory (keys/values given) and as self-propagation (keys,
values and gates projected from the frame itself, :class:`GatedSelfPropagation`).

Tokens are ``(B, N, C)`` with token index ``n = y * W + x`` on the stride-16 grid ``(H, W)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers import onednn
from longvos.models.layers.depthwise import DepthwiseConv2d


def tokens_to_map(tokens_BNC: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C)`` tokens -> ``(B, C, H, W)`` map, as a channels-last *view* (no copy).

    Built as ``view(B, H, W, C).permute`` rather than ``transpose.reshape``: for B = 1 the latter gives strides that
    convolutions do not recognise as channels-last, and the depthwise convs then copy and run ~10x slower on CPU."""
    height, width = grid_hw
    batch, num_tokens, channels = tokens_BNC.shape
    if num_tokens != height * width:
        raise ValueError(f"{num_tokens} tokens do not fit a {height}x{width} grid")
    return tokens_BNC.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def map_to_tokens(map_BCHW: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map -> ``(B, H*W, C)`` tokens."""
    return map_BCHW.flatten(2).transpose(1, 2)


#: On CPU the score matrix is computed a block of query rows at a time, each block about this size (but never fewer
#: than ``_CPU_MIN_QUERY_ROWS`` rows). See :func:`attend`.
_CPU_SCORE_BLOCK_BYTES = 16 * 2**20
#: Below ~256 query rows the value product becomes a skinny matrix product that runs well under GEMM speed; at 20
#: memory frames of a 480p video (33k keys) 256-row blocks were 1.2x faster than 125-row ones.
_CPU_MIN_QUERY_ROWS = 256


def attend(query_BNC: torch.Tensor, key_BMC: torch.Tensor, value_BMV: torch.Tensor,
           dropout_p: float = 0.0, gate_BNV: torch.Tensor | None = None) -> torch.Tensor:
    """Single-head ``softmax(q k^T / sqrt(C)) v`` over all M memory tokens. Exact (no top-k, no length rescaling:
    the official models switch those off).

    Off the CPU (and with attention dropout) this is PyTorch SDPA, whose fused kernels never materialise the
    ``N x M`` matrix. On CPU, SDPA's fused kernel needs 4-D inputs with values as wide as the keys; DeAOT's are 3-D
    and 8x wider (1024 vs 128), so SDPA takes its unfused path, which materialises the whole matrix and adds passes
    over it (scaling, and ``isneginf``/``all``/``where`` checks for fully masked rows). Plain matrix products over
    blocks of query rows are faster: measured on one thread at 480p (1674 queries, value width 1024), 1.2x with one
    memory frame and 1.15-1.3x with five to twenty. Each query row's softmax is computed whole, so blocking changes
    no result; the blocks bound the extra memory to ``_CPU_SCORE_BLOCK_BYTES`` (or 256 rows of scores) where the
    unfused SDPA would hold all of it (224 MB with twenty 480p memory frames).

    ``gate_BNV``, if given, multiplies the result (on CPU inside the value product, see ``layers/onednn``).
    """
    if query_BNC.device.type != "cpu" or dropout_p > 0.0:
        read_BNV = F.scaled_dot_product_attention(query_BNC, key_BMC, value_BMV, dropout_p=dropout_p)
        return read_BNV if gate_BNV is None else read_BNV * gate_BNV
    batch, num_queries, channels = query_BNC.shape
    num_keys = key_BMC.shape[1]
    score_row_bytes = batch * num_keys * query_BNC.element_size()
    rows = max(_CPU_MIN_QUERY_ROWS, _CPU_SCORE_BLOCK_BYTES // score_row_bytes)
    scaled_query_BNC = query_BNC * channels ** -0.5
    key_BCM = key_BMC.transpose(1, 2)
    blocks = [onednn.matmul(torch.softmax(onednn.matmul(scaled_query_BNC[:, start:start + rows], key_BCM), dim=-1),
                            value_BMV, None if gate_BNV is None else gate_BNV[:, start:start + rows])
              for start in range(0, num_queries, rows)]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


class DepthwiseConvDropout(nn.Module):
    """Depthwise ``k x k`` convolution (no bias) on a ``(B, C, H, W)`` map, then channel dropout (train mode).

    The tail of every DeAOT gated propagation (official ``DWConv2d``, parameter ``conv.weight``); it is where the
    propagation gets its position information, since DeAOT uses no positional encoding.
    """

    def __init__(self, channels: int, kernel_size: int = 5, dropout: float = 0.1):
        super().__init__()
        self.conv = DepthwiseConv2d(channels, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, map_BCHW: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(map_BCHW))


class GatedPropagation(nn.Module):
    """Attention read-out, gated, spatially mixed and projected: ``proj(dwconv(attend(q, k, v) * gate))``.

    Used as DeAOT's long-term propagation, where keys and values are the memory's and the gate comes from the
    current frame. ``value_dim`` is the width of the (visual + identity) values; ``out_dim`` the output width.
    """

    def __init__(self, value_dim: int, out_dim: int, attn_dropout: float = 0.0, dwconv_dropout: float = 0.1):
        super().__init__()
        self.attn_dropout = attn_dropout
        self.dw_conv = DepthwiseConvDropout(value_dim, dropout=dwconv_dropout)
        self.projection = onednn.Linear(value_dim, out_dim)

    def forward(self, query_BNC: torch.Tensor, key_BMC: torch.Tensor, value_BMV: torch.Tensor,
                gate_BNV: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        dropout_p = self.attn_dropout if self.training else 0.0
        return self.gated_output(attend(query_BNC, key_BMC, value_BMV, dropout_p, gate_BNV), grid_hw)

    def gated_output(self, gated_BNV: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The shared tail of every gated propagation (global or local): depthwise conv, then projection."""
        return self.projection(map_to_tokens(self.dw_conv(tokens_to_map(gated_BNV, grid_hw))))


class GatedSelfPropagation(GatedPropagation):
    """Self-propagation over the concatenated ``[visual | identity]`` tokens of one frame.

    Query and key share one projection; values and gates are projected per branch (visual half, identity half) and
    concatenated, so each branch keeps its own channels.
    """

    def __init__(self, in_dim: int, qk_dim: int, value_dim: int, attn_dropout: float = 0.0,
                 dwconv_dropout: float = 0.1):
        super().__init__(value_dim, in_dim, attn_dropout, dwconv_dropout)
        if in_dim % 2 or value_dim % 2:
            raise ValueError("self-propagation needs even input and value widths (two branches)")
        branch_in, branch_value = in_dim // 2, value_dim // 2
        self.query_key = onednn.Linear(in_dim, qk_dim)
        self.value_visual = onednn.Linear(branch_in, branch_value)
        self.value_id = onednn.Linear(branch_in, branch_value)
        self.gate_visual = onednn.Linear(branch_in, branch_value)
        self.gate_id = onednn.Linear(branch_in, branch_value)

    def forward(self, tokens_BNC: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        query_key_BNQ = self.query_key(tokens_BNC)
        visual_BNC, identity_BNC = tokens_BNC.chunk(2, dim=-1)
        value_BNV = torch.cat([_linear_silu(self.value_visual, visual_BNC), _linear_silu(self.value_id, identity_BNC)],
                              dim=-1)
        gate_BNV = torch.cat([_linear_silu(self.gate_visual, visual_BNC), _linear_silu(self.gate_id, identity_BNC)],
                             dim=-1)
        return super().forward(query_key_BNQ, query_key_BNQ, value_BNV, gate_BNV, grid_hw)


def _linear_silu(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``silu(layer(x))``, the SiLU fused into the product on the oneDNN path."""
    return onednn.linear(x, layer.weight, layer.bias, "silu")
