"""fp32 inference matrix products through oneDNN on CPU: linear layers, 1x1 convolutions, attention products.

On CPU, PyTorch sends fp32 ``F.linear``/``bmm`` to MKL and most batch-1 1x1 convolutions to its reference
``_slow_conv2d_forward`` (im2col + MKL, plus layout copies for channels-last maps). oneDNN's inner product, the kernel
``torch.compile``'s CPU backend calls for linear layers (``torch.ops.mkldnn._linear_pointwise``), runs the same
products faster on this project's machine (AMD EPYC with AVX-512, one thread; min of 5 calls against MKL's):

- 1.05-1.2x on the E-LSTT/MCA shapes at 480p (1674 tokens x 256-3348 -> 512-2048), 1.4x on attention scores with
  128-wide keys (14.7 vs 20.8 ms);
- up to 5x on the small-channel 1x1 convolutions of the mobile encoders (16 -> 96 at 241x425: 5.5 ms against 30 ms
  for the same product in MKL), which read the channels-last map as a token matrix with no copy.

Inside a 480p MAVOS frame (docs/benchmarks.md) this took the MobileNetV2 encoder from 274 to 186 ms (with the folded
norms below), ResNet-50 from 766 to 630 ms, self-propagation from 133 to 112 ms and an MCA block from 210 to 189 ms.

It also fuses what follows the product: the activation (ReLU, ReLU6, SiLU, GELU) and a residual add; and a frozen
BatchNorm after a convolution folds into the convolution's weights and bias (:func:`fold_frozen_bn`).

The op has no autograd formula and autocast does not see it, so every function here takes the fast path only in
fp32, on CPU, without autocast and when no gradient is needed (``torch.no_grad``/``inference_mode``, or inputs that
need none); otherwise it computes the same thing with PyTorch's ops. Results differ from PyTorch's by float rounding
(another summation order, relative ~1e-7); the golden tests against the official code pass unchanged.
``set_enabled(False)`` (or ``LONGVOS_ONEDNN=0`` in the environment) turns the fast path off, for A/B measurements.

The path is off where the op is missing or fails a small check at import (:func:`available`): a torch built without
oneDNN, or one whose op does not compute what this module asks of it. Every torch this project allows has the op
(``mkldnn::_linear_pointwise`` and its ``binary`` overload came with torch 2.0, for ``torch.compile``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.layers.norm import FrozenBatchNorm2d

#: activation name -> (oneDNN post-op attribute, its scalars, its algorithm)
_ATTRS: dict[str | None, tuple[str, list[float], str]] = {
    None: ("none", [], ""),
    "relu": ("relu", [], ""),
    "relu6": ("hardtanh", [0.0, 6.0], ""),
    "silu": ("swish", [], ""),
    "gelu": ("gelu", [], "none"),  # exact (erf) GELU, as nn.GELU()
}


def _find_op():
    """The op's two overloads, or ``(None, None)`` where they are missing or fail :func:`_check_op`."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None, None
        op = torch.ops.mkldnn._linear_pointwise
        default, binary = op.default, op.binary
    except (AttributeError, RuntimeError):  # a build without oneDNN, or a torch without the op or the overload
        return None, None
    try:
        ok = _check_op(default, binary)
    except Exception:  # noqa: BLE001 - any failure (another schema, an unsupported layout) turns the path off
        ok = False
    return (default, binary) if ok else (None, None)


def _check_op(default, binary) -> bool:
    """Whether the op computes, on tiny inputs laid out as this module passes them (a strided slice of a wider
    matrix, a transposed weight, no bias), what PyTorch's ops do: every activation and both binary forms."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(5, 12, generator=generator)[:, 2:10]  # strided: a slice of a wider matrix
        weight = torch.randn(8, 6, generator=generator).t()  # (6, 8), transposed
        bias = torch.randn(6, generator=generator)
        other = torch.randn(5, 6, generator=generator)
        checks = [(default(x, weight, None, "none", [], ""), F.linear(x, weight))]
        for activation, (attr, scalars, algorithm) in _ATTRS.items():
            checks.append((default(x, weight, bias, attr, scalars, algorithm),
                           _activate(F.linear(x, weight, bias), activation)))
        checks.append((binary(x, other, weight, bias, "add"), F.linear(x, weight, bias) + other))
        checks.append((binary(x, other, weight, None, "mul"), F.linear(x, weight) * other))
        return all(out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-4, atol=1e-5) for out, ref in checks)


def available() -> bool:
    """Whether this torch has the oneDNN op the path needs (and it passed the check at import)."""
    return _LINEAR is not None


def is_enabled() -> bool:
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Turn the oneDNN path on or off (it stays off where the op is missing); returns the previous setting."""
    global _enabled
    previous = _enabled
    _enabled = bool(flag) and _LINEAR is not None
    return previous


@contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """``with enabled(False):`` PyTorch's own kernels inside the block."""
    previous = set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the oneDNN path may compute with these tensors (see the module docstring)."""
    if not _enabled or _LINEAR is None or torch.is_autocast_enabled("cpu"):
        return False
    grad = torch.is_grad_enabled()
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or (grad and tensor.requires_grad):
            return False
    return True


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation == "relu":
        return F.relu(x)
    if activation == "relu6":
        return F.relu6(x)
    if activation == "silu":
        return F.silu(x)
    if activation == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown activation {activation!r}")


_LINEAR, _LINEAR_BINARY = _find_op()
_enabled = _LINEAR is not None and os.environ.get("LONGVOS_ONEDNN", "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(F.linear(x, weight, bias))``, plus ``residual`` (added after the activation; only without one).

    ``x`` may be strided (a slice or split of a wider tensor) and ``weight`` transposed; no copy is made for them.
    """
    if activation not in _ATTRS:
        raise ValueError(f"unknown activation {activation!r}")
    if residual is not None and activation is not None:
        raise ValueError("a residual add fuses only without an activation")
    if usable(x, weight, bias, residual):
        if residual is not None:
            return _LINEAR_BINARY(x, residual, weight, bias, "add")
        attr, scalars, algorithm = _ATTRS[activation]
        return _LINEAR(x, weight, bias, attr, scalars, algorithm)
    out = _activate(F.linear(x, weight, bias), activation)
    return out if residual is None else out + residual


def matmul(a_BNK: torch.Tensor, b_BKM: torch.Tensor, multiplier_BNM: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` for batched matrices ``(B, N, K) @ (B, K, M)``, one oneDNN product per batch item; times
    ``multiplier_BNM`` (elementwise, fused into the product) if given."""
    if not usable(a_BNK, b_BKM, multiplier_BNM):
        product_BNM = torch.bmm(a_BNK, b_BKM)
        return product_BNM if multiplier_BNM is None else product_BNM * multiplier_BNM
    items = []
    for index, (a_NK, b_KM) in enumerate(zip(a_BNK, b_BKM)):
        if multiplier_BNM is None:
            items.append(_LINEAR(a_NK, b_KM.transpose(0, 1), None, "none", [], ""))
        else:
            items.append(_LINEAR_BINARY(a_NK, multiplier_BNM[index], b_KM.transpose(0, 1), None, "mul"))
    return items[0].unsqueeze(0) if len(items) == 1 else torch.stack(items)


def channels_last(x_BCHW: torch.Tensor) -> torch.Tensor:
    """``x`` with the standard channels-last strides ``(C*H*W, 1, W*C, C)``, copied only if it has other ones.

    ``contiguous(memory_format=channels_last)`` is not enough: it keeps any strides that already count as
    channels-last, and a batch-1 frame made as ``hwc.permute(2, 0, 1)[None]`` has batch stride 3, which the
    convolutions do not take for channels-last; they then run, and return, channels-first."""
    batch, channels, height, width = x_BCHW.shape
    if x_BCHW.stride() == (channels * height * width, 1, width * channels, channels):
        return x_BCHW
    return x_BCHW.clone(memory_format=torch.channels_last)


def channels_last_tokens(x_BCHW: torch.Tensor) -> torch.Tensor | None:
    """The ``(B, H, W, C)`` view of a channels-last map, or None if the map is not laid out so."""
    tokens_BHWC = x_BCHW.permute(0, 2, 3, 1)
    return tokens_BHWC if tokens_BHWC.is_contiguous() else None


def pointwise_conv(x_BCHW: torch.Tensor, weight_OI11: torch.Tensor, bias: torch.Tensor | None = None,
                   activation: str | None = None, residual_BOHW: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution (stride 1, groups 1), its activation and a residual add; the result is channels-last.

    On the oneDNN path a channels-last map is read as its ``(B*H*W, C)`` token matrix (no copy); a map in another
    layout goes to ``F.conv2d``.
    """
    tokens_BHWC = channels_last_tokens(x_BCHW) if usable(x_BCHW, weight_OI11, bias, residual_BOHW) else None
    if tokens_BHWC is not None:
        residual_BHWO = None
        if residual_BOHW is not None:
            residual_BHWO = channels_last_tokens(residual_BOHW)
            if residual_BHWO is None:
                residual_BHWO = residual_BOHW.permute(0, 2, 3, 1).contiguous()
        out_BHWO = linear(tokens_BHWC, weight_OI11.flatten(1), bias, activation, residual_BHWO)
        return out_BHWO.permute(0, 3, 1, 2)
    out = _activate(F.conv2d(x_BCHW, weight_OI11, bias), activation)
    return out if residual_BOHW is None else out + residual_BOHW


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 1)`` (same parameters) computed by :func:`pointwise_conv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x_BCHW, self.weight, self.bias)


def is_pointwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a plain 1x1 convolution (stride 1, no padding, one group): a :func:`pointwise_conv`."""
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


def foldable(norm: nn.Module) -> bool:
    """Whether ``norm`` is an inference BatchNorm (frozen, or in eval mode, with running statistics) that folds into
    the convolution before it (:func:`fold_frozen_bn`); with or without affine terms (``affine=False``)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats
            and norm.running_mean is not None and norm.running_var is not None
            and (norm.weight is None) == (norm.bias is None))


def fold_frozen_bn(weight_OIHW: torch.Tensor, bias_O: torch.Tensor | None, bn: nn.Module
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight and bias with the inference BatchNorm after it folded in: ``bn(conv(x))`` equals the
    convolution with these up to rounding. ``bn`` has ``running_mean, running_var, eps`` and ``weight, bias``
    (None for a BatchNorm without affine terms: scale 1, shift 0).

    It saves the norm's pass over the output map: the 52 such passes took 55 ms of a profiled 480p MobileNetV2 frame
    on one thread. Computed on every call, so it always follows the current weights and buffers: 1.7 ms per frame for
    MobileNetV2's 52 pairs at 241x425 (measured; a cache keyed on the tensors' versions saved ~1 ms and was not kept)."""
    scale_O = (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:
        scale_O = bn.weight * scale_O
    shift_O = -bn.running_mean * scale_O
    if bn.bias is not None:
        shift_O = bn.bias + shift_O
    if bias_O is not None:
        shift_O = shift_O + bias_O * scale_O
    return weight_OIHW * scale_O.view(-1, 1, 1, 1), shift_O


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x_BCHW: torch.Tensor, activation: str | None = None,
            residual_BOHW: torch.Tensor | None = None) -> torch.Tensor:
    """``act(bn(conv(x)) [+ residual])`` for inference (callers check :func:`usable` and :func:`foldable`): the norm
    folded into the convolution, a 1x1 convolution by :func:`pointwise_conv`, any
    other by ``F.conv2d`` with the activation applied in place. The residual comes before the activation, which then
    must be ReLU (ResNet)."""
    weight, bias = fold_frozen_bn(conv.weight, conv.bias, bn)
    if is_pointwise(conv):
        if residual_BOHW is None:
            return pointwise_conv(x_BCHW, weight, bias, activation)
        out_BOHW = pointwise_conv(x_BCHW, weight, bias, residual_BOHW=residual_BOHW)
    else:
        out_BOHW = F.conv2d(x_BCHW, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if residual_BOHW is not None:
            out_BOHW += residual_BOHW
    return _activate_(out_BOHW, activation)


def _activate_(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The activation in place (on a tensor this module just made)."""
    if activation is None:
        return x
    if activation == "relu":
        return x.relu_()
    if activation == "relu6":
        return x.clamp_(0.0, 6.0)
    return _activate(x, activation)
