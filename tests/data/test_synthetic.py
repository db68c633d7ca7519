"""The synthetic demo set: deterministic, complete, consistent masks/boxes/labels, and learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medcad.data.manifest import load_manifest
from medcad.data.synthetic import generate_synthetic


def test_generate_is_deterministic_and_consistent(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", n_patients=10, frames_per_patient=2, size=48, seed=1)
    b = generate_synthetic(tmp_path / "b", n_patients=10, frames_per_patient=2, size=48, seed=1)
    c = generate_synthetic(tmp_path / "c", n_patients=10, frames_per_patient=2, size=48, seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "images" / "p000_0.png").read_bytes() == (b.parent / "images" / "p000_0.png").read_bytes()
    assert a.read_bytes() != c.read_bytes()
    t = pd.read_csv(a, dtype=str, keep_default_na=False)
    assert list(t.columns) == ["image", "label", "patient", "domain", "subgroup", "mask", "boxes"]
    assert set(t["domain"]) == {"endoscopy", "ultrasound"} and set(t["label"]) <= {"normal", "benign", "malignant"}
    assert (t.groupby("patient")["label"].nunique() == 1).all()
    for _, row in t.iterrows():
        mask = np.asarray(Image.open(a.parent / row["mask"])) > 127
        boxes = json.loads(row["boxes"])
        assert mask.any() == (row["label"] != "normal") == bool(boxes)
        for x0, y0, x1, y1, lab in boxes:
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48 and lab == row["label"]
            assert mask[y0:y1, x0:x1].any()
        img = Image.open(a.parent / row["image"])
        assert img.mode == ("L" if row["domain"] == "ultrasound" else "RGB")
    m = load_manifest(a.parent)
    assert m.layout == "csv" and len(m) == 20


def test_lesions_stand_out_but_not_always(tmp_path: Path) -> None:
    """Most lesions differ from the tissue around them (contrast-to-noise > 0.5), some are hard (< 0.5)."""
    import cv2

    csv = generate_synthetic(tmp_path, n_patients=40, frames_per_patient=2, size=64, seed=0)
    t = pd.read_csv(csv, dtype=str, keep_default_na=False)
    cnr = []
    for _, row in t[t["label"] != "normal"].iterrows():
        img = np.asarray(Image.open(tmp_path / row["image"]).convert("L"), np.float32)
        mask = np.asarray(Image.open(tmp_path / row["mask"])) > 127
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        cnr.append(abs(img[mask].mean() - img[ring].mean()) / (img[ring].std() + 1e-6))
    visible = np.mean(np.array(cnr) > 0.5)
    assert 0.6 < visible < 0.98
