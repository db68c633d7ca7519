"""Backbones: offline ImageNet weights really classify a photo; bad names and weight files get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcad.errors import ConfigError, DataError
from medcad.models.backbones import (
    OFFLINE_WEIGHTS,
    backbone_data_config,
    create_backbone,
    freeze_early_stages,
    load_weights,
    offline_weights_path,
    pretrained_source,
    set_bn_eval,
)
from medcad.models.classifier import Classifier, freeze_backbone, make_head, parameter_groups


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_offline_backbones_have_real_imagenet_weights(name: str) -> None:
    """scikit-image's chelsea() is a tabby cat: ImageNet classes 281-285 must lead the top 5."""
    import timm
    from PIL import Image
    from skimage import data

    path = offline_weights_path(name)
    assert path is not None and path.is_file()
    model = timm.create_model(name)
    load_weights(model, path, skip_classifier=False)
    cfg = backbone_data_config(model)
    img = Image.fromarray(data.chelsea()).resize((224, 224), Image.BICUBIC)
    x = torch.tensor(np.asarray(img) / 255.0, dtype=torch.float32).permute(2, 0, 1)
    x = (x - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1)
    with torch.no_grad():
        top5 = model.eval()(x[None]).softmax(-1)[0].topk(5).indices.tolist()
    assert top5[0] in range(281, 286)
    assert sum(c in range(281, 286) for c in top5) >= 2


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="did you mean.*resnet50"):
        create_backbone("resnet_50")


def test_weights_that_do_not_fit_name_the_keys(tmp_path) -> None:
    bad = tmp_path / "w.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(
        DataError, match=r"w\.pth: weights do not fit .*conv_stem\.weight \(32, 3, 3, 3\) vs \(8, 3, 3, 3\)"
    ):
        create_backbone("tf_efficientnet_lite0", weights=str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nonsense")
    with pytest.raises(DataError, match="cannot read weights"):
        create_backbone("tf_efficientnet_lite0", weights=str(junk))


def test_local_weights_with_timm_key_names_round_trip(tmp_path) -> None:
    a = create_backbone("resnet18", weights="none")
    path = tmp_path / "r18.pth"
    torch.save(a.state_dict(), path)
    b = create_backbone("resnet18", weights=str(path))
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_heads_and_stagewise_freezing() -> None:
    assert make_head("mlp", 1280, 3)[-1].out_features == 3
    assert make_head("mlp", 1280, 3)[0].out_features == 2048
    model = Classifier("tf_efficientnet_lite0", 3, weights="none")
    trainable = freeze_backbone(model, 1)
    last = parameter_groups(model.backbone)[-1]
    assert set(trainable) == set(last)
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if n not in last)
    assert freeze_backbone(model, 0) == []
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)


@pytest.mark.parametrize(
    "name, stride, last_frozen",
    [
        ("tf_efficientnet_lite0", 4, "blocks.1.1.bn3.bias"),  # stem + blocks 0-1 = timm's first 3 coarse groups
        ("tf_efficientnet_lite0", 8, "blocks.2.1.bn3.bias"),
        ("resnet50", 2, "bn1.bias"),  # the stride-2 stage is `act1`, which has no parameters: conv1 + bn1
        ("resnet50", 4, "layer1.2.bn3.bias"),
    ],
)
def test_early_stages_freeze_by_output_stride(name: str, stride: int, last_frozen: str) -> None:
    import timm

    for kwargs in ({"num_classes": 0}, {"features_only": True, "out_indices": (-2, -1)}):  # classifier, detector
        model = timm.create_model(name, pretrained=False, **kwargs)
        names = [n for n, _ in model.named_parameters()]
        frozen = freeze_early_stages(model, stride)
        assert frozen == names[: names.index(last_frozen) + 1]  # exactly the leading block of parameters
        assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
        model.train()
        set_bn_eval(model, frozen_only=True)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert not bns[0].training and bns[-1].training  # frozen stages keep ImageNet statistics
    assert freeze_early_stages(timm.create_model(name, pretrained=False), 0) == []
    if (name, stride) == ("tf_efficientnet_lite0", 4):  # the same cut as training the last 5 of 8 coarse groups
        groups = parameter_groups(timm.create_model(name, pretrained=False, num_classes=0))
        assert len(frozen) == sum(len(g) for g in groups[:3])


def test_stages_of_a_non_timm_encoder_are_not_guessed() -> None:
    with pytest.raises(ConfigError, match="feature_info"):
        freeze_early_stages(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)), 4)


# The reference designs' backbones: (input size of the forward pass, width of the pooled conv features).
DESIGN_BACKBONES = {
    "vgg16": (32, 512),  # fc6/fc7 removed: the head sits on the 512 pooled conv channels
    "inception_v3": (75, 2048),  # Inception-v3's smallest input
    "resnet50": (32, 2048),
    "efficientnet_b0": (32, 1280),
    "tf_efficientnet_lite0": (32, 1280),  # these four have offline ImageNet weights
    "tf_efficientnet_lite1": (32, 1280),
    "tf_efficientnet_lite2": (32, 1280),
    "mobilenetv2_100": (32, 1280),
}


@pytest.mark.parametrize("name", sorted(DESIGN_BACKBONES))
def test_design_backbones_take_the_mlp_head_on_pooled_conv_features(name: str) -> None:
    """The urinary design's FC 2048-1024-n head sits on the global pooling of the last conv block, for every
    backbone (VGG16 used to give its 4096-wide fc7 to a head sized for 512: `mat1 and mat2 shapes cannot be
    multiplied (13x4096 and 512x2048)`)."""
    size, width = DESIGN_BACKBONES[name]
    model = Classifier(name, 2, head="mlp", weights="none").eval()
    assert model.head[0].in_features == width
    assert not any(n.startswith("pre_logits.") for n, _ in model.backbone.named_parameters())
    with torch.no_grad():
        assert model.backbone(torch.randn(2, 3, size, size)).shape == (2, width)
        assert model(torch.randn(2, 3, size, size)).shape == (2, 2)


def _torchvision_random_state_dict(builder: str) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict (key names and shapes) with random weights and BatchNorm statistics."""
    import torchvision

    kwargs = {"aux_logits": True, "init_weights": False} if builder == "inception_v3" else {}
    gen = torch.Generator().manual_seed(0)
    sd = getattr(torchvision.models, builder)(weights=None, **kwargs).state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=gen) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
    return sd


# torchvision key -> medcad backbone key, for weights compared by value (first, BatchNorm statistics, last)
TORCHVISION_PAIRS = {
    "vgg16": {"features.0.weight": "features.0.weight", "features.28.bias": "features.28.bias"},
    "inception_v3": {
        "Conv2d_1a_3x3.conv.weight": "Conv2d_1a_3x3.conv.weight",
        "Mixed_6e.branch7x7_1.bn.running_mean": "Mixed_6e.branch7x7_1.bn.running_mean",
        "Mixed_7c.branch_pool.bn.running_var": "Mixed_7c.branch_pool.bn.running_var",
    },
    "resnet50": {"conv1.weight": "conv1.weight", "layer4.2.bn3.running_var": "layer4.2.bn3.running_var"},
    "efficientnet_b0": {  # another naming: copied by position
        "features.0.0.weight": "conv_stem.weight",
        "features.1.0.block.1.fc1.weight": "blocks.0.0.se.conv_reduce.weight",
        "features.6.3.block.3.1.running_mean": "blocks.5.3.bn3.running_mean",
        "features.8.1.running_var": "bn2.running_var",
    },
}
# what of the torchvision file medcad's classifier does not use: the ImageNet classifier (VGG's fc6/fc7 included)
# and Inception's auxiliary classifier
TORCHVISION_UNUSED = {
    "vgg16": "classifier.* (6)",
    "inception_v3": "AuxLogits.* (",
    "resnet50": "fc.* (2)",
    "efficientnet_b0": "classifier.* (2)",
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PAIRS))
def test_torchvision_state_dicts_load_into_timm_backbones(tmp_path, caplog, name: str) -> None:
    """The reference studies' VGG16, InceptionV3, ResNet50 (and EfficientNet-B0) weights usually come as torchvision
    files: `--weights PATH` loads every backbone tensor, says what it skipped, and the classifier runs."""
    import logging

    sd = _torchvision_random_state_dict(name)
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.WARNING, logger="medcad.models.backbones"):
        model = Classifier(name, 2, head="mlp", weights=str(path)).eval()
    first = next(p for n, p in model.backbone.named_parameters())
    assert torch.equal(first, next(v for k, v in sd.items()))
    got = model.backbone.state_dict()
    for tv_key, key in TORCHVISION_PAIRS[name].items():
        assert torch.equal(got[key], sd[tv_key]), key
    assert pretrained_source(model.backbone) == str(path)

    report = load_weights(create_backbone(name, weights="none"), path)
    assert report.by == ("position" if name == "efficientnet_b0" else "name")
    assert report.left == ()  # every backbone tensor came from the file
    counted = [k for k in got if not k.endswith("num_batches_tracked")]
    assert len(report.loaded) == len(counted)
    assert len(report.loaded) + len(report.unused) == sum(not k.endswith("num_batches_tracked") for k in sd)
    assert all(k.split(".")[0] in {"classifier", "fc", "AuxLogits"} for k in report.unused)
    note = next(r.getMessage() for r in caplog.records if str(path) in r.getMessage())
    assert note.startswith("note: ") and TORCHVISION_UNUSED[name] in note and "replaced by medcad's head" in note

    size = DESIGN_BACKBONES[name][0]
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_early_stages_freeze_only_when_pretrained_weights_were_loaded(tmp_path, caplog) -> None:
    """`--weights auto` for a backbone with no offline weights is random init: its stem is not frozen (a note says
    so); weights from a file are frozen up to the freeze stride, as are the offline ones."""
    import logging

    from medcad.config import TrainConfig
    from medcad.engine.common import freeze_pretrained_encoder

    cfg = TrainConfig(task="classify", model="resnet18", weights="auto")
    with pytest.warns(UserWarning, match="no offline ImageNet weights for 'resnet18'"):
        random = create_backbone("resnet18", weights="auto")
    assert pretrained_source(random) is None and pretrained_source(random, "hub") == "hub"
    with caplog.at_level(logging.WARNING, logger="medcad.engine.common"):
        assert freeze_pretrained_encoder(random, cfg) == 0
    assert "note: the resnet18 encoder starts from random init" in caplog.text
    assert all(p.requires_grad for p in random.parameters())
    assert freeze_pretrained_encoder(random, cfg.replace(weights="none")) == 0

    path = tmp_path / "r18.pth"
    torch.save(random.state_dict(), path)
    loaded = create_backbone("resnet18", weights=str(path))
    frozen = freeze_pretrained_encoder(loaded, cfg.replace(weights=str(path)))
    assert frozen == len(freeze_early_stages(create_backbone("resnet18", weights="none"), 8)) > 0  # the default
    assert not loaded.layer2[0].conv1.weight.requires_grad and loaded.layer3[0].conv1.weight.requires_grad
    offline = create_backbone("tf_efficientnet_lite0", weights="auto")
    assert pretrained_source(offline) == str(offline_weights_path("tf_efficientnet_lite0"))
    assert freeze_pretrained_encoder(offline, cfg.replace(model="tf_efficientnet_lite0")) > 0
