"""Unit golden tests of the two AOT-family attention blocks: MAVOS MCA and the DeAOT 15x15 local propagation.

The fixtures (``golden/mavos/unit_*.npz``) were produced by the official code with the golden rule weights; see
``golden/mavos/README.md``, section "Unit fixtures".
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longvos.models.aot import official
from longvos.models.aot.local_attention import LocalGatedPropagation
from longvos.models.aot.mca import ModulatedCrossAttention

MCA_PREFIX = {512: "long_term_memory_attention.0.1.", 128: "long_term_memory_attention.0.0."}
LOCAL_PREFIX = "LSTT.layers.0.short_term_attn."


@pytest.fixture(scope="module")
def rule_weights(golden_dir) -> OrderedDict:
    """The golden rule state_dict of MNv2-MAVOS (the official key names)."""
    spec = importlib.util.spec_from_file_location("golden_make_weights", golden_dir / "mavos" / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    return make_weights.build_state_dict(str(golden_dir / "mavos" / "keys_mavos.json"))


def _sub_state_dict(state_dict: OrderedDict, prefix: str) -> OrderedDict:
    return OrderedDict((key[len(prefix):], value) for key, value in state_dict.items() if key.startswith(prefix))


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol}"


# ---------------------------------------------------------------------------------------------------------------------
# MCA
# ---------------------------------------------------------------------------------------------------------------------


def _mca_from_rule(rule_weights: OrderedDict, dim: int) -> ModulatedCrossAttention:
    official_sd = _sub_state_dict(rule_weights, MCA_PREFIX[dim])
    block = ModulatedCrossAttention(dim)
    block.load_state_dict({official.mca_key_from_official(k): v for k, v in official_sd.items()}, strict=True)
    return block.eval()


@pytest.fixture(scope="module")
def mca_fixture(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "mavos" / "unit_mca.npz") as data:
        return {key: data[key] for key in data.files}


def _mca_inputs(mca_fixture, dim: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    # Fixture tokens are (N, B, C); ours are batch-first.
    new_BNC = _torch(mca_fixture[f"mca{dim}_latents"]).transpose(0, 1)
    context_BNC = _torch(mca_fixture[f"mca{dim}_context"]).transpose(0, 1)
    return new_BNC, context_BNC, (int(mca_fixture["H"]), int(mca_fixture["W"]))


@pytest.mark.parametrize("dim", [512, 128])
def test_mca_matches_official_block(rule_weights, mca_fixture, dim):
    block = _mca_from_rule(rule_weights, dim)
    new_BNC, context_BNC, hw = _mca_inputs(mca_fixture, dim)
    expected = {name: _torch(mca_fixture[f"mca{dim}_{name}"]) for name in ("out", "attn", "gates", "modulator", "y")}

    with torch.no_grad():
        out_BNC = block(new_BNC, context_BNC, hw)
        new_normed_BNC, context_normed_BNC = block.norm_l(new_BNC), block.norm_c(context_BNC)
        modulator_BCHW, gates_BGHW = block.attn.focal_modulator(context_normed_BNC, hw)
        attn_BhNN = block.attn.attention_weights(new_normed_BNC, context_normed_BNC)
        y_BNC = block.attn(new_normed_BNC, context_normed_BNC, hw)

    _assert_close(out_BNC.transpose(0, 1), expected["out"], 1e-5, f"MCA{dim} out")
    _assert_close(attn_BhNN, expected["attn"], 1e-5, f"MCA{dim} attn")
    _assert_close(gates_BGHW, expected["gates"], 1e-5, f"MCA{dim} gates")
    _assert_close(modulator_BCHW, expected["modulator"], 1e-5, f"MCA{dim} modulator")
    _assert_close(y_BNC, expected["y"], 1e-5, f"MCA{dim} y")


def test_mca_value_layout_quirk_matters(rule_weights, mca_fixture, monkeypatch):
    """Replacing the official reinterpretation with the 'correct' permute to token order must break equivalence."""

    def permuted_values(modulator_BCHW: torch.Tensor, num_heads: int) -> torch.Tensor:
        tokens_BNC = modulator_BCHW.flatten(2).transpose(1, 2)
        batch, num_tokens, channels = tokens_BNC.shape
        return tokens_BNC.reshape(batch, num_tokens, num_heads, channels // num_heads).transpose(1, 2)

    block = _mca_from_rule(rule_weights, 512)
    new_BNC, context_BNC, hw = _mca_inputs(mca_fixture, 512)
    expected_BNC = _torch(mca_fixture["mca512_out"]).transpose(0, 1)
    monkeypatch.setattr(official, "mca_modulator_as_values", permuted_values)
    with torch.no_grad():
        diff = (block(new_BNC, context_BNC, hw) - expected_BNC).abs().max().item()
    assert diff > 1e-2, f"the permuted value layout should not match the official output (max |diff| {diff:.3g})"


def test_mca_key_mapping_rejects_foreign_keys():
    assert official.mca_key_from_official("joint_modulation.attn.focal_layers.1.0.weight") == (
        "attn.focal_layers.1.0.weight"
    )
    with pytest.raises(KeyError, match="joint_modulation"):
        official.mca_key_from_official("attn.q.weight")


def test_mca_drop_path_only_in_training():
    block = ModulatedCrossAttention(16, drop_path=0.5)
    new_BNC, context_BNC = torch.randn(8, 6, 16), torch.randn(8, 6, 16)
    block.eval()
    assert torch.equal(block(new_BNC, context_BNC, (2, 3)), block(new_BNC, context_BNC, (2, 3)))
    block.train()
    outputs = [block(new_BNC, context_BNC, (2, 3)) for _ in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])
    outputs[0].sum().backward()
    assert block.attn.f_context.weight.grad is not None


def test_mca_rejects_tokens_that_do_not_fit_the_grid():
    block = ModulatedCrossAttention(16)
    with pytest.raises(ValueError, match=r"context must be \(B, H\*W=6"):
        block(torch.randn(1, 6, 16), torch.randn(1, 7, 16), (2, 3))
    with pytest.raises(ValueError, match="batch sizes differ"):
        block(torch.randn(1, 6, 16), torch.randn(2, 6, 16), (2, 3))


# ---------------------------------------------------------------------------------------------------------------------
# Local (short-term) attention
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_fixture(golden_dir) -> dict[str, torch.Tensor]:
    with np.load(golden_dir / "mavos" / "unit_local_attn.npz") as data:
        # Inputs are stored as float16 (exactly representable); the official run used them as float32.
        return {key: _torch(data[key]) for key in ("q", "k", "v", "u", "out", "local_attn")}


def test_local_attention_matches_official(rule_weights, local_fixture):
    module = LocalGatedPropagation()
    module.load_state_dict(_sub_state_dict(rule_weights, LOCAL_PREFIX), strict=True)
    module.eval()
    gate_BNC = local_fixture["u"].transpose(0, 1)
    with torch.no_grad():
        out_BNC, weights_BJN = module(
            local_fixture["q"], local_fixture["k"], local_fixture["v"], gate_BNC, return_weights=True
        )
    _assert_close(out_BNC.transpose(0, 1), local_fixture["out"], 1e-5, "local attention out")
    _assert_close(weights_BJN, local_fixture["local_attn"][:, 0], 1e-6, "local attention weights")


def _dense_local_reference(
    module: LocalGatedPropagation, query_BCHW, key_BCHW, value_BCHW, gate_BNC
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force over a dense HW x HW score matrix, written from the definition (window = |dy|, |dx| <= max_dis)."""
    batch, channels, height, width = query_BCHW.shape
    max_dis, window = module.max_dis, module.window
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy_NN, dx_NN = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # row = query, column = key
    in_window_NN = (dy_NN.abs() <= max_dis) & (dx_NN.abs() <= max_dis)
    window_index_NN = ((dy_NN + max_dis) * window + (dx_NN + max_dis)).clamp(0, window * window - 1)

    query_BNC, key_BNC = query_BCHW.flatten(2).transpose(1, 2), key_BCHW.flatten(2).transpose(1, 2)
    bias_BNJ = module.relative_emb_k(query_BCHW).flatten(2).transpose(1, 2)
    scores_BNN = query_BNC @ key_BNC.transpose(1, 2) / channels**0.5
    scores_BNN = scores_BNN + torch.gather(bias_BNJ, 2, window_index_NN.expand(batch, -1, -1))
    weights_BNN = torch.softmax(scores_BNN.masked_fill(~in_window_NN, float("-inf")), dim=2)
    aggregated_BNC = weights_BNN @ value_BCHW.flatten(2).transpose(1, 2)

    mixed_BCN = module.dw_conv((aggregated_BNC * gate_BNC).transpose(1, 2).reshape(batch, -1, height, width))
    out_BNC = module.projection(mixed_BCN.flatten(2).transpose(1, 2))
    # Back to the window layout: weights_BJN[b, j, n] for the neighbour j of query n (0 outside the image).
    weights_BJN = torch.zeros(batch, window * window, height * width)
    query_index, key_index = in_window_NN.nonzero(as_tuple=True)
    weights_BJN[:, window_index_NN[query_index, key_index], query_index] = weights_BNN[:, query_index, key_index]
    return out_BNC, weights_BJN


def _random_local_inputs(module: LocalGatedPropagation, batch: int, height: int, width: int):
    return (
        torch.randn(batch, module.qk_dim, height, width),
        torch.randn(batch, module.qk_dim, height, width),
        torch.randn(batch, module.value_dim, height, width),
        torch.randn(batch, height * width, module.value_dim),
    )


@pytest.mark.parametrize("max_dis", [7, 2])
def test_local_attention_matches_dense_definition(max_dis):
    module = LocalGatedPropagation(qk_dim=16, value_dim=24, out_dim=8, max_dis=max_dis).eval()
    inputs = _random_local_inputs(module, batch=2, height=9, width=13)  # grid larger than the 5x5, smaller than 15x15
    with torch.no_grad():
        out_BNC, weights_BJN = module(*inputs, return_weights=True)
        expected_out_BNC, expected_weights_BJN = _dense_local_reference(module, *inputs)
    _assert_close(out_BNC, expected_out_BNC, 1e-5, "local attention vs dense reference")
    _assert_close(weights_BJN, expected_weights_BJN, 1e-6, "local weights vs dense reference")


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return result


def test_local_attention_never_builds_a_dense_matrix():
    """The largest intermediate grows like HW (the tiles' halo blocks), not like HW² (the official dense fallback)."""
    module = LocalGatedPropagation(qk_dim=8, value_dim=16, out_dim=8).eval()
    largest = {}
    for side in (32, 64):
        inputs = _random_local_inputs(module, batch=1, height=side, width=side)
        with torch.no_grad(), _LargestTensor() as tracker:
            module(*inputs)
        largest[side] = tracker.largest
    # 4x the tokens: a dense HW x HW matrix would grow 16x.
    assert largest[64] <= 5 * largest[32], f"largest intermediate grew from {largest[32]} to {largest[64]} elements"
    # At 64x64, HW² = 16.8 M; the 8x8 tiles' (64 x 484) logit blocks total 2 M.
    assert largest[64] < (64 * 64) ** 2 // 4, f"an intermediate has {largest[64]} elements"


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


def test_outside_window_mask_marks_exactly_the_border():
    outside_JHW = outside_window_mask(3, 4, 1, torch.device("cpu"))
    # Offset (dy, dx) = (-1, -1) is j = 0: outside for the top row and left column only.
    assert outside_JHW[0].tolist() == [[True] * 4, [True, False, False, False], [True, False, False, False]]
    assert not outside_JHW[4].any()  # the centre (0, 0)
    assert outside_JHW.sum().item() == 9 * 12 - sum(
        1 for y in range(3) for x in range(4) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        if 0 <= y + dy < 3 and 0 <= x + dx < 4
    )


def test_local_attention_runs_under_bf16_autocast(rule_weights, local_fixture):
    module = LocalGatedPropagation()
    module.load_state_dict(_sub_state_dict(rule_weights, LOCAL_PREFIX), strict=True)
    module.eval()
    gate_BNC = local_fixture["u"].transpose(0, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_BNC, weights_BJN = module(
            local_fixture["q"], local_fixture["k"], local_fixture["v"], gate_BNC, return_weights=True
        )
    assert torch.isfinite(out_BNC).all() and torch.isfinite(weights_BJN).all()
    expected = local_fixture["out"].transpose(0, 1)
    relative_error = ((out_BNC.float() - expected).norm() / expected.norm()).item()
    assert relative_error < 0.05, f"bf16 output is {relative_error:.3f} away from fp32 (relative)"
    # Out-of-image neighbours still get exactly zero weight with the half-precision penalty.
    outside_JN = outside_window_mask(14, 20, 7, torch.device("cpu")).flatten(1)
    assert (weights_BJN[0][outside_JN] == 0).all()


def test_local_attention_runs_in_float16():
    """A model cast with ``.half()`` (the half-precision penalty path) agrees with float32."""
    module = LocalGatedPropagation(qk_dim=8, value_dim=16, out_dim=8).eval()
    inputs = _random_local_inputs(module, batch=1, height=6, width=7)
    with torch.no_grad():
        expected_BNC = module(*inputs)
        out_BNC, weights_BJN = module.half()(*[tensor.half() for tensor in inputs], return_weights=True)
    assert out_BNC.dtype == torch.float16 and torch.isfinite(weights_BJN).all()
    _assert_close(out_BNC.float(), expected_BNC, 2e-2, "float16 vs float32")


def test_local_attention_rejects_mismatched_maps():
    module = LocalGatedPropagation(qk_dim=8, value_dim=16, out_dim=8)
    query_BCHW, key_BCHW, value_BCHW, gate_BNC = _random_local_inputs(module, batch=1, height=5, width=6)
    with pytest.raises(ValueError, match="value must have shape"):
        module(query_BCHW, key_BCHW, value_BCHW[:, :, :4], gate_BNC)
    with pytest.raises(ValueError, match="gate must have shape"):
        module(query_BCHW, key_BCHW, value_BCHW, gate_BNC[:, :29])
