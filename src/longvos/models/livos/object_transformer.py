"""The object transformer (Cutie's query transformer): object-level reading on top of the pixel read-out.

Per object, ``Q`` queries start from learned embeddings plus a projection of the object memory (mean summaries).
Each block lets the queries read the pixels with fg/bg-masked attention (half the queries see only the predicted
foreground, half only the background), mixes the queries, then lets the pixels read the queries back. The
fg/bg masks come from a small auxiliary mask head before each block; they are computed jointly over all objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from longvos.models.livos.attention_layers import CrossAttention, FeedForward, PixelFeedForward, SelfAttention
from longvos.models.livos.positional_encoding import SinePositionalEncoding2d
from longvos.models.livos.soft_aggregation import soft_aggregate_logits


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
