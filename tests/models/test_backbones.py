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


@pytest.mark.parametrize("name, builder", [("vgg16", "vgg16"), ("resnet50", "resnet50")])
def test_torchvision_state_dicts_load_into_timm_backbones(tmp_path, name: str, builder: str) -> None:
    """The reference studies' VGG16 and ResNet50 weights usually come as torchvision files."""
    import torchvision

    tv = getattr(torchvision.models, builder)()
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    model = create_backbone(name, weights=str(path))
    first = next(p for n, p in model.named_parameters())
    assert torch.equal(first, next(iter(tv.parameters())))
