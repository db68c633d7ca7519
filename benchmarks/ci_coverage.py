"""Coverage of 95 % AUC intervals and size of paired AUC tests when images are clustered by patient (seeded).

Each simulated study has `--patients` patients (half with the finding), `--images` images per patient. An image's
score is  mu * y + u_patient + e_image  with u ~ N(0, sd_patient^2), e ~ N(0, sd_image^2): frames of one patient
share most of their score, as video frames do. The true AUC (a new positive image against a new negative image of
other patients) is  Phi(mu / sqrt(2 (sd_patient^2 + sd_image^2))).

Coverage: how often the 95 % CI holds the true AUC — cluster bootstrap over patients (medcad's default), bootstrap
of images, and DeLong (image level). Size: two models of equal true AUC whose patient effects are partly their own
(correlation `--rho`); how often each paired test rejects at 0.05 (should be 5 %).

    .venv/bin/python benchmarks/ci_coverage.py [--reps 500] [--n-boot 1000]   (writes results/ci_coverage.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from common import write_result
from scipy.stats import norm

from medcad.metrics.compare import paired_auc_bootstrap
from medcad.metrics.roc import delong_ci, delong_test, weighted_auc
from medcad.metrics.stats import bootstrap_weights, percentile_ci, resampled_units

HERE = Path(__file__).resolve().parent


def simulate(rng: np.random.Generator, args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    """Labels (N,), scores of two models (N,) each, patient id (N,)."""
    g = np.repeat(np.arange(args.patients), args.images)
    y_p = np.zeros(args.patients, dtype=int)
    y_p[: args.patients // 2] = 1
    y = y_p[g]
    shared = rng.normal(size=args.patients)
    own_a, own_b = rng.normal(size=args.patients), rng.normal(size=args.patients)
    u_a = args.sd_patient * (np.sqrt(args.rho) * shared + np.sqrt(1 - args.rho) * own_a)
    u_b = args.sd_patient * (np.sqrt(args.rho) * shared + np.sqrt(1 - args.rho) * own_b)
    a = args.mu * y + u_a[g] + args.sd_image * rng.normal(size=len(g))
    b = args.mu * y + u_b[g] + args.sd_image * rng.normal(size=len(g))
    return y, a, b, g


def bootstrap_auc_ci(y: np.ndarray, s: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int):
    """As medcad's metrics give it: the percentile interval expanded for the units resampled (`percentile_ci`)."""
    samples = [weighted_auc(y, s, w) for w in bootstrap_weights(len(y), n_boot, seed, groups)]
    return percentile_ci(np.concatenate(samples), units=resampled_units(groups, len(y)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--mu", type=float, default=1.5)
    ap.add_argument("--sd-patient", type=float, default=1.0)
    ap.add_argument("--sd-image", type=float, default=0.4)
    ap.add_argument("--rho", type=float, default=0.5, help="correlation of the two models' patient effects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ci_coverage.json")
    args = ap.parse_args()
    true_auc = float(norm.cdf(args.mu / np.sqrt(2 * (args.sd_patient**2 + args.sd_image**2))))
    rng = np.random.default_rng(args.seed)
    hits = {"cluster_bootstrap": [], "image_bootstrap": [], "delong_image_level": []}
    widths = {k: [] for k in hits}
    reject = {"paired_cluster_bootstrap": [], "delong_image_level": []}
    t0 = time.perf_counter()
    for r in range(args.reps):
        y, a, b, g = simulate(rng, args)
        cis = {
            "cluster_bootstrap": bootstrap_auc_ci(y, a, g, args.n_boot, r),
            "image_bootstrap": bootstrap_auc_ci(y, a, None, args.n_boot, r),
            "delong_image_level": delong_ci(y, a),
        }
        for k, (lo, hi) in cis.items():
            hits[k].append(lo <= true_auc <= hi)
            widths[k].append(hi - lo)
        reject["paired_cluster_bootstrap"].append(
            paired_auc_bootstrap(y, a, b, groups=g, n_boot=args.n_boot, seed=r)["p_value"] < 0.05
        )
        reject["delong_image_level"].append(delong_test(y, a, b)["p_value"] < 0.05)
    seconds = time.perf_counter() - t0

    def share(v: list[bool]) -> dict:
        p = float(np.mean(v))
        return {"rate": p, "mc_se": float(np.sqrt(p * (1 - p) / len(v)))}

    result = {
        "benchmark": "ci_coverage",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "true_auc": true_auc,
        "icc_of_scores": args.sd_patient**2 / (args.sd_patient**2 + args.sd_image**2),
        "coverage_95": {k: share(v) for k, v in hits.items()},
        "mean_ci_width": {k: float(np.mean(v)) for k, v in widths.items()},
        "paired_test_size_at_0.05": {k: share(v) for k, v in reject.items()},
        "seconds": seconds,
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("true_auc", "coverage_95", "mean_ci_width", "paired_test_size_at_0.05")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
