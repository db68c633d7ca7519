"""Lesion segmentation and joint segmentation + classification networks behind one factory, `create_segmenter`.

Every model takes normalised float images (B, 3, H, W), sides multiples of 32, and returns a dict:
"mask": lesion logits (B, 1, H, W), or for label maps (segment-multiclass) softmax logits (B, 1 + K, H, W) of
background and K lesion classes (`lesion_logits` gives any model's lesion logit); in training mode only, "aux":
the deep-supervision logits (same channels) of AttentionNestedUNet; for multitask models, "class": logits
(B, K). "dsconv-resnet" returns only "class".

Architectures (`ARCHS`), with their parameters at the defaults (mask only; a 3-class head adds 1.5-3 k):
- "attention-unetpp": AttentionNestedUNet, UNet++ of residual CBAM blocks, from scratch: 2.46 M.
- "unet", "unetpp": segmentation_models_pytorch U-Net / UNet++ on a timm encoder, ImageNet weights offline
  for tf_efficientnet_lite0..2: 5.20 M / 5.43 M with lite0.
- "unet-vgg11": U-Net on a VGG11 encoder, TernausNet-like: 18.25 M; no offline weights ship.
- "dsconv-resnet": DSConvResNet, the classification-only arm of the renal design: 0.19 M at 3 classes.
- "renal-joint", "unet-scratch", "stunet-s": the renal design's joint network (depthwise-separable attention UNet++
  + DSConvResNet on the lesion-gated image) and its from-scratch U-Net baselines, in `medcad.models.renal`.

A multitask model pools the deepest features twice, over the whole image and weighted by the predicted lesion
probability, so the class sees the lesion the mask found; the encoder runs once for both outputs.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from medcad.config import TrainConfig
from medcad.errors import ConfigError
from medcad.models.attention_unet import AttentionNestedUNet, attention_maps
from medcad.models.backbones import DEFAULT_BACKBONE, check_model_name, load_weights, offline_weights_path
from medcad.models.blocks import DSConvResNet, JointSegClassifier
from medcad.models.renal import create_renal_model

__all__ = [
    "ARCHS",
    "AttentionNestedUNet",
    "DSConvResNet",
    "JointSegClassifier",
    "SmpSegmenter",
    "attention_maps",
    "cam_target_name",
    "create_segmenter",
    "lesion_logits",
    "segmenter_data_config",
]

ARCHS = ("attention-unetpp", "unet", "unetpp", "unet-vgg11", "dsconv-resnet", "renal-joint", "unet-scratch", "stunet-s")
# smp's U-Net / UNet++ decoder (also the VGG11 U-Net's): the widths of its five blocks, deepest first (output stride 16
# to 1); what a saved `decoder_channels` of None means
DECODER_ARCHS = ("unet", "unetpp", "unet-vgg11")
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)
# what `decoder_channels: auto` gives a new run where it differs from smp's (measured: `decoder_widths`); UNet++ (not
# measured) and the VGG11 U-Net (a reference design's baseline, TernausNet-like) keep smp's
DEFAULT_DECODER_CHANNELS = {"unet": (128, 64, 32, 16, 16)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmpSegmenter(nn.Module):
    """A segmentation_models_pytorch model (`net`, one output class) returning the medcad output dict."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.out_channels = list(net.encoder.out_channels)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Mask logits (B, 1, H, W), no deep-supervision outputs, and the deepest encoder features."""
        self.net.check_input_shape(x)
        features = self.net.encoder(x)
        return self.net.segmentation_head(self.net.decoder(features)), [], features[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.forward_parts(x)[0]}


def check_arch(arch: str) -> None:
    """Raises ConfigError for an architecture not in `ARCHS`."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown segmentation architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def decoder_widths(setting: str | None, arch: str) -> tuple[int, ...]:
    """The widths of a U-Net / UNet++ decoder's five blocks, deepest first, from a run's `decoder_channels`
    ("256,128,64,32,16"); None: smp's, `SMP_DECODER_CHANNELS` (what runs saved before "auto" existed were built
    with); "auto": the architecture's default, `DEFAULT_DECODER_CHANNELS` (else smp's).

    The U-Net's default, (128, 64, 32, 16, 16), measured (docs/results.md, 2026-12-04): its training step is 1.97x
    smp's (lite0 encoder, 256 px, batch 16, fp32, a 2-core AVX2 CPU; benchmarks/freeze_speed.py --cases decoder), and
    at the default 12 epochs it segments as well: Kvasir-SEG at 256 px, the same 200-image holdout, Dice 0.867 against
    0.866 with smp's widths (paired difference +0.001, 95 % CI -0.011 to +0.012, Wilcoxon p 0.25), the run 1.71x
    faster; on BUSI at 128 px (three seeds) lesion-image Dice +0.008 to +0.022. (After 3 epochs it lagged on
    Kvasir-SEG, 0.812 against 0.830: it needs the default schedule.)

    Raises:
        ConfigError: neither "auto", None nor five positive integers.
    """
    if setting is None:
        return SMP_DECODER_CHANNELS
    if setting == "auto":
        return DEFAULT_DECODER_CHANNELS.get(arch, SMP_DECODER_CHANNELS)
    try:
        widths = tuple(int(w) for w in setting.split(","))
    except ValueError:
        widths = ()
    if len(widths) != len(SMP_DECODER_CHANNELS) or min(widths) < 1:
        raise ConfigError(
            f"decoder_channels must be auto or {len(SMP_DECODER_CHANNELS)} positive integers, deepest block first, "
            f"such as {','.join(map(str, SMP_DECODER_CHANNELS))}; got {setting!r}"
        )
    return widths


def lesion_logits(mask: torch.Tensor) -> torch.Tensor:
    """A "mask" output's lesion logit (B, 1, H, W): itself for one channel; for background + lesion-class channels,
    logsumexp(lesion classes) - background, whose sigmoid is 1 - P(background)."""
    if mask.shape[1] == 1:
        return mask
    return torch.logsumexp(mask[:, 1:], dim=1, keepdim=True) - mask[:, :1]


def _smp_net(arch: str, encoder: str, weights: str, channels: int, decoder_channels: tuple[int, ...]) -> nn.Module:
    """U-Net / UNet++ with `channels` outputs and `decoder_channels`; ImageNet encoder weights per `weights` (see
    create_segmenter)."""
    import segmentation_models_pytorch as smp

    vgg = arch == "unet-vgg11"
    if not vgg:
        check_model_name(encoder)
    name = "vgg11" if vgg else f"tu-{encoder}"
    cls = partial(smp.UnetPlusPlus if arch == "unetpp" else smp.Unet, decoder_channels=decoder_channels)
    if weights == "hub":
        try:
            return cls(encoder_name=name, encoder_weights="imagenet", classes=channels)
        except Exception as e:
            raise ConfigError(
                f"could not download ImageNet weights for the {name!r} encoder ({type(e).__name__}: {e}); "
                "use --weights PATH with a local file, or --weights none"
            ) from e
    net = cls(encoder_name=name, encoder_weights=None, classes=channels)
    if weights == "none":
        return net
    if weights == "auto":
        path = None if vgg else offline_weights_path(encoder)
        if path is None:
            warnings.warn(
                f"no offline ImageNet weights for the {'vgg11' if vgg else encoder!r} encoder: it starts from "
                "random init. Use --weights PATH (a torchvision or timm state dict) or --weights hub",
                stacklevel=3,
            )
            return net
    else:
        path = Path(weights)
    # By key name, or by position for the offline files (their blocks come first, in timm's order).
    load_weights(net.encoder if vgg else net.encoder.model, path, skip_classifier=False)
    return net


def create_segmenter(
    arch: str,
    *,
    n_classes: int | None = None,
    encoder: str = DEFAULT_BACKBONE,
    weights: str = "auto",
    dropout: float = 0.2,
    mask_channels: int = 1,
    decoder_channels: tuple[int, ...] | None = None,
) -> nn.Module:
    """A segmentation model, a joint segmentation + classification model, or the DSConv classifier.

    Args:
        arch: one of `ARCHS`.
        n_classes: None for a mask-only model; a number of classes adds a class head ("class" output).
            Required by "dsconv-resnet".
        encoder: timm encoder name of "unet" and "unetpp"; other architectures ignore it.
        weights: encoder weights of the smp models: "auto" (offline ImageNet weights when a package ships them,
            else random init with a warning), "hub" (download), "none", or a path to a state dict (timm or
            offline-package key names; torchvision's for "unet-vgg11", whose classifier is ignored).
            "attention-unetpp", "dsconv-resnet" and the renal archs always train from scratch and ignore it.
        dropout: dropout before the class head's linear layer, and Dropout2d on the AttentionNestedUNet
            bottleneck.
        mask_channels: 1 (a lesion logit) or 1 + K (background and K lesion classes, segment-multiclass; the
            archs "attention-unetpp", "unet", "unetpp" and "unet-vgg11").
        decoder_channels: the widths of the five decoder blocks of "unet", "unetpp" and "unet-vgg11", deepest
            first; None: the architecture's default (`DEFAULT_DECODER_CHANNELS`, else smp's). Other architectures
            ignore it.

    Raises:
        ConfigError: unknown architecture or encoder, missing n_classes, or failed download.
    """
    check_arch(arch)
    if arch == "dsconv-resnet":
        if n_classes is None:
            raise ConfigError("dsconv-resnet only classifies: give it a number of classes (multitask task)")
        return DSConvResNet(n_classes, dropout=dropout)
    if arch in ("renal-joint", "unet-scratch", "stunet-s"):
        if mask_channels != 1:
            raise ConfigError(f"{arch} segments one lesion; for lesion classes use unet, unetpp or attention-unetpp")
        return create_renal_model(arch, n_classes, dropout)
    seg = (
        AttentionNestedUNet(dropout=dropout, mask_channels=mask_channels)
        if arch == "attention-unetpp"
        else SmpSegmenter(
            _smp_net(arch, encoder, weights, mask_channels, decoder_channels or decoder_widths("auto", arch))
        )
    )
    return seg if n_classes is None else JointSegClassifier(seg, n_classes, dropout)


def segmenter_data_config(model: nn.Module) -> dict[str, list[float]]:
    """Input normalisation: ImageNet mean and std for every architecture (pretrained encoders expect them; they
    are as good as any for the from-scratch models)."""
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def cam_target_name(model: nn.Module, output: str = "class") -> str:
    """Dotted name (for `model.get_submodule`) of the layer whose activations Grad-CAM should weigh.

    Args:
        model: a model from `create_segmenter`.
        output: "class" gives the deepest feature map (the one the class head pools); "mask" gives the last
            decoder stage, at full or half resolution.
    """
    if isinstance(model, DSConvResNet):
        return f"stages.{len(model.stages) - 1}"
    if isinstance(model, JointSegClassifier):
        return "segmenter." + cam_target_name(model.segmenter, output)
    if isinstance(model, AttentionNestedUNet):
        return f"nodes.x0_{model.depth}" if output == "mask" else f"nodes.x{model.depth}_0"
    if isinstance(model, SmpSegmenter):
        if output == "mask":
            return "net.decoder"
        enc = model.net.encoder
        if hasattr(enc, "features"):  # VGG: the last pooling is the deepest output
            return f"net.encoder.features.{len(enc.features) - 1}"
        return "net.encoder.model." + enc.model.feature_info.get_dicts()[-1]["module"]
    if hasattr(model, "cam_target"):  # the models of medcad.models.renal name their own
        return model.cam_target(output)
    raise ConfigError(f"no Grad-CAM target known for {type(model).__name__}")


def pretrained_encoder(model: nn.Module) -> nn.Module | None:
    """The timm encoder of a U-Net / UNet++ (ImageNet-pretrained unless built with weights "none"), or None for
    the architectures that train from scratch and for smp's VGG11 encoder (not a timm model)."""
    if isinstance(model, JointSegClassifier):
        return pretrained_encoder(model.segmenter)
    if isinstance(model, SmpSegmenter) and not hasattr(model.net.encoder, "features"):
        return model.net.encoder.model
    return None


def segmenter_from_config(cfg: TrainConfig, n_classes: int, with_class: bool, mask_channels: int = 1) -> nn.Module:
    """The segmentation model a run's settings describe (its decoder widths included), with a class head when
    `with_class` (multitask) and `mask_channels` mask outputs (see `create_segmenter`)."""
    if cfg.arch == "dsconv-resnet" and not with_class:
        raise ConfigError("dsconv-resnet only classifies: use it with --task multitask (or classify)")
    return create_segmenter(
        cfg.arch,
        n_classes=n_classes if with_class else None,
        encoder=cfg.model,
        weights=cfg.weights,
        dropout=cfg.dropout,
        mask_channels=mask_channels,
        decoder_channels=decoder_widths(cfg.decoder_channels, cfg.arch),
    )
