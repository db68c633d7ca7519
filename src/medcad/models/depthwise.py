"""The weight gradient of a depthwise convolution whose input is smaller than its kernel, computed without oneDNN.

oneDNN (PyTorch's CPU convolutions) has no direct kernel for the weight gradient of a depthwise convolution whose
input map is smaller than its kernel, such as the 5x5 depthwise convolutions on the 3x3 or 4x4 maps of an
EfficientNet's last stage at 96 or 128 px: it falls back to a GEMM per channel, 5-12x slower than the sum below
(benchmarks/depthwise_grad.py on a 2-core AVX2 CPU, batch 32, one thread: 1152 channels on 3x3 maps 34.3 ms against
3.7 ms; on 4x4 maps 34.3 against 6.6; docs/results.md). Such convolutions take up to a fifth of a lite0 training step
at 96 px.

For a depthwise convolution y[n, c, h, q] = sum_ij w[c, i, j] x_pad[n, c, s*h + d*i, s*q + d*j], the weight gradient
is, per kernel offset (i, j), dL/dw[c, i, j] = sum over n, h, q of dL/dy[n, c, h, q] * x_pad[n, c, s*h + d*i, s*q +
d*j]: one product and one sum over the batch and the map per offset, over channels-last copies. The forward pass and the
input gradient stay oneDNN's (their depthwise kernels are fast at every size); where the input is at least as large as
the kernel, oneDNN's weight gradient is as fast or faster, so nothing changes there.

`with fast_depthwise_grads(net):` routes those convolutions of `net` through this for a fit (engine.common.train_stage),
in float32 without autocast, and gives them back on leaving; modules, parameters and state_dict are untouched. The
gradient equals oneDNN's up to float32 summation order (tests/models/test_depthwise.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["depthwise_weight_grad", "fast_depthwise_grads"]


@torch.no_grad()
def depthwise_weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """dL/dw (C, 1, kh, kw) of a depthwise convolution (zero padding) from its input x (N, C, H, W) and the gradient
    of its output grad_out (N, C, Ho, Wo): per kernel offset, the sum of grad_out times the shifted input (no graph
    is recorded)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = grad_out.shape[-2:]
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (N, H + 2 ph, W + 2 pw, C)
    gh = grad_out.permute(0, 2, 3, 1)
    out = x.new_empty(kh, kw, x.shape[1])
    for i in range(kh):
        for j in range(kw):
            window = xh[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            torch.sum(gh * window, (0, 1, 2), out=out[i, j])
    return out.permute(2, 0, 1).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """F.conv2d of a depthwise convolution, backward: oneDNN's input gradient, `depthwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = stride, padding, dilation
        return F.conv2d(x, weight, bias, stride, padding, dilation, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            groups, only_input = weight.shape[0], [True, False, False]
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], groups, only_input
            )[0]
        if need_w:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape[-2:], stride, padding, dilation)
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _eligible(m: nn.Module) -> bool:
    """An nn.Conv2d whose forward goes through `_conv_forward` (not timm's Conv2dSame, which pads and calls
    F.conv2d itself) that is depthwise, with zero padding given as numbers."""
    return (
        isinstance(m, nn.Conv2d)
        and type(m).forward is nn.Conv2d.forward
        and type(m)._conv_forward is nn.Conv2d._conv_forward
        and "_conv_forward" not in m.__dict__
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Bound as `conv._conv_forward` (what nn.Conv2d.forward calls, and BatchNorm folding through it): through
    `_DepthwiseConv2d` when a float32 weight gradient on the CPU is due for an input smaller than the kernel."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    if (
        torch.is_grad_enabled()
        and weight.requires_grad
        and x.dim() == 4
        and (x.shape[-2] < dh * (kh - 1) + 1 or x.shape[-1] < dw * (kw - 1) + 1)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    ):
        return _DepthwiseConv2d.apply(x, weight, bias, conv.stride, conv.padding, conv.dilation)
    return nn.Conv2d._conv_forward(conv, x, weight, bias)


@contextlib.contextmanager
def fast_depthwise_grads(net: nn.Module) -> Iterator[int]:
    """While inside, the depthwise convolutions of `net` compute the weight gradient of an input smaller than their
    kernel with `depthwise_weight_grad`; yields on how many convolutions the routing is installed (each is routed per
    call, when its input is small). Leaving gives each its own `_conv_forward` back, also on an error. Bound with
    functools.partial, which a deep copy or a pickle (Lightning's ddp_spawn) re-binds to the copy."""
    convs = [m for m in net.modules() if _eligible(m)]
    for m in convs:
        m.__dict__["_conv_forward"] = functools.partial(_conv_forward, m)
    try:
        yield len(convs)
    finally:
        for m in convs:
            m.__dict__.pop("_conv_forward", None)
