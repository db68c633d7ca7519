"""Image classifier = timm backbone (pooled features of its last conv block) + head; stage-wise freezing by timm
parameter groups. The head's input width comes from one place, `backbones.feature_width` (VGG16: 512, its fc6/fc7
removed by `create_backbone`; ResNet50 and InceptionV3: 2048; EfficientNet-B0/Lite, MobileNetV2: 1280)."""

from __future__ import annotations

import torch
from torch import nn

from medcad.errors import ConfigError
from medcad.models.backbones import create_backbone, feature_width

HEADS = ("linear", "mlp")


def make_head(kind: str, in_features: int, n_classes: int, dropout: float = 0.2) -> nn.Sequential:
    """`linear`: dropout + linear. `mlp`: the urinary study's head, features -> 2048 -> 1024 -> n (ReLU, dropout)."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(2048, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, n_classes),
        )
    raise ConfigError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


class Classifier(nn.Module):
    """Backbone + head. `forward` takes normalised float images (B, 3, H, W) and returns logits (B, n); the head sits
    on the backbone's pooled conv features (B, feature_width)."""

    def __init__(
        self, backbone: str, n_classes: int, *, head: str = "linear", weights: str = "auto", dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, weights)
        self.head = make_head(head, feature_width(self.backbone), n_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, n)


def parameter_groups(backbone: nn.Module) -> list[list[str]]:
    """Backbone parameter names in timm's coarse groups, from the stem to the last stage."""
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def freeze_backbone(model: Classifier, train_last_groups: int = 0) -> list[str]:
    """Freeze the backbone except its last `train_last_groups` parameter groups; returns the trainable names.

    BatchNorm layers of the backbone stay in eval mode (their running statistics frozen) whatever the stage:
    with small CPU batches, updating them hurts more than it helps. Call `backbones.set_bn_eval` after `model.train()`.
    """
    groups = parameter_groups(model.backbone)
    trainable = {n for g in groups[len(groups) - train_last_groups :] for n in g} if train_last_groups else set()
    for name, p in model.backbone.named_parameters():
        p.requires_grad = name in trainable
    return sorted(trainable)
