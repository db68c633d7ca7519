"""Where a detector looked: EigenCAM of its backbone (pytorch-grad-cam), which needs no box target."""

from __future__ import annotations

import numpy as np
import torch


class _Detections(torch.nn.Module):
    """A detector taking a batched tensor, for pytorch-grad-cam (which calls model(x))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(list(x))


def eigencam(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """EigenCAM heat-map (S, S) in [0, 1] of the detector's backbone for a prepared uint8 image (S, S, 3): the first
    principal component of the deepest feature maps, which needs no box target and works on any detector."""
    from pytorch_grad_cam import EigenCAM

    from medcad.models.detection import cam_target_layers

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    with EigenCAM(_Detections(model.eval()), target_layers=cam_target_layers(model)[-1:]) as cam:
        # EigenCAM uses no gradient, so the target is never evaluated; it only has to be given (the detector's
        # list-of-dicts output has no class scores to argmax over)
        return cam(input_tensor=x, targets=[lambda output: 0], eigen_smooth=False)[0]
