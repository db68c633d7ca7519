"""Where a segmentation model looked: CBAM spatial attention maps (AttentionNestedUNet), Grad-CAM of the predicted
lesion (pytorch-grad-cam's SemanticSegmentationTarget) and, for a model with a class head (multitask), Grad-CAM of
one class of that head."""

from __future__ import annotations

import cv2
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


class _ClassLogits(nn.Module):
    """The class head's logits (B, K) of a multitask model, for pytorch-grad-cam."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["class"]


def explain_mask(
    model: nn.Module,
    normalize: Normalize,
    image: np.ndarray,
    shown: np.ndarray,
    *,
    hflip: bool = False,
    threshold: float = 0.5,
    layer: str | None = None,
    class_index: tuple[int, str] | None = None,
    n_attention: int = 3,
    size: tuple[int, int] | None = None,
) -> list[tuple[np.ndarray, str]]:
    """Tiles with short captions for one model on one image: the predicted outline, the last `n_attention` CBAM
    spatial attention maps (if the model has CBAM), the Grad-CAM of the predicted lesion at `layer` (default: the
    last decoder stage) and, with `class_index` (index, name), the Grad-CAM of that class of the class head at its
    deepest feature map.

    Args:
        image: the prepared model input, uint8 (S, S, 3).
        shown: the picture to draw on, uint8 (H, W, 3): the image at its own aspect; every map (S x S) is resized
            to it bilinearly, as predict resizes the mask, and the outline is the resized lesion probability at
            `threshold`.
        hflip: average the lesion probability over the image and its mirror, as the predictor does (TTA).
        size: the image's own (H, W), at which the lesion's share is measured, as predict measures it (default:
            `shown`'s; a picture shrunk for showing gave a share 0.1 % off predict's).

    Returns:
        [(tile uint8 (H, W, 3), caption)]; the first caption gives the lesion's share of the image at `threshold`.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

    from medcad.drawing import mask_overlay
    from medcad.explain.gradcam import overlay
    from medcad.models.attention_unet import attention_maps
    from medcad.models.predict import mask_outputs
    from medcad.models.segmentation import cam_target_name

    h, w = shown.shape[:2]
    model = model.eval().float()
    x = normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float())
    with torch.no_grad():
        prob = mask_outputs(model, x, hflip)["mask"][0].numpy()
        _MaskLogits(model)(x)  # the attention maps of the image itself (not its mirror)
    maps = attention_maps(model)[-n_attention:]

    def above_at(hw: tuple[int, int]) -> np.ndarray:  # lesion pixels at (H, W), as predict resizes the mask
        return cv2.resize(prob.astype(np.float32), hw[::-1], interpolation=cv2.INTER_LINEAR) >= threshold

    above = above_at((h, w))
    share = above if size in (None, (h, w)) else above_at(size)
    tiles = [(mask_overlay(shown, above), f"lesion {share.mean():.1%}")]
    for j, amap in enumerate(maps):
        a = amap[0, 0].float().numpy()
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)  # the maps sit near 1: show their contrast
        tiles.append((overlay(shown, a), f"attention {j - len(maps)}"))
    target = model.get_submodule(layer or cam_target_name(model, "mask"))
    with GradCAM(model=_MaskLogits(model), target_layers=[target]) as cam:
        lesion = (prob >= threshold).astype(np.float32)
        heat = cam(input_tensor=x, targets=[SemanticSegmentationTarget(0, lesion)])[0]
    tiles.append((overlay(shown, heat), "Grad-CAM lesion"))
    if class_index is not None:
        c, name = class_index
        target = model.get_submodule(cam_target_name(model, "class"))
        with GradCAM(model=_ClassLogits(model), target_layers=[target]) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        tiles.append((overlay(shown, heat), f"Grad-CAM {name}"))
    return tiles
