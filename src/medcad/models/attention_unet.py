"""AttentionNestedUNet: UNet++ whose nodes are residual conv blocks with CBAM attention (renal-tumour design).

UNet++ (Zhou et al. 2018) links encoder and decoder through nested dense skip paths: node X^{i,j} (row i =
depth, column j) convolves the concatenation of X^{i,0..j-1} and the upsampled X^{i+1,j-1}. Deep supervision
puts a 1x1 head on each full-resolution node X^{0,1..4}. Here every node is a residual block (two 3x3
conv-BN, ReLU, 1x1 projection shortcut) followed by CBAM (Woo et al. 2018): channel attention, then spatial
attention, whose last map each CBAM keeps so that reports can show where the network looks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CBAM(nn.Module):
    """Convolutional block attention: reweigh channels (shared MLP on avg- and max-pooled features), then
    positions (7x7 conv on the channel-wise mean and max maps).

    Args:
        channels: feature channels.
        reduction: channel reduction of the MLP (hidden width is at least 4).
        kernel_size: size of the spatial attention convolution.

    Attributes:
        last_spatial: the spatial attention map (B, 1, h, w) in [0, 1] of the last forward pass (detached, float),
            None before the first one.
    """

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.last_spatial: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        mx = F.adaptive_max_pool2d(x, 1)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        s = torch.sigmoid(self.spatial(maps))  # (B, 1, H, W)
        self.last_spatial = s.detach().float()
        return x * s


class ResidualCBAMBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, CBAM, plus a shortcut (1x1 conv-BN when the width changes), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, reduction: int = 8, body: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body or nn.Sequential(  # two 3x3 convs, unless a block of another kind gives its own
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.cbam = CBAM(out_ch, reduction)
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.cbam(self.body(x)) + self.shortcut(x))


class AttentionNestedUNet(nn.Module):
    """UNet++ of residual CBAM blocks with deep supervision, trained from scratch.

    Nodes live in `nodes` under the names "x{i}_{j}"; X^{4,0} (`nodes.x4_0`) is the bottleneck. Input sides
    must be multiples of 16 (four 2x poolings).

    Args:
        base: filters of row 0; rows 1-4 double it (16 gives 16, 32, 64, 128, 256).
        dropout: Dropout2d rate on the bottleneck.
        reduction: CBAM channel reduction.
        mask_channels: output channels: 1 (lesion logit) or background + lesion classes (softmax logits).

    Returns (forward):
        {"mask": logits (B, mask_channels, H, W) from X^{0,4}} plus, in training mode, "aux": the logits of
        X^{0,1..3}.
    """

    depth = 4

    def __init__(self, base: int = 16, dropout: float = 0.2, reduction: int = 8, mask_channels: int = 1) -> None:
        super().__init__()
        f = [base * 2**i for i in range(self.depth + 1)]
        self.out_channels = f
        nodes = {"x0_0": ResidualCBAMBlock(3, f[0], reduction)}
        for i in range(1, self.depth + 1):
            nodes[f"x{i}_0"] = ResidualCBAMBlock(f[i - 1], f[i], reduction)
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                nodes[f"x{i}_{j}"] = ResidualCBAMBlock(f[i] * j + f[i + 1], f[i], reduction)
        self.nodes = nn.ModuleDict(nodes)
        self.bottleneck_dropout = nn.Dropout2d(dropout)
        self.heads = nn.ModuleList(nn.Conv2d(f[0], mask_channels, 1) for _ in range(self.depth))

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Final mask logits (B, 1, H, W), deep-supervision logits of X^{0,1..3}, bottleneck X^{4,0}."""
        if not torch.jit.is_tracing() and (x.shape[-2] % 2**self.depth or x.shape[-1] % 2**self.depth):
            raise ValueError(f"{type(self).__name__} needs sides divisible by {2**self.depth}, got {tuple(x.shape)}")
        grid: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.nodes["x0_0"](x)}
        for i in range(1, self.depth + 1):
            grid[i, 0] = self.nodes[f"x{i}_0"](F.max_pool2d(grid[i - 1, 0], 2))
        grid[self.depth, 0] = self.bottleneck_dropout(grid[self.depth, 0])
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = F.interpolate(grid[i + 1, j - 1], scale_factor=2.0, mode="bilinear", align_corners=False)
                grid[i, j] = self.nodes[f"x{i}_{j}"](torch.cat([*(grid[i, k] for k in range(j)), up], dim=1))
        logits = [head(grid[0, j]) for j, head in enumerate(self.heads, start=1)]  # each (B, 1, H, W)
        return logits[-1], logits[:-1], grid[self.depth, 0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        mask, aux, _ = self.forward_parts(x)
        return {"mask": mask, "aux": aux} if self.training else {"mask": mask}


def attention_maps(model: nn.Module) -> list[torch.Tensor]:
    """The spatial attention maps (B, 1, h, w) in [0, 1] of every CBAM in `model` after a forward pass.

    Order: the encoder nodes X^{0,0}..X^{4,0}, then the decoder nodes column by column (X^{0,1}, ... X^{3,1},
    X^{0,2}, ... X^{0,4}): the last map is the full-resolution X^{0,4}, the one that feeds the final mask.
    Empty for models without CBAM or before the first forward pass.
    """
    return [m.last_spatial for m in model.modules() if isinstance(m, CBAM) and m.last_spatial is not None]
