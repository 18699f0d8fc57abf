"""The oneDNN CPU inference path (longvos.models.layers.onednn): op availability, and convolutions with their
BatchNorm folded in that follow the current weights (loaded, written in place, converted)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.encoders import build_encoder
from longvos.models.layers import onednn
from longvos.models.layers.norm import FrozenBatchNorm2d

needs_op = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")


def _randomise_bn(bn: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    channels = bn.running_mean.shape[0]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(channels, generator=generator))
            bn.bias.copy_(torch.randn(channels, generator=generator))


def _pair(kernel_size: int = 1, norm: str = "frozen", conv_bias: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 16, kernel_size, padding=kernel_size // 2, bias=conv_bias)
    if norm == "frozen":
        bn = FrozenBatchNorm2d(16)
    else:
        bn = nn.BatchNorm2d(16, affine=norm == "affine").eval()
    _randomise_bn(bn, seed + 1)
    return conv, bn


def _image(seed: int = 0) -> torch.Tensor:
    x = torch.randn(1, 8, 9, 11, generator=torch.Generator().manual_seed(seed))
    return onednn.channels_last(x)


def _reference(conv: nn.Module, bn: nn.Module, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    with torch.no_grad(), onednn.enabled(False):
        out = bn(conv(x))
    return {None: out, "relu": F.relu(out), "relu6": F.relu6(out)}[activation]


def test_missing_op_turns_the_path_off(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert onednn._find_op() == (None, None)
    monkeypatch.undo()

    def broken(default, binary):
        raise RuntimeError("unsupported layout")

    monkeypatch.setattr(onednn, "_check_op", broken)
    assert onednn._find_op() == (None, None)
    monkeypatch.undo()

    # What the module does with no op: usable() is False even if someone turns the path on, and every function
    # computes with PyTorch's ops.
    monkeypatch.setattr(onednn, "_LINEAR", None)
    monkeypatch.setattr(onednn, "_LINEAR_BINARY", None)
    monkeypatch.setattr(onednn, "_enabled", True)
    assert not onednn.available()
    assert not onednn.usable(torch.randn(2, 3))
    assert onednn.set_enabled(True) is True and not onednn.is_enabled()
    x, weight, bias = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    with torch.no_grad():
        torch.testing.assert_close(onednn.linear(x, weight, bias, "relu"), F.relu(F.linear(x, weight, bias)))
        conv, bn = _pair(3)
        torch.testing.assert_close(onednn.conv_bn(conv, bn, _image(), "relu6"), _reference(conv, bn, _image(), "relu6"),
                                   rtol=1e-5, atol=1e-5)


@needs_op
def test_op_passes_its_check_here():
    assert onednn._check_op(*onednn._find_op())


@pytest.mark.parametrize("norm", ["frozen", "affine"])
def test_load_state_dict_is_followed(norm):
    conv, bn = _pair(3, norm=norm)
    x = _image()
    with torch.no_grad():
        before = onednn.conv_bn(conv, bn, x)
    new_conv, new_bn = _pair(3, norm=norm, seed=7)
    bn.load_state_dict(new_bn.state_dict())  # new statistics, copied in place
    with torch.no_grad():
        after = onednn.conv_bn(conv, bn, x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
    conv.load_state_dict(new_conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
    # assign=True: new tensors, not copies into the old ones.
    _, other_bn = _pair(3, norm=norm, seed=11)
    bn.load_state_dict(other_bn.state_dict(), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)


def test_in_place_writes_and_conversions_are_followed():
    conv, bn = _pair(1)
    x = _image()
    with torch.no_grad():
        onednn.conv_bn(conv, bn, x)
        bn.running_mean.add_(1.0)  # an in-place write: a new version
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(2.0)
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
    # Round trips through other dtypes give the same tensors new memory, rounded by half.
    for module in (conv, bn):
        module.half()
        module.float()
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
    # An optimizer step (training between evaluations) is an in-place write too.
    optimizer = torch.optim.SGD(conv.parameters(), lr=1.0)
    conv.weight.grad = torch.ones_like(conv.weight)
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)
    bn.eps = 0.5
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x), _reference(conv, bn, x), rtol=1e-5, atol=1e-5)


def test_non_affine_batchnorm_folds():
    conv, bn = _pair(3, norm="plain", conv_bias=True)
    assert bn.weight is None and bn.bias is None
    assert onednn.foldable(bn)
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(onednn.conv_bn(conv, bn, x, "relu"), _reference(conv, bn, x, "relu"),
                                   rtol=1e-5, atol=1e-5)
        conv1, bn1 = _pair(1, norm="plain")
        torch.testing.assert_close(onednn.conv_bn(conv1, bn1, x), _reference(conv1, bn1, x), rtol=1e-5, atol=1e-5)


def test_foldable_refuses_what_does_not_fold():
    assert onednn.foldable(FrozenBatchNorm2d(4))
    assert onednn.foldable(nn.BatchNorm2d(4).eval())
    assert onednn.foldable(nn.BatchNorm2d(4, affine=False).eval())
    assert not onednn.foldable(nn.BatchNorm2d(4))  # training: batch statistics
    assert not onednn.foldable(nn.BatchNorm2d(4, track_running_stats=False).eval())
    assert not onednn.foldable(nn.GroupNorm(2, 4))


def test_gradients_still_flow_through_the_folded_norm():
    conv, bn = _pair(3, norm="affine")
    conv.weight.requires_grad_(False)
    x = _image()
    out = onednn.conv_bn(conv, bn, x)  # grad mode on, the norm's weight wants a gradient
    assert out.requires_grad
    out.sum().backward()
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18"])
def test_encoder_follows_new_weights(name):
    encoder = build_encoder(name, frozen_bn=name == "mobilenetv2").eval()
    image = onednn.channels_last(torch.randn(1, 3, 33, 41, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        before = encoder(image)
    state = encoder.state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "bn1.weight", "bn2.weight")) or ".1.running" in key:
            state[key] = value + 0.1 * torch.rand(value.shape, generator=generator)
    encoder.load_state_dict(state)
    with torch.no_grad():
        after = encoder(image)
        with onednn.enabled(False):
            reference = encoder(image)
    assert any(not torch.allclose(a, b) for a, b in zip(after, before))
    for a, b in zip(after, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
