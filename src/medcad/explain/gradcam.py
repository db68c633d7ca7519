"""Grad-CAM for classifiers through pytorch-grad-cam: target layer per backbone, overlays with the prediction."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medcad.data.transforms import Normalize
from medcad.drawing import text_band
from medcad.errors import ConfigError


def target_layer(backbone: nn.Module, name: str | None = None) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: `name` if given, else the backbone's last feature map.

    Picks `conv_head` (EfficientNet/MobileNet), else the module of timm's last `feature_info` entry
    (`layer4` for ResNet, `Mixed_7c` for Inception-v3, the last conv stage for VGG).
    """
    modules = dict(backbone.named_modules())
    if name:
        if name not in modules:
            close = [n for n in modules if name.split(".")[-1] in n][:8]
            raise ConfigError(
                f"no layer {name!r} in {type(backbone).__name__}; e.g. {', '.join(close) or 'see named_modules()'}"
            )
        return modules[name]
    if "conv_head" in modules:
        return modules["conv_head"]
    info = getattr(backbone, "feature_info", None)
    if info:
        last = info[-1]["module"] if isinstance(info, list) else info.get_dicts()[-1]["module"]
        if last in modules and not isinstance(modules[last], nn.MaxPool2d):  # VGG's last entry is a pooling
            return modules[last]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(backbone).__name__} has no convolution for Grad-CAM; pass a layer name")
    return convs[-1]


class _Normalized(nn.Module):
    """Model taking uint8-range float images, so CAM inputs need no separate normalisation step."""

    def __init__(self, model: nn.Module, normalize: Normalize) -> None:
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def gradcam(
    model: nn.Module, normalize: Normalize, images: np.ndarray, classes: list[int], layer: nn.Module
) -> np.ndarray:
    """Heat-maps in [0, 1], (N, H, W), for uint8 images (N, H, W, 3) and the class index to explain for each."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _Normalized(model, normalize).eval().float()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    with GradCAM(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    caption: str | None = None,
    alpha: float = 0.45,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Blend a heat-map (jet colours, 0..1, any size) over an RGB uint8 image (H, W, 3), stretched over the whole
    image or over `box` (x0, y0, x1, y1, end-exclusive: the part of the image the model saw, e.g. the imaging area an
    interface option cropped to; the rest is left as it is); optional caption bar at the top."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box or (0, 0, w, h)
    heat = cv2.resize(heat.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[:, :, ::-1]
    out = image.copy()
    part = image[y0:y1, x0:x1].astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha
    out[y0:y1, x0:x1] = part.astype(np.uint8)
    return with_caption(out, caption) if caption else out


def with_caption(image: np.ndarray, caption: str, bar: int | None = None, wrap: bool = True) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) under a black band with `caption` in white, lines of `bar` px (default max(14,
    H // 12)): wrapped onto as many as it needs (`medcad.drawing.text_band`; it had been cut at the image's right
    edge), or, without `wrap`, one line of `bar` px, its text cut there (tiles set side by side keep one height)."""
    import cv2

    h, w = image.shape[:2]
    bar = bar or max(14, h // 12)
    if wrap:
        return np.concatenate([text_band(caption, w, bar), image])
    out = np.concatenate([np.zeros((bar, w, 3), np.uint8), image])
    cv2.putText(out, caption, (3, bar - 4), cv2.FONT_HERSHEY_SIMPLEX, bar / 30, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def explain_predictor(
    predictor,
    images: np.ndarray,
    classes: list[int] | None = None,
    layer: str | None = None,
    probs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of a Predictor's models (averaged over an ensemble's members) for prepared uint8 images, of
    `classes` (default: the most probable); `probs` (N, n_labels): the predictor's probabilities when known.

    Returns:
        heat-maps (N, S, S) and the probabilities (N, n_labels) of the predictor.
    """
    probs = predictor.infer(images)["probabilities"] if probs is None else probs
    classes = probs.argmax(1).tolist() if classes is None else classes
    members = list(predictor.net.members)
    heat = sum(gradcam(m, predictor.normalize, images, classes, target_layer(m.backbone, layer)) for m in members)
    return heat / len(members), probs
