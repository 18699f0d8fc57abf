"""Swin Transformer encoder (Swin-B of MAVOS/DeAOT ``swinb_*``): the first three stages, each output LayerNormed.

Layout and numerics follow the detection-style Swin backbone the official code uses:
- keys ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.{qkv, proj, relative_position_bias_table,
  relative_position_index}, norm2, mlp.fc1, mlp.fc2}``, ``layers.{0,1}.downsample.{reduction,norm}``,
  ``norm{0,1,2}``; ``relative_position_index`` is a persistent buffer, loaded from checkpoints;
- any input size: the image is padded right/bottom to a multiple of the patch size, every block pads its map
  right/bottom to a multiple of the window (after ``norm1``, so padded tokens are zeros) and crops back, and patch
  merging pads odd sizes;
- shifted windows mask cross-region pairs by adding -100 (not -inf) to the logits;
- stochastic depth grows linearly over the depths of all four Swin-B stages, although the fourth is not built.
Returns ``[s4 (128), s8 (256), s16 (512), s16 (512, the same tensor)]`` for Swin-B.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.drop import DropPath

_SHIFT_MASK_VALUE = -100.0  # official value; exp(-100) is 0 in fp32, so it acts like -inf
_NUM_STAGES = 3  # the stride-32 stage is removed: VOS works at stride 16


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) index into the ``(2w-1)^2`` bias table for every pair of tokens in a ``w x w`` window (N = w^2)."""
    coords_2N = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords_2N = coords_2N.flatten(1)
    delta_NN2 = (coords_2N[:, :, None] - coords_2N[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return delta_NN2[..., 0] * (2 * window_size - 1) + delta_NN2[..., 1]


def window_partition(x_BHWC: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, window_size^2, C), windows in row-major order."""
    batch, height, width, channels = x_BHWC.shape
    x = x_BHWC.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_reverse(windows_BnNC: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * num_windows, window_size^2, C) -> (B, H, W, C)."""
    channels = windows_BnNC.shape[-1]
    x = windows_BnNC.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, device: torch.device) -> torch.Tensor:
    """(num_windows, N, N) additive mask for shifted windows on a padded ``height x width`` map.

    After the cyclic shift, a window at the bottom/right border mixes tokens from up to three regions that are
    not neighbours in the image; pairs from different regions get -100.
    """
    region_HW = torch.zeros(height, width, device=device)
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    region_id = 0
    for rows in bands:
        for cols in bands:
            region_HW[rows, cols] = region_id
            region_id += 1
    region_nN = window_partition(region_HW[None, :, :, None], window_size).squeeze(-1)
    different_nNN = region_nN[:, None, :] != region_nN[:, :, None]
    return torch.zeros_like(different_nNN, dtype=torch.float32).masked_fill_(different_nNN, _SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.normal_(self.relative_position_bias_table, std=0.02)  # see _init_swin_weights

    def forward(self, windows_BnNC: torch.Tensor, shift_mask_nNN: torch.Tensor | None) -> torch.Tensor:
        """``windows_BnNC``: (B * num_windows, N, C); ``shift_mask_nNN``: (num_windows, N, N) or None."""
        batch_windows, tokens, channels = windows_BnNC.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(windows_BnNC).view(batch_windows, tokens, 3, self.num_heads, head_dim)
        q_BnhNd, k_BnhNd, v_BnhNd = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        bias_hNN = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias_hNN = bias_hNN.view(tokens, tokens, self.num_heads).permute(2, 0, 1)
        if shift_mask_nNN is None:
            attn_bias = bias_hNN
        else:
            # Split the window axis into (B, num_windows) so the per-window mask broadcasts over the batch.
            num_windows = shift_mask_nNN.shape[0]
            q_BnhNd, k_BnhNd, v_BnhNd = (t.view(-1, num_windows, self.num_heads, tokens, head_dim)
                                         for t in (q_BnhNd, k_BnhNd, v_BnhNd))
            attn_bias = bias_hNN[None] + shift_mask_nNN[:, None]
        # softmax(q k^T / sqrt(d) + bias) v, the official maths; the bias enters as an additive float mask.
        out = F.scaled_dot_product_attention(q_BnhNd, k_BnhNd, v_BnhNd, attn_mask=attn_bias.to(q_BnhNd.dtype))
        out_BnNC = out.reshape(batch_windows, self.num_heads, tokens, head_dim).transpose(1, 2)
        return self.proj(out_BnNC.reshape(batch_windows, tokens, channels))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, tokens_BNC: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens_BNC)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a residual and stochastic depth."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens_BNC: torch.Tensor, height: int, width: int,
                shift_mask_nNN: torch.Tensor | None) -> torch.Tensor:
        batch, _, channels = tokens_BNC.shape
        x_BHWC = self.norm1(tokens_BNC).view(batch, height, width, channels)
        pad_bottom = (-height) % self.window_size
        pad_right = (-width) % self.window_size
        x_BHWC = F.pad(x_BHWC, (0, 0, 0, pad_right, 0, pad_bottom))
        padded_height, padded_width = height + pad_bottom, width + pad_right

        if self.shift > 0:
            x_BHWC = torch.roll(x_BHWC, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x_BHWC, self.window_size), shift_mask_nNN if self.shift > 0 else None)
        x_BHWC = window_reverse(windows, self.window_size, padded_height, padded_width)
        if self.shift > 0:
            x_BHWC = torch.roll(x_BHWC, shifts=(self.shift, self.shift), dims=(1, 2))

        attended_BNC = x_BHWC[:, :height, :width].reshape(batch, height * width, channels)
        tokens_BNC = tokens_BNC + self.drop_path(attended_BNC)
        return tokens_BNC + self.drop_path(self.mlp(self.norm2(tokens_BNC)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (C -> 4C), LayerNorm, linear 4C -> 2C: halves the resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, tokens_BNC: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = tokens_BNC.shape
        x_BHWC = F.pad(tokens_BNC.view(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        # Official concat order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        merged = torch.cat([x_BHWC[:, 0::2, 0::2], x_BHWC[:, 1::2, 0::2], x_BHWC[:, 0::2, 1::2],
                            x_BHWC[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(merged.reshape(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, tokens_BNC: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the stage output at ``height x width`` and, if it downsamples, the merged tokens."""
        padded_height = -(-height // self.window_size) * self.window_size
        padded_width = -(-width // self.window_size) * self.window_size
        shift_mask_nNN = shifted_window_mask(padded_height, padded_width, self.window_size, self.shift,
                                             tokens_BNC.device)
        for block in self.blocks:
            tokens_BNC = block(tokens_BNC, height, width, shift_mask_nNN)
        merged = self.downsample(tokens_BNC, height, width) if self.downsample is not None else None
        return tokens_BNC, merged


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv embedding, then LayerNorm over channels."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        height, width = image_BCHW.shape[-2:]
        image_BCHW = F.pad(image_BCHW, (0, (-width) % self.patch_size, 0, (-height) % self.patch_size))
        x_BCHW = self.proj(image_BCHW)
        return self.norm(x_BCHW.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinEncoder(nn.Module):
    """Swin Transformer with its last stage removed; see the module docstring."""

    #: Mean/std (RGB in [0, 1]) the ImageNet weights were trained with; the VOS model applies them.
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(self, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 7, patch_size: int = 4,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.3, in_channels: int = 3) -> None:
        """``depths`` / ``num_heads`` describe the full Swin (4 stages); only the first three are built."""
        super().__init__()
        if len(depths) < _NUM_STAGES or len(num_heads) < _NUM_STAGES:
            raise ValueError(f"Swin: need depths and num_heads for at least {_NUM_STAGES} stages")
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        # Decay over all configured depths, including the stage that is not built (official quirk).
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dims = [embed_dim * 2 ** i for i in range(_NUM_STAGES)]
        self.layers = nn.ModuleList(
            SwinStage(dims[i], depths[i], num_heads[i], window_size, mlp_ratio,
                      rates[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < _NUM_STAGES - 1)
            for i in range(_NUM_STAGES)
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.channels: tuple[int, int, int, int] = (dims[0], dims[1], dims[2], dims[2])
        self.apply(_init_swin_weights)

    def forward(self, image_BCHW: torch.Tensor) -> list[torch.Tensor]:
        x_BCHW = self.patch_embed(image_BCHW)
        height, width = x_BCHW.shape[-2:]
        tokens_BNC = x_BCHW.flatten(2).transpose(1, 2)
        maps: list[torch.Tensor] = []
        for i, stage in enumerate(self.layers):
            stage_out_BNC, merged_BNC = stage(tokens_BNC, height, width)
            normed_BNC = getattr(self, f"norm{i}")(stage_out_BNC)
            maps.append(normed_BNC.transpose(1, 2).reshape(-1, normed_BNC.shape[-1], height, width))
            if merged_BNC is not None:
                tokens_BNC, height, width = merged_BNC, (height + 1) // 2, (width + 1) // 2
        maps.append(maps[-1])  # s16' is the s16 map itself
        return maps


def _init_swin_weights(module: nn.Module) -> None:
    # The reference init is a normal(0.02) truncated at +-2, i.e. at 100 sigma: a plain normal is the same
    # distribution and several times faster to draw for Swin-B's 60M weights.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def swin_base(in_channels: int = 3, drop_path_rate: float = 0.3) -> SwinEncoder:
    """Swin-B (patch 4, window 7, embed 128, heads 4-8-16) to stage 2: the MAVOS ``swinb_*`` encoder."""
    return SwinEncoder(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7,
                       drop_path_rate=drop_path_rate, in_channels=in_channels)
