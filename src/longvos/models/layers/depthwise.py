"""Depthwise convolution whose backward is fast on CPU.

PyTorch's CPU backward of a depthwise convolution (``groups == channels``) falls onto a slow generic kernel: in a
training step of ``mavos-lite`` at 241 px it took about 55 % of the step (1.8 s of 3.4 s), mostly the 5x5 dilated
convolutions of the encoder's 1152-channel stage and the 5x5 convolution that ends every gated propagation. Both
gradients of a depthwise convolution are themselves convolution *forwards*, which run on oneDNN's fast kernels: the
input gradient is a transposed convolution with the same kernel, the weight gradient a depthwise convolution of
each input map with its own output gradient as the kernel. :class:`_DepthwiseConvFunction` computes them so. The
forward is ``F.conv2d`` itself, so outputs are bit-identical to ``nn.Conv2d``. The custom backward is used only
for bf16 (CPU autocast) with gradients on a CPU tensor: in fp32 PyTorch's own backward was as fast here, and
inference, CUDA and MPS keep PyTorch's kernels. Measured in one training step of ``mavos-lite`` (2 x 6 frames,
241 px, bf16 autocast, 2 threads): 2.31 s -> 1.75 s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv2d(x_BCHW: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> torch.Tensor:
    """``F.conv2d``, with the fast CPU backward when the convolution is depthwise and gradients are wanted."""
    depthwise = groups > 1 and groups == x_BCHW.shape[1] == weight.shape[0] and weight.shape[1] == 1
    wants_grad = torch.is_grad_enabled() and (x_BCHW.requires_grad or weight.requires_grad)
    # In fp32 PyTorch's own backward is as fast or faster (measured); in bf16 (CPU autocast) it is the slow one.
    bf16 = x_BCHW.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")
    if not (depthwise and wants_grad and bf16 and x_BCHW.device.type == "cpu"):
        return F.conv2d(x_BCHW, weight, bias, stride, padding, dilation, groups)
    if any(padding):
        x_BCHW = F.pad(x_BCHW, (padding[1], padding[1], padding[0], padding[0]))
    out_BCHW = _DepthwiseConvFunction.apply(x_BCHW, weight, tuple(stride), tuple(dilation))
    return out_BCHW if bias is None else out_BCHW + bias.view(1, -1, 1, 1).to(out_BCHW.dtype)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, groups=channels)`` (same parameters and outputs) with the fast backward."""

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, stride: int = 1, dilation: int = 1,
                 bias: bool = False) -> None:
        super().__init__(channels, channels, kernel_size, stride, padding, dilation, groups=channels, bias=bias)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return conv2d(x_BCHW, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _DepthwiseConvFunction(torch.autograd.Function):
    """Unpadded depthwise convolution whose gradients are themselves (fast) convolution forwards."""

    @staticmethod
    def forward(ctx, x_BCHW, weight_C1KK, stride, dilation):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(x_BCHW, weight_C1KK)
        ctx.stride, ctx.dilation = stride, dilation
        return F.conv2d(x_BCHW, weight_C1KK, None, stride, 0, dilation, x_BCHW.shape[1])

    @staticmethod
    def backward(ctx, grad_BCHW):  # noqa: D102 - autograd protocol
        x_BCHW, weight_C1KK = ctx.saved_tensors
        stride, dilation = ctx.stride, ctx.dilation
        batch, channels, in_h, in_w = x_BCHW.shape
        out_h, out_w = grad_BCHW.shape[-2:]
        kernel_h, kernel_w = weight_C1KK.shape[-2:]
        # Under autocast the forward ran in grad's dtype (bf16): compute both gradients in it too, as autocast would.
        dtype = grad_BCHW.dtype
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            # The input gradient is the transposed convolution of the output gradient with the same kernel; the
            # output padding restores the rows/columns a strided forward never reached.
            output_padding = (in_h - ((out_h - 1) * stride[0] + (kernel_h - 1) * dilation[0] + 1),
                              in_w - ((out_w - 1) * stride[1] + (kernel_w - 1) * dilation[1] + 1))
            grad_x = F.conv_transpose2d(grad_BCHW, weight_C1KK.to(dtype), None, stride, 0, output_padding,
                                        channels, dilation).to(x_BCHW.dtype)
        if ctx.needs_input_grad[1]:
            # weight_grad[c, i, j] = sum_b <x[b, c] shifted by tap (i, j), grad[b, c]>: a depthwise convolution of
            # each (image, channel) map with its own output gradient as the kernel (stride and dilation swapped),
            # summed over the batch.
            maps_1NHW = x_BCHW.to(dtype).transpose(0, 1).reshape(1, channels * batch, in_h, in_w)
            kernels_N1HW = grad_BCHW.transpose(0, 1).reshape(channels * batch, 1, out_h, out_w)
            taps_1NKK = F.conv2d(maps_1NHW, kernels_N1HW, None, dilation, 0, stride, channels * batch)
            taps_CBKK = taps_1NKK[..., :kernel_h, :kernel_w].reshape(channels, batch, kernel_h, kernel_w)
            sum_dtype = torch.promote_types(taps_CBKK.dtype, torch.float32)  # bf16 taps summed in fp32
            grad_weight = taps_CBKK.to(sum_dtype).sum(dim=1, keepdim=True).to(weight_C1KK.dtype)
        return grad_x, grad_weight, None, None
