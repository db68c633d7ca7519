"""Flip test-time augmentation measured on finished runs, without retraining: each fold's model predicts its own test
images once as they are and once averaged with their mirror; out-of-fold figures side by side.

    .venv/bin/python benchmarks/tta_check.py RUN [RUN ...]

Mask runs (segment, multitask): mean per-image Dice at the training size (and accuracy with a class head);
classification runs: accuracy and macro AUC (one vs rest). Appends to benchmarks/results/tta_check.json.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from common import write_result

from medcad.checkpoint import load_model_file
from medcad.data.datasets import run_images
from medcad.data.layouts import load_manifest
from medcad.data.transforms import Normalize
from medcad.engine.evaluate import load_run_config
from medcad.metrics.segmentation import dice_iou, mask_counts
from medcad.models.card import machine_info
from medcad.models.predict import predict_masks, run_batched
from medcad.targets import load_targets

HERE = Path(__file__).resolve().parent


def fold_predictions(run: Path, hflip: bool) -> dict[str, np.ndarray]:
    """Out-of-fold test rows, class probabilities and (mask runs) lesion probabilities of every fold model."""
    cfg, meta = load_run_config(run)
    manifest = load_manifest(meta["data"], cfg.data_options())
    images = run_images(manifest, cfg, progress=False)
    rows, probs, masks = [], [], []
    for fold in sorted(run.glob("fold_*"), key=lambda p: int(p.name.split("_")[1])):
        test = np.array(json.loads((fold / "result.json").read_text())["test_rows"], dtype=int)
        model, m = load_model_file(fold / "model.pt")
        norm = Normalize(m["data_config"]["mean"], m["data_config"]["std"])
        if cfg.task in ("segment", "multitask"):
            mk, pr, _ = predict_masks(model, norm, images, test, hflip=hflip)
            masks.append(mk)
        else:
            net = torch.nn.Sequential(model, torch.nn.Softmax(-1))
            pr = run_batched(net, norm, images, test)[0]
            if hflip:
                pr = (pr + run_batched(net, norm, np.ascontiguousarray(images[test][:, :, ::-1]))[0]) / 2
        rows.append(test)
        if pr is not None:
            probs.append(pr / pr.sum(1, keepdims=True))
    out = {"rows": np.concatenate(rows), "manifest": manifest, "labels": meta["labels"], "cfg": cfg}
    out["probs"] = np.concatenate(probs) if probs else None
    out["masks"] = np.concatenate(masks) if masks else None
    return out


def scores(p: dict) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    out = {}
    rows, labels = p["rows"], p["labels"]
    if p["masks"] is not None:
        truth = np.asarray(load_targets(p["manifest"], p["cfg"]).masks[rows]).astype(bool)
        out["dice"] = float(dice_iou(mask_counts(p["masks"] >= 128, truth))[0].mean())
    if p["probs"] is not None:
        y = np.array([labels.index(lab) for lab in p["manifest"].table["label"].to_numpy(dtype=str)[rows]])
        out["accuracy"] = float((p["probs"].argmax(1) == y).mean())
        auc = roc_auc_score(y, p["probs"], multi_class="ovr") if len(labels) > 2 else roc_auc_score(y, p["probs"][:, 1])
        out["macro_auc"] = float(auc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    path = HERE / "results" / "tta_check.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    for run in args.runs:
        plain, flip = scores(fold_predictions(run, False)), scores(fold_predictions(run, True))
        results["runs"][str(run)] = {"one_pass": plain, "hflip": flip}
        print(run, "one pass", plain, "| with the mirror", flip, flush=True)
    results |= {"machine": machine_info(), "date": datetime.now().isoformat(timespec="minutes")}
    write_result(path, results)


if __name__ == "__main__":
    main()
