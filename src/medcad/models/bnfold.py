"""A convolution and the BatchNorm in eval mode that follows it, run as one convolution while a model trains.

A BatchNorm in eval mode is an affine map per channel, y = (x - mean) * s + beta with s = gamma / sqrt(var + eps) (Ioffe
& Szegedy 2015, eq. of Algorithm 2 at inference). After a convolution it folds into the convolution's weight and bias:
conv(x, W * s) + (beta - mean * s) (+ conv bias * s), exactly, with gradients flowing to W, gamma and beta as before.
medcad's fine-tuning keeps the pretrained BatchNorm statistics (`backbones.set_bn_eval`), so every BatchNorm of a
classifier's backbone and of a detector's backbone body is in eval mode while it trains: folding saves the BatchNorm's
passes over each activation map (a lite0 stage-2 training step on an AVX2 CPU, paired rounds: median 1.14x at 224 px in
2 threads, 1.06x at 96 px in 1 thread; docs/results.md). The model's modules, parameters and state_dict stay as they
are; only their `forward` is replaced until `FoldedBatchNorm.remove()`. A pair folds only while its BatchNorm is in eval
mode (checked at each call), so a BatchNorm put back in training mode computes batch statistics as usual. Feature
caching (`models.predict.run_batched(fold_batchnorm=True)`) folds the same way for the duration of its call.

Which convolution feeds which BatchNorm is read off one forward pass (hooks: the BatchNorm's input is the
convolution's output tensor, each called once), and the folded network's output is checked against the unfolded
one on the same input before it is kept (both in exact fp32: no autocast, no TF32).
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import nn

__all__ = ["FoldedBatchNorm", "fold_eval_batchnorm"]


def _plain_batchnorm(bn: nn.Module) -> bool:
    """A BatchNorm whose forward is known: torch's BatchNorm2d, or timm's BatchNormAct2d (then dropout, activation)."""
    if type(bn) is nn.BatchNorm2d:
        return True
    from timm.layers import BatchNormAct2d

    return type(bn) is BatchNormAct2d


def _eligible_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and "forward" not in m.__dict__


def _eligible_bn(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and "forward" not in m.__dict__
        and m.running_mean is not None
        and _plain_batchnorm(m)
    )


def _pairs(net: nn.Module, example: torch.Tensor) -> tuple[list[tuple[nn.Conv2d, nn.Module]], object]:
    """(conv, bn) pairs where bn's input is conv's output tensor, each module called once in one forward pass; and
    the output of that pass."""
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[nn.Module, int] = {}
    found: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(m, _args, out):
        calls[m] = calls.get(m, 0) + 1
        outputs[id(out)] = (m, out)

    def before_bn(m, args):
        calls[m] = calls.get(m, 0) + 1
        hit = outputs.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            found.append((hit[0], m))

    handles = [m.register_forward_hook(after_conv) for m in net.modules() if _eligible_conv(m)]
    handles += [m.register_forward_pre_hook(before_bn) for m in net.modules() if _eligible_bn(m)]
    try:
        with torch.no_grad():
            out = net(example)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in found if calls[c] == 1 and calls[b] == 1], out


def _folded_conv_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Bound as `conv.forward`: the class's own forward (padding, timm's "same" padding) with the BatchNorm that
    follows folded into weight and bias while that BatchNorm is in eval mode."""
    bn = conv.__dict__["_folded_bn"]
    if bn.training:
        return type(conv).forward(conv, x)
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = bn.weight * s
    bias = -bn.running_mean * s
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * s
    params = conv._parameters
    saved = params["weight"], params["bias"]
    params["weight"], params["bias"] = conv.weight * s.view(-1, 1, 1, 1), bias
    try:
        return type(conv).forward(conv, x)
    finally:
        params["weight"], params["bias"] = saved


def _folded_bn_forward(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Bound as `bn.forward`: in eval mode only what follows the normalisation (done by the convolution)."""
    if bn.training:
        return type(bn).forward(bn, x)
    return x if type(bn) is nn.BatchNorm2d else bn.act(bn.drop(x))


class FoldedBatchNorm:
    """The folds installed on a network; `remove()` gives every module its own forward back, and so does leaving a
    `with` block over it (also on an error)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules

    def __len__(self) -> int:
        return len(self.modules) // 2

    def remove(self) -> None:
        for m in self.modules:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_folded_bn", None)
        self.modules = []

    def __enter__(self) -> FoldedBatchNorm:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _same(a, b) -> bool:
    from torch.utils._pytree import tree_flatten

    xs, ys = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys, strict=True):
        if isinstance(x, torch.Tensor):
            scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
            if x.shape != y.shape or not torch.allclose(x.float(), y.float(), rtol=1e-3, atol=1e-4 * scale):
                return False
    return True


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """The checking passes in fp32 as written: no autocast, and no TF32 in cuDNN's convolutions (on by default on
    GPUs: ~1e-3 relative error per layer, which made every deep network on a GPU fail the check and run unfolded)."""
    cudnn = torch.backends.cudnn
    tf32_off = cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    )
    with torch.autocast(device.type, enabled=False), tf32_off:
        yield


def fold_eval_batchnorm(net: nn.Module, in_channels: int = 3, size: int = 32) -> FoldedBatchNorm:
    """Run each convolution of `net` that feeds a BatchNorm as one convolution with the BatchNorm folded in, for as
    long as that BatchNorm is in eval mode (see the module docstring).

    Args:
        net: a network taking float images (B, in_channels, H, W).
        in_channels, size: the example input of the pairing and checking passes: (2, in_channels, size, size),
            drawn from a private generator (the global random state is not touched).

    Returns:
        the installed folds (possibly none); call `.remove()` when done. When the folded network's output
        differs from the unfolded one on the example, or the network cannot take the example, nothing is folded
        and a warning says so.
    """
    example = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    param = next(net.parameters(), None)
    if param is not None:
        example = example.to(param.device, param.dtype)
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        try:
            with _exact_fp32(example.device):
                pairs, before = _pairs(net, example)
        except Exception as e:  # folding only saves time: a network that cannot take the example runs as it is
            warnings.warn(f"{type(net).__name__}: BatchNorm left unfolded ({type(e).__name__}: {e})", stacklevel=2)
            return FoldedBatchNorm([])
        if not pairs:
            return FoldedBatchNorm([])
        for conv, bn in pairs:
            # in the instances' __dict__ (not registered as submodules), bound by functools.partial: a deepcopy or
            # a pickle of the network (Lightning's ddp_spawn) folds its own copies
            conv.__dict__["_folded_bn"] = bn
            conv.__dict__["forward"] = functools.partial(_folded_conv_forward, conv)
            bn.__dict__["forward"] = functools.partial(_folded_bn_forward, bn)
        folds = FoldedBatchNorm([m for pair in pairs for m in pair])
        with torch.no_grad(), _exact_fp32(example.device):
            after = net(example)
        if not _same(before, after):
            folds.remove()
            warnings.warn(
                f"{type(net).__name__}: its output changed with {len(pairs)} BatchNorms folded into their "
                "convolutions (a convolution's output is used elsewhere too): left unfolded",
                stacklevel=2,
            )
            return FoldedBatchNorm([])
        return folds
    finally:
        for m, training in modes.items():
            m.training = training  # each module's own flag (train() would set its children too)
