"""LiVOS pieces on their own: the linear-matching algebra, mask merging, padding, and the checkpoint converter."""
from __future__ import annotations

import pytest
import torch

from longvos.checkpoints import map_official_keys, model_shapes
from longvos.models.livos import LiVOS, LiVOSConfig
from longvos.models.livos.model import merge_given_masks
from longvos.models.livos.memory import key_feature_map, read_memory, write_memory
from longvos.models.livos.official import livos_drop_reason, livos_key_from_official
from longvos.models.livos.layers import pad, stride_padding, unpad
from longvos.models.livos.layers import soft_aggregate_logits
from longvos.models.registry import create_model, list_models


# ------------------------------------------------------------------------------------------- linear matching
def random_frame(key_dim=4, value_dim=3, objects=2, height=2, width=3):
    phi_BKhw = key_feature_map(torch.randn(1, key_dim, height, width))
    value_BNVhw = torch.randn(1, objects, value_dim, height, width)
    gate_BV = torch.rand(1, value_dim)
    return phi_BKhw, value_BNVhw, gate_BV


def test_write_gates_the_value_axis_and_adds_outer_products():
    phi, value, gate = random_frame()
    state = torch.randn(1, 2, 4, 3)
    key_sum = torch.rand(1, 2, 4, 2, 3)
    new_state, new_key_sum = write_memory(state, key_sum, phi, value, gate)
    for n in range(2):
        outer = sum(torch.outer(phi[0, :, y, x], value[0, n, :, y, x]) for y in range(2) for x in range(3))
        expected = state[0, n] @ torch.diag(gate[0]) + outer
        assert torch.allclose(new_state[0, n], expected, atol=1e-6)
    assert torch.allclose(new_key_sum, key_sum + phi[:, None])  # the key sum is never gated


def test_read_divides_by_one_scalar_per_object():
    phi, _, _ = random_frame()
    state = torch.randn(1, 2, 4, 3)
    key_sum = torch.rand(1, 2, 4, 2, 3)
    readout = read_memory(phi, state, key_sum)
    for n in range(2):
        z = (phi[0] * key_sum[0, n]).sum()  # position-aligned, summed over channels and pixels
        expected = torch.einsum("khw,kv->vhw", phi[0], state[0, n]) / z
        assert torch.allclose(readout[0, n], expected, atol=1e-6)


def test_per_object_key_sums_equal_the_official_snapshot_subtraction():
    """Official: a late object divides by z(total key sum) - z(snapshot when it appeared); ours keeps its own
    key sum from its first frame. Same normaliser."""
    phis = [key_feature_map(torch.randn(1, 4, 2, 3)) for _ in range(5)]
    total = sum(phis)
    snapshot = sum(phis[:2])
    own = sum(phis[2:])
    query = key_feature_map(torch.randn(1, 4, 2, 3))
    official_z = (query * total).sum() - (query * snapshot).sum()
    assert torch.allclose((query * own).sum(), official_z, atol=1e-5)


def test_matching_runs_in_float32_under_autocast():
    phi, value, gate = random_frame()
    state = torch.zeros(1, 2, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new_state, key_sum = write_memory(state, torch.zeros(1, 2, 4, 2, 3), phi, value.bfloat16(), gate.bfloat16())
        readout = read_memory(phi, new_state, key_sum)
    assert new_state.dtype == key_sum.dtype == readout.dtype == torch.float32


def test_key_feature_map_is_a_distribution_per_pixel():
    phi = key_feature_map(torch.randn(2, 8, 3, 5) * 10)
    assert torch.allclose(phi.sum(dim=1), torch.ones(2, 3, 5))
    assert (phi >= 0).all()


# --------------------------------------------------------------------------------------- masks and padding
def test_merge_appends_new_objects_and_zeroes_everything_under_them():
    prob = torch.softmax(torch.randn(1, 3, 4, 4), dim=1)  # background + ids 10, 20
    new = torch.zeros(4, 4)
    new[1:3, 1:3] = 1
    merged, new_ids = merge_given_masks(prob, [10, 20], {30: new})
    assert new_ids == [30]
    assert merged.shape == (1, 4, 4, 4)
    assert (merged[0, :3, 1:3, 1:3] == 0).all() and torch.equal(merged[0, 3], new)
    assert torch.equal(merged[0, :3][:, 0], prob[0, :, 0])  # untouched where the new mask is empty
    assert torch.allclose(merged.sum(dim=1), torch.ones(1, 4, 4))


def test_merge_reanchors_known_objects_in_place():
    prob = torch.softmax(torch.randn(1, 3, 4, 4), dim=1)
    given = torch.zeros(4, 4)
    given[0, :] = 1
    merged, new_ids = merge_given_masks(prob, [10, 20], {20: given})
    assert new_ids == []
    assert torch.equal(merged[0, 2], given)
    assert torch.allclose(merged.sum(dim=1), torch.ones(1, 4, 4))


def test_stride_padding_is_centred_with_the_odd_pixel_last():
    assert stride_padding(117, 213, 16) == (5, 6, 5, 6)  # (left, right, top, bottom), as the golden README
    assert stride_padding(128, 224, 16) == (0, 0, 0, 0)
    image = torch.rand(1, 3, 117, 213)
    padded = pad(image, stride_padding(117, 213, 16))
    assert padded.shape[-2:] == (128, 224)
    assert torch.equal(unpad(padded, stride_padding(117, 213, 16)), image)


def test_soft_aggregation_of_a_one_hot_mask_gives_the_official_clamped_logits():
    one_hot = torch.tensor([[[[1.0]], [[0.0]]]])  # object 1 present, object 2 absent
    logits = soft_aggregate_logits(one_hot)
    assert torch.allclose(logits[0, :, 0, 0], torch.tensor([-16.118095, 15.942385, -16.118095]), atol=1e-5)


# ---------------------------------------------------------------------------------------------- conversion
TINY = LiVOSConfig(image_encoder="resnet18", key_dim=8, value_dim=16, pixel_dim=16, sensory_dim=16, num_queries=4,
                   num_blocks=1, num_heads=2, ff_dim=32, decoder_dims=(8, 8))


def test_official_names_map_onto_ours():
    cases = {
        "image_encoder.layer3.5.bn3.running_var": "image_encoder.layer3.5.bn3.running_var",
        "mask_encoder.conv1.weight": "mask_encoder.backbone.conv1.weight",
        "mask_encoder.fuser.layer2.conv.weight": "mask_encoder.fuser.block2.channel_attention.weight",
        "pixel_fuser.conv.weight": "pixel_fuser.memory_proj.weight",
        "gate_projector.layer.bias": "gate_proj.conv.bias",
        "object_transformer.blocks.1.self_attn.self_attn.in_proj_weight":
            "object_transformer.blocks.1.self_attention.attention.in_proj_weight",
        "object_transformer.blocks.1.self_attn.norm.bias": "object_transformer.blocks.1.self_attention.norm.bias",
        "object_transformer.blocks.0.pixel_ffn.conv.conv.weight":
            "object_transformer.blocks.0.pixel_ffn.block.channel_attention.weight",
        "mask_decoder.upsample_16_to_8.linear_proj.weight": "mask_decoder.up_16_to_8.shortcut.weight",
        "mask_decoder.sensory_updater.g4_conv.weight": "mask_decoder.sensory_update.proj_4.weight",
    }
    for official, ours in cases.items():
        assert livos_key_from_official(official) == ours
    assert livos_drop_reason("aux_computer.sensory_aux.projection.weight").startswith("training-only")
    assert livos_drop_reason("image_encoder.bn1.num_batches_tracked") is not None
    assert livos_drop_reason("image_encoder.bn1.weight") is None


def test_the_strict_report_names_unknown_missing_and_misshaped_keys():
    shapes = model_shapes(LiVOS(TINY))
    official = {"mask_decoder.pred.weight": torch.zeros(1, 8, 1, 1),  # right name and shape
                "mask_decoder.pred.bias": torch.zeros(2),  # wrong shape
                "not_a_livos_module.weight": torch.zeros(1),  # unknown
                "aux_computer.sensory_aux.projection.bias": torch.zeros(17)}  # deliberately dropped
    state_dict, report = map_official_keys(official, "livos", shapes)
    assert list(state_dict) == ["mask_decoder.logit_head.weight"]
    assert report.unexpected == ["not_a_livos_module.weight"]
    assert report.shape_mismatches and "mask_decoder.pred.bias" in report.shape_mismatches[0]
    assert list(report.dropped) == ["aux_computer.sensory_aux.projection.bias"]
    assert "image_encoder.conv1.weight" in report.missing and not report.ok


def test_config_rejects_impossible_widths():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        LiVOSConfig(value_dim=30, num_heads=8)
    with pytest.raises(TypeError, match="unknown LiVOS config field"):
        LiVOSConfig().replace(hidden=3)


def test_merge_gives_all_remaining_mass_to_the_background_when_the_reanchored_object_had_it_all():
    prob = torch.zeros(1, 2, 2, 2)
    prob[:, 1] = 1  # object 5 certain everywhere
    given = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    merged, _ = merge_given_masks(prob, [5], {5: given})
    assert torch.equal(merged[0, 1], given)
    assert torch.equal(merged[0, 0], 1 - given)


def test_livos_r50_is_registered_with_its_single_memory_design():
    assert "livos-r50" in list_models()
    with pytest.raises(ValueError, match="one memory design"):
        create_model("livos-r50", memory="mca")
    with pytest.raises(ValueError, match="every frame"):
        create_model("livos-r50", mem_gap=5)
    with torch.device("meta"):
        model = create_model("livos-r50", memory="linear")
    assert model.name == "livos-r50" and model.config == LiVOSConfig()
