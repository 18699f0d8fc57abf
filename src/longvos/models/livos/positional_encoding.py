"""2-D sine positional encoding of the stride-16 grid, used by the object transformer and the object summarizer."""
from __future__ import annotations

import torch
from torch import nn


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
