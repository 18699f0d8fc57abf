"""The depthwise convolution with a fast CPU backward: same outputs and gradients as ``nn.Conv2d``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longvos.models.layers.depthwise import DepthwiseConv2d, _DepthwiseConvFunction, conv2d


@pytest.mark.parametrize("shape,kernel,stride,dilation,padding", [
    ((2, 6, 17, 19), 5, 1, 2, 0),   # the encoder's dilated stage
    ((2, 8, 16, 16), 5, 1, 1, 2),   # the gated propagation's 5x5
    ((3, 4, 21, 20), 3, 2, 1, 1),   # strided, odd and even sizes
    ((1, 5, 12, 13), 5, 2, 1, 0),
])
def test_gradients_equal_pytorch(shape, kernel, stride, dilation, padding):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[1], 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    reference = F.conv2d(x, weight, None, stride, padding, dilation, shape[1])
    padded = F.pad(x, (padding,) * 4)
    ours = _DepthwiseConvFunction.apply(padded, weight, (stride, stride), (dilation, dilation))
    assert torch.equal(ours, reference)
    grad = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, (x, weight), grad)
    got = torch.autograd.grad(ours, (x, weight), grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_module_matches_conv2d_and_routes_only_bf16_training():
    """Same parameter and outputs as nn.Conv2d; the custom backward only under CPU bf16 autocast with gradients."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(8, 5, padding=2)
    plain = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    assert torch.equal(layer(x), plain(x))
    assert layer(x).grad_fn.name() != "_DepthwiseConvFunctionBackward"  # fp32: PyTorch's own backward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert torch.equal(out, plain(x))
    assert out.grad_fn.name() == "_DepthwiseConvFunctionBackward"
    out.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn is None
    assert conv2d(x, layer.weight, None, (1, 1), (2, 2), (1, 1), 8).shape == x.shape
