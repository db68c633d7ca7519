"""The renal-tumour design's joint network (`renal-joint`) and its from-scratch U-Net baselines.

`renal-joint` (RenalJointNet) is one network for the lesion mask and the benign/malignant class, the design's two
contributions joined:
- the mask: DSAttentionNestedUNet, the attention UNet++ of `attention-unetpp` (residual blocks, CBAM, deep
  supervision) whose blocks convolve depthwise-separably (depthwise 3x3 + pointwise 1x1 for each 3x3 conv);
- the class: DSConvResNet on the segmented lesion region: the image gated by the predicted lesion probability,
  widened by a margin (max pooling over about 1/16 of the side) so that the lesion's border and what lies just
  behind it (margins, posterior shadowing) stay visible. A full-image soft gate (not a crop of the lesion's box)
  keeps the lesion's size, lets an empty mask say "no lesion", and exports to ONNX with fixed shapes.
BCE + Dice and cross-entropy train both halves in one loss and step, the classifier always on the current mask. The
gate is differentiable, but passes only `gate_grad` (default 0) of the class loss's gradient on to the mask: its
per-pixel share dwarfs that of BCE + Dice (averaged over pixels). On BUSI (64 px, 6 epochs, holdout validation part)
gate_grad 1 collapsed the mask to nearly all-lesion (validation Dice 0.13), 0.01 gave Dice 0.487 / macro AUC 0.734,
0 gave 0.503 / 0.750.

Baselines that train from scratch: `unet-scratch` (UNet, the original 4-level U-Net, 64-1024 filters, with BN
and padded convs as in common re-implementations) and `stunet-s` (STUNet, a 2D STU-Net-S-like model: residual
blocks, instance norm, stride-2 downsampling, nearest-upsampling + 1x1 conv, deep supervision; STU-Net's own
weights are 3D CT weights, not usable here). Parameters (mask only; `renal-joint` at 3 classes): renal-joint
0.65 M (UNet++ 0.46 M + classifier 0.19 M), unet-scratch 31.04 M, stunet-s 5.12 M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcad.models.attention_unet import AttentionNestedUNet, ResidualCBAMBlock
from medcad.models.blocks import DSConv, DSConvResNet, JointSegClassifier

__all__ = ["RENAL_ARCHS", "DSAttentionNestedUNet", "RenalJointNet", "STUNet", "UNet", "create_renal_model"]

RENAL_ARCHS = ("renal-joint", "unet-scratch", "stunet-s")
GATE_GRAD = 0.0  # RenalJointNet's default gate_grad (see its docstring and the module's)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True))


def _check_sides(model: nn.Module, x: torch.Tensor, multiple: int) -> None:
    if not torch.jit.is_tracing() and (x.shape[-2] % multiple or x.shape[-1] % multiple):
        raise ValueError(f"{type(model).__name__} needs sides divisible by {multiple}, got {tuple(x.shape)}")


class DSResidualCBAMBlock(ResidualCBAMBlock):
    """ResidualCBAMBlock with a depthwise-separable conv in place of each 3x3 conv (the first a full 3x3 conv when
    `full_first`): CBAM, the shortcut and the names of the parameters stay the block's."""

    def __init__(self, in_ch: int, out_ch: int, reduction: int = 8, full_first: bool = False) -> None:
        first = _conv_bn_relu(in_ch, out_ch) if full_first else DSConv(in_ch, out_ch)
        super().__init__(in_ch, out_ch, reduction, body=nn.Sequential(first, DSConv(out_ch, out_ch, act=False)))


class DSAttentionNestedUNet(AttentionNestedUNet):
    """AttentionNestedUNet (same nodes, names, deep supervision and outputs) of DSResidualCBAMBlock nodes.

    X^{0,0} opens with a full 3x3 conv, as MobileNets' stems do: a depthwise conv on the 3 input channels learns
    little. At base 16: 0.46 M parameters, against 2.46 M with full 3x3 convs.
    """

    def __init__(self, base: int = 16, dropout: float = 0.2, reduction: int = 8) -> None:
        super().__init__(base, dropout, reduction)
        f, d = self.out_channels, self.depth
        nodes = {"x0_0": DSResidualCBAMBlock(3, f[0], reduction, full_first=True)}
        for i in range(1, d + 1):
            nodes[f"x{i}_0"] = DSResidualCBAMBlock(f[i - 1], f[i], reduction)
        for j in range(1, d + 1):
            for i in range(d + 1 - j):
                nodes[f"x{i}_{j}"] = DSResidualCBAMBlock(f[i] * j + f[i + 1], f[i], reduction)
        self.nodes = nn.ModuleDict(nodes)  # replaces the full-conv nodes, in the same order


class RenalJointNet(nn.Module):
    """DSAttentionNestedUNet for the mask and DSConvResNet on the lesion-gated image for the class.

    Args:
        n_classes: number of classes.
        base: filters of the UNet++'s row 0.
        width: channels of the classifier's stem.
        dropout: Dropout2d on the UNet++ bottleneck and dropout before the classifier's linear layer.
        margin: the gate's margin as a fraction of the image side (max pooling of the lesion probability).
        gate_grad: the share of the class loss's gradient that reaches the mask through the gate (0: none, the mask
            learns from BCE + Dice alone; 1: all of it).

    Returns (forward):
        {"mask": logits (B, 1, H, W), "class": logits (B, n_classes)} plus, in training mode, "aux": the
        deep-supervision logits.
    """

    def __init__(
        self,
        n_classes: int,
        base: int = 16,
        width: int = 32,
        dropout: float = 0.2,
        margin: float = 1 / 16,
        gate_grad: float = GATE_GRAD,
    ) -> None:
        super().__init__()
        self.segmenter = DSAttentionNestedUNet(base, dropout)
        self.classifier = DSConvResNet(n_classes, width=width, dropout=dropout)
        self.out_channels = self.segmenter.out_channels
        self.margin, self.gate_grad = margin, gate_grad

    def lesion_gate(self, mask: torch.Tensor) -> torch.Tensor:
        """The predicted lesion probability (B, 1, H, W) widened by the margin (odd max-pooling window)."""
        p = torch.sigmoid(mask)
        if torch.is_grad_enabled() and self.gate_grad != 1.0:  # the forward value stays p; its gradient is scaled
            p = p.detach() if self.gate_grad == 0 else p.detach() + self.gate_grad * (p - p.detach())
        k = 2 * int(self.margin * int(mask.shape[-1]) / 2) + 1  # a constant for a given size: exports to ONNX
        return F.max_pool2d(p, k, stride=1, padding=k // 2) if k > 1 else p

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        mask, aux, _ = self.segmenter.forward_parts(x)  # (B, 1, H, W), 3 x (B, 1, H, W)
        gated = x * self.lesion_gate(mask).to(x.dtype)  # (B, 3, H, W): normalised image, 0 (the mean) outside
        out = {"mask": mask, "class": self.classifier(gated)["class"]}
        if self.training:
            out["aux"] = aux
        return out

    def cam_target(self, output: str = "class") -> str:
        """Grad-CAM layer: the last full-resolution UNet++ node for the mask, the classifier's last stage else."""
        if output == "mask":
            return f"segmenter.nodes.x0_{self.segmenter.depth}"
        return f"classifier.stages.{len(self.classifier.stages) - 1}"


class UNet(nn.Module):
    """The original U-Net (Ronneberger et al. 2015): 4 poolings, double 3x3 convs of 64..1024 filters, 2x2
    transposed-conv upsampling, skip concatenation; with BN and padding (output size = input size). From scratch.

    Args:
        base: filters of the first level.
        dropout: Dropout2d on the bottleneck (the original dropped out at the end of the contracting path).
    """

    depth = 4

    def __init__(self, base: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        f = [base * 2**i for i in range(self.depth + 1)]
        self.out_channels = f
        self.down = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(c_in, c), _conv_bn_relu(c, c)) for c_in, c in zip([3, *f[:-1]], f, strict=True)
        )
        self.bottleneck_dropout = nn.Dropout2d(dropout)
        levels = list(reversed(range(self.depth)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2) for i in levels)
        self.dec = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(2 * f[i], f[i]), _conv_bn_relu(f[i], f[i])) for i in levels
        )
        self.head = nn.Conv2d(f[0], 1, 1)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Mask logits (B, 1, H, W), no deep-supervision outputs, and the bottleneck (B, 16 base, H/16, W/16)."""
        _check_sides(self, x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        deepest = x = self.bottleneck_dropout(skips.pop())
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x), [], deepest

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.forward_parts(x)[0]}

    def cam_target(self, output: str = "class") -> str:
        return f"dec.{self.depth - 1}" if output == "mask" else f"down.{self.depth}"


class _ResBlock(nn.Module):
    """STU-Net's residual block: conv3x3 (stride s)-IN-LeakyReLU, conv3x3-IN, shortcut (1x1 conv-IN when the shape
    changes), LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
            nn.InstanceNorm2d(out_ch, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(out_ch, affine=True),
        )
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.InstanceNorm2d(out_ch, affine=True))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), 0.01)


class STUNet(nn.Module):
    """A 2D STU-Net-S-like U-Net (Huang et al. 2023): residual stages of 16..256 filters, each after the first
    downsampling by a stride-2 block; decoder upsampling by nearest interpolation + 1x1 conv; deep supervision on
    the 1/8, 1/4 and 1/2 decoder outputs (upsampled logits). Sides must be multiples of 32. From scratch.

    Args:
        widths: filters per stage.
        blocks: residual blocks per stage.
        dropout: Dropout2d on the bottleneck.
    """

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64, 128, 256, 256), blocks: int = 1, dropout: float = 0.2
    ) -> None:
        super().__init__()
        w = list(widths)
        self.out_channels = w
        self.enc = nn.ModuleList(
            nn.Sequential(_ResBlock(c_in, c, 1 if i == 0 else 2), *(_ResBlock(c, c) for _ in range(blocks - 1)))
            for i, (c_in, c) in enumerate(zip([3, *w[:-1]], w, strict=True))
        )
        self.bottleneck_dropout = nn.Dropout2d(dropout)
        levels = list(reversed(range(len(w) - 1)))
        self.up = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1) for i in levels)
        self.dec = nn.ModuleList(_ResBlock(2 * w[i], w[i]) for i in levels)
        self.heads = nn.ModuleList(nn.Conv2d(w[i], 1, 1) for i in levels[-4:])  # 1/8, 1/4, 1/2, full size

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Mask logits (B, 1, H, W), the deep-supervision logits upsampled to (B, 1, H, W), the bottleneck."""
        _check_sides(self, x, 2 ** (len(self.enc) - 1))
        size = x.shape[-2:]
        skips = []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
        deepest = x = self.bottleneck_dropout(skips.pop())
        outs = []
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(F.interpolate(x, scale_factor=2.0, mode="nearest"))], dim=1))
            outs.append(x)
        logits = [head(o) for head, o in zip(self.heads, outs[-len(self.heads) :], strict=True)]
        aux = [F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in logits[:-1]]
        return logits[-1], aux, deepest

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        mask, aux, _ = self.forward_parts(x)
        return {"mask": mask, "aux": aux} if self.training else {"mask": mask}

    def cam_target(self, output: str = "class") -> str:
        return f"dec.{len(self.dec) - 1}" if output == "mask" else f"enc.{len(self.enc) - 1}"


def create_renal_model(arch: str, n_classes: int | None, dropout: float = 0.2) -> nn.Module:
    """One of `RENAL_ARCHS`, mask-only when `n_classes` is None. "renal-joint" without classes is its
    DSAttentionNestedUNet alone; "unet-scratch" and "stunet-s" with classes get JointSegClassifier's head."""
    if arch == "renal-joint":
        return (
            DSAttentionNestedUNet(dropout=dropout) if n_classes is None else RenalJointNet(n_classes, dropout=dropout)
        )
    seg = UNet(dropout=dropout) if arch == "unet-scratch" else STUNet(dropout=dropout)
    return seg if n_classes is None else JointSegClassifier(seg, n_classes, dropout)
