"""SSD / SSDlite detector on a timm backbone (torchvision's SSD machinery, ImageNet weights offline).

The backbone's last two feature maps (strides 16 and 32) feed four SSDlite extra blocks (1x1 reduce, 3x3
depthwise stride 2, 1x1 expand), giving six maps at strides 16..512, as in SSDlite320. Default boxes span
8 %-80 % of the frame side (polyps fill roughly 5-60 % of a colonoscopy frame), with aspect ratios 1, 2, 3.
With frame classes (whole-frame boxes of normal / unclear frames, `medcad.data.boxes`), the coarsest (1x1) map
is given to whole frames (default boxes of side 1, IoU 1 with a whole-frame box) and the five finer maps span the
lesion boxes' sizes, so whole-frame boxes neither stretch the lesions' default boxes nor go without matches.

The model is a plain `torchvision.models.detection.ssd.SSD`:
- training: `model(images, targets)` -> {"bbox_regression", "classification"} losses, where images are float
  (3, S, S) tensors in [0, 1] and targets {"boxes": (m, 4) float xyxy pixels, "labels": (m,) int64 in 1..n};
  a frame without boxes has boxes of shape (0, 4) and labels of shape (0,);
- inference: `model(images)` -> [{"boxes", "scores", "labels"}] per image (labels 1..n; 0 is background);
- validation: `losses_and_detections(model, images, targets)` gives both in eval mode, in one pass.
Normalisation (the backbone's ImageNet mean/std) and resizing to (S, S) happen inside (`model.transform`).

Under bf16 autocast (CPU) the backbone and heads run in bf16 while the head outputs, default boxes, box
decoding and losses stay float32 (`_Float32Outputs`, `Anchors`): bf16 has a 1-2 px step at 320 px. Training
this way gives finite losses (tested) and is ~2x faster than float32 here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import boxes as box_ops

from medcad.config import TrainConfig
from medcad.errors import ConfigError
from medcad.models.backbones import DEFAULT_BACKBONE, create_backbone, restart_bn_statistics

HEADS = ("ssdlite", "ssd")
EXTRA_CHANNELS = (512, 256, 256, 128)  # SSDlite320's extra layers
MIN_SCALE, MAX_SCALE = 0.08, 0.8  # default-box side as a fraction of the image side, first and last map
ASPECT_RATIOS = (2, 3)  # besides 1 (two sizes), per map: boxes w:h = r:1 and 1:r
DETECTIONS_PER_IMAGE = 50
SCORE_THRESH = 0.01  # low, so that average precision sees the whole ranking
NMS_IOU = 0.45


class _Float32Outputs:
    """Mixin for a head: outputs as float32, so that decoding and losses never run in bf16 under autocast."""

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in super().forward(x).items()}


class LiteHead(_Float32Outputs, SSDLiteHead):
    """SSDlite head (depthwise-separable predictors) with float32 outputs."""


class Head(_Float32Outputs, SSDHead):
    """SSD head (3x3 convolution predictors) with float32 outputs."""


class Anchors(DefaultBoxGenerator):
    """Default boxes in float32 whatever the feature maps' dtype (torchvision follows the features' dtype)."""

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return super().forward(image_list, [f.float() for f in feature_maps])


def _norm_layer() -> partial:
    """BatchNorm of the extra blocks and the SSDlite head: running statistics as a plain average (momentum None),
    restarted every training epoch (`restart_norm_statistics`). SSDlite320's momentum 0.03 suits its 600 epochs;
    here the depthwise convolutions (weights N(0, 0.03)) give activations of variance ~1e-3, and a short schedule
    (~100 steps: 0.97^100 = 5 % of the initial variance 1 left) kept running variances 50-100x too large: in eval
    mode each 1x1 map shrank 10x, the deepest maps became constant and every frame got the same detections."""
    return partial(nn.BatchNorm2d, eps=1e-3, momentum=None)


def norm_layers(model: SSD) -> list[nn.BatchNorm2d]:
    """The detector's own BatchNorm layers (extra blocks, SSDlite head), not the timm body's."""
    own = [model.backbone.extra, model.head]
    return [m for part in own for m in part.modules() if isinstance(m, nn.BatchNorm2d)]


def restart_norm_statistics(model: SSD) -> None:
    """Forget the running statistics of the detector's own BatchNorm layers (`backbones.restart_bn_statistics`)."""
    restart_bn_statistics(norm_layers(model))


def _extra_block(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise-separable downsampling (SSDlite): 1x1 to c_out/2, 3x3 depthwise stride 2, 1x1 to c_out."""
    mid, norm = c_out // 2, _norm_layer()
    return nn.Sequential(
        Conv2dNormActivation(c_in, mid, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, c_out, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6),
    )


class FeaturePyramid(nn.Module):
    """timm `features_only` body (strides 16 and 32) + extra blocks -> six feature maps as an OrderedDict.

    Attributes:
        body: the timm feature extractor (ImageNet weights); its last stage is a natural CAM target layer.
        extra: the downsampling blocks after the stride-32 map.
        out_channels: channels of the six maps (torchvision's SSD reads this attribute).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str = "auto") -> None:
        super().__init__()
        self.body = create_backbone(backbone, weights, features_only=True, out_indices=(-2, -1))
        reductions = self.body.feature_info.reduction()
        if reductions != [16, 32]:
            raise ConfigError(
                f"backbone {backbone!r} gives feature maps at strides {reductions}; the detector needs a CNN whose "
                "last two stages have strides 16 and 32 (e.g. tf_efficientnet_lite0, resnet50, mobilenetv3)"
            )
        channels = list(self.body.feature_info.channels())
        blocks, c = [], channels[-1]
        for c_out in EXTRA_CHANNELS:
            blocks.append(_extra_block(c, c_out))
            c = c_out
        self.extra = nn.ModuleList(blocks)
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.03)
        self.out_channels = channels + list(EXTRA_CHANNELS)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = list(self.body(x))  # (B, C16, S/16, S/16), (B, C32, S/32, S/32)
        y = maps[-1]
        for block in self.extra:
            y = block(y)  # halves the side each time, down to 1x1
            maps.append(y)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def create_detector(
    n_classes: int,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "auto",
    image_size: int = 320,
    head: str = "ssdlite",
    scales: tuple[float, ...] | None = None,
) -> SSD:
    """An SSD detector on a timm backbone.

    Args:
        n_classes: object classes, background excluded (the model predicts labels 1..n_classes).
        backbone: timm CNN name whose last two stages have strides 16 and 32.
        weights: backbone weights: "auto" (offline ImageNet when installed), "hub", "none" or a state-dict path.
        image_size: side of the square input; images of other sizes are resized inside the model.
        head: "ssdlite" (depthwise-separable predictors, fast) or "ssd" (plain 3x3 convolutions).
        scales: default-box side, as a fraction of the image side, on the first and the last feature map (the
            maps between are spaced evenly); default (0.08, 0.8). A third value gives the last (1x1) map its own
            side, and the two values then span the other maps: (lo, hi, 1.0) keeps the last map for whole-frame
            boxes (frame classes). `anchor_scales` derives them from data.

    Returns:
        torchvision `SSD`; `model.backbone.body` is the timm feature extractor.
    """
    if n_classes < 1:
        raise ConfigError(f"a detector needs at least one object class, got n_classes={n_classes}")
    if head not in HEADS:
        raise ConfigError(f"unknown detection head {head!r}; choose one of {', '.join(HEADS)}")
    if image_size < 32:
        raise ConfigError(f"detector image_size must be at least 32 px, got {image_size}")
    scales = tuple(float(v) for v in (scales or (MIN_SCALE, MAX_SCALE)))
    if len(scales) not in (2, 3) or not all(0 < v <= 1 for v in scales):
        raise ConfigError(f"anchor scales must be (lo, hi) or (lo, hi, last) in (0, 1], got {scales}")
    features = FeaturePyramid(backbone, weights)
    n_maps = len(features.out_channels)
    aspect = [list(ASPECT_RATIOS) for _ in range(n_maps)]
    if len(scales) == 2:
        anchors = Anchors(aspect, min_ratio=scales[0], max_ratio=scales[1])
    else:  # the finer maps span (lo, hi); the last map has its own side; torchvision's closing 1.0 after it
        sides = np.linspace(scales[0], scales[1], n_maps - 1).tolist()
        anchors = Anchors(aspect, scales=[*sides, scales[2], 1.0])
    n_anchors = anchors.num_anchors_per_location()
    if head == "ssdlite":
        predictor = LiteHead(features.out_channels, n_anchors, n_classes + 1, _norm_layer())
    else:
        predictor = Head(features.out_channels, n_anchors, n_classes + 1)
    cfg = features.body.pretrained_cfg
    model = SSD(
        features,
        anchors,
        (image_size, image_size),
        n_classes + 1,
        image_mean=list(cfg.get("mean", (0.485, 0.456, 0.406))),
        image_std=list(cfg.get("std", (0.229, 0.224, 0.225))),
        head=predictor,
        score_thresh=SCORE_THRESH,
        nms_thresh=NMS_IOU,
        detections_per_img=DETECTIONS_PER_IMAGE,
        topk_candidates=200,
    )
    model.medcad_config = {
        "backbone": backbone,
        "head": head,
        "n_classes": n_classes,
        "image_size": image_size,
        "anchor_scales": list(scales),
    }
    return model


def anchor_scales(boxes: list[np.ndarray], size: int, frame_classes: Sequence[int] = ()) -> tuple[float, ...]:
    """Default-box scales that span a dataset's boxes: from 0.9 x the 10th percentile of the boxes' sides
    (sqrt of the area, as a fraction of the image side) to 1.1 x the 95th, within [0.04, 0.95].

    The fixed (0.08, 0.8) puts most default boxes on the stride-16 map at 8 % of the side; Kvasir's polyps are
    mostly 25-50 % of it, so a box matched only ~3 default boxes and 11 % matched none (benchmarks/anchor_check.py).

    Whole-frame boxes of frame classes are left out of the percentiles (a set of mostly normal frames would
    otherwise pull every default box towards the frame size) and get the last map instead: (lo, hi, 1.0).

    Args:
        boxes: per image (m, 5) [x0, y0, x1, y1, class] in pixels of the size x size image.
        size: image side.
        frame_classes: class indices whose boxes are whole frames.

    Returns:
        (lo, hi), or (lo, hi, 1.0) with frame classes (see `create_detector`).
    """
    b = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, 5) for x in boxes]) if boxes else np.zeros((0, 5))
    b = b[~np.isin(b[:, 4], list(frame_classes))]
    last = (1.0,) if len(frame_classes) else ()
    if len(b) == 0:
        return MIN_SCALE, MAX_SCALE, *last
    sides = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)) / size
    lo = float(np.clip(0.9 * np.quantile(sides, 0.10), 0.04, 0.5))
    hi = float(np.clip(1.1 * np.quantile(sides, 0.95), lo + 0.1, 0.95))
    return lo, hi, *last


def losses_and_detections(
    model: SSD, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """An SSD's training losses against `targets` and its detections, from one forward pass in the model's current
    mode: torchvision's `SSD.forward` gives losses only in training mode, where BatchNorm would use (and update)
    batch statistics. Called in eval mode under no_grad (validation), this is the loss of the network that
    predicts: BatchNorm on running statistics, the same matching and hard-negative mining as training.

    Args:
        model: a torchvision SSD (`create_detector`).
        images: float (3, H, W) tensors in [0, 1].
        targets: {"boxes": (m, 4) xyxy pixels of the image, "labels": (m,) int64 in 1..n} per image.

    Returns:
        ({"bbox_regression", "classification"}, [{"boxes", "scores", "labels"}] per image).
    """
    original_sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
    batch, targets = model.transform(images, targets)
    features = list(model.backbone(batch.tensors).values())
    head = model.head(features)
    anchors = model.anchor_generator(batch, features)
    matched = []
    for a, t in zip(anchors, targets, strict=True):
        if t["boxes"].numel() == 0:
            matched.append(torch.full((a.size(0),), -1, dtype=torch.int64, device=a.device))
        else:
            matched.append(model.proposal_matcher(box_ops.box_iou(t["boxes"], a)))
    losses = model.compute_loss(targets, head, anchors, matched)
    detections = model.postprocess_detections(head, anchors, batch.image_sizes)
    return losses, model.transform.postprocess(detections, batch.image_sizes, original_sizes)


def detector_data_config(model: SSD) -> dict:
    """Preprocessing and layout of a detector, stored in its model file.

    Returns:
        {mean, std, interpolation, input_size [3, S, S], backbone, head, n_classes, image_size, box_format}.
        Images go in as RGB in [0, 1] (the model normalises with mean/std itself); boxes come out as
        [x0, y0, x1, y1] pixels of the input image.
    """
    body_cfg = model.backbone.body.pretrained_cfg
    size = model.medcad_config["image_size"]
    return {
        "mean": [float(v) for v in model.transform.image_mean],
        "std": [float(v) for v in model.transform.image_std],
        "interpolation": body_cfg.get("interpolation", "bilinear"),
        "input_size": [3, size, size],
        **model.medcad_config,
        "box_format": "xyxy_pixels",
    }


def cam_target_layers(model: SSD) -> list[nn.Module]:
    """The backbone stages whose outputs feed the detector (strides 16 and 32): CAM target layers for boxes
    (e.g. pytorch-grad-cam's gradient-free EigenCAM; the last one is the coarser, more semantic map)."""
    body = model.backbone.body
    modules = dict(body.named_modules())
    return [modules[name] for name in body.feature_info.module_name()]


def detector_from_config(cfg: TrainConfig, n_classes: int, scales: tuple[float, ...] | None = None) -> torch.nn.Module:
    """The detector a run's settings describe: cfg.model backbone with cfg.weights at cfg.image_size; the head is
    cfg.head when it names a detection head ("ssd", "ssdlite"), else SSDlite (the classifier's heads do not apply)."""
    head = cfg.head if cfg.head in HEADS else "ssdlite"
    return create_detector(
        n_classes, backbone=cfg.model, weights=cfg.weights, image_size=cfg.image_size, head=head, scales=scales
    )
