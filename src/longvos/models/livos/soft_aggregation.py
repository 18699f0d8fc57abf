"""Soft aggregation: combine independent per-object foreground probabilities into one multi-class logit map."""
from __future__ import annotations

import torch

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
