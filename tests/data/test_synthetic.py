"""The synthetic demo set: deterministic, complete, consistent masks/boxes/labels, and learnable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcad.data.layouts import load_manifest
from medcad.data.synthetic import COLUMNS, LABELS, SUBGROUPS, generate_synthetic

SIZE = 64


def _table(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


def _mask(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    csv = generate_synthetic(tmp_path_factory.mktemp("syn"), n_patients=8, frames_per_patient=4, size=SIZE, seed=0)
    return csv.parent, _table(csv)


def test_files_and_manifest(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, t = dataset
    assert list(t.columns) == list(COLUMNS) and len(t) == 8 * 4
    assert t["image"].str.fullmatch(r"images/p\d{3}_\d\.png").all()
    assert (t["mask"] == t["image"].str.replace("images/", "masks/")).all()
    assert t["patient"].str.fullmatch(r"p\d{3}").all() and t["patient"].nunique() == 8
    assert not list(root.glob(".manifest*"))  # the atomic write left no temp file
    for _, row in t.iterrows():
        assert (root / row["image"]).is_file() and (root / row["mask"]).is_file()
    m = load_manifest(root)
    assert m.layout == "csv" and len(m) == len(t)


def test_deterministic_for_a_seed(tmp_path: Path, dataset: tuple[Path, pd.DataFrame]) -> None:
    root, _ = dataset
    again = generate_synthetic(tmp_path / "a", n_patients=8, frames_per_patient=4, size=SIZE, seed=0).parent
    other = generate_synthetic(tmp_path / "b", n_patients=8, frames_per_patient=4, size=SIZE, seed=1).parent

    def digest(d: Path) -> dict[str, str]:
        return {p.relative_to(d).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*.png"))}

    assert (again / "manifest.csv").read_bytes() == (root / "manifest.csv").read_bytes()
    assert digest(again) == digest(root)
    assert (other / "manifest.csv").read_bytes() != (root / "manifest.csv").read_bytes()
    assert (other / "images" / "p000_0.png").read_bytes() != (root / "images" / "p000_0.png").read_bytes()


def test_labels_domains_subgroups(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, t = dataset
    assert set(t["label"]) == set(LABELS) and set(t["domain"]) == set(SUBGROUPS)
    for domain, sub in zip(t["domain"], t["subgroup"], strict=True):
        assert sub in SUBGROUPS[domain]
    per_patient = t.groupby("patient")[["label", "domain", "subgroup"]].nunique()
    assert (per_patient == 1).all().all()
    assert (t.groupby("domain")["patient"].nunique() == 4).all()


def test_label_shares_per_domain(tmp_path: Path) -> None:
    t = _table(generate_synthetic(tmp_path, n_patients=40, frames_per_patient=1, size=32, seed=3))
    for _, d in t.groupby("domain"):
        assert d["label"].value_counts().to_dict() == {"normal": 8, "benign": 7, "malignant": 5}
        assert d["subgroup"].value_counts().tolist() == [10, 10]


def test_images_grey_or_rgb(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, t = dataset
    for _, row in t.iterrows():
        img = Image.open(root / row["image"])
        assert img.mode == ("L" if row["domain"] == "ultrasound" else "RGB") and img.size == (SIZE, SIZE)
        assert np.ptp(np.asarray(img)) > 50  # not blank


def test_masks_and_boxes(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, t = dataset
    for _, row in t.iterrows():
        mask = _mask(root, row["mask"])
        boxes = json.loads(row["boxes"])
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        assert mask.any() == (row["label"] != "normal") == bool(boxes)
        if not boxes:
            continue
        ys, xs = np.nonzero(mask)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert len(boxes) == n - 1
        covered = np.zeros_like(mask, bool)
        for x0, y0, x1, y1, lab in boxes:
            assert lab == row["label"] and 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert xs.min() <= x0 and ys.min() <= y0 and x1 <= xs.max() + 1 and y1 <= ys.max() + 1
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any() and mask[y0:y1, x0].any()  # tight
            covered[y0:y1, x0:x1] = True
        assert covered[mask > 0].all()


def test_lesion_size_and_near_duplicates(tmp_path: Path) -> None:
    """Lesions span 12-35 % of the width (spicules a little more); ~3 % of frames are exact same-patient copies."""
    root = generate_synthetic(tmp_path, n_patients=20, frames_per_patient=5, size=SIZE, seed=2).parent
    t = _table(root / "manifest.csv")
    for _, row in t[t["label"] != "normal"].iterrows():
        x0, y0, x1, y1, _ = max(json.loads(row["boxes"]), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        assert 0.08 * SIZE <= max(x1 - x0, y1 - y0) <= 0.5 * SIZE
    digests = [hashlib.sha1((root / p).read_bytes()).hexdigest() for p in t["image"]]
    t["digest"] = digests
    assert t["digest"].nunique() == len(t) - 3  # round(0.03 * 100) copies
    assert (t.groupby("digest")["patient"].nunique() == 1).all()
    first = t[t["image"].str.endswith("_0.png")]
    second = t.set_index("patient").loc[first["patient"], "image"].groupby(level=0).nth(1)
    assert len(second) == len(first)
    a = np.asarray(Image.open(root / first["image"].iloc[0]).convert("L"), np.float32)
    b = np.asarray(Image.open(root / second.loc[first["patient"].iloc[0]]).convert("L"), np.float32)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.3  # frames of one patient are views of one scene


def test_lesions_stand_out_but_not_always(tmp_path: Path) -> None:
    """Most lesions differ from the tissue around them (contrast-to-noise > 0.5), some are hard (< 0.5)."""
    csv = generate_synthetic(tmp_path, n_patients=40, frames_per_patient=2, size=SIZE, seed=0)
    t = _table(csv)
    cnr = [
        _cnr(tmp_path, row["image"], _mask(tmp_path, row["mask"]) > 0)
        for _, row in t[t["label"] != "normal"].iterrows()
    ]
    visible = np.mean(np.array(cnr) > 0.5)
    assert 0.6 < visible < 0.98


def _cnr(root: Path, image: str, mask: np.ndarray) -> float:
    img = np.asarray(Image.open(root / image).convert("L"), np.float32)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
    return float(abs(img[mask].mean() - img[ring].mean()) / (img[ring].std() + 1e-6))


def test_learnable(tmp_path: Path) -> None:
    """Lesion frames stand out where a lesion of the same domain would be in a normal frame; malignant masks are
    less convex than benign ones."""
    from sklearn.metrics import roc_auc_score

    root = generate_synthetic(tmp_path, n_patients=24, frames_per_patient=2, size=SIZE, seed=4).parent
    t = _table(root / "manifest.csv")
    rng = np.random.default_rng(0)
    scores, solidity = [], {"benign": [], "malignant": []}
    for _, row in t.iterrows():
        if row["label"] == "normal":  # borrow a lesion mask of the same domain: what a lesion there would show
            donor = t[(t["domain"] == row["domain"]) & (t["label"] != "normal")]["mask"]
            scores.append(_cnr(root, row["image"], _mask(root, donor.iloc[rng.integers(len(donor))]) > 0))
            continue
        mask = _mask(root, row["mask"])
        scores.append(_cnr(root, row["image"], mask > 0))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        c = max(contours, key=cv2.contourArea)
        solidity[row["label"]].append(cv2.contourArea(c) / cv2.contourArea(cv2.convexHull(c)))
    assert roc_auc_score(t["label"] != "normal", scores) > 0.85
    assert np.mean(solidity["malignant"]) < np.mean(solidity["benign"]) - 0.03


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        generate_synthetic(tmp_path, n_patients=2, size=8)
