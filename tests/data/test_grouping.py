"""Duplicate grouping on video-like ultrasound frames, patient ids from file names, and split errors in the
user's terms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save
from medcad.data.audit import audit
from medcad.data.manifest import load_manifest
from medcad.data.splits import make_splits
from medcad.errors import ConfigError, DataError

S = 64


def _fan() -> np.ndarray:
    """The fan-shaped field of a curvilinear probe on a black background, as a bool (S, S) mask."""
    yy, xx = np.mgrid[:S, :S]
    r = np.hypot(yy + 8, xx - S / 2)
    angle = np.degrees(np.arctan2(xx - S / 2, yy + 8))
    return (r > 12) & (r < S + 4) & (np.abs(angle) < 35)


def _video(rng: np.random.Generator, n: int, base: np.ndarray | None = None, drift: np.ndarray | None = None):
    """Frames of one sweep: speckle and a structure that drift slowly from `base` to `drift` (random when not
    given); consecutive frames are near duplicates."""
    fan = _fan()
    base = rng.random((S // 4, S // 4)) if base is None else base
    drift = rng.random((S // 4, S // 4)) if drift is None else drift
    frames = []
    for t in range(n):
        small = (base * (1 - t / n) + drift * (t / n)) * 255
        tissue = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((S, S), Image.BICUBIC), np.float32)
        speckle = rng.normal(0, 6, (S, S))
        frames.append((np.clip(tissue + speckle, 0, 255) * fan).astype(np.uint8))
    return frames


@pytest.fixture
def us_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """10 study folders ({group}/{label}), one sweep each of 8 frames plus a black frame (probe lifted)."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "us"
    for s in range(10):
        label = "abnormal" if s % 2 else "normal"
        for t, frame in enumerate(_video(rng, 8)):
            save(root / f"study_{s:02d}" / label / f"frame_{t:03d}.png", frame)
        save(root / f"study_{s:02d}" / label / "frame_999.png", np.zeros((S, S), np.uint8))
    return root


def test_video_frames_group_within_their_study_only(us_videos: Path) -> None:
    m = load_manifest(us_videos, pattern="{group}/{label}")
    r = audit(m)
    assert len(r["low_content_images"]) == 10  # the black frames: linked to nothing
    assert r["largest_duplicate_group"] <= 9 and not r["large_duplicate_groups"]
    for g in r["near_duplicates"]:
        assert len({k.split("/")[0] for k in g}) == 1  # no group crosses two studies
    splits = make_splits(m, folds=5, seed=0)
    assert splits["n_folds"] == 5


def test_collapsed_grouping_is_explained_with_the_links_and_settings_that_work(tmp_path: Path, monkeypatch) -> None:
    # one long sweep cut into 10 study folders: frames at each cut are near duplicates across "patients"
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    keys = [rng.random((S // 4, S // 4)) for _ in range(11)]
    for s in range(10):
        label = "abnormal" if s % 2 else "normal"
        for t, frame in enumerate(_video(rng, 10, keys[s], keys[s + 1])):
            save(tmp_path / "us" / f"study_{s:02d}" / label / f"frame_{t:03d}.png", frame)
    m = load_manifest(tmp_path / "us", pattern="{group}/{label}")
    big = audit(m)["large_duplicate_groups"]
    assert big and big[0]["spans"] == {"patients": 10} and big[0]["joining_links"]
    assert {"a", "b", "distance", "correlation"} <= set(big[0]["joining_links"][0])
    with pytest.raises(DataError) as e:
        make_splits(m, folds=5, seed=0)
    msg = str(e.value)
    assert "5-fold cross-validation needs at least 5 independent groups" in msg
    assert "across 10 patients" in msg and "medcad data audit" in msg
    assert "--group patient" in msg
    assert make_splits(m, folds=5, seed=0, group_by="patient")["n_folds"] == 5  # the suggestion works


def test_group_from_takes_patient_ids_from_file_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for p in range(4):
        for t, frame in enumerate(_video(rng, 3)):
            save(tmp_path / "ds" / ("a" if p % 2 else "b") / f"P{p:03d}_img{t}.png", frame)
    m = load_manifest(tmp_path / "ds", group_from=r"(P\d+)_")
    assert sorted(set(m.table["patient"])) == ["P000", "P001", "P002", "P003"]
    assert any("patient ids from --group-from" in n and "4 patients" in n for n in m.notes)
    m2 = load_manifest(tmp_path / "ds", group_from=r"(?P<patient>P\d\d)\d_")
    assert sorted(set(m2.table["patient"])) == ["P00"]
    with pytest.raises(ConfigError, match="matches none of the 12 image paths"):
        load_manifest(tmp_path / "ds", group_from=r"^Q")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_manifest(tmp_path / "ds", group_from=r"(P")


def test_holdout_error_speaks_of_the_holdout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    for label, n in (("polyp", 3), ("background", 6)):
        for k in range(n):
            save(tmp_path / "ds" / label / f"{k}.png", _video(rng, 1)[0])
    m = load_manifest(tmp_path / "ds")
    with pytest.raises(DataError) as e:
        make_splits(m, holdout=0.25, folds=None)
    msg = str(e.value)
    assert "--holdout 0.25 holds out about 1 in 4 independent groups" in msg and "'polyp': 3 group(s)" in msg
    assert not re.search(r"\bfolds?\b", msg.replace("--folds", ""))  # no folds the user never asked for
    assert "--holdout 0.34" in msg
    assert make_splits(m, holdout=0.34, folds=None, val_fraction=0)["n_folds"] == 1
