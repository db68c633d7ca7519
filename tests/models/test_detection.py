"""SSD/SSDlite detector on a timm backbone: offline ImageNet weights, six maps, training with empty frames, bf16."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medcad.errors import ConfigError
from medcad.models.backbones import offline_weights_path
from medcad.models.detection import cam_target_layers, create_detector, detector_data_config

SIZE = 96


pytestmark = pytest.mark.usefixtures("one_thread")


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # a frame without boxes
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 80.0], [0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])},
    ]


def test_backbone_gets_the_offline_imagenet_weights() -> None:
    path = offline_weights_path("tf_efficientnet_lite0")
    assert path is not None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    src = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    body = create_detector(2, image_size=SIZE).backbone.body
    mine = [v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert torch.equal(body.conv_stem.weight, sd["_conv_stem.weight"])
    # the file's other key naming has the same tensor order; its conv_head, bn and classifier come last
    assert len(src) > len(mine) and all(torch.equal(a, b) for a, b in zip(mine, src[: len(mine)], strict=True))


def test_six_feature_maps_and_data_config() -> None:
    model = create_detector(3, image_size=SIZE, weights="none")
    maps = model.eval().backbone(torch.zeros(1, 3, SIZE, SIZE))
    assert [m.shape[-1] for m in maps.values()] == [6, 3, 2, 1, 1, 1]  # strides 16, 32, then extra blocks
    assert list(model.backbone.out_channels) == [m.shape[1] for m in maps.values()]
    dc = detector_data_config(model)
    assert dc["mean"] == [0.5, 0.5, 0.5] and dc["input_size"] == [3, SIZE, SIZE] and dc["n_classes"] == 3
    assert (model.nms_thresh, model.detections_per_img, model.score_thresh) == (0.45, 50, 0.01)
    with pytest.raises(ConfigError, match="detection head"):
        create_detector(2, head="yolo", weights="none")
    with pytest.raises(ConfigError, match="strides"):
        create_detector(2, backbone="vit_tiny_patch16_224", weights="none")


@pytest.mark.parametrize("head", ["ssdlite", "ssd"])
def test_trains_with_empty_frames_in_bf16_and_predicts_float_boxes(head: str) -> None:
    torch.manual_seed(0)
    model = create_detector(2, image_size=SIZE, head=head, weights="none")
    images = [torch.rand(3, SIZE, SIZE) for _ in range(3)]
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, _targets())
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images[:2])
    assert len(out) == 2
    for det in out:
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 50
        assert det["labels"].min() >= 1 and det["labels"].max() <= 2
        assert (det["boxes"][:, 2:] <= SIZE).all() and (det["boxes"][:, :2] >= 0).all()


def test_only_empty_frames_train() -> None:
    model = create_detector(1, image_size=64, weights="none").train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [empty, empty])
    assert losses["bbox_regression"] == 0 and torch.isfinite(losses["classification"])


def test_cam_target_layers_are_the_two_backbone_stages() -> None:
    model = create_detector(1, image_size=64, weights="none").eval()
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-1])) for m in cam_target_layers(model)]
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])
    for h in hooks:
        h.remove()
    assert seen == [4, 2]  # strides 16 and 32


@given(st.lists(st.tuples(*[st.integers(0, 8)] * 4, st.floats(0.01, 1), st.integers(1, 3)), max_size=12))
def test_predicted_boxes_without_area_are_dropped_like_true_ones(rows) -> None:
    """SSD clips boxes to the image, so a box beyond an edge comes out as a line; it is no lesion (true boxes
    without area were dropped, predicted ones had been kept and counted as false positives)."""
    from medcad.models.predict import detections_to_array

    det = {
        "boxes": torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([r[4] for r in rows], dtype=torch.float32),
        "labels": torch.tensor([r[5] for r in rows], dtype=torch.int64),
    }
    out = detections_to_array(det)
    kept = [r for r in rows if r[2] > r[0] and r[3] > r[1]]
    assert out.shape == (len(kept), 6)
    assert out[:, :4].tolist() == [list(map(float, r[:4])) for r in kept]
    assert out[:, 5].tolist() == [r[5] - 1 for r in kept]
