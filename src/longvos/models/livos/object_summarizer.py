"""Object memory: per-object summaries (Cutie's object summarizer) that LiVOS sums over all memorised frames.

Each object gets ``Q`` summaries of width ``C + 1``: a weighted sum of projected value features plus the total
weight ("area"). Half of the summaries may only pool inside the object's mask, half only outside it. Storing sums
(not means) lets the object memory be a running sum; the object transformer divides by the area when reading.
"""
from __future__ import annotations

import torch
from torch import nn

from longvos.models.livos.positional_encoding import SinePositionalEncoding2d


class ObjectSummarizer(nn.Module):
    def __init__(self, value_dim: int, embed_dim: int, num_summaries: int, pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_summaries = num_summaries
        self.pos_encoding = SinePositionalEncoding2d(embed_dim, pe_scale, pe_temperature)
        self.input_proj = nn.Linear(value_dim, embed_dim)
        self.feature_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.weight_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_summaries)
        )

    def forward(self, masks_BNhw: torch.Tensor, value_BNChw: torch.Tensor) -> torch.Tensor:
        """Summaries ``(B, N, Q, C + 1)`` (float32) of the values under masks already pooled to the value grid."""
        height, width = value_BNChw.shape[-2:]
        half = self.num_summaries // 2
        inside_BNhw1 = masks_BNhw.unsqueeze(-1).float()
        allowed_BNhwQ = torch.cat(
            [inside_BNhw1.expand(-1, -1, -1, -1, half), (1 - inside_BNhw1).expand(-1, -1, -1, -1, half)], dim=-1
        )

        tokens_BNhwC = self.input_proj(value_BNChw.permute(0, 1, 3, 4, 2))
        tokens_BNhwC = tokens_BNhwC + self.pos_encoding(height, width, value_BNChw.device)

        # The pooled sums are accumulated over the whole video: compute them in float32.
        with torch.autocast(device_type=value_BNChw.device.type, enabled=False):
            tokens_BNhwC = tokens_BNhwC.float()
            features_BNhwC = self.feature_mlp(tokens_BNhwC)
            weights_BNhwQ = self.weight_mlp(tokens_BNhwC).sigmoid() * allowed_BNhwQ
            sums_BNQC = torch.einsum("bnhwq,bnhwc->bnqc", weights_BNhwQ, features_BNhwC)
            area_BNQ1 = weights_BNhwQ.flatten(2, 3).sum(2).unsqueeze(-1)
        return torch.cat([sums_BNQC, area_BNQ1], dim=-1)

