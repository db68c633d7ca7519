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


def test_class_dice_counts_an_image_without_the_class_as_1_where_nnunet_leaves_it_out() -> None:
    """The module's docstring example: class 2 on one image of four, missed there. Here each image without it in
    either mask scores 1 for it (class Dice 0.75); nnU-Net v2 leaves those images out of the class's mean (nanmean
    of Dice, nan where tp + fp + fn = 0), which is then 0."""
    true = np.zeros((4, 16, 16), np.uint8)
    true[:, 2:8, 2:8] = 1
    pred = np.zeros_like(true)
    pred[:, 3:8, 2:8] = 1  # class 1 found with Dice 60 / 66 on every image
    true[0, 10:14, 10:14] = 2
    counts = class_counts(pred, true, 2)
    m = class_metrics(counts, ["c1", "c2"], n_boot=0)
    assert m["per_class"]["c2"]["dice"]["value"] == 0.75
    assert np.isclose(m["class_dice"]["value"], (10 / 11 + 0.75) / 2)  # 0.830
    tp, fp, fn = (np.array([c[k] for c in counts], dtype=float) for k in ("tp", "fp", "fn"))  # (2, 4)
    with np.errstate(invalid="ignore"):
        nnunet = np.nanmean(np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan), axis=1).mean()
    assert np.isclose(nnunet, (10 / 11 + 0) / 2)  # 0.455
