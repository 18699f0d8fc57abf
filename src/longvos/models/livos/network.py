"""The networks one LiVOS frame passes through after the image encoder, in order: pixel fusion, the object
transformer and the mask decoder (segmenting), then the mask encoder (memorising).

- **Pixel fusion** combines the memory read-out with the sensory memory, the previous masks and the frame's pixels.
- **The object transformer** (Cutie's query transformer) reads at the object level on top of the pixel read-out.
  Per object, ``Q`` queries start from learned embeddings plus a projection of the object memory (mean summaries).
  Each block lets the queries read the pixels with fg/bg-masked attention (half the queries see only the predicted
  foreground, half only the background), mixes the queries, then lets the pixels read the queries back. The fg/bg
  masks come from a small auxiliary mask head before each block; they are computed jointly over all objects.
- **The mask decoder** turns per-object features at stride 16 into per-object logits at stride 4, with image skips;
  it also performs the first of the two per-frame sensory-memory updates, from its multi-scale features.
- **The mask encoder** maps (frame, one object's mask, the other objects' masks) to that object's value at stride
  16: a 5-channel ResNet-18 (to layer3) sees the normalised RGB frame, the object's soft mask and the union of the
  other objects' masks; its features are fused with the frame's pixel features. The value then deep-updates the
  sensory memory (the second sensory update of each frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.encoders import build_encoder
from longvos.models.livos.layers import (CrossAttention, FeatureFuser, FeedForward, PixelFeedForward, SelfAttention,
                                         SinePositionalEncoding2d, others_union, soft_aggregate_logits)
from longvos.models.livos.memory import DeepSensoryUpdate, MultiscaleSensoryUpdate


# -- pixel fusion -----------------------------------------------------------------------------------------------

class PixelFuser(nn.Module):
    """``fuse(pixels, readout + conv1x1([sensory, previous mask, previous others]))`` per object, at stride 16."""

    def __init__(self, pixel_dim: int, value_dim: int, sensory_dim: int):
        super().__init__()
        self.memory_proj = nn.Conv2d(sensory_dim + 2, value_dim, kernel_size=1)
        self.fuser = FeatureFuser(pixel_dim, value_dim, value_dim)

    def forward(
        self,
        pixels_BCHW: torch.Tensor,
        readout_BNCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
        previous_masks_BNHW: torch.Tensor,
    ) -> torch.Tensor:
        """``previous_masks_BNHW``: the last memorised masks, already area-pooled to the stride-16 grid."""
        batch, num_objects = readout_BNCHW.shape[:2]
        memory_BNCHW = torch.cat(
            [sensory_BNCHW, previous_masks_BNHW.unsqueeze(2), others_union(previous_masks_BNHW).unsqueeze(2)], dim=2
        )
        projected_DCHW = self.memory_proj(memory_BNCHW.flatten(0, 1))
        fused_BNCHW = readout_BNCHW + projected_DCHW.view(batch, num_objects, *projected_DCHW.shape[1:])
        return self.fuser(pixels_BCHW, fused_BNCHW)


# -- object transformer -----------------------------------------------------------------------------------------

class ObjectTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.read_from_pixel = CrossAttention(dim, num_heads)
        self.self_attention = SelfAttention(dim, num_heads)
        self.ffn = FeedForward(dim, ff_dim)
        self.read_from_query = CrossAttention(dim, num_heads, normalise_input=False)
        self.pixel_ffn = PixelFeedForward(dim)

    def forward(
        self,
        queries_DQC: torch.Tensor,
        pixels_BNCHW: torch.Tensor,
        query_pe_DQC: torch.Tensor,
        pixel_pe_DLC: torch.Tensor,
        blocked_DhQL: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``D = B*N`` object rows, ``L = H*W`` pixel tokens. Returns the new (queries, pixels)."""
        batch, num_objects, _, height, width = pixels_BNCHW.shape
        pixel_tokens_DLC = pixels_BNCHW.flatten(3, 4).flatten(0, 1).transpose(1, 2).contiguous()
        queries_DQC = self.read_from_pixel(queries_DQC, pixel_tokens_DLC, query_pe_DQC, pixel_pe_DLC, blocked_DhQL)
        queries_DQC = self.ffn(self.self_attention(queries_DQC, query_pe_DQC))
        pixel_tokens_DLC = self.read_from_query(pixel_tokens_DLC, queries_DQC, pixel_pe_DLC, query_pe_DQC)
        pixels_DCHW = self.pixel_ffn(pixel_tokens_DLC, height, width)
        return queries_DQC, pixels_DCHW.view(batch, num_objects, *pixels_DCHW.shape[1:])


@dataclass
class ObjectTransformerOutput:
    pixels_BNCHW: torch.Tensor
    #: the auxiliary mask-head logits ``(B, N, num_blocks + 1, H, W)``: before block 0, then after each block.
    aux_logits_BNLHW: torch.Tensor


class ObjectTransformer(nn.Module):
    def __init__(
        self,
        dim: int,
        ff_dim: int,
        num_blocks: int,
        num_heads: int,
        num_queries: int,
        pe_scale: float,
        pe_temperature: float,
    ):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.query_init = nn.Embedding(num_queries, dim)
        self.query_pe = nn.Embedding(num_queries, dim)
        self.summary_to_query_init = nn.Linear(dim, dim)
        self.summary_to_query_pe = nn.Linear(dim, dim)
        self.pixel_init_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.pixel_pe_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.pos_encoding = SinePositionalEncoding2d(dim, pe_scale, pe_temperature)
        self.blocks = nn.ModuleList(ObjectTransformerBlock(dim, num_heads, ff_dim) for _ in range(num_blocks))
        self.mask_heads = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(dim, 1, kernel_size=1)) for _ in range(num_blocks + 1)
        )

    def forward(self, pixels_BNCHW: torch.Tensor, object_memory_BNQC: torch.Tensor) -> ObjectTransformerOutput:
        """``object_memory_BNQC``: running sums of summaries, ``C = dim + 1`` (the last channel is the area)."""
        batch, num_objects, _, height, width = pixels_BNCHW.shape
        memory_DQC = object_memory_BNQC.reshape(batch * num_objects, self.num_queries, self.dim + 1)
        summaries_DQC = memory_DQC[:, :, :-1] / (memory_DQC[:, :, -1:] + 1e-4)

        queries_DQC = self.query_init.weight.unsqueeze(0) + self.summary_to_query_init(summaries_DQC)
        query_pe_DQC = self.query_pe.weight.unsqueeze(0) + self.summary_to_query_pe(summaries_DQC)

        pixels_DCHW = pixels_BNCHW.flatten(0, 1)
        pixel_pe_DLC = self.pixel_pe_proj(pixels_DCHW).flatten(2, 3).transpose(1, 2)
        pixel_pe_DLC = self.pos_encoding(height, width, pixels_DCHW.device).flatten(0, 1) + pixel_pe_DLC
        pixels_BNCHW = self.pixel_init_proj(pixels_DCHW).view(pixels_BNCHW.shape)

        aux_logits = [self._aux_logits(0, pixels_BNCHW)]
        for index, block in enumerate(self.blocks):
            blocked_DhQL = self._fg_bg_attention_mask(aux_logits[-1])
            queries_DQC, pixels_BNCHW = block(queries_DQC, pixels_BNCHW, query_pe_DQC, pixel_pe_DLC, blocked_DhQL)
            aux_logits.append(self._aux_logits(index + 1, pixels_BNCHW))
        return ObjectTransformerOutput(pixels_BNCHW, torch.stack(aux_logits, dim=2))

    def _aux_logits(self, index: int, pixels_BNCHW: torch.Tensor) -> torch.Tensor:
        logits_D1HW = self.mask_heads[index](pixels_BNCHW.flatten(0, 1))
        return logits_D1HW.view(*pixels_BNCHW.shape[:2], *logits_D1HW.shape[-2:])

    def _fg_bg_attention_mask(self, logits_BNHW: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B*N*heads, Q, H*W)``, True = blocked: the first half of the queries may attend only to
        pixels where the object wins the soft aggregation over all objects (its foreground), the second half
        only to the others. A query that would see nothing sees everything instead."""
        aggregated_BKHW = soft_aggregate_logits(torch.sigmoid(logits_BNHW))
        foreground_BNL = (aggregated_BKHW[:, 1:] >= aggregated_BKHW.max(dim=1, keepdim=True).values).flatten(2)
        half = self.num_queries // 2

        def per_head(blocked_BNL: torch.Tensor) -> torch.Tensor:
            expanded = blocked_BNL[:, :, None, None, :].expand(-1, -1, self.num_heads, half, -1)
            return expanded.flatten(0, 2)

        blocked_DhQL = torch.cat([per_head(~foreground_BNL), per_head(foreground_BNL)], dim=1)
        blocked_DhQL[blocked_DhQL.all(dim=-1)] = False
        return blocked_DhQL


# -- mask decoder -----------------------------------------------------------------------------------------------

class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of per-object features, plus the (shared) projected image skip, then a residual
    pair of 3x3 conv + GELU (a 1x1 conv on the residual path when the width changes)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, features_BNCHW: torch.Tensor, skip_BCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = features_BNCHW.shape[:2]
        up_DCHW = F.interpolate(features_BNCHW.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
        up_BNCHW = up_DCHW.view(batch, num_objects, *up_DCHW.shape[1:]) + skip_BCHW.unsqueeze(1)
        x_DCHW = up_BNCHW.flatten(0, 1)
        out_DCHW = self.shortcut(x_DCHW) + F.gelu(self.conv2(F.gelu(self.conv1(x_DCHW))))
        return out_DCHW.view(batch, num_objects, *out_DCHW.shape[1:])


@dataclass
class DecoderOutput:
    logits_BNHW: torch.Tensor  #: per-object logits at stride 4 (before sigmoid / aggregation)
    sensory_BNCHW: torch.Tensor  #: sensory memory after the decoder's update


class MaskDecoder(nn.Module):
    def __init__(self, image_dims: tuple[int, int, int], decoder_dims: tuple[int, int, int], sensory_dim: int):
        """``image_dims``: widths of the image features at strides 16, 8, 4; ``decoder_dims``: widths of the
        decoder at strides 16 (its input), 8 and 4."""
        super().__init__()
        self.skip_proj_8 = nn.Conv2d(image_dims[1], decoder_dims[0], kernel_size=1)
        self.skip_proj_4 = nn.Conv2d(image_dims[2], decoder_dims[1], kernel_size=1)
        self.up_16_to_8 = UpsampleBlock(decoder_dims[0], decoder_dims[1])
        self.up_8_to_4 = UpsampleBlock(decoder_dims[1], decoder_dims[2])
        self.logit_head = nn.Conv2d(decoder_dims[2], 1, kernel_size=1)
        self.sensory_update = MultiscaleSensoryUpdate(decoder_dims, sensory_dim)

    def forward(
        self,
        features_16_BNCHW: torch.Tensor,
        image_8_BCHW: torch.Tensor,
        image_4_BCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> DecoderOutput:
        batch, num_objects = features_16_BNCHW.shape[:2]
        features_8_BNCHW = self.up_16_to_8(features_16_BNCHW, self.skip_proj_8(image_8_BCHW))
        features_4_BNCHW = self.up_8_to_4(features_8_BNCHW, self.skip_proj_4(image_4_BCHW))
        logits_D1HW = self.logit_head(features_4_BNCHW.flatten(0, 1))
        logits_BNHW = logits_D1HW.view(batch, num_objects, *logits_D1HW.shape[-2:])
        sensory_BNCHW = self.sensory_update(
            features_16_BNCHW,
            features_8_BNCHW,
            torch.cat([features_4_BNCHW, logits_BNHW.unsqueeze(2)], dim=2),
            sensory_BNCHW,
        )
        return DecoderOutput(logits_BNHW, sensory_BNCHW)


# -- mask encoder -----------------------------------------------------------------------------------------------

@dataclass
class EncodedMask:
    value_BNCHW: torch.Tensor
    sensory_BNCHW: torch.Tensor  #: sensory memory after the deep update


class MaskEncoder(nn.Module):
    def __init__(self, backbone_name: str, pixel_dim: int, value_dim: int, sensory_dim: int):
        super().__init__()
        # Frozen BN: numerically the same as the official eval-mode BatchNorm2d, and immune to `.train()`.
        self.backbone = build_encoder(backbone_name, in_channels=5, frozen_bn=True)
        self.fuser = FeatureFuser(pixel_dim, self.backbone.channels[2], value_dim)
        self.sensory_update = DeepSensoryUpdate(value_dim, sensory_dim)

    def forward(
        self,
        image_norm_B3HW: torch.Tensor,
        pixels_BCHW: torch.Tensor,
        masks_BNHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> EncodedMask:
        """``image_norm_B3HW``: the mean/std-normalised frame; ``masks_BNHW``: soft masks at its resolution."""
        batch, num_objects = masks_BNHW.shape[:2]
        inputs_BN5HW = torch.cat(
            [
                image_norm_B3HW.unsqueeze(1).expand(-1, num_objects, -1, -1, -1),
                masks_BNHW.unsqueeze(2).to(image_norm_B3HW.dtype),
                others_union(masks_BNHW).unsqueeze(2).to(image_norm_B3HW.dtype),
            ],
            dim=2,
        )
        features_DCHW = self.backbone(inputs_BN5HW.flatten(0, 1))[2]
        features_BNCHW = features_DCHW.view(batch, num_objects, *features_DCHW.shape[1:])
        value_BNCHW = self.fuser(pixels_BCHW, features_BNCHW)
        return EncodedMask(value_BNCHW, self.sensory_update(value_BNCHW, sensory_BNCHW))
