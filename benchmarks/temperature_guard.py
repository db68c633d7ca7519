"""Temperature scaling with and without the evidence guard, on finished classification runs: for each fold, the test
Brier score and negative log-likelihood of its probabilities at T = 1, at the temperature fitted on its validation
part as training kept it before 2026-12-06 (1 where the fit reached a bound of its search), and at the guarded one
(`medcad.metrics.calibration.fit_temperature`: kept only where the validation part shows evidence against T = 1).
Reads each fold's result.json (validation and test probabilities, before scaling).

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/temperature_guard.py RUN [RUN ...] \\
        [--out benchmarks/results/temperature_guard.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from common import write_result

from medcad.metrics.calibration import apply_temperature, brier_rows, fit_temperature, temperature_evidence

BOUNDS = (0.05, 20)  # fit_temperature's search range


def fold_rows(run: Path) -> list[dict]:
    labels = json.loads((run / "metrics.json").read_text())["labels"]
    table = pd.read_csv(run / "manifest.csv", dtype=str, keep_default_na=False)
    index = {label: c for c, label in enumerate(labels)}
    out = []
    for result in sorted(run.glob("fold_*/result.json")):
        r = json.loads(result.read_text())
        if "val_probs" not in r or "test_probs" not in r:
            continue
        y_val = np.array([index[table["label"].iat[i]] for i in r["val_rows"]])
        y_test = np.array([index[table["label"].iat[i]] for i in r["test_rows"]])
        p_val = np.array(r["val_probs"]).reshape(-1, len(labels))
        p_test = np.array(r["test_probs"]).reshape(-1, len(labels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a temperature at its search bound: said by training, kept at 1 here
            fitted, evidence = temperature_evidence(y_val, p_val)
            guarded = fit_temperature(y_val, p_val)
        lo, hi = np.log(BOUNDS)
        if min(np.log(fitted) - lo, hi - np.log(fitted)) < 0.01 * (hi - lo):
            fitted = 1.0  # at a bound of the search: training kept T = 1 there before the guard too
        row = {
            "run": f"{run.parent.name}/{run.name}",
            "fold": result.parent.name,
            "n_val": len(y_val),
            "n_test": len(y_test),
        }
        row |= {"fitted_t": fitted, "evidence": evidence, "guarded_t": guarded}
        for name, t in (("one", 1.0), ("fitted", fitted), ("guarded", guarded)):
            q = apply_temperature(p_test, t)
            row[f"brier_{name}"] = float(brier_rows(y_test, q).mean())
            row[f"nll_{name}"] = float(-np.log(np.clip(q[np.arange(len(y_test)), y_test], 1e-12, 1)).mean())
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", default="benchmarks/results/temperature_guard.json")
    args = ap.parse_args()
    rows = [row for run in args.runs for row in fold_rows(run)]
    d = pd.DataFrame(rows)
    summary = {
        m: {
            **{f"mean_{v}": float(d[f"{m}_{v}"].mean()) for v in ("one", "fitted", "guarded")},
            "fitted_better_than_one": int((d[f"{m}_fitted"] < d[f"{m}_one"]).sum()),
            "guarded_better_than_fitted": int((d[f"{m}_guarded"] < d[f"{m}_fitted"] - 1e-12).sum()),
            "guarded_worse_than_fitted": int((d[f"{m}_guarded"] > d[f"{m}_fitted"] + 1e-12).sum()),
        }
        for m in ("brier", "nll")
    }
    print(d.round(4).to_string())
    print(json.dumps(summary, indent=1))
    write_result(args.out, {"folds": len(d), "summary": summary, "per_fold": rows})


if __name__ == "__main__":
    main()
