"""DeAOT short-term propagation: every query pixel attends to a 15x15 window of the previous frame.

This is the official ``LocalGatedPropagation`` (aot-benchmark / MAVOS ``networks/layers/attention.py``) with one head,
as DeAOT and MAVOS use it. The official code builds the 225 local weights and then scatters them into a dense
``HW x HW`` matrix before multiplying by the values; here nothing grows like ``HW²``.

The window attention is *blocked*: the query grid is cut into ``T x T`` tiles, and the queries of a tile can only see
keys inside the tile's halo, the ``(T + 2d) x (T + 2d)`` patch around it (``d = max_dis``). Per tile, the dot products
(``T² x (T + 2d)²``) and the weighted sum of the values are then two batched matrix products, which run at GEMM speed
on CPU and GPU. Each query's 225 logits are picked out of its halo row with a fixed index map (the same for every
tile), so the relative bias, the official out-of-image penalty and the softmax act on exactly the official window
layout; the weights are then scattered back into the halo row (exact zeros elsewhere) for the value product.

Tiles are gathered from the token tables by row index, with one zero row appended: halo positions outside the image
(the official zero padding) and the query positions that pad the grid up to whole tiles all read that row. The price
of the halo: ``(T + 2d)²`` multiply-adds per query and value channel instead of 225, and a gathered copy of the value
halos, ``(T + 2d)² / T²`` times the value map (on CPU gathered a few tiles at a time, see ``_CPU_CHUNK_HALO_BYTES``).

Layouts: maps are ``(B, C, H, W)``; tokens are batch-first ``(B, N, C)`` with ``n = y * W + x``. Window index
``j = (dy + max_dis) * window + (dx + max_dis)`` for the neighbour at ``(y + dy, x + dx)``, as in the official
unfold order (row-major over the window, dy outer). Parameter names equal the official ones
(``relative_emb_k``, ``dw_conv.conv``, ``projection``), so official weights load unchanged.

Shape letters in the tiled code: ``L`` tiles (over the whole batch), ``Q = T²`` queries per tile, ``K = (T + 2d)²``
halo keys per tile, ``J = window²`` window offsets, ``R = B*H*W + 1`` rows of a token table (the last one zero).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.attention import DepthwiseConvDropout, map_to_tokens

# The official code subtracts these constants from the logits of out-of-image neighbours rather than assigning -inf
# (1e4 in half precision, where 1e8 would overflow float16). Both make the weight exactly 0; we keep the official
# values so that the logits match the official ones exactly.
_OUTSIDE_PENALTY_FULL = 1e8
_OUTSIDE_PENALTY_HALF = 1e4

# Tile side. Larger tiles waste more multiply-adds on halo keys outside a query's window ((T + 14)² instead of 225);
# smaller ones gather more halo ((T + 14)² / T² times the value map) and make smaller matrix products. Measured on one
# CPU thread (31x54 and 60x108 grids, value width 1024), 8 was the fastest.
TILE_SIZE = 8

# On CPU the tiles are processed a chunk at a time, each chunk's gathered value halo under this size: a buffer above
# glibc's largest mmap threshold (32 MiB) is fresh pages from the kernel on every call, and page-faulting them in
# cost as much as the matrix products (measured: one whole-grid halo ran ~2x slower than chunks at 480p and 960p).
# GPUs have a caching allocator and prefer few large kernels, so they take all tiles at once.
_CPU_CHUNK_HALO_BYTES = 16 * 2**20


def outside_window_mask(height: int, width: int, max_dis: int, device: torch.device) -> torch.Tensor:
    """``(J, H, W)`` bool, True where window offset ``j`` of pixel ``(y, x)`` falls outside the ``H x W`` image.

    The geometry of the official penalty, in the window layout (the tiled code finds the same positions as the halo
    rows that read the zero row).
    """
    offsets = torch.arange(-max_dis, max_dis + 1, device=device)
    row_DH = offsets[:, None] + torch.arange(height, device=device)
    col_DW = offsets[:, None] + torch.arange(width, device=device)
    rows_outside_DH = (row_DH < 0) | (row_DH >= height)
    cols_outside_DW = (col_DW < 0) | (col_DW >= width)
    outside_DDHW = rows_outside_DH[:, None, :, None] | cols_outside_DW[None, :, None, :]
    return outside_DDHW.reshape(-1, height, width)


class TileIndex(NamedTuple):
    """Where the tiles of a ``(B, H, W)`` grid read from and write to (see :func:`tile_index`)."""

    query_LQ: torch.Tensor  # token-table row of each tile query (the zero row for grid padding)
    halo_LK: torch.Tensor  # token-table row of each halo key (the zero row outside the image)
    window_QJ: torch.Tensor  # halo position of query q's window offset j (the same for every tile)
    tile_position_N: torch.Tensor  # (B*H*W,) flat (L*Q) position of each token's query in the tiles
    zero_row: int  # B*H*W, the index of the appended zero row of every token table


def tile_index(batch: int, height: int, width: int, max_dis: int, tile: int, device: torch.device) -> TileIndex:
    """The gather/scatter index maps of the blocked attention over a ``(B, H, W)`` grid, tiles row-major per image."""
    halo = tile + 2 * max_dis
    pixels_per_image = height * width
    zero_row = batch * pixels_per_image
    tile_starts_Y = torch.arange(0, height, tile, device=device)
    tile_starts_X = torch.arange(0, width, tile, device=device)

    def table_rows(offsets: torch.Tensor) -> torch.Tensor:
        """``(L, S²)`` table rows of each tile's ``S x S`` patch at rows and columns ``tile start + offsets``."""
        rows_YS = tile_starts_Y[:, None] + offsets[None, :]
        cols_XS = tile_starts_X[:, None] + offsets[None, :]
        inside_YXSS = ((rows_YS >= 0) & (rows_YS < height))[:, None, :, None] & (
            (cols_XS >= 0) & (cols_XS < width)
        )[None, :, None, :]
        pixel_YXSS = rows_YS[:, None, :, None] * width + cols_XS[None, :, None, :]
        image_start_B = torch.arange(batch, device=device) * pixels_per_image
        rows_BYXSS = torch.where(inside_YXSS, pixel_YXSS + image_start_B.view(-1, 1, 1, 1, 1), zero_row)
        return rows_BYXSS.reshape(-1, offsets.numel() ** 2)

    query_LQ = table_rows(torch.arange(tile, device=device))
    halo_LK = table_rows(torch.arange(-max_dis, tile + max_dis, device=device))

    # Query (qy, qx) sees offset (dy, dx) at halo position (qy + dy + d, qx + dx + d); axes (qy, qx, dy, dx).
    halo_rows_TD = torch.arange(tile, device=device)[:, None] + torch.arange(2 * max_dis + 1, device=device)
    window_QJ = (halo_rows_TD[:, None, :, None] * halo + halo_rows_TD[None, :, None, :]).reshape(tile * tile, -1)

    # Invert query_LQ; the grid-padding queries all land on one extra slot, dropped at the end.
    tile_position_R = torch.empty(zero_row + 1, dtype=torch.long, device=device)
    tile_position_R[query_LQ.flatten()] = torch.arange(query_LQ.numel(), device=device)
    return TileIndex(query_LQ, halo_LK, window_QJ, tile_position_R[:zero_row], zero_row)


def token_table(map_BCHW: torch.Tensor) -> torch.Tensor:
    """``(R, C)``: the map's tokens of the whole batch, plus the zero row the index maps use for padding."""
    tokens_NC = map_BCHW.permute(0, 2, 3, 1).reshape(-1, map_BCHW.shape[1])  # a view for channels-last maps
    return F.pad(tokens_NC, (0, 0, 0, 1))


def gather_rows(table_RC: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table_RC[rows]``, shape ``(*rows.shape, C)``."""
    return table_RC.index_select(0, rows.flatten()).view(*rows.shape, -1)


def window_softmax_over_tiles(
    query_LQC: torch.Tensor,
    key_LKC: torch.Tensor,
    relative_bias_LQJ: torch.Tensor,
    outside_LQJ: torch.Tensor,
    window_QJ: torch.Tensor,
) -> torch.Tensor:
    """``(L, Q, J)`` softmax weights of each query over its window, tile by tile.

    ``outside_LQJ`` (bool) marks out-of-image neighbours. Their keys are the zero row, so their dot products are
    zero, and the official penalty is subtracted.
    """
    dots_LQK = torch.bmm(query_LQC, key_LKC.transpose(1, 2))
    dots_LQJ = dots_LQK.gather(2, window_QJ.expand(len(dots_LQK), -1, -1))
    logits_LQJ = dots_LQJ + relative_bias_LQJ

    half = logits_LQJ.dtype in (torch.float16, torch.bfloat16)
    penalty = _OUTSIDE_PENALTY_HALF if half else _OUTSIDE_PENALTY_FULL
    logits_LQJ = logits_LQJ - outside_LQJ.to(logits_LQJ.dtype) * penalty
    return torch.softmax(logits_LQJ, dim=-1)


def aggregate_over_tiles(weights_LQJ: torch.Tensor, value_LKC: torch.Tensor, window_QJ: torch.Tensor) -> torch.Tensor:
    """``(L, Q, C)``: each query's weighted sum of its window's values, as one product per tile."""
    num_tiles, queries_per_tile = weights_LQJ.shape[:2]
    halo_area = value_LKC.shape[1]
    # Back to the halo layout, exact zeros off the window, so that the product adds nothing from outside it.
    halo_weights_LQK = weights_LQJ.new_zeros(num_tiles, queries_per_tile, halo_area).scatter(
        2, window_QJ.expand(num_tiles, -1, -1), weights_LQJ
    )
    return torch.bmm(halo_weights_LQK, value_LKC)


def tiles_per_chunk(value_BCHW: torch.Tensor, num_tiles: int, halo_area: int) -> int:
    """How many tiles to gather at once (see ``_CPU_CHUNK_HALO_BYTES``); all of them off the CPU."""
    if value_BCHW.device.type != "cpu":
        return num_tiles
    halo_bytes_per_tile = halo_area * value_BCHW.shape[1] * value_BCHW.element_size()
    return max(1, _CPU_CHUNK_HALO_BYTES // halo_bytes_per_tile)


def tiled_window_attention(
    query_BCHW: torch.Tensor,
    key_BCHW: torch.Tensor,
    value_BCHW: torch.Tensor,
    relative_bias_BNJ: torch.Tensor,
    max_dis: int,
    tile: int = TILE_SIZE,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Windowed softmax attention, blocked into ``tile x tile`` query tiles (see the module docstring).

    ``logit_j(y, x) = query(y, x) · key(y + dy, x + dx) + relative_bias_j(y, x)``, with the official out-of-image
    treatment (zero dot product, as from zero padding, then the penalty subtracted); softmax over ``j``; weighted sum
    of the values over the window.

    Args:
        query_BCHW: the query map, already scaled.
        key_BCHW, value_BCHW: the previous frame's maps on the same grid.
        relative_bias_BNJ: the per-query bias of each window offset, ``J = (2 * max_dis + 1)²``.
        tile: the tile side ``T``.
        need_weights: also return the softmax weights.

    Returns:
        The aggregated value tokens ``(B, H*W, C_value)``, and the weights ``(B, H*W, J)`` if asked (else None).
    """
    batch, _, height, width = query_BCHW.shape
    index = tile_index(batch, height, width, max_dis, tile, query_BCHW.device)
    query_RC, key_RC, value_RC = (token_table(map_BCHW) for map_BCHW in (query_BCHW, key_BCHW, value_BCHW))
    bias_RJ = F.pad(relative_bias_BNJ.flatten(0, 1), (0, 0, 0, 1))

    num_tiles, halo_area = index.halo_LK.shape
    chunk = tiles_per_chunk(value_BCHW, num_tiles, halo_area)
    aggregated_chunks, weight_chunks = [], []
    for first in range(0, num_tiles, chunk):
        query_rows_LQ, halo_rows_LK = index.query_LQ[first : first + chunk], index.halo_LK[first : first + chunk]
        # Out-of-image neighbours are exactly the halo positions that read the zero row.
        outside_LQJ = (halo_rows_LK == index.zero_row)[:, index.window_QJ]
        weights_LQJ = window_softmax_over_tiles(
            gather_rows(query_RC, query_rows_LQ),
            gather_rows(key_RC, halo_rows_LK),
            gather_rows(bias_RJ, query_rows_LQ),
            outside_LQJ,
            index.window_QJ,
        )
        value_LKC = gather_rows(value_RC, halo_rows_LK)
        aggregated_chunks.append(aggregate_over_tiles(weights_LQJ, value_LKC, index.window_QJ))
        weight_chunks.append(weights_LQJ)

    def to_tokens(chunks: list[torch.Tensor]) -> torch.Tensor:
        """Tile order back to token order ``(B, H*W, C)``; the grid-padding queries are dropped."""
        tiles_PC = torch.cat(chunks).flatten(0, 1) if len(chunks) > 1 else chunks[0].flatten(0, 1)
        return tiles_PC.index_select(0, index.tile_position_N).view(batch, height * width, -1)

    return to_tokens(aggregated_chunks), to_tokens(weight_chunks) if need_weights else None


class LocalGatedPropagation(nn.Module):
    """Short-term gated propagation over a ``(2 * max_dis + 1)²`` window (single head, as in DeAOT/MAVOS).

    ``logit_j = q · k_j / sqrt(qk_dim) + relative_emb_k(q)_j``, where the relative bias is content-dependent (a 1x1
    conv of the *unscaled* query). Softmax over the window, weighted sum of the values, times the gate, depthwise 5x5
    conv (+ Dropout2d in training), then a linear projection to ``out_dim``.
    """

    def __init__(
        self,
        qk_dim: int = 128,
        value_dim: int = 1024,
        out_dim: int = 512,
        max_dis: int = 7,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.qk_dim = qk_dim
        self.value_dim = value_dim
        self.max_dis = max_dis
        self.window = 2 * max_dis + 1
        self.relative_emb_k = nn.Conv2d(qk_dim, self.window * self.window, kernel_size=1)
        self.dw_conv = DepthwiseConvDropout(value_dim, dropout=dropout)
        self.projection = nn.Linear(value_dim, out_dim)

    def forward(
        self,
        query_BCHW: torch.Tensor,
        key_BCHW: torch.Tensor,
        value_BCHW: torch.Tensor,
        gate_BNC: torch.Tensor,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Propagate the previous frame's values to the current frame.

        Args:
            query_BCHW: current-frame query map ``(B, qk_dim, H, W)``, not yet scaled.
            key_BCHW: previous-frame key map, same shape.
            value_BCHW: previous-frame value map ``(B, value_dim, H, W)`` (DeAOT: ``[V | ID_V]``).
            gate_BNC: current-frame gate tokens ``(B, H*W, value_dim)``.
            return_weights: also return the softmax weights ``(B, J, H*W)``, ``J = window²`` (index ``j`` as in the
                module docstring; column = query token).

        Returns:
            ``(B, H*W, out_dim)`` tokens, and the weights if asked.
        """
        self._check_inputs(query_BCHW, key_BCHW, value_BCHW, gate_BNC)
        height, width = query_BCHW.shape[-2:]

        # relative_emb_k is a 1x1 convolution, i.e. a linear map per token; applied as one, it gives the token
        # layout the tiles are gathered from.
        relative_bias_BNJ = F.linear(
            map_to_tokens(query_BCHW), self.relative_emb_k.weight.flatten(1), self.relative_emb_k.bias
        )
        scaled_query_BCHW = query_BCHW / self.qk_dim**0.5
        aggregated_BNC, weights_BNJ = tiled_window_attention(
            scaled_query_BCHW, key_BCHW, value_BCHW, relative_bias_BNJ, self.max_dis, need_weights=return_weights
        )
        # The gated read-out as a channels-last view of the tokens: oneDNN's fast depthwise path (~10x faster here
        # than channels-first), and the projection then reads the conv output as tokens without a transposing copy.
        # Not tokens_to_map: for B = 1 its view has a batch stride of C, which the convolution does not recognise as
        # channels-last, so it would copy to channels-first.
        gated_BCHW = (aggregated_BNC * gate_BNC).view(-1, height, width, self.value_dim).permute(0, 3, 1, 2)
        mixed_BCHW = self.dw_conv(gated_BCHW)
        out_BNC = self.projection(map_to_tokens(mixed_BCHW))
        if return_weights:
            return out_BNC, weights_BNJ.transpose(1, 2)
        return out_BNC

    def _check_inputs(
        self,
        query_BCHW: torch.Tensor,
        key_BCHW: torch.Tensor,
        value_BCHW: torch.Tensor,
        gate_BNC: torch.Tensor,
    ) -> None:
        if query_BCHW.ndim != 4 or query_BCHW.shape[1] != self.qk_dim:
            raise ValueError(f"local attention: query must be (B, {self.qk_dim}, H, W), got {tuple(query_BCHW.shape)}")
        batch, _, height, width = query_BCHW.shape
        expected = {
            "key": (key_BCHW, (batch, self.qk_dim, height, width)),
            "value": (value_BCHW, (batch, self.value_dim, height, width)),
            "gate": (gate_BNC, (batch, height * width, self.value_dim)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"local attention: {name} must have shape {shape} to match the query {tuple(query_BCHW.shape)}, "
                    f"got {tuple(tensor.shape)}"
                )
