"""Segmentation models: the output-dict contract per architecture, offline encoder weights, CBAM maps, learning.

Parameters at the defaults (mask only): attention-unetpp 2.46 M, unet 5.20 M, unetpp 5.43 M (lite0 encoder),
unet-vgg11 18.25 M, unet-scratch 31.04 M, stunet-s 5.12 M; dsconv-resnet 0.19 M and renal-joint 0.65 M at 3 classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcad.errors import ConfigError
from medcad.models.backbones import offline_weights_path
from medcad.models.segmentation import (
    ARCHS,
    attention_maps,
    cam_target_name,
    create_segmenter,
    decoder_widths,
    segmenter_data_config,
)
from medcad.tasks import decoder_setting

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [(arch, k) for arch in ARCHS for k in ((3,) if arch == "dsconv-resnet" else (None, 3))]


@pytest.mark.parametrize(("arch", "n_classes"), CASES)
def test_output_dict_in_train_and_eval_mode(arch: str, n_classes: int | None) -> None:
    torch.manual_seed(0)
    model = create_segmenter(arch, n_classes=n_classes, weights="none").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    seg = arch != "dsconv-resnet"
    deep = arch in ("attention-unetpp", "renal-joint", "stunet-s")
    cam = {}
    model.get_submodule(cam_target_name(model)).register_forward_hook(lambda m, i, o: cam.update(out=o))

    out = model.train()(x)
    assert set(out) == {k for k, on in [("mask", seg), ("aux", deep), ("class", n_classes)] if on}
    if seg:
        assert out["mask"].shape == (2, 1, 64, 64)
    if deep:
        assert len(out["aux"]) == 3 and all(a.shape == (2, 1, 64, 64) for a in out["aux"])
    if n_classes:
        assert out["class"].shape == (2, n_classes)
    assert isinstance(cam["out"], torch.Tensor) and cam["out"].ndim == 4  # a usable Grad-CAM layer
    loss = sum(v.float().mean() for k, v in out.items() if k != "aux") + sum(a.mean() for a in out.get("aux", []))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval()(x)
    assert "aux" not in out
    if seg:
        assert out["mask"].shape == (2, 1, 64, 64) and torch.isfinite(out["mask"].float()).all()
    if n_classes:
        assert out["class"].shape == (2, n_classes)
    assert segmenter_data_config(model) == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_offline_imagenet_weights_fill_the_smp_encoder(arch: str) -> None:
    """The offline file has other key names: tensors are copied by position; the first and the last encoder
    tensors, and one in between, must equal the file's (its conv_head, bn and classifier come after)."""
    path = offline_weights_path("tf_efficientnet_lite0")
    if path is None:
        pytest.skip("efficientnet-lite0 offline weights package not installed")
    src = [v for k, v in torch.load(path, weights_only=True).items() if not k.endswith("num_batches_tracked")]
    model = create_segmenter(arch, weights="auto")
    enc = model.net.encoder.model.state_dict()
    dst = [k for k in enc if not k.endswith("num_batches_tracked")]
    assert dst[0] == "conv_stem.weight" and torch.equal(enc["conv_stem.weight"], src[0])
    assert dst[-1] == "blocks.6.0.bn3.running_var" and torch.equal(enc[dst[-1]], src[len(dst) - 1])
    mid = len(dst) // 2
    assert torch.equal(enc[dst[mid]], src[mid])
    assert src[len(dst)].shape == (1280, 320, 1, 1)  # conv_head: the first file tensor the encoder lacks


def test_vgg11_weights_from_a_torchvision_state_dict(tmp_path) -> None:
    enc = create_segmenter("unet-vgg11", weights="none").net.encoder
    sd = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's head: ignored
    torch.save(sd, tmp_path / "vgg11.pth")
    loaded = create_segmenter("unet-vgg11", weights=str(tmp_path / "vgg11.pth")).net.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if k.startswith("features."))
    with pytest.warns(UserWarning, match="no offline ImageNet weights for the 'vgg11' encoder"):
        create_segmenter("unet-vgg11", weights="auto")


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown segmentation architecture 'segnet'; choose one of attention-unetpp"):
        create_segmenter("segnet")
    with pytest.raises(ConfigError, match="dsconv-resnet only classifies"):
        create_segmenter("dsconv-resnet")
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_segmenter("unet", encoder="efficientnet_lite_zero", weights="none")
    with pytest.raises(ValueError, match="divisible by 16"):
        create_segmenter("attention-unetpp")(torch.randn(1, 3, 40, 40))


def test_decoder_channels_setting_and_widths() -> None:
    """`decoder_channels` sets the U-Net decoder's widths (deepest block first), written one way however given
    (smp's as None); "auto" is the architecture's default (narrower for the U-Net, smp's for the others); widths are
    refused where no such decoder exists and when they are not five positive integers."""
    from medcad.config import TrainConfig

    seg = TrainConfig(task="segment", arch="unet")
    assert seg.decoder_channels == "auto" and decoder_widths("auto", "unet") == (128, 64, 32, 16, 16)
    assert decoder_widths("auto", "unetpp") == decoder_widths("auto", "unet-vgg11") == (256, 128, 64, 32, 16)
    assert decoder_widths(None, "unet") == (256, 128, 64, 32, 16)
    assert decoder_widths(" 64, 32,16,16 ,8", "unet") == (64, 32, 16, 16, 8)
    assert decoder_setting(seg) == "128,64,32,16,16" and decoder_setting(seg.replace(arch="unetpp")) is None
    assert decoder_setting(seg.replace(decoder_channels="256, 128,64,32,16")) is None
    assert decoder_setting(TrainConfig(task="segment", decoder_channels=None)) is None  # a saved None: smp's
    assert decoder_setting(seg.replace(task="multitask", arch="unetpp", decoder_channels=" 64, 32,16,16 ,8")) == (
        "64,32,16,16,8"
    )
    assert (
        decoder_setting(seg.replace(task="classify")) is None
        and decoder_setting(seg.replace(arch="renal-joint")) is None
    )
    for setting in ("64,32,16,16", "64,32,16,16,0", "64,32,x,16,8", "", "Auto"):
        with pytest.raises(ConfigError, match="decoder_channels must be auto or 5 positive integers"):
            decoder_widths(setting, "unet")
    cases = [
        (dict(arch="attention-unetpp"), "not a segment run with arch attention-unetpp"),
        (dict(task="classify"), "not a classify run"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            decoder_setting(seg.replace(decoder_channels="64,32,16,16,8", **changes))
    for arch in ("unet", "unetpp"):
        model = create_segmenter(arch, weights="none", decoder_channels=(64, 32, 16, 16, 8))
        convs = [m for m in model.net.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs[-1].out_channels == 8 and max(c.out_channels for c in convs) == 64
        assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 1, 64, 64)


def test_cbam_attention_maps_after_a_forward_pass() -> None:
    model = create_segmenter("attention-unetpp", n_classes=2).eval()
    assert attention_maps(model) == []
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    maps = attention_maps(model)
    assert len(maps) == 15  # one CBAM per UNet++ node X^{i,j}, i + j <= 4
    assert maps[0].shape == maps[-1].shape == (2, 1, 64, 64) and maps[4].shape == (2, 1, 4, 4)
    assert all(m.min() >= 0 and m.max() <= 1 for m in maps)


def _disc(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disc on a noisy dark background, and its mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - 24) ** 2 + (xx - 36) ** 2 < 12**2).astype(np.float32)
    img = 0.2 + 0.6 * mask + 0.05 * np.random.default_rng(0).standard_normal((size, size))
    x = torch.from_numpy(np.repeat(img[None, None], 3, axis=1).astype(np.float32))
    return (x - 0.45) / 0.25, torch.from_numpy(mask)[None, None]


def test_attention_unetpp_overfits_one_disc() -> None:
    torch.manual_seed(0)
    model = create_segmenter("attention-unetpp", dropout=0.0).train()
    x, m = _disc()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        out = model(x)
        loss = sum(F.binary_cross_entropy_with_logits(p, m) for p in [out["mask"], *out["aux"]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(F.binary_cross_entropy_with_logits(out["mask"].detach(), m)))
    assert losses[-1] < 0.6 * losses[0]
    logits = out["mask"].detach()[0, 0]
    assert logits[m[0, 0] > 0].mean() > logits[m[0, 0] == 0].mean() + 1  # the disc stands out


def test_flip_tta_averages_the_mirror_flipped_back() -> None:
    """A 'model' whose mask logits ramp along the width, whatever the image: the mirror's ramp, flipped back, runs the
    other way, so the mean of the two probabilities is the same in every column; class probabilities average."""
    import torch

    from medcad.models.predict import mask_outputs

    class Ramp(torch.nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            ramp = torch.linspace(-3, 3, w).expand(b, 1, h, w)
            return {"mask": ramp, "class": torch.stack([x.mean((1, 2, 3)), x[..., : w // 2].mean((1, 2, 3))], 1)}

    x = torch.zeros(2, 3, 4, 8)
    x[..., :4] = 1.0  # left half bright: the class logits differ between the image and its mirror
    plain, tta = mask_outputs(Ramp(), x), mask_outputs(Ramp(), x, hflip=True)
    assert plain["mask"][0, 0, 0] < 0.1 and plain["mask"][0, 0, -1] > 0.9
    assert torch.allclose(tta["mask"], torch.full_like(tta["mask"], 0.5))
    mirror = mask_outputs(Ramp(), x.flip(-1))["class"]
    assert torch.allclose(tta["class"], (plain["class"] + mirror) / 2)


def test_tta_setting() -> None:
    from medcad.errors import ConfigError
    from medcad.tasks import flip_tta

    assert flip_tta("auto", "segment") and flip_tta("auto", "multitask")
    assert not flip_tta("auto", "classify") and not flip_tta("none", "segment") and flip_tta("hflip", "classify")
    with pytest.raises(ConfigError, match="hflip"):
        flip_tta("vflip", "segment")


def test_renal_joint_counts_its_depthwise_convs_and_is_lighter_than_attention_unetpp() -> None:
    """Both halves convolve depthwise-separably; the parameter count includes those convs (none is frozen or
    shared), and the UNet++ of depthwise-separable blocks has under a quarter of the full-conv one's parameters."""
    model = create_segmenter("renal-joint", n_classes=3)
    n_params = sum(p.numel() for p in model.parameters())
    unique = {id(p): p.numel() for p in model.parameters() if p.requires_grad}
    assert n_params == sum(unique.values())

    def depthwise(module: torch.nn.Module) -> int:
        return sum(
            m.weight.numel()
            for m in module.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 and m.groups == m.out_channels
        )

    assert depthwise(model.segmenter) > 0 and depthwise(model.classifier) > 0
    assert 0.6e6 < n_params < 0.7e6  # UNet++ 0.46 M + DSConvResNet 0.19 M
    full = create_segmenter("attention-unetpp")
    assert sum(p.numel() for p in model.segmenter.parameters()) < 0.25 * sum(p.numel() for p in full.parameters())
    assert [n for n, _ in model.segmenter.nodes.named_children()] == [n for n, _ in full.nodes.named_children()]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert len(attention_maps(model)) == 15  # a CBAM in every UNet++ node


def test_renal_joint_class_loss_reaches_the_mask_through_the_gate_only_when_asked() -> None:
    """The gate passes `gate_grad` x the class loss's gradient to the mask: none by default (the full gradient
    drowned BCE + Dice on BUSI: validation Dice 0.13 against 0.49), a scaled share, or all of it; the forward value
    is the same."""
    from medcad.models.renal import RenalJointNet

    x, y = _disc()[0], torch.tensor([2])
    grads, classes = {}, {}
    for g in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        model = RenalJointNet(3, dropout=0.0, gate_grad=g).train()
        out = model(x)
        F.cross_entropy(out["class"], y).backward()
        grads[g] = model.segmenter.heads[-1].weight.grad  # the final mask head: reached only through the gate
        classes[g] = out["class"].detach()
    assert grads[0.0] is None
    assert torch.allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-8) and grads[1.0].abs().sum() > 0
    assert torch.equal(classes[0.0], classes[1.0])


def test_renal_joint_trains_mask_and_class_together_on_one_disc() -> None:
    """BCE + Dice (final and deep-supervision masks) + cross-entropy on one disc image, one loss and one step for
    both: the loss falls, the disc stands out in the mask, and the class is learnt."""
    from medcad.engine.segment import bce_dice_loss

    torch.manual_seed(0)
    model = create_segmenter("renal-joint", n_classes=3, dropout=0.0).train()
    x, m = _disc()
    y = torch.tensor([2])

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(x)
        seg = sum(bce_dice_loss(p, m) for p in [out["mask"], *out["aux"]]) / (1 + len(out["aux"]))
        loss = seg + F.cross_entropy(out["class"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    logits = out["mask"].detach()[0, 0]
    assert logits[m[0, 0] > 0].mean() > logits[m[0, 0] == 0].mean() + 1  # the disc stands out
    assert int(out["class"].argmax()) == 2


@pytest.mark.parametrize("arch", ["renal-joint", "unet-scratch", "stunet-s"])
def test_renal_archs_need_their_side_multiples(arch: str) -> None:
    multiple = 32 if arch == "stunet-s" else 16
    with pytest.raises(ValueError, match=f"divisible by {multiple}"):
        create_segmenter(arch, n_classes=2)(torch.randn(1, 3, 48 if multiple == 32 else 40, 40))
