"""MAVOS modulated cross-attention (MCA): fuses a new long-term memory frame into the old dynamic memory slot.

MAVOS keeps its long-term memory at a fixed two frames, ``[dynamic, reference]``. Every δ frames the dynamic slot is
replaced by ``MCA(new = this frame's memory, context = the old dynamic slot)``: the new memory asks (queries) and the
old memory answers, with values that are not the old tokens themselves but a *focal modulator* computed from them
(hierarchical depthwise context, gated per position). The paper calls the block "modulated cross-attention"; the
official code calls it ``MemoryJointModulation``/``JointBlock``/``JointFocalAttention``.

Tokens are batch-first, ``(B, N, C)`` with token ``n = y * W + x`` on the stride-16 grid. Parameter names equal the
official ones below ``joint_modulation.`` (see :mod:`longvos.models.aot.official`), so official weights load by a
prefix strip. The one official-layout quirk (how the modulator becomes values) lives in ``official.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.aot import official
from longvos.models.layers import onednn
from longvos.models.layers.attention import tokens_to_map
from longvos.models.layers.depthwise import DepthwiseConv2d
from longvos.models.layers.drop import DropPath


class FocalModulatedCrossAttention(nn.Module):
    """Cross-attention whose values are a focal modulator of the context (official ``JointFocalAttention``).

    Attention weights come from ``q(new)`` against ``k(context)`` (no biases, ``num_heads`` heads). The values are
    computed from the context alone: ``f_context`` splits it into a value map and ``focal_level + 1`` gate maps; the
    value map goes through ``focal_level`` depthwise convolutions of growing kernel (3, 5, ...) each followed by GELU,
    plus a global GELU(mean) level; the gated sum of all levels goes through the 1x1 conv ``h``.
    """

    def __init__(self, dim: int, num_heads: int = 4, focal_level: int = 2) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MCA: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.focal_level = focal_level
        self.q = onednn.Linear(dim, dim, bias=False)
        self.k = onednn.Linear(dim, dim, bias=False)
        self.proj = onednn.Linear(dim, dim)
        self.f_context = onednn.Linear(dim, dim + focal_level + 1)
        self.h = onednn.PointwiseConv2d(dim, dim)
        # Each level widens the receptive field: kernels 3, 5, 7, ... applied one after the other.
        self.focal_layers = nn.ModuleList(
            nn.Sequential(
                DepthwiseConv2d(dim, kernel_size=3 + 2 * level, padding=1 + level),
                nn.GELU(),
            )
            for level in range(focal_level)
        )

    def focal_modulator(
        self, context_BNC: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulator ``(B, C, H, W)`` and the gates ``(B, focal_level + 1, H, W)`` of the (normalised) context."""
        channels = context_BNC.shape[-1]
        # f_context's value rows and gate rows as two products: each result is a whole token matrix, i.e. a
        # channels-last map that the depthwise convolutions and the 1x1 conv h read without a layout copy.
        weight, bias = self.f_context.weight, self.f_context.bias
        level_BCHW = tokens_to_map(onednn.linear(context_BNC, weight[:channels], bias[:channels]), hw)
        gates_BGHW = tokens_to_map(onednn.linear(context_BNC, weight[channels:], bias[channels:]), hw)

        gated_context_BCHW = None
        for level, focal_layer in enumerate(self.focal_layers):
            level_BCHW = focal_layer(level_BCHW)
            gated_BCHW = level_BCHW * gates_BGHW[:, level : level + 1]
            gated_context_BCHW = gated_BCHW if gated_context_BCHW is None else gated_context_BCHW + gated_BCHW
        global_BC11 = F.gelu(level_BCHW.mean(dim=(2, 3), keepdim=True))
        gated_context_BCHW = gated_context_BCHW + global_BC11 * gates_BGHW[:, self.focal_level :]
        return self.h(gated_context_BCHW), gates_BGHW

    def _heads(self, tokens_BNC: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, channels = tokens_BNC.shape
        return tokens_BNC.reshape(batch, num_tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def attention_weights(self, new_BNC: torch.Tensor, context_BNC: torch.Tensor) -> torch.Tensor:
        """Explicit ``softmax(q kᵀ / sqrt(head_dim))``, ``(B, heads, N_new, N_context)``; for inspection and tests
        (``forward`` uses the fused SDPA kernel instead)."""
        query_BhNd, key_BhNd = self._heads(self.q(new_BNC)), self._heads(self.k(context_BNC))
        scale = query_BhNd.shape[-1] ** -0.5
        return torch.softmax(query_BhNd @ key_BhNd.transpose(-2, -1) * scale, dim=-1)

    def forward(self, new_BNC: torch.Tensor, context_BNC: torch.Tensor, hw: tuple[int, int],
                residual_BNC: torch.Tensor | None = None) -> torch.Tensor:
        """Attention branch ``proj(A · values)``, ``(B, N_new, C)``; both inputs already layer-normalised.
        ``residual_BNC``, if given, is added to the result (by the oneDNN product when it can)."""
        modulator_BCHW, _ = self.focal_modulator(context_BNC, hw)
        values_BhNd = official.mca_modulator_as_values(modulator_BCHW, self.num_heads)
        query_BhNd, key_BhNd = self._heads(self.q(new_BNC)), self._heads(self.k(context_BNC))
        # Default scale is head_dim ** -0.5, as in the official block; SDPA is exact in fp32.
        attended_BhNd = F.scaled_dot_product_attention(query_BhNd, key_BhNd, values_BhNd)
        return onednn.linear(attended_BhNd.transpose(1, 2).flatten(2), self.proj.weight, self.proj.bias,
                             residual=residual_BNC)


class _Mlp(nn.Module):
    """Two-layer GELU MLP (official ``Mlp``: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = onednn.Linear(dim, hidden_dim)
        self.fc2 = onednn.Linear(hidden_dim, dim)

    def forward(self, tokens_BNC: torch.Tensor, residual_BNC: torch.Tensor | None = None) -> torch.Tensor:
        """``fc2(gelu(fc1(x)))``, plus ``residual_BNC`` if given (added by the oneDNN product when it can)."""
        hidden_BNH = onednn.linear(tokens_BNC, self.fc1.weight, self.fc1.bias, "gelu")
        return onednn.linear(hidden_BNH, self.fc2.weight, self.fc2.bias, residual=residual_BNC)


class ModulatedCrossAttention(nn.Module):
    """One MCA block: ``m = new + y(LN_l(new), LN_c(context))``, ``out = m + MLP(LN2(m))``, with DropPath.

    The residual base is the *un-normalised* new memory, so the output stays in the memory's own space (it replaces
    the dynamic slot that the next frames read as keys/values). DropPath is active only in training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        focal_level: int = 2,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm_l = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.attn = FocalModulatedCrossAttention(dim, num_heads, focal_level)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, new_BNC: torch.Tensor, context_BNC: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Fuse ``new_BNC`` (queries) with ``context_BNC`` (keys and focal values); returns ``(B, N, C)``.

        ``hw`` is the token grid ``(H, W)`` with ``H * W == N``; both memories must be on the same grid because the
        values are computed as an image.
        """
        self._check_inputs(new_BNC, context_BNC, hw)
        new_normed_BNC, context_normed_BNC = self.norm_l(new_BNC), self.norm_c(context_BNC)
        if self.drop_path.training and self.drop_path.drop_prob > 0:
            fused_BNC = new_BNC + self.drop_path(self.attn(new_normed_BNC, context_normed_BNC, hw))
            return fused_BNC + self.drop_path(self.mlp(self.norm2(fused_BNC)))
        # DropPath is the identity: the residual adds go into the products.
        fused_BNC = self.attn(new_normed_BNC, context_normed_BNC, hw, residual_BNC=new_BNC)
        return self.mlp(self.norm2(fused_BNC), residual_BNC=fused_BNC)

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Zero the output layers of both residual branches, so the block returns the new memory unchanged.

        A fine-tune of the fusion then starts from "the dynamic slot is the newest written frame" (what ``ref+prev``
        does) and learns only what improves on it; every weight still gets gradients, since the zeroed layers see
        non-zero inputs (as in ReZero / LayerScale). Training calls it when ``model.mca_identity_init`` is set;
        inference never does.
        """
        for layer in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, new_BNC: torch.Tensor, context_BNC: torch.Tensor, hw: tuple[int, int]) -> None:
        height, width = hw
        for name, tokens in (("new memory", new_BNC), ("context", context_BNC)):
            if tokens.ndim != 3 or tokens.shape[1] != height * width or tokens.shape[2] != self.dim:
                raise ValueError(
                    f"MCA: {name} must be (B, H*W={height * width}, C={self.dim}) tokens for the grid {hw}, "
                    f"got {tuple(tokens.shape)}"
                )
        if new_BNC.shape[0] != context_BNC.shape[0]:
            raise ValueError(
                f"MCA: batch sizes differ, new memory {new_BNC.shape[0]} vs context {context_BNC.shape[0]}"
            )
