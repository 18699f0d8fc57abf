"""The building blocks LiVOS inherits from Cutie, each a few lines: padding to the network stride, the 2-D sine
positional encoding, soft aggregation, the channel-attention residual block and feature fuser, and the pre-norm
attention and feed-forward layers of the object transformer.

Tensors with an object axis are ``(B, N, C, H, W)``; convolutions run on the flattened ``(B*N, C, H, W)`` view.
Token tensors are ``(B, L, C)``; positional embeddings are added to queries and keys only, never to values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# -- padding: centred zero-padding to a multiple of the stride (the official LiVOS rule) ------------------------

#: ``(left, right, top, bottom)`` pixels added, the order ``F.pad`` takes for the last two dims.
Padding = tuple[int, int, int, int]


def stride_padding(height: int, width: int, stride: int) -> Padding:
    """Padding that brings ``height x width`` up to multiples of ``stride``; the odd pixel goes right/bottom."""
    extra_h, extra_w = -height % stride, -width % stride
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2


def pad(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Zero-pad the last two dims. LiVOS pads the [0, 1] image *before* normalising it, so padded pixels reach
    the network as ``-mean / std``, as in training."""
    return F.pad(x, padding) if any(padding) else x


def unpad(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Crop what :func:`pad` added."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


# -- positional encoding of the stride-16 grid (object transformer and object summarizer) -----------------------

class SinePositionalEncoding2d(nn.Module):
    """Encodes each grid cell as ``[x sin/cos pairs, y sin/cos pairs]`` (``dim`` channels in all).

    Coordinates are normalised to ``[0, scale]`` along each axis (so the encoding does not depend on the
    resolution), and frequencies are ``1 / temperature ** (2i / half)`` with ``half = dim / 2``. Sines and
    cosines are interleaved per frequency.
    """

    def __init__(self, dim: int, scale: float, temperature: float):
        super().__init__()
        if dim % 4:
            raise ValueError(f"positional-encoding width must be a multiple of 4, got {dim}")
        half = dim // 2
        self.scale = scale
        # A persistent buffer because official checkpoints store it (with exactly this formula's value).
        self.register_buffer("inv_freq", 1.0 / (temperature ** (torch.arange(0, half, 2).float() / half)))

    def _axis(self, length: int, device: torch.device) -> torch.Tensor:
        """``(length, dim / 2)`` interleaved sin/cos encoding of positions along one axis."""
        positions = torch.arange(length, device=device, dtype=self.inv_freq.dtype)
        positions = positions / (positions[-1] + 1e-6) * self.scale
        angles_LF = torch.einsum("i,j->ij", positions, self.inv_freq)
        return torch.stack((angles_LF.sin(), angles_LF.cos()), dim=-1).flatten(-2, -1)

    def forward(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Encoding of an ``height x width`` grid, channels last: ``(H, W, dim)``."""
        x_WC = self._axis(width, device)
        y_HC = self._axis(height, device)
        return torch.cat(
            [x_WC.unsqueeze(0).expand(height, -1, -1), y_HC.unsqueeze(1).expand(-1, width, -1)], dim=-1
        )


# -- soft aggregation: per-object probabilities -> one multi-class logit map ------------------------------------

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit (in float32, as in the official code; this is
#: why a one-hot mask aggregates to logits of about +15.94 and -16.12).
EPS = 1e-7


def soft_aggregate_logits(prob_BNHW: torch.Tensor) -> torch.Tensor:
    """``(B, N, H, W)`` object probabilities -> ``(B, 1 + N, H, W)`` logits: the background is the probability
    that no object is present, ``prod(1 - p)``; every channel becomes ``log(p / (1 - p))``. Always float32."""
    with torch.autocast(device_type=prob_BNHW.device.type, enabled=False):
        prob_BNHW = prob_BNHW.float()
        background_B1HW = torch.prod(1 - prob_BNHW, dim=1, keepdim=True)
        prob_BKHW = torch.cat([background_B1HW, prob_BNHW], dim=1).clamp(EPS, 1 - EPS)
        return torch.log(prob_BKHW / (1 - prob_BKHW))


# -- convolutional blocks: channel-attention residual block, feature fuser --------------------------------------

def eca_kernel_size(channels: int) -> int:
    """Kernel size of the ECA-style 1-D channel-attention conv: odd, about ``(log2(C) + 1) / 2`` (5 for 256)."""
    size = int((abs(math.log2(channels)) + 1) // 2)
    return size if size % 2 else size + 1


class ChannelAttentionResBlock(nn.Module):
    """Pre-activation residual block (two 3x3 convs) whose output is reweighted per channel by a sigmoid gate
    computed from its global average through a small 1-D conv across channels (ECA)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        kernel = eca_kernel_size(out_dim)
        self.channel_attention = nn.Conv1d(1, 1, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False)
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out_BCHW = self.conv2(F.relu(self.conv1(F.relu(x_BCHW))))
        batch, channels = out_BCHW.shape[:2]
        pooled_B1C = F.adaptive_avg_pool2d(out_BCHW, 1).view(batch, 1, channels)
        weight_BC11 = self.channel_attention(pooled_B1C).view(batch, channels, 1, 1).sigmoid()
        return out_BCHW * weight_BC11 + self.shortcut(x_BCHW)


class FeatureFuser(nn.Module):
    """Fuse the frame's pixel features (shared by all objects) with per-object features: project both with
    1x1 convs, add, then refine with two channel-attention residual blocks."""

    def __init__(self, pixel_dim: int, object_dim: int, out_dim: int):
        super().__init__()
        self.pixel_proj = nn.Conv2d(pixel_dim, out_dim, kernel_size=1)
        self.object_proj = nn.Conv2d(object_dim, out_dim, kernel_size=1)
        self.block1 = ChannelAttentionResBlock(out_dim, out_dim)
        self.block2 = ChannelAttentionResBlock(out_dim, out_dim)

    def forward(self, pixel_BCHW: torch.Tensor, object_BNCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = object_BNCHW.shape[:2]
        pixel_BCHW = self.pixel_proj(pixel_BCHW)
        pixel_DCHW = pixel_BCHW.unsqueeze(1).expand(-1, num_objects, -1, -1, -1).flatten(0, 1)
        fused_DCHW = pixel_DCHW + self.object_proj(object_BNCHW.flatten(0, 1))
        fused_DCHW = self.block2(self.block1(fused_DCHW))
        return fused_DCHW.view(batch, num_objects, *fused_DCHW.shape[1:])


def others_union(masks_BNHW: torch.Tensor) -> torch.Tensor:
    """For each object, the union of all *other* objects' masks, ``clamp(sum - own, 0, 1)``."""
    return (masks_BNHW.sum(dim=1, keepdim=True) - masks_BNHW).clamp(0, 1)


# -- the object transformer's pre-norm attention and feed-forward layers ----------------------------------------

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
