"""Duplicate grouping on video-like ultrasound frames (static interface masked, groups that cannot chain), patient
ids from file names, and split errors in the user's terms."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import save
from medcad.data.audit import audit, cross_label
from medcad.data.duplicates import Link, content_features, duplicate_groups, link_groups
from medcad.data.fingerprints import ImageFingerprint, fingerprints
from medcad.data.layouts import load_manifest
from medcad.data.splits import make_splits
from medcad.data.synthetic import generate_ultrasound_sweeps
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
    r = audit(m)
    big = r["large_duplicate_groups"]  # duplicates at each cut join neighbouring studies: all 10 on one side
    assert big and big[0]["spans"] == {"patients": 10} and big[0]["joining_links"]
    assert {"a", "b", "distance", "correlation"} <= set(big[0]["joining_links"][0])
    with pytest.raises(DataError) as e:
        make_splits(m, folds=5, seed=0)
    msg = str(e.value)
    assert "5-fold cross-validation needs at least 5 independent groups" in msg
    assert "across 10 patients" in msg and "medcad data audit" in msg
    assert "--group patient" in msg
    assert make_splits(m, folds=5, seed=0, group_by="patient")["n_folds"] == 5  # the suggestion works
    # the near-duplicate groups themselves no longer chain the sweep (single linkage put all 100 frames in one)
    assert max(map(len, duplicate_groups(fingerprints(m), region="frame", linkage="single"))) >= 50
    assert r["largest_duplicate_group"] <= 20
    assert all(len({k.split("/")[0] for k in g}) <= 2 for g in r["near_duplicates"])  # two sides of a cut at most
    assert make_splits(m, folds=5, seed=0, group_by="duplicates")["n_folds"] == 5


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ImageFingerprint | str]]:
    """8 patients, one probe sweep of 48 frames each, under one scanner interface (see generate_ultrasound_sweeps),
    plus an exact copy of one frame."""
    root = tmp_path_factory.mktemp("sweeps")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDCAD_CACHE_DIR", str(root / "cache"))
        csv = generate_ultrasound_sweeps(root / "us", n_patients=8, frames_per_patient=48, width=160, height=120)
        shutil.copy(root / "us" / "images" / "pt03" / "0020.png", root / "us" / "images" / "pt03" / "0020b.png")
        with csv.open("a") as f:
            f.write("images/pt03/0020b.png,abnormal,pt03\n")
        m = load_manifest(csv)
        return csv, fingerprints(m)


def test_sweeps_share_one_interface(sweeps) -> None:
    csv, fps = sweeps
    m = load_manifest(csv)
    assert len(m) == 8 * 48 + 1 and len(set(m.table["patient"])) == 8
    first = [np.asarray(Image.open(csv.parent / "images" / f"pt{p:02d}" / "0010.png")) for p in (0, 5)]
    assert first[0].shape == (120, 160, 3)
    assert (first[0][:6] == first[1][:6]).all() and (first[0][:, -20:] == first[1][:, -20:]).all()  # text, bars
    feats = content_features(fps)
    (kind,) = feats.kinds
    assert kind["size"] == "160x120" and kind["images"] == len(m) and 0.3 < kind["masked_fraction"] < 0.8
    assert 16 <= kind["blank"] <= 24  # probe lifted: the first and last frame of each sweep (at least)
    old = duplicate_groups(fps, region="frame", linkage="single")  # whole-frame hashes, single linkage
    assert max(len({m.table["patient"][i] for i in g}) for g in old) >= 5  # chains patients together


def test_sweep_groups_never_span_two_patients_but_hold_consecutive_frames(sweeps) -> None:
    csv, fps = sweeps
    m = load_manifest(csv)
    patient = m.table["patient"].tolist()
    keys = m.keys
    for linkage in ("average", "complete", "single"):
        groups = duplicate_groups(fps, linkage=linkage)
        assert all(len({patient[i] for i in g}) == 1 for g in groups), linkage
    groups = duplicate_groups(fps)
    gid = {i: k for k, g in enumerate(groups) for i in g}
    blank = content_features(fps).blank
    pairs = [(i, i + 1) for i in range(len(m) - 2) if patient[i] == patient[i + 1]]
    consecutive = [(i, j) for i, j in pairs if not blank[i] and not blank[j]]
    grouped = np.mean([gid.get(i, -1) == gid.get(j, -2) for i, j in consecutive])
    assert grouped > 0.8, grouped
    copy = keys.index("images/pt03/0020b.png")
    assert gid[copy] == gid[keys.index("images/pt03/0020.png")]  # an exact copy is always grouped
    r = audit(m)
    assert not r["large_duplicate_groups"] and not r["cross_label_duplicates"]
    detail = r["largest_duplicate_group_detail"]
    assert detail["size"] == r["largest_duplicate_group"] and detail["spans"] == {"patients": 1}
    assert sum(detail["labels"].values()) == detail["size"] and detail["pairs"] >= detail["linked_pairs"] > 0
    assert {"a", "b", "distance", "correlation"} <= set(detail["weakest_links"][0])
    assert ["images/pt03/0020.png", "images/pt03/0020b.png"] in r["exact_duplicates"]
    assert r["duplicate_grouping"]["masked_kinds"][0]["size"] == "160x120"
    splits = make_splits(m, folds=4, seed=0, group_by="duplicates")
    assert splits["n_folds"] == 4


def test_link_groups_do_not_chain() -> None:
    # a path 0-1-2-3-4 of links (each pair 8 bits apart) and a clique 5-6-7
    path = [Link(i, i + 1, 8, 0.95) for i in range(4)]
    clique = [Link(5, 6, 2, 0.99), Link(5, 7, 3, 0.98), Link(6, 7, 2, 0.99)]
    links = path + clique
    assert link_groups(8, links, "single") == [[0, 1, 2, 3, 4], [5, 6, 7]]
    for linkage in ("average", "complete"):
        groups = link_groups(8, links, linkage)
        assert [5, 6, 7] in groups and all(len(g) <= 2 for g in groups if g != [5, 6, 7]), (linkage, groups)
    with pytest.raises(ValueError, match="linkage 'ward' is not one of"):
        link_groups(8, links, "ward")


def test_cross_label_pairs_are_reported_even_when_grouping_splits_them() -> None:
    labels = ["a", "a", "b", "a"]
    links = [Link(0, 1, 2, 0.99), Link(1, 2, 14, 0.91), Link(0, 3, 1, 0.99), Link(1, 3, 1, 0.99)]
    groups = link_groups(4, links, "complete")
    assert [0, 1, 3] in groups
    assert cross_label(groups, links, labels) == [[1, 2]]
    # one set of findings written in another order is one label (a multi-label set's false alarm)
    findings = ["mass|malignant", "malignant|mass", "malignant; mass", "malignant, mass"]
    assert cross_label(groups, [], findings) == [] and cross_label([[0, 1, 2]], [], ["a|b", "b|a", "a"]) == [[0, 1, 2]]


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


def test_frames_of_one_dicom_stay_together_and_patient_ids_come_from_the_files(tmp_path: Path, monkeypatch) -> None:
    """Multi-frame ultrasound DICOMs of six patients in class folders: the frames of one file never straddle train,
    validation and test (a cine loop's frames had been spread over all three), and PatientID groups the files; an
    export whose files all carry one PatientID (anonymised) is not grouped by it, and says so."""
    from conftest import write_dicom
    from medcad.data.splits import make_splits

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for k in range(12):
        label = ("benign", "malignant")[k % 2]
        frames = rng.integers(0, 60000, (4, 24, 24)).astype(np.uint16)
        write_dicom(tmp_path / "ds" / label / f"IM{k:05d}", frames, patient=f"PAT{k // 2}")
        write_dicom(tmp_path / "anon" / label / f"IM{k:05d}", frames, patient="ANONYMOUS")
    m = load_manifest(tmp_path / "ds")
    assert sorted(set(m.table["patient"])) == [f"PAT{i}" for i in range(6)]
    assert any("DICOM PatientID of 12 file(s) (6 patients;" in n for n in m.notes)
    anon = load_manifest(tmp_path / "anon")
    assert set(anon.table["patient"]) == {""} and any("anonymised?" in n for n in anon.notes)
    for manifest, group_by in ((m, "auto"), (anon, "none")):
        splits = make_splits(manifest, folds=3, group_by=group_by, seed=0)
        for fold in splits["folds"]:
            parts = {key.split("#")[0]: name for name in ("train", "val", "test") for key in fold[name]}
            for name in ("train", "val", "test"):
                files = {key.split("#")[0] for key in fold[name]}
                assert all(parts[f] == name for f in files), (group_by, fold)
        assert "file" in splits["group_by"]
    from medcad.data.audit import split_units

    units = split_units(anon, [])  # what audit checks leakage by: one unit per file, its 4 frames together
    assert sorted(len(u) for u in units) == [4] * 12


def test_a_dicom_file_set_is_read_without_folder_labels(tmp_path: Path, monkeypatch) -> None:
    """A DICOM CD export (DICOMDIR beside PT000000/ST000000/SE000000/IM000000): its folder names are ids, not labels
    (every image had been labelled SE000000); patients come from PatientID; the DICOMDIR is named as the index."""
    from conftest import write_dicom

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for k in range(4):
        frames = rng.integers(0, 60000, (1, 24, 24)).astype(np.uint16)
        series = tmp_path / "cd" / f"PT{k // 2:06d}" / "ST000000" / f"SE{k % 2:06d}"
        write_dicom(series / "IM000000", frames, f"PAT{k // 2}")
        write_dicom(series / "IM000001", frames, f"PAT{k // 2}")
    (tmp_path / "cd" / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM")
    m = load_manifest(tmp_path / "cd")
    assert len(m) == 8 and set(m.table["label"]) == {""} and sorted(set(m.table["patient"])) == ["PAT0", "PAT1"]
    assert any("a DICOM file set (DICOMDIR)" in n for n in m.notes)
    assert dict(m.ledger.unread)["DICOMDIR"].startswith("a DICOMDIR")


def test_links_between_two_sets_are_those_across_of_the_whole(tmp_path: Path) -> None:
    """An external set against a run's images: the links across the two, without comparing the pairs within each
    (it had compared all (n + m)^2 / 2 pairs at every evaluate --data)."""
    from PIL import Image

    from conftest import noise_image
    from medcad.data.duplicates import content_features, duplicate_links, near_duplicate_links
    from medcad.data.fingerprints import fingerprint

    paths = []
    for k in range(8):
        img = Image.fromarray(noise_image(k, 48))
        paths.append(tmp_path / f"a{k}.png")
        img.save(paths[-1])
        if k % 2 == 0:  # a re-encoded, resized copy and an exact one in the other set
            paths.append(tmp_path / f"b{k}.jpg")
            img.resize((40, 40)).save(paths[-1], quality=90)
    fps = [fingerprint(p) for p in paths]
    feats = content_features(fps)
    whole = near_duplicate_links(fps, feats)
    for n in range(1, len(fps)):
        across = {(x.i, x.j) for x in whole if x.i < n <= x.j}
        assert {(x.i, x.j) for x in near_duplicate_links(fps, feats, between=n)} == across
    n = 6
    fps2 = fps[:n] + [fps[0]] + fps[n:]  # an exact copy of image 0 in the second set
    pairs = {(x.i, x.j) for x in duplicate_links(fps2, near=False, between=n)}
    assert pairs == {(0, n)}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(3, 8), st.floats(0.8, 1.3), st.integers(0, 999), st.booleans())
def test_a_mirrored_copy_is_a_near_duplicate(n: int, gain: float, seed: int, flip_first: bool) -> None:
    """An augmented export's left-right flip of an image (brightened or not) is the same picture: grouped with it
    (its hash and thumbnail had matched the source's only when mirrored back, so it joined no group and a split
    could put the flip in training and its source in test). Distinct images are not linked by mirroring."""
    import tempfile

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(n):
            img = (rng.random((8, 8, 3)) * 255).astype(np.uint8).repeat(6, 0).repeat(6, 1)  # 48 px, blocky
            copy = np.clip(img[:, ::-1] * gain, 0, 255).astype(np.uint8)
            first, second = (copy, img) if flip_first else (img, copy)  # either may come first in the listing
            save(root / "x" / f"a{k}.png", first)
            save(root / "x" / f"b{k}.png", second)
        m = load_manifest(root)
        groups = [sorted(Path(m.keys[i]).stem[1:] for i in g) for g in duplicate_groups(fingerprints(m), near=True)]
        assert sorted(groups) == sorted([[str(k), str(k)] for k in range(n)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=25), st.data())
def test_each_row_keeps_its_split_group_and_an_image_without_one_is_alone(group_of: list[int], data) -> None:
    """Rows of one split group share it; a row whose image the splits do not hold is a cluster of its own, never
    drawn with a group whose id equals its row number (the fallback had been the row index)."""
    from medcad.data.splits import row_groups
    from medcad.metrics.stats import group_index

    keys = [f"img{i}.png" for i in range(len(group_of))]
    held = data.draw(st.lists(st.booleans(), min_size=len(keys), max_size=len(keys)))
    groups = {k: g for k, g, h in zip(keys, group_of, held, strict=True) if h}
    rows = np.array(data.draw(st.permutations(range(len(keys)))))
    inv, _ = group_index(row_groups(groups, keys, rows), len(rows))
    for a in range(len(rows)):
        for b in range(a):
            ka, kb = keys[rows[a]], keys[rows[b]]
            together = ka in groups and kb in groups and groups[ka] == groups[kb]
            assert (inv[a] == inv[b]) == together
