"""The weight gradient of depthwise convolutions on maps smaller than their kernel: same outputs, same gradients."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from medcad.models.backbones import create_backbone, set_bn_eval
from medcad.models.bnfold import fold_eval_batchnorm
from medcad.models.depthwise import depthwise_weight_grad, fast_depthwise_grads

conv_settings = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "c": st.integers(2, 6),
        "k": st.tuples(st.integers(1, 5), st.integers(1, 5)),
        "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "padding": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "size": st.tuples(st.integers(1, 7), st.integers(1, 7)),
        "bias": st.booleans(),
        "channels_last": st.booleans(),
    }
)


def _fits(s: dict) -> bool:
    return all(s["size"][a] + 2 * s["padding"][a] >= s["dilation"][a] * (s["k"][a] - 1) + 1 for a in (0, 1))


@settings(max_examples=60, deadline=None)
@given(conv_settings)
def test_weight_gradient_equals_torchs_in_float64(s):
    assume(_fits(s))
    torch.manual_seed(0)
    x = torch.randn(s["n"], s["c"], *s["size"], dtype=torch.float64)
    w = torch.randn(s["c"], 1, *s["k"], dtype=torch.float64)
    out = F.conv2d(x, w, None, s["stride"], s["padding"], s["dilation"], s["c"])
    grad_out = torch.randn_like(out)
    if s["channels_last"]:
        x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
    ref = torch.ops.aten.convolution_backward(
        grad_out, x, w, None, s["stride"], s["padding"], s["dilation"], False, [0, 0], s["c"], [False, True, False]
    )[1]
    got = depthwise_weight_grad(x, grad_out, s["k"], s["stride"], s["padding"], s["dilation"])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(conv_settings)
def test_routed_convolution_trains_as_the_plain_one(s):
    assume(_fits(s))
    torch.manual_seed(0)
    conv = nn.Conv2d(s["c"], s["c"], s["k"], s["stride"], s["padding"], s["dilation"], s["c"], s["bias"])
    fmt = torch.channels_last if s["channels_last"] else torch.contiguous_format
    conv.to(memory_format=fmt)
    x = torch.randn(s["n"], s["c"], *s["size"]).contiguous(memory_format=fmt)

    def step() -> tuple:
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        out = conv(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.grad_fn.name(), out.detach(), xi.grad, *(p.grad for p in conv.parameters())

    ref = step()
    with fast_depthwise_grads(conv) as n:
        got = step()
    assert n == 1
    small = any(s["size"][a] < s["dilation"][a] * (s["k"][a] - 1) + 1 for a in (0, 1))
    assert (got[0] == "_DepthwiseConv2dBackward") == small  # routed exactly when the map is smaller than the kernel
    for a, b in zip(got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "_conv_forward" not in conv.__dict__


def test_efficientnet_at_96_px_same_gradients_with_batchnorm_folded():
    torch.manual_seed(0)
    net = create_backbone("tf_efficientnet_lite0", weights="none").train()
    set_bn_eval(net)  # as medcad's fine-tuning: BatchNorm statistics kept, folded into the convolutions
    net.to(torch.float32, memory_format=torch.channels_last)
    x = torch.randn(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)

    def grads() -> dict[str, torch.Tensor]:
        net.zero_grad()
        (net(x) ** 2).mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    ref = grads()
    folds = fold_eval_batchnorm(net)
    routed = []
    with fast_depthwise_grads(net) as n:
        hooks = [
            m.register_forward_hook(lambda m, a, out: routed.append(out.grad_fn.name()))
            for m in net.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1
        ]
        got = grads()
    folds.remove()
    for h in hooks:
        h.remove()
    assert n == 12  # lite0's 16 depthwise convolutions but the 4 of stride 2 (timm's Conv2dSame pads them itself)
    # the 5x5 depthwise convolutions of the last stage see 3x3 maps at 96 px
    assert routed.count("_DepthwiseConv2dBackward") == 3
    for name, g in got.items():
        torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_not_routed_without_gradient_or_in_autocast_and_given_back_on_error():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="boom"), fast_depthwise_grads(conv):
        with torch.no_grad():
            assert conv(x).grad_fn is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).grad_fn.name() != "_DepthwiseConv2dBackward"
        assert conv(x).grad_fn.name() == "_DepthwiseConv2dBackward"
        raise RuntimeError("boom")
    assert "_conv_forward" not in conv.__dict__
    assert conv(x).grad_fn.name() != "_DepthwiseConv2dBackward"


def test_function_gradients_pass_gradcheck_with_stride_and_unused_rows():
    from medcad.models.depthwise import _DepthwiseConv2d

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)  # stride 2 leaves the last row unused
    w = torch.randn(3, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _DepthwiseConv2d.apply(x, w, b, (2, 2), (1, 2), (1, 1)), (x, w, b))


def test_frozen_weight_or_input_without_gradient():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    ref = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 3, 3)  # no gradient wanted for the input (after frozen stages)
    with fast_depthwise_grads(conv):
        assert conv(x).grad_fn.name() == "_DepthwiseConv2dBackward"
        conv(x).square().sum().backward()
        conv.weight.requires_grad_(False)  # a frozen weight with a trainable bias: left to torch
        assert conv(x).grad_fn.name() != "_DepthwiseConv2dBackward"
    ref(x).square().sum().backward()
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad)


def test_a_pickled_or_copied_network_keeps_its_routing_and_timm_same_padding_is_not_counted():
    from timm.layers import Conv2dSame

    net = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), Conv2dSame(4, 4, 5, stride=2, groups=4))
    x = torch.randn(2, 4, 3, 3)
    with fast_depthwise_grads(net) as n:
        twin = pickle.loads(pickle.dumps(net))  # as Lightning's ddp_spawn hands a module to its processes
    assert n == 1
    assert twin[0](x).grad_fn.name() == "_DepthwiseConv2dBackward"
    assert net[0](x).grad_fn.name() != "_DepthwiseConv2dBackward"
    torch.testing.assert_close(twin(x), net(x))
