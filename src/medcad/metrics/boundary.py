"""Boundary metrics of binary masks: the 95th-percentile Hausdorff distance (HD95) and the normalised surface
distance (NSD, "surface Dice"), both from one pass of MONAI's edge distances, with their set summaries.

HD95 says how far the worst part of a boundary strays; NSD says which share of both boundaries lies within a
tolerance of the other (Nikolov et al. 2021, "Clinically applicable segmentation of head and neck anatomy for
radiotherapy", arXiv:1809.04430; Metrics Reloaded, Maier-Hein et al. 2024, recommends it beside Dice where the
boundary matters). Endoscopy and ultrasound frames carry no pixel spacing in mm and come in many sizes, so the
tolerance is a share of each image's diagonal (`NSD_TOLERANCE`), as HD95 is normalised beside its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcad.metrics.stats import weighted_bootstrap

NSD_TOLERANCE = 1.0  # NSD's tolerance, % of the image's diagonal (about 7 px on a 560 x 470 px ultrasound frame)


def nsd_tolerance_px(height: int, width: int, tolerance: float = NSD_TOLERANCE) -> float:
    """NSD's tolerance in pixels of an image of `height` x `width` px: `tolerance` % of its diagonal.

    Raises:
        ValueError: `tolerance` is not a number above 0 and at most 100."""
    if not 0 < tolerance <= 100:  # nan fails too
        raise ValueError(f"NSD tolerance {tolerance!r}: give a share of the image's diagonal above 0 and at most 100 %")
    return tolerance / 100 * float(np.hypot(height, width))


def boundary_scores(pred: np.ndarray, true: np.ndarray, tolerance_px: float) -> tuple[float, float]:
    """HD95 and NSD between two binary masks (H, W), from the edge distances of MONAI's
    `get_edge_surface_distance` (both ways, euclidean, in pixels); they equal MONAI's
    `compute_hausdorff_distance(percentile=95)` and `compute_surface_dice([tolerance_px])`.

    Args:
        pred, true: (H, W) masks of one size.
        tolerance_px: NSD's tolerance in pixels (`nsd_tolerance_px`).

    Returns:
        (HD95 in pixels, NSD in [0, 1]). Both masks empty: (nan, nan), no boundary: not scored, as MONAI leaves such a
        pair out of its means. One mask empty: (inf, 0.0): a lesion missed or drawn where there is none; no distance
        measures it (HD95 counts it, never averages it) and none of either boundary lies near the other (NSD 0).

    Raises:
        ValueError: the masks differ in shape or are not 2-D.
    """
    import warnings

    import torch
    from monai.metrics.utils import get_edge_surface_distance

    p, t = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"pred {p.shape} and true {t.shape} must be (H, W) masks of one size")
    if not p.any() or not t.any():
        return (float("nan"), float("nan")) if not p.any() and not t.any() else (float("inf"), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, (d_pt, d_tp), _ = get_edge_surface_distance(torch.from_numpy(p), torch.from_numpy(t), symmetric=True)
    # compared in the distances' own dtype, as MONAI compares them (a distance of exactly the tolerance is within it)
    hd95 = max(torch.quantile(d_pt, 0.95).item(), torch.quantile(d_tp, 0.95).item())
    within = (d_pt <= tolerance_px).sum().item() + (d_tp <= tolerance_px).sum().item()
    return float(hd95), float(within / (len(d_pt) + len(d_tp)))


def _mean_ci(values: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of `values` with its (cluster) bootstrap CI, and the median."""
    stats = weighted_bootstrap(
        lambda w: {"mean": (w @ values) / w.sum(axis=1)}, len(values), groups=groups, n_boot=n_boot, seed=seed
    )
    return {"mean": stats["mean"], "median": float(np.median(values))}


_NO_MEAN = {"mean": {"value": float("nan"), "ci95": [float("nan")] * 2}, "median": float("nan")}


def hd95_summary(
    values: np.ndarray, *, groups: Sequence[Any] | np.ndarray | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean HD95 with a (cluster) bootstrap CI and the median, over the images where it is defined (a lesion in both
    masks), as MONAI's `HausdorffDistanceMetric(reduction="mean")` averages.

    Args:
        values: HD95 per image (`boundary_scores`): finite, inf (one mask empty) or nan (both empty).

    Returns:
        {mean: {value, ci95}, median, n_defined, n_undefined (one mask empty, the other not), n_both_empty (no
        lesion in either: not scored), unit}.
    """
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    out: dict[str, Any] = {
        "n_defined": int(ok.sum()),
        "n_undefined": int(np.isinf(v).sum()),
        "n_both_empty": int(np.isnan(v).sum()),
        "unit": "pixels",
    }
    return out | _mean_ci_over(v, ok, groups, n_boot, seed)


def _mean_ci_over(v: np.ndarray, ok: np.ndarray, groups, n_boot: int, seed: int) -> dict[str, Any]:
    """`_mean_ci` of the values `ok` selects (with their groups), or `_NO_MEAN` where it selects none."""
    if not ok.any():
        return _NO_MEAN
    return _mean_ci(v[ok], None if groups is None else np.asarray(groups)[ok], n_boot, seed)


def hd95_normalised_summary(
    values: np.ndarray,
    hw: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """`hd95_summary` of HD95 as % of each image's diagonal (`hw`: (N, 2) height and width in pixels), or None where
    every image has one size (pixels compare then; a 10 px error on a 1920 px frame and on a 332 px one do not)."""
    hw = np.asarray(hw, dtype=float)
    if len(np.unique(hw, axis=0)) < 2:
        return None
    share = 100 * np.asarray(values, dtype=float) / np.hypot(hw[:, 0], hw[:, 1])
    return hd95_summary(share, groups=groups, n_boot=n_boot, seed=seed) | {"unit": "% of the image diagonal"}


def nsd_summary(
    values: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    tolerance: float = NSD_TOLERANCE,
    tolerance_px: tuple[float, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean NSD with a (cluster) bootstrap CI and the median, over the images with a lesion in either mask (a missed
    or a false lesion scores 0), as MONAI's `SurfaceDiceMetric(reduction="mean")` averages.

    Args:
        values: NSD per image (`boundary_scores`), nan where both masks are empty.
        tolerance: the tolerance, % of each image's diagonal.
        tolerance_px: the smallest and largest tolerance in pixels over the images, to say what it was.

    Returns:
        {mean: {value, ci95}, median, n_scored, n_both_empty (not scored), tolerance_pct_diagonal,
        tolerance_px: [lo, hi], tolerance: the two in words}.
    """
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v)
    out: dict[str, Any] = {"n_scored": int(ok.sum()), "n_both_empty": int((~ok).sum())}
    out["tolerance_pct_diagonal"] = tolerance
    out["tolerance"] = f"{tolerance:g} % of each image's diagonal"
    if tolerance_px is not None:
        lo, hi = (round(float(x), 2) for x in tolerance_px)
        out["tolerance_px"] = [lo, hi]
        out["tolerance"] += f" ({lo:.1f} px)" if f"{lo:.1f}" == f"{hi:.1f}" else f" ({lo:.1f} to {hi:.1f} px)"
    return out | _mean_ci_over(v, ok, groups, n_boot, seed)


def nsd_summaries(
    values: np.ndarray,
    lesion: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    tolerance: float = NSD_TOLERANCE,
    tolerance_px: np.ndarray | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """`nsd_summary` of a set and of its lesion images: {"nsd": over the images with a lesion in either mask,
    "nsd_lesion": over those with one in the truth, where there are any (as dice_lesion beside dice)}.

    Args:
        values: (N,) NSD per image (`boundary_scores`).
        lesion: (N,) bool, a lesion in the image's true mask.
        groups, tolerance, n_boot: as `nsd_summary`.
        tolerance_px: (N,) each image's tolerance in pixels (`nsd_tolerance_px`), said as each part's range.
    """
    v, lesion = np.asarray(values, dtype=float), np.asarray(lesion, dtype=bool)
    g = None if groups is None else np.asarray(groups)
    px = None if tolerance_px is None else np.asarray(tolerance_px, dtype=float)

    def part(rows: np.ndarray) -> dict[str, Any]:
        said = None if px is None or not rows.any() else (px[rows].min(), px[rows].max())
        sub = None if g is None else g[rows]
        return nsd_summary(v[rows], groups=sub, tolerance=tolerance, tolerance_px=said, n_boot=n_boot)

    out = {"nsd": part(np.ones(len(v), dtype=bool))}
    if lesion.any():
        out["nsd_lesion"] = part(lesion)
    return out
