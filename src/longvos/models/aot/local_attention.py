"""DeAOT short-term propagation: every query pixel attends to a 15x15 window of the previous frame.

This is the official ``LocalGatedPropagation`` (aot-benchmark / MAVOS ``networks/layers/attention.py``) with one head,
as DeAOT and MAVOS use it. The official code builds the 225 local weights and then scatters them into a dense
``HW x HW`` matrix before multiplying by the values; here nothing grows like ``HW²``.

The window attention is *blocked*: the query grid is cut into ``T x T`` tiles, and the queries of a tile can only see
keys inside the tile's halo, the ``(T + 2d) x (T + 2d)`` patch of the zero-padded key/value maps around it
(``d = max_dis``). Per tile, the dot products (``T² x (T + 2d)²``) and the weighted sum of the values are then two
batched matrix products, which run at GEMM speed on CPU and GPU. Each query's 225 logits are picked out of its halo row
with a fixed index map (the same for every tile), so the relative bias, the official out-of-image penalty and the
softmax act on exactly the official window layout; the weights are scattered back into the halo row (exact zeros
elsewhere) for the value product. The price of the halo: ``(T + 2d)²`` multiply-adds per query and value channel
instead of 225, and a gathered copy of the value halos, ``(T + 2d)² / T²`` times the value map.

Layouts: maps are ``(B, C, H, W)``; tokens are batch-first ``(B, N, C)`` with ``n = y * W + x``. Window index
``j = (dy + max_dis) * window + (dx + max_dis)`` for the neighbour at ``(y + dy, x + dx)``, as in the official
unfold order (row-major over the window, dy outer). Parameter names equal the official ones
(``relative_emb_k``, ``dw_conv.conv``, ``projection``), so official weights load unchanged.

Shape letters in the tiled code: ``L`` tiles (batch included), ``T`` tiles of one image, ``Q = T²`` queries per tile,
``K = (T + 2d)²`` halo keys per tile, ``J = window²`` window offsets, ``P = Q * J``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.attention import DepthwiseConvDropout, map_to_tokens, tokens_to_map

# The official code subtracts these constants from the logits of out-of-image neighbours rather than assigning -inf
# (1e4 in half precision, where 1e8 would overflow float16). Both make the weight exactly 0; we keep the official
# values so that the logits match the official ones exactly.
_OUTSIDE_PENALTY_FULL = 1e8
_OUTSIDE_PENALTY_HALF = 1e4

# Tile side. Larger tiles waste more multiply-adds on halo keys outside a query's window ((T + 14)² instead of 225);
# smaller ones copy more halo ((T + 14)² / T² times the value map) and make smaller matrix products. Measured on one
# CPU thread (31x54 and 60x108 grids, value width 1024), 8 was fastest once the halo copy is banded (below).
TILE_SIZE = 8

# On CPU the tile rows are processed in horizontal bands whose value halo stays under this size. Above glibc's
# largest mmap threshold (32 MiB) every call gets fresh pages from the kernel, and page-faulting them in cost more
# than the matrix products (measured: the banded halo copy + product ran 2x faster than one whole-grid copy at 480p
# and 960p). GPUs have a caching allocator and prefer few large kernels, so they take the whole grid at once.
_CPU_BAND_HALO_BYTES = 24 * 2**20


def outside_window_mask(height: int, width: int, max_dis: int, device: torch.device) -> torch.Tensor:
    """``(J, H, W)`` bool, True where window offset ``j`` of pixel ``(y, x)`` falls outside the ``H x W`` image."""
    offsets = torch.arange(-max_dis, max_dis + 1, device=device)
    row_DH = offsets[:, None] + torch.arange(height, device=device)
    col_DW = offsets[:, None] + torch.arange(width, device=device)
    rows_outside_DH = (row_DH < 0) | (row_DH >= height)
    cols_outside_DW = (col_DW < 0) | (col_DW >= width)
    outside_DDHW = rows_outside_DH[:, None, :, None] | cols_outside_DW[None, :, None, :]
    return outside_DDHW.reshape(-1, height, width)


def window_positions_in_halo(tile: int, max_dis: int, device: torch.device) -> torch.Tensor:
    """``(P,)`` flat index into a tile's ``(Q, K)`` logits of query ``q``'s window offset ``j``, ``P = Q * J``.

    Query ``(qy, qx)`` of the tile sees offset ``(dy, dx)`` at halo position ``(qy + dy + d, qx + dx + d)``; the same
    map serves every tile, since each tile's halo starts ``d`` rows and columns before the tile.
    """
    halo = tile + 2 * max_dis
    within_tile_T = torch.arange(tile, device=device)
    within_window_D = torch.arange(2 * max_dis + 1, device=device)  # dy + d (or dx + d)
    halo_rows_TD = within_tile_T[:, None] + within_window_D[None, :]
    # Axes (qy, qx, dy, dx), flattened to (q, j) in the official row-major orders.
    halo_position_TTDD = halo_rows_TD[:, None, :, None] * halo + halo_rows_TD[None, :, None, :]
    query_index_Q = torch.arange(tile * tile, device=device)
    return (query_index_Q[:, None] * halo * halo + halo_position_TTDD.reshape(tile * tile, -1)).flatten()


def rows_with_zero_border(map_BHWC: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Rows ``top:bottom`` of a channels-last map, zeros where they run past the image, plus zero columns."""
    height = map_BHWC.shape[1]
    inside_BHWC = map_BHWC[:, max(top, 0) : min(bottom, height)]
    # F.pad order on (B, H, W, C): C, then W, then H.
    return F.pad(inside_BHWC, (0, 0, left, right, max(-top, 0), max(bottom - height, 0)))


def map_to_tiles(map_BHWC: torch.Tensor, tile: int) -> torch.Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``tile`` -> ``(L, Q, C)``, tiles row-major per image."""
    batch, height, width, channels = map_BHWC.shape
    tiles_BYTXTC = map_BHWC.reshape(batch, height // tile, tile, width // tile, tile, channels)
    return tiles_BYTXTC.transpose(2, 3).reshape(-1, tile * tile, channels)


def tiles_to_map(tiles_LQC: torch.Tensor, batch: int, grid_hw: tuple[int, int], tile: int) -> torch.Tensor:
    """Inverse of :func:`map_to_tiles`: ``(L, Q, C)`` -> ``(B, H, W, C)``."""
    height, width = grid_hw
    tiles_BYXTTC = tiles_LQC.reshape(batch, height // tile, width // tile, tile, tile, -1)
    return tiles_BYXTTC.transpose(2, 3).reshape(batch, height, width, -1)


def halo_tiles(padded_BHWC: torch.Tensor, tile: int, halo: int) -> torch.Tensor:
    """``(L, K, C)``: the ``halo x halo`` patch at stride ``tile`` of a padded map, one per tile (a gathered copy).

    Channels-last, so that the copy moves whole ``halo * C`` runs and each tile is a plain ``(K, C)`` matrix.
    """
    channels = padded_BHWC.shape[-1]
    patches_BYXCHH = padded_BHWC.unfold(1, halo, tile).unfold(2, halo, tile)
    return patches_BYXCHH.permute(0, 1, 2, 4, 5, 3).reshape(-1, halo * halo, channels)


def window_softmax_over_tiles(
    query_LQC: torch.Tensor,
    key_LKC: torch.Tensor,
    relative_bias_LQJ: torch.Tensor,
    outside_TQJ: torch.Tensor,
    window_index_P: torch.Tensor,
) -> torch.Tensor:
    """``(L, Q, J)`` softmax weights of each query over its window, computed tile by tile.

    ``outside_TQJ`` (bool) marks out-of-image neighbours for the tiles of one image (the same for every batch
    element). Their dot products are zero (the keys are zero-padded); the official penalty is then subtracted.
    """
    num_tiles, queries_per_tile = query_LQC.shape[:2]
    dots_LQK = torch.bmm(query_LQC, key_LKC.transpose(1, 2))
    dots_LQJ = dots_LQK.reshape(num_tiles, -1).index_select(1, window_index_P).view(num_tiles, queries_per_tile, -1)
    logits_LQJ = dots_LQJ + relative_bias_LQJ

    half = logits_LQJ.dtype in (torch.float16, torch.bfloat16)
    penalty = _OUTSIDE_PENALTY_HALF if half else _OUTSIDE_PENALTY_FULL
    logits_BTQJ = logits_LQJ.view(-1, *outside_TQJ.shape) - outside_TQJ.to(logits_LQJ.dtype) * penalty
    return torch.softmax(logits_BTQJ, dim=-1).view_as(logits_LQJ)


def aggregate_over_tiles(weights_LQJ: torch.Tensor, value_LKC: torch.Tensor, window_index_P: torch.Tensor) -> torch.Tensor:
    """``(L, Q, C)``: each query's weighted sum of its window's values, as one product per tile."""
    num_tiles, queries_per_tile = weights_LQJ.shape[:2]
    halo_area = value_LKC.shape[1]
    # Back to the halo layout, exact zeros off the window, so that the product adds nothing from outside it.
    halo_weights_LQK = (
        weights_LQJ.new_zeros(num_tiles, queries_per_tile * halo_area)
        .index_copy(1, window_index_P, weights_LQJ.reshape(num_tiles, -1))
        .view(num_tiles, queries_per_tile, halo_area)
    )
    return torch.bmm(halo_weights_LQK, value_LKC)


def tile_rows_per_band(value_BCHW: torch.Tensor, tiles_per_row: int, halo: int, num_tile_rows: int) -> int:
    """How many tile rows to process together (see ``_CPU_BAND_HALO_BYTES``); all of them off the CPU."""
    if value_BCHW.device.type != "cpu":
        return num_tile_rows
    batch, channels = value_BCHW.shape[:2]
    halo_bytes_per_tile_row = batch * tiles_per_row * halo * halo * channels * value_BCHW.element_size()
    return max(1, min(num_tile_rows, _CPU_BAND_HALO_BYTES // halo_bytes_per_tile_row))


def tiled_window_attention(
    query_BCHW: torch.Tensor,
    key_BCHW: torch.Tensor,
    value_BCHW: torch.Tensor,
    relative_bias_BJHW: torch.Tensor,
    max_dis: int,
    tile: int = TILE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed softmax attention, blocked into ``tile x tile`` query tiles (see the module docstring).

    ``logit_j(y, x) = query(y, x) · key(y + dy, x + dx) + relative_bias_j(y, x)``, with the official out-of-image
    treatment (zero dot product from the zero padding, then the penalty subtracted); softmax over ``j``; weighted sum
    of the values over the window.

    Everything is handled channels-last: callers' maps are usually views of token tensors, and the halo gather then
    copies long contiguous runs.

    Args:
        query_BCHW: the query map, already scaled.
        key_BCHW, value_BCHW: the previous frame's maps on the same grid.
        relative_bias_BJHW: the per-query bias of each window offset, ``J = (2 * max_dis + 1)²``.
        tile: the tile side ``T``.

    Returns:
        The aggregated values ``(B, C_value, H, W)`` (channels-last in memory) and the weights ``(B, H, W, J)``.
    """
    batch, _, height, width = query_BCHW.shape
    halo = tile + 2 * max_dis
    window_index_P = window_positions_in_halo(tile, max_dis, query_BCHW.device)
    query_BHWC, key_BHWC, value_BHWC, bias_BHWJ = (
        map_BCHW.permute(0, 2, 3, 1) for map_BCHW in (query_BCHW, key_BCHW, value_BCHW, relative_bias_BJHW)
    )
    outside_1HWJ = outside_window_mask(height, width, max_dis, query_BCHW.device).permute(1, 2, 0)[None]

    # The grid is padded up to whole tiles; the extra queries see zeros and are cropped away below.
    extra_w = -width % tile
    tiles_per_row, num_tile_rows = (width + extra_w) // tile, -(-height // tile)
    band_rows = tile * tile_rows_per_band(value_BCHW, tiles_per_row, halo, num_tile_rows)

    aggregated_bands, weight_bands = [], []
    for top in range(0, height, band_rows):
        bottom = top + band_rows
        query_LQC = map_to_tiles(rows_with_zero_border(query_BHWC, top, bottom, 0, extra_w), tile)
        bias_LQJ = map_to_tiles(rows_with_zero_border(bias_BHWJ, top, bottom, 0, extra_w), tile)
        outside_TQJ = map_to_tiles(rows_with_zero_border(outside_1HWJ, top, bottom, 0, extra_w), tile)
        # Keys and values: the official zero border of max_dis on every side (plus the tile padding).
        key_LKC, value_LKC = (
            halo_tiles(rows_with_zero_border(map_BHWC, top - max_dis, bottom + max_dis, max_dis, max_dis + extra_w),
                       tile, halo)
            for map_BHWC in (key_BHWC, value_BHWC)
        )

        weights_LQJ = window_softmax_over_tiles(query_LQC, key_LKC, bias_LQJ, outside_TQJ, window_index_P)
        aggregated_LQC = aggregate_over_tiles(weights_LQJ, value_LKC, window_index_P)

        band_hw = (band_rows, width + extra_w)
        aggregated_bands.append(tiles_to_map(aggregated_LQC, batch, band_hw, tile)[:, : height - top, :width])
        weight_bands.append(tiles_to_map(weights_LQJ, batch, band_hw, tile)[:, : height - top, :width])

    aggregated_BHWC = torch.cat(aggregated_bands, dim=1) if len(aggregated_bands) > 1 else aggregated_bands[0]
    weights_BHWJ = torch.cat(weight_bands, dim=1) if len(weight_bands) > 1 else weight_bands[0]
    return aggregated_BHWC.permute(0, 3, 1, 2), weights_BHWJ


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

        relative_bias_BJHW = self.relative_emb_k(query_BCHW)
        scaled_query_BCHW = query_BCHW / self.qk_dim**0.5
        aggregated_BCHW, weights_BHWJ = tiled_window_attention(
            scaled_query_BCHW, key_BCHW, value_BCHW, relative_bias_BJHW, self.max_dis
        )
        # Both factors are channels-last views, so the product, the depthwise conv and the tokens stay channels-last
        # (oneDNN's fast depthwise path) and the projection needs no transposing copy.
        mixed_BCHW = self.dw_conv(aggregated_BCHW * tokens_to_map(gate_BNC, (height, width)))
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
