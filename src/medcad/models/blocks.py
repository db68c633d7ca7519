"""Blocks shared by the segmentation and renal networks: the joint class head that pools a segmenter's deepest
features over the predicted lesion, and the depthwise-separable convolution blocks of the renal design's DSConv-ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DSConv", "DSConvResNet", "DSResBlock", "JointSegClassifier"]


class JointSegClassifier(nn.Module):
    """A segmenter plus a class head on its deepest features, pooled globally and over the predicted lesion.

    The lesion weights are the detached mask probabilities resized to the feature map: the class loss shapes
    the shared features but not the mask, which its own loss trains.

    Args:
        segmenter: a module with `forward_parts(x) -> (mask, aux, deepest features)` and `out_channels`.
        n_classes: number of classes.
        dropout: dropout before the linear layer.
    """

    def __init__(self, segmenter: nn.Module, n_classes: int, dropout: float = 0.2, eps: float = 1e-6) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.eps = eps
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * segmenter.out_channels[-1], n_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        mask, aux, feats = self.segmenter.forward_parts(x)
        feats = feats.float()  # (B, C, h, w); pooled sums in float32 also under bf16 autocast
        m = torch.sigmoid(mask.detach().float())  # (B, 1, H, W)
        k = int(m.shape[-1]) // int(feats.shape[-1])  # a constant: the graph exports to ONNX
        if k * int(feats.shape[-1]) == int(m.shape[-1]) and k * int(feats.shape[-2]) == int(m.shape[-2]):
            m = F.avg_pool2d(m, kernel_size=k, stride=k)  # (B, 1, h, w), the same as adaptive pooling here
        else:
            m = F.adaptive_avg_pool2d(m, feats.shape[-2:])
        pooled = feats.mean(dim=(2, 3))
        lesion = (feats * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + self.eps)
        out = {"mask": mask, "class": self.head(torch.cat([pooled, lesion], dim=1))}
        if self.training and aux:
            out["aux"] = aux
        return out


class DSConv(nn.Sequential):
    """Depthwise 3x3 (stride s) + BN + ReLU, pointwise 1x1 + BN, then ReLU when `act`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            *([nn.ReLU(inplace=True)] if act else []),
        )


class DSResBlock(nn.Module):
    """Two depthwise-separable convs with a residual shortcut (1x1 conv-BN when shape changes), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(DSConv(in_ch, out_ch, stride), DSConv(out_ch, out_ch, act=False))
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DSConvResNet(nn.Module):
    """Small classifier of depthwise-separable residual blocks: the classification-only arm of the renal design.

    A stride-2 3x3 stem, then `depth` stages of one stride-2 DSResBlock each doubling the width, global average
    pooling, dropout and a linear layer. Trained from scratch; returns {"class": logits (B, n_classes)}.

    Args:
        n_classes: number of classes.
        width: channels after the stem (and of the first stage).
        depth: number of stages.
        dropout: dropout before the linear layer.
    """

    def __init__(self, n_classes: int, width: int = 32, depth: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        widths = [width * 2**i for i in range(depth)]
        self.stages = nn.Sequential(
            *(DSResBlock(c_in, c_out, 2) for c_in, c_out in zip([width, *widths[:-1]], widths, strict=True))
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], n_classes)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class": self.head(self.stages(self.stem(x)))}
