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

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers import onednn
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

# On CPU the tiles are processed a chunk at a time, each chunk's gathered value halo under this size. A buffer above
# glibc's largest mmap threshold (32 MiB) is fresh pages from the kernel on every call, and page-faulting them in
# cost as much as the matrix products. Measured on one thread: halo gather + value product ~2x faster in chunks than
# as one whole-grid buffer, and the whole forward at 960p ~1.4x faster. GPUs have a caching allocator and prefer few
# large kernels, so they take all tiles at once.
_CPU_CHUNK_HALO_BYTES = 16 * 2**20


class TileIndex(NamedTuple):
    """Where the tiles of a ``(B, H, W)`` grid read from and write to (see :func:`tile_index`)."""

    query_LQ: torch.Tensor  # token-table row of each tile query (the zero row for grid padding)
    halo_LK: torch.Tensor  # token-table row of each halo key (the zero row outside the image)
    window_QJ: torch.Tensor  # halo position of query q's window offset j (the same for every tile)
    outside_LQJ: torch.Tensor  # bool: query q's neighbour j is outside the image (its halo key is the zero row)
    grid_position_LQ: torch.Tensor  # row of each tile query in the tile-padded grid (B, Hp, Wp), flattened
    padded_hw: tuple[int, int]  # (Hp, Wp): the grid padded up to whole tiles


@functools.lru_cache(maxsize=16)
def tile_index(batch: int, height: int, width: int, max_dis: int, tile: int, device: torch.device) -> TileIndex:
    """The gather/scatter index maps of the blocked attention over a ``(B, H, W)`` grid, tiles row-major per image.

    Token tables have ``R = B*H*W + 1`` rows, the last one zero (see :func:`token_table`).

    Cached: every layer of every frame of a video asks for the same maps, and building them is ~35 small ops (1 ms
    per layer on CPU, as many kernel launches on a GPU). The maps are only ever read. They are made outside
    inference mode, so that a map first built during inference can still be used by a training step's autograd.
    """
    with torch.inference_mode(False):
        return _build_tile_index(batch, height, width, max_dis, tile, device)


def _build_tile_index(batch: int, height: int, width: int, max_dis: int, tile: int,
                      device: torch.device) -> TileIndex:
    halo = tile + 2 * max_dis
    zero_row = batch * height * width
    padded_hw = (-(-height // tile) * tile, -(-width // tile) * tile)
    tile_starts_Y = torch.arange(0, height, tile, device=device)
    tile_starts_X = torch.arange(0, width, tile, device=device)
    batch_B1111 = torch.arange(batch, device=device).view(-1, 1, 1, 1, 1)

    def patch_coordinates(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``(Y, 1, S, 1)`` and columns ``(1, X, 1, S)`` of each tile's ``S x S`` patch at ``start + offsets``."""
        rows_YS = tile_starts_Y[:, None] + offsets[None, :]
        cols_XS = tile_starts_X[:, None] + offsets[None, :]
        return rows_YS[:, None, :, None], cols_XS[None, :, None, :]

    def table_rows(offsets: torch.Tensor) -> torch.Tensor:
        """``(L, S²)`` token-table rows of each tile's patch; the zero row where it leaves the image."""
        rows_Y1S1, cols_1X1S = patch_coordinates(offsets)
        inside_YXSS = (rows_Y1S1 >= 0) & (rows_Y1S1 < height) & (cols_1X1S >= 0) & (cols_1X1S < width)
        token_BYXSS = (batch_B1111 * height + rows_Y1S1) * width + cols_1X1S
        return torch.where(inside_YXSS, token_BYXSS, zero_row).reshape(-1, offsets.numel() ** 2)

    within_tile_T = torch.arange(tile, device=device)
    query_LQ = table_rows(within_tile_T)
    halo_LK = table_rows(torch.arange(-max_dis, tile + max_dis, device=device))

    # Query (qy, qx) sees offset (dy, dx) at halo position (qy + dy + d, qx + dx + d); axes (qy, qx, dy, dx).
    halo_rows_TD = within_tile_T[:, None] + torch.arange(2 * max_dis + 1, device=device)
    window_QJ = (halo_rows_TD[:, None, :, None] * halo + halo_rows_TD[None, :, None, :]).reshape(tile * tile, -1)
    outside_LQJ = (halo_LK == zero_row)[:, window_QJ]

    rows_Y1T1, cols_1X1T = patch_coordinates(within_tile_T)
    grid_position_LQ = ((batch_B1111 * padded_hw[0] + rows_Y1T1) * padded_hw[1] + cols_1X1T).reshape(-1, tile * tile)
    return TileIndex(query_LQ, halo_LK, window_QJ, outside_LQJ, grid_position_LQ, padded_hw)


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


def copy_rows_into(
    buffer_GC: torch.Tensor | None, rows_LQ: torch.Tensor, tiles_LQC: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Write each tile query's result to its row of a ``(G, C)`` buffer, made (in the results' dtype) on first use.

    In place on a fresh buffer rather than a concatenation of the chunks: one output-sized buffer instead of three.
    """
    if buffer_GC is None:
        buffer_GC = tiles_LQC.new_empty(num_rows, tiles_LQC.shape[-1])
    return buffer_GC.index_copy_(0, rows_LQ.flatten(), tiles_LQC.flatten(0, 1))


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
        The aggregated values ``(B, H, W, C_value)`` and, if asked, the weights ``(B, H, W, J)`` (else None); both
        are crops of tile-padded buffers.
    """
    batch, _, height, width = query_BCHW.shape
    index = tile_index(batch, height, width, max_dis, tile, query_BCHW.device)
    query_RC, key_RC, value_RC = (token_table(map_BCHW) for map_BCHW in (query_BCHW, key_BCHW, value_BCHW))
    bias_RJ = F.pad(relative_bias_BNJ.flatten(0, 1), (0, 0, 0, 1))

    num_tiles, halo_area = index.halo_LK.shape
    chunk = tiles_per_chunk(value_BCHW, num_tiles, halo_area)
    grid_rows = batch * index.padded_hw[0] * index.padded_hw[1]
    aggregated_GC = weights_GJ = None  # G: the rows of the tile-padded grid
    for first in range(0, num_tiles, chunk):
        tiles = slice(first, first + chunk)
        weights_LQJ = window_softmax_over_tiles(
            gather_rows(query_RC, index.query_LQ[tiles]),
            gather_rows(key_RC, index.halo_LK[tiles]),
            gather_rows(bias_RJ, index.query_LQ[tiles]),
            index.outside_LQJ[tiles],
            index.window_QJ,
        )
        # The value halo is the largest temporary: gathered inside the call, so that it is freed right after.
        aggregated_LQC = aggregate_over_tiles(weights_LQJ, gather_rows(value_RC, index.halo_LK[tiles]), index.window_QJ)
        aggregated_GC = copy_rows_into(aggregated_GC, index.grid_position_LQ[tiles], aggregated_LQC, grid_rows)
        if need_weights:
            weights_GJ = copy_rows_into(weights_GJ, index.grid_position_LQ[tiles], weights_LQJ, grid_rows)

    def crop(rows_GC: torch.Tensor) -> torch.Tensor:
        return rows_GC.view(batch, *index.padded_hw, -1)[:, :height, :width]

    return crop(aggregated_GC), crop(weights_GJ) if need_weights else None


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
        self.projection = onednn.Linear(value_dim, out_dim)

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
        relative_bias_BNJ = onednn.linear(
            map_to_tokens(query_BCHW), self.relative_emb_k.weight.flatten(1), self.relative_emb_k.bias
        )
        scaled_query_BCHW = query_BCHW / self.qk_dim**0.5
        aggregated_BHWC, weights_BHWJ = tiled_window_attention(
            scaled_query_BCHW, key_BCHW, value_BCHW, relative_bias_BNJ, self.max_dis, need_weights=return_weights
        )
        # The gated read-out stays channels-last, and the convolution sees it as a channels-last map: oneDNN's fast
        # depthwise path (~10x faster here than channels-first), and the projection then reads the conv output as
        # tokens without a transposing copy. (Not tokens_to_map: for B = 1 its view has a batch stride of C, which
        # the convolution does not recognise as channels-last, so it would copy to channels-first.)
        gated_BHWC = aggregated_BHWC * gate_BNC.reshape(-1, height, width, self.value_dim)
        mixed_BCHW = self.dw_conv(gated_BHWC.permute(0, 3, 1, 2))
        out_BNC = self.projection(map_to_tokens(mixed_BCHW))
        if return_weights:
            return out_BNC, weights_BHWJ.flatten(1, 2).transpose(1, 2)
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
