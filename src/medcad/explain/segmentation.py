"""Where a segmentation model looked: CBAM spatial attention maps (AttentionNestedUNet) and Grad-CAM of the
predicted lesion (pytorch-grad-cam's SemanticSegmentationTarget)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medcad.data.transforms import Normalize


class _MaskLogits(nn.Module):
    """The lesion logit of a segmenter as a plain tensor (B, 1, H, W), for pytorch-grad-cam (label-map models: of
    any lesion class, `lesion_logits`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from medcad.models.segmentation import lesion_logits

        return lesion_logits(self.net(x)["mask"])


def explain_mask(
    model: nn.Module, normalize: Normalize, image: np.ndarray, layer: str | None = None, n_attention: int = 3
) -> list[tuple[np.ndarray, str]]:
    """Tiles (RGB uint8 at the image's size) with captions for one prepared uint8 image (S, S, 3): the image with
    the predicted outline, the last `n_attention` CBAM spatial attention maps (if the model has CBAM), and the
    Grad-CAM of the predicted lesion at `layer` (default: the last decoder stage)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from medcad.drawing import mask_overlay
    from medcad.explain.gradcam import overlay
    from medcad.models.attention_unet import attention_maps
    from medcad.models.segmentation import cam_target_name

    model = model.eval().float()
    x = normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float())
    with torch.no_grad():
        lesion = (_MaskLogits(model)(x)[0, 0] > 0).float().numpy()
    tiles = [(mask_overlay(image, lesion > 0), f"predicted lesion ({lesion.mean():.1%} of the image)")]
    maps = attention_maps(model)[-n_attention:]
    for j, amap in enumerate(maps):
        a = amap[0, 0].float().numpy()
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)  # the maps sit near 1: show their contrast
        tiles.append((overlay(image, a), f"CBAM spatial attention {j - len(maps)} (min-max)"))
    target = model.get_submodule(layer or cam_target_name(model, "mask"))
    with GradCAM(model=_MaskLogits(model), target_layers=[target]) as cam:
        heat = cam(input_tensor=x, targets=[SemanticSegmentationTarget(0, lesion)])[0]
    tiles.append((overlay(image, heat), "Grad-CAM of the predicted lesion"))
    return tiles
