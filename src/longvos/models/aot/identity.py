"""Identity embedding: which object is where, as tokens on the stride-16 grid.

AOT gives every object slot of a pass a learned identity vector. A mask is turned into one channel per slot plus a
background channel (background has its own identity too), and a strided convolution maps it onto the token grid,
which amounts to a per-patch mixture of the slots' identity vectors. DeAOT/MAVOS then apply a LayerNorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.attention import map_to_tokens


def labels_to_one_hot(labels_BHW: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label map (0 = background, 1..K-1 = slots) -> float one-hot ``(B, K, H, W)``."""
    classes_1K11 = torch.arange(num_classes, device=labels_BHW.device).view(1, -1, 1, 1)
    return (labels_BHW.unsqueeze(1) == classes_1K11).float()


class IdentityEmbedding(nn.Module):
    """``(B, 1 + slots, H, W)`` one-hot masks or soft probabilities -> identity tokens ``(B, H/16 * W/16, d)``.

    The strided convolution lands exactly on the encoder's token grid: with ``align_corners`` inputs have
    ``(H - 1) % 16 == 0`` and the kernel is 17 with padding 8; otherwise ``H % 16 == 0`` and the kernel is 16.
    Soft probabilities work as well as one-hots because the convolution is linear in the mask.
    """

    def __init__(self, num_classes: int, d_model: int, align_corners: bool, stride: int = 16):
        super().__init__()
        kernel_size, padding = (stride + 1, stride // 2) if align_corners else (stride, 0)
        self.num_classes = num_classes
        self.bank = nn.Conv2d(num_classes, d_model, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(d_model)
        # The official init: near-orthogonal identity vectors, scaled down by the kernel area.
        nn.init.orthogonal_(self.bank.weight.view(d_model, -1), gain=kernel_size ** -2)

    def forward(self, masks_BKHW: torch.Tensor) -> torch.Tensor:
        if masks_BKHW.ndim != 4 or masks_BKHW.shape[1] != self.num_classes:
            raise ValueError(f"identity embedding: masks must be (B, {self.num_classes}, H, W) "
                             f"(background + object slots), got {tuple(masks_BKHW.shape)}")
        return self.norm(map_to_tokens(self._bank_conv(masks_BKHW)))

    def _bank_conv(self, masks_BKHW: torch.Tensor) -> torch.Tensor:
        """``self.bank(masks_BKHW)``, skipping (on CPU) the channels that are zero everywhere.

        A pass rarely fills all its slots (one tracked object leaves 9 of MAVOS's 11 channels empty), and this
        17x17 convolution at the full input size is then mostly multiplications by zero: 45 ms of a 480p frame on
        one thread, 12-15 ms without the empty channels (finding them included). The convolution is linear in the
        mask, so leaving them out changes nothing but the order of the float additions. Not on GPUs, where the check
        would wait for the device.
        """
        if masks_BKHW.device.type != "cpu":
            return self.bank(masks_BKHW)
        used_K = masks_BKHW.flatten(2).any(dim=2).any(dim=0)  # any() of floats: nonzero, one pass
        if bool(used_K.all()):
            return self.bank(masks_BKHW)
        channels = used_K.nonzero().squeeze(1)
        return F.conv2d(masks_BKHW.index_select(1, channels), self.bank.weight.index_select(1, channels),
                        self.bank.bias, self.bank.stride, self.bank.padding)
