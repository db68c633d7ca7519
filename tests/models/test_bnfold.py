"""BatchNorm in eval mode folded into the convolution before it, for training: same outputs, same gradients."""

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medcad.models.backbones import create_backbone, set_bn_eval
from medcad.models.bnfold import fold_eval_batchnorm


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    net = create_backbone("tf_efficientnet_lite0", weights="none")
    for m in net.modules():  # statistics other than (0, 1), so a wrong fold shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def _loss_and_grads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad()
    out = net(x)
    (out**2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_folded_training_step_matches_unfolded_outputs_and_gradients():
    net, ref = _backbone(), _backbone()
    for m in (net, ref):  # float64: fp32 rounding, amplified through 16 blocks, would hide nothing but blur the check
        m.train()
        set_bn_eval(m)  # medcad's fine-tuning: BatchNorm statistics kept
        m.to(torch.float64, memory_format=torch.channels_last)
    folds = fold_eval_batchnorm(net)
    assert len(folds) >= 40  # every conv + BatchNorm pair of lite0 (stem, blocks, head)
    x = torch.randn(4, 3, 96, 96, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out, grads = _loss_and_grads(net, x)
    ref_out, ref_grads = _loss_and_grads(ref, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():  # the BatchNorm's gamma and beta get their gradients through the fold
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-7, atol=1e-9, msg=name)
    assert net.state_dict().keys() == ref.state_dict().keys()
    folds.remove()
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_batchnorm_in_training_mode_is_not_folded():
    net, ref = _backbone(), _backbone()
    folds = fold_eval_batchnorm(net)
    assert len(folds) > 0
    net.train(), ref.train()  # batch statistics: the fold stands aside, running statistics update as usual
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(net(x), ref(x))
    torch.testing.assert_close(net.bn1.running_mean, ref.bn1.running_mean)
    assert not torch.equal(net.bn1.running_mean, _backbone().bn1.running_mean)


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda net: pickle.loads(pickle.dumps(net))])
def test_a_copy_folds_its_own_batchnorm(copy_of):
    net = _backbone().eval()
    fold_eval_batchnorm(net)
    twin = copy_of(net)  # a pickle: as Lightning's ddp_spawn hands a module to its processes
    assert twin.conv_stem.forward.args[0] is twin.conv_stem  # the copy's folds are bound to the copy
    x = torch.randn(2, 3, 64, 64)
    before = net(x)
    with torch.no_grad():
        twin.bn1.running_var.mul_(4)
    assert not torch.allclose(twin(x), before)
    torch.testing.assert_close(net(x), before)


class _Reused(nn.Module):
    """A convolution whose output feeds its BatchNorm and, again, the sum after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_convolution_used_twice_is_left_unfolded():
    net = _Reused()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.3)
    with pytest.warns(UserWarning, match="left unfolded"):
        folds = fold_eval_batchnorm(net)
    assert len(folds) == 0
    assert not any("forward" in m.__dict__ for m in net.modules())


class _Generated(nn.Module):
    """A chain of conv (+ BatchNorm) (+ ReLU6) layers with the given settings; `skip` adds the first layer's output
    to the last one's, as residual blocks do."""

    def __init__(self, layers: list[dict], skip: bool) -> None:
        super().__init__()
        self.convs, self.norms, self.skip = nn.ModuleList(), nn.ModuleList(), skip
        c = 4
        for spec in layers:
            out = spec["groups"] * spec["width"]
            groups = spec["groups"] if c % spec["groups"] == 0 else 1
            self.convs.append(
                nn.Conv2d(
                    c, out, spec["k"], stride=spec["stride"], padding=spec["k"] // 2, groups=groups, bias=spec["bias"]
                )
            )
            bn = nn.BatchNorm2d(out, affine=spec["affine"]) if spec["bn"] else nn.Identity()
            if spec["bn"]:
                with torch.no_grad():
                    bn.running_mean.uniform_(-1, 1)
                    bn.running_var.uniform_(0.2, 3)
                    if spec["affine"]:
                        bn.weight.uniform_(-2, 2)
                        bn.bias.uniform_(-1, 1)
            self.norms.append(bn)
            c = out

    def forward(self, x):
        first = None
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = torch.clamp(norm(conv(x)), -6, 6)
            first = x if first is None else first
        return x + first.mean() if self.skip else x


@given(
    layers=st.lists(
        st.fixed_dictionaries(
            {
                "k": st.sampled_from([1, 3]),
                "stride": st.sampled_from([1, 2]),
                "groups": st.sampled_from([1, 2]),
                "width": st.integers(1, 4),
                "bias": st.booleans(),
                "bn": st.booleans(),
                "affine": st.booleans(),
            }
        ),
        min_size=1,
        max_size=4,
    ),
    skip=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_generated_networks_train_the_same_folded(layers, skip, seed):
    """Any chain of convolutions, with or without bias, groups, strides, affine or plain BatchNorm: the folded
    network's output and every gradient equal the unfolded one's (float64)."""
    torch.manual_seed(seed)
    net = _Generated(layers, skip).double().eval()
    ref = copy.deepcopy(net)
    folds = fold_eval_batchnorm(net, in_channels=4, size=16)
    assert len(folds) == sum(spec["bn"] for spec in layers)
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64)
    out, grads = _loss_and_grads(net, x)
    ref_out, ref_grads = _loss_and_grads(ref, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-7, atol=1e-9, msg=name)


def test_batched_predictions_are_the_same_folded_and_leave_the_model_as_it_was():
    from medcad.data.transforms import Normalize
    from medcad.models.predict import run_batched

    net = _backbone()
    images = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    folded, _ = run_batched(net, norm, images, batch_size=2, bf16=False, fold_batchnorm=True)
    plain, _ = run_batched(net, norm, images, batch_size=2, bf16=False)
    np.testing.assert_allclose(folded, plain, rtol=1e-4, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in net.modules())


class _NeedsLargeInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.shape[-1] < 100:
            raise ValueError("images of at least 100 px")
        return self.bn(self.conv(x))


def test_a_network_that_refuses_the_example_runs_unfolded():
    net = _NeedsLargeInputs()
    with pytest.warns(UserWarning, match="left unfolded.*at least 100 px"):
        folds = fold_eval_batchnorm(net)
    assert len(folds) == 0
    assert not net.conv._forward_hooks and not net.bn._forward_pre_hooks
    assert net(torch.randn(1, 3, 100, 100)).shape == (1, 3, 98, 98)
