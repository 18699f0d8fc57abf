"""Pre-norm attention and feed-forward layers of the object transformer (token tensors are ``(B, L, C)``).

Positional embeddings are added to queries and keys only, never to values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.livos.blocks import ChannelAttentionResBlock


class SelfAttention(nn.Module):
    """``x <- norm(x) + MHA(norm(x) + pe, norm(x) + pe, norm(x))``: note the residual is the *normalised* x."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens_BLC: torch.Tensor, pe_BLC: torch.Tensor) -> torch.Tensor:
        tokens_BLC = self.norm(tokens_BLC)
        with_pe_BLC = tokens_BLC + pe_BLC
        return tokens_BLC + self.attention(with_pe_BLC, with_pe_BLC, tokens_BLC, need_weights=False)[0]


class CrossAttention(nn.Module):
    """``x <- n(x) + MHA(n(x) + x_pe, memory + memory_pe, memory)`` with ``n`` a LayerNorm or the identity."""

    def __init__(self, dim: int, num_heads: int, normalise_input: bool = True):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim) if normalise_input else nn.Identity()

    def forward(
        self,
        tokens_BLC: torch.Tensor,
        memory_BSC: torch.Tensor,
        tokens_pe_BLC: torch.Tensor,
        memory_pe_BSC: torch.Tensor,
        blocked_BhLS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``blocked_BhLS``: optional boolean mask, True where a query may not attend (per batch and head)."""
        tokens_BLC = self.norm(tokens_BLC)
        attended_BLC = self.attention(
            tokens_BLC + tokens_pe_BLC, memory_BSC + memory_pe_BSC, memory_BSC,
            attn_mask=blocked_BhLS, need_weights=False,
        )[0]
        return tokens_BLC + attended_BLC


class FeedForward(nn.Module):
    """Pre-norm MLP with a residual on the un-normalised input."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens_BLC: torch.Tensor) -> torch.Tensor:
        return tokens_BLC + self.linear2(F.relu(self.linear1(self.norm(tokens_BLC))))


class PixelFeedForward(nn.Module):
    """The pixel tokens' feed-forward: back to a ``(B*N, C, H, W)`` map through a channel-attention res block."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = ChannelAttentionResBlock(dim, dim)

    def forward(self, tokens_DLC: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pixels_DCHW = tokens_DLC.view(tokens_DLC.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()
        return self.block(pixels_DCHW)
