"""Stochastic depth (DropPath): drop a whole residual branch per sample during training."""
from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool, batch_dim: int = 0) -> torch.Tensor:
    """Zero the branch ``x`` for a random subset of samples and rescale the rest by ``1 / (1 - drop_prob)``.

    ``batch_dim`` names the sample axis, because token tensors in the AOT family are laid out ``(N, B, C)``
    (``batch_dim=1``) while images and Swin tokens are batch-first. The identity outside training.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = [1] * x.ndim
    mask_shape[batch_dim] = x.shape[batch_dim]
    # floor(keep_prob + U[0, 1)) is 1 with probability keep_prob, else 0.
    keep_mask = (keep_prob + torch.rand(mask_shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * keep_mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; no parameters, so it never changes a state_dict."""

    def __init__(self, drop_prob: float = 0.0, batch_dim: int = 0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.batch_dim = batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.batch_dim)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}, batch_dim={self.batch_dim}"
