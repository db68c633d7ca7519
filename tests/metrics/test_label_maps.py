"""Per-class metrics of label maps against an independent implementation (MONAI's one-hot Dice)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

from medcad.metrics.label_maps import class_counts, class_index_map, class_metrics


def test_class_dice_matches_monai_and_the_pixel_decision_is_hierarchical() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, (6, 16, 16)).astype(np.uint8)
    pred = np.where(rng.random(true.shape) < 0.7, true, rng.integers(0, 3, true.shape)).astype(np.uint8)
    m = class_metrics(class_counts(pred, true, 2), ["cyst", "stone"], n_boot=0)
    onehot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a).long(), 3).permute(0, 3, 1, 2)  # noqa: E731
    monai = compute_dice(onehot(pred), onehot(true), include_background=False, ignore_empty=False).numpy()  # (6, 2)
    for k, name in enumerate(["cyst", "stone"]):
        assert np.isclose(m["per_class"][name]["dice"]["value"], monai[:, k].mean())
    assert np.isclose(m["class_dice"]["value"], monai.mean())
    # lesion when 1 - P(background) reaches the threshold, then the likelier lesion class: P = (0.4, 0.35, 0.25)
    # is background by argmax but lesion here (0.6), of class 1
    lesion, classes = np.array([[0.6]]), np.array([[[0.35]], [[0.25]]])
    assert class_index_map(lesion, classes, 0.5)[0, 0] == 1 and class_index_map(lesion, classes, 0.7)[0, 0] == 0
