"""Audit findings and grouped splits on tiny generated sets with planted problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.audit import audit
from medcad.data.layouts import load_manifest
from medcad.data.splits import fold_indices, load_splits, make_splits, save_splits
from medcad.errors import DataError


@pytest.fixture
def problem_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for label in ["a", "b"]:
        for k in range(8):
            seed = k + (50 if label == "b" else 0)
            save(root / label / f"{k}.png", noise_image(seed, 48))
            save(root / label / f"{k}_mask.png", np.zeros((48, 48), np.uint8))
    shutil.copy(root / "a" / "0.png", root / "b" / "dup_of_a0.png")  # same image, two labels
    near = noise_image(1, 48).astype(int)
    near[0, 0] = (near[0, 0] + 3) % 256
    save(root / "a" / "near1.png", near.astype(np.uint8))  # near duplicate of a/1.png
    save(root / "a" / "3_mask.png", np.zeros((20, 20), np.uint8))  # wrong size
    jpg = root / "a" / "corrupt.jpg"
    save(jpg, noise_image(7, 48))
    jpg.write_bytes(jpg.read_bytes()[:200])
    (root / "b" / "zero.png").write_bytes(b"")
    gray_mask = np.zeros((48, 48), np.uint8)
    gray_mask[10:20, 10:20] = 200
    gray_mask[12:14, 12:14] = 90
    save(root / "b" / "1_mask.png", gray_mask)
    (root / "b" / "readme.txt").write_text("scanned 2019")
    lesion = np.zeros((48, 48), np.uint8)
    lesion[8:30, 10:40] = 255
    save(root / "b" / "scan7.png", lesion)  # a mask under an image's name: two grey values
    black = np.zeros((48, 48), np.uint8)
    black[::9, ::9] = 3
    save(root / "b" / "lead_in.png", black)  # a nearly black frame: low content, not a mask
    return root


def test_audit_finds_planted_problems(problem_set: Path) -> None:
    m = load_manifest(problem_set)
    r = audit(m)
    assert sorted(p for p, _ in r["unreadable"]) == ["a/corrupt.jpg", "b/zero.png"]
    assert any("empty" in why for _, why in r["unreadable"])
    assert [x[0] for x in r["mask_size_mismatch"]] == ["a/3.png"] and "20x20" in r["mask_size_mismatch"][0][2]
    assert [x[0] for x in r["non_binary_masks"]] == ["b/1.png"]
    assert ["a/0.png", "b/dup_of_a0.png"] in r["exact_duplicates"]
    assert ["a/0.png", "b/dup_of_a0.png"] in r["cross_label_duplicates"]
    assert ["a/1.png", "a/near1.png"] in r["near_duplicates"]
    assert not any("a/2.png" in g for g in r["near_duplicates"])
    assert r["not_read"] == [["b/readme.txt", "not an image or an annotation file"]]  # named, not only counted
    assert r["mask_like_images"] == ["b/scan7.png"]  # named; a picture never is (BUSI, Kvasir: at most 0.34 of 0.9)


def test_splits_keep_duplicates_together_and_are_reproducible(problem_set: Path, tmp_path: Path) -> None:
    m = load_manifest(problem_set)
    s = make_splits(m, folds=3, seed=1, val_fraction=0.0)
    assert s["group_by"] == "duplicates"
    for fold in s["folds"]:
        train, test = set(fold["train"]), set(fold["test"])
        assert not train & test
        for a, b in [("a/0.png", "b/dup_of_a0.png"), ("a/1.png", "a/near1.png")]:
            assert (a in test) == (b in test)
    assert sorted(k for f in s["folds"] for k in f["test"]) == sorted(m.keys)
    assert make_splits(m, folds=3, seed=1, val_fraction=0.0) == s
    assert make_splits(m, folds=3, seed=2, val_fraction=0.0) != s
    path = save_splits(s, tmp_path / "splits.json")
    assert load_splits(path, m) == s
    r = audit(m, s)
    assert all(not f["duplicate_groups_across"] for f in r["leakage"])


def test_patient_groups_and_validation_part(tmp_path: Path) -> None:
    rows = ["image,label,patient"]
    for p in range(12):
        for k in range(3):
            save(tmp_path / f"{p}_{k}.png", noise_image(p * 10 + k))
            rows.append(f"{p}_{k}.png,{'x' if p % 2 else 'y'},pat{p}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path)
    s = make_splits(m, holdout=0.25, val_fraction=0.25, seed=0)
    assert s["method"] == "holdout" and len(s["folds"]) == 1 and "patient" in s["group_by"]
    idx = fold_indices(m, s["folds"][0])
    pats = {part: set(m.table["patient"].iloc[ix]) for part, ix in idx.items()}
    assert not pats["train"] & pats["test"] and not pats["val"] & pats["test"] and not pats["train"] & pats["val"]
    assert len(idx["val"]) > 0
    assert {part: len(ix) for part, ix in idx.items()}["test"] == 9


def test_too_few_groups_to_stratify_names_the_label(class_folders: Path) -> None:
    m = load_manifest(class_folders)
    with pytest.raises(
        DataError, match="7-fold cross-validation needs at least 7 .*too few: 'lesion': 6 group.*--folds 6"
    ):
        make_splits(m, folds=7)


def test_splits_of_another_dataset_are_refused(class_folders: Path, tmp_path: Path) -> None:
    s = make_splits(load_manifest(class_folders), folds=2, val_fraction=0)
    s["folds"][0]["test"].append("elsewhere/x.png")
    path = save_splits(s, tmp_path / "s.json")
    with pytest.raises(DataError, match="not in the dataset"):
        load_splits(path, load_manifest(class_folders))


def test_audit_of_a_manifest_naming_masks_outside_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV may name masks elsewhere by absolute path (e.g. another release's masks folder): the audit reads them
    and names them by that path (it stopped with 'is not in the subpath of' before)."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    elsewhere = tmp_path / "release" / "masks"
    lines = ["image,label,mask"]
    for k in range(4):
        save(tmp_path / "ds" / "frames" / f"{k}.png", noise_image(k, 32))
        mask = np.zeros((16, 16) if k == 0 else (32, 32), np.uint8)  # mask 0 does not fit its image
        mask[4:12, 4:12] = 255
        lines.append(f"frames/{k}.png,tumour,{save(elsewhere / f'{k}.png', mask)}")
    (tmp_path / "ds" / "manifest.csv").write_text("\n".join(lines) + "\n")
    report = audit(load_manifest(tmp_path / "ds"), None)
    assert report["n_images"] == 4 and report["mask_decoding"]
    assert [m[1] for m in report["mask_size_mismatch"]] == [str(elsewhere / "0.png")]


def test_the_datasets_own_split_column_is_named_kept_on_request_and_its_leaks_said(tmp_path: Path) -> None:
    """A HAM10000-style sheet: `lesion_id` groups images and `split` is the publisher's split. Both had been kept
    as metadata without a word (4 of 8 lesions straddled medcad's folds); now both are named, and `--split-column`
    keeps the split as one fold, saying which groups straddle its test part."""
    rows = ["lesion_id,image,dx,split"]
    for k in range(12):
        save(tmp_path / "imgs" / f"ISIC_{k}.png", noise_image(k))
        part = "test" if k >= 9 else "Train"
        rows.append(f"HAM_{k // 2},imgs/ISIC_{k}.png,{'nv' if k % 4 < 2 else 'mel'},{part}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path / "meta.csv")
    notes = " ".join(m.notes)
    assert "'lesion_id' looks like a patient, lesion or study id" in notes
    assert "'split' (Train 9, test 3) looks like the dataset's own split" in notes
    m.table["patient"] = m.table["lesion_id"]  # as the note says: renamed to patient
    s = make_splits(m, split_column="SPLIT", val_fraction=0.25)
    assert s["method"] == "given" and s["n_folds"] == 1
    fold = s["folds"][0]
    assert sorted(fold["test"]) == sorted(f"imgs/ISIC_{k}.png" for k in (9, 10, 11))
    assert len(fold["train"]) + len(fold["val"]) == 9 and fold["val"]
    # lesion HAM_4 has ISIC_8 (train) and ISIC_9 (test): the publisher's split leaks, and says so
    assert any("LEAKS: 1 group(s)" in n and "imgs/ISIC_9.png" in n for n in s["notes"]), s["notes"]
    rows = [f"imgs/ISIC_{k}.png,x,{k % 3},{k * 10}" for k in range(12)]  # fold numbers; a lesion size, no id
    (tmp_path / "folds.csv").write_text("image,label,fold,lesion_size\n" + "\n".join(rows) + "\n")
    notes = " ".join(load_manifest(tmp_path / "folds.csv").notes)
    assert "looks like the dataset's own fold numbers: not used" in notes and "--split-column" not in notes
    assert "lesion_size" not in notes
    m.table.loc[0, "split"] = "later"
    with pytest.raises(DataError, match=r"holds \['later'\], not split names"):
        make_splits(m, split_column="split")
    with pytest.raises(DataError, match="no column 'fold'"):
        make_splits(m, split_column="fold")
    from typer.testing import CliRunner

    from medcad.cli import app

    m.table.loc[0, "split"] = "train"
    m.save(tmp_path / "as_read.csv")
    out = tmp_path / "splits.json"
    res = CliRunner().invoke(
        app, ["data", "split", str(tmp_path / "as_read.csv"), "--split-column", "split", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "given, 1 fold(s)" in res.output and load_splits(out)["split_column"] == "split"


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(st.lists(st.sampled_from("abc"), min_size=1, max_size=30), min_size=1, max_size=12),
    fraction=st.floats(0.05, 0.5),
    seed=st.integers(0, 10),
    by_label=st.booleans(),
)
def test_a_validation_part_drawn_by_group_never_takes_every_group(groups, fraction, seed, by_label) -> None:
    """group_holdout holds out whole groups, never every group and nothing of a lone group; with labels never the
    last kept rows of a label (groups of mixed labels included) unless no group can be held otherwise, and every
    label that can be held; else within the fraction of rows (or the smallest group alone). It had drawn a fraction
    of the groups, so a training part of one group went wholly to validation (a raw crash in the fold), and a
    validation part could hold one class (model selection on an undefined AUC)."""
    from medcad.data.splits import group_holdout

    sizes = [len(g) for g in groups]
    group_of = np.repeat(np.arange(len(groups)) * 7, sizes)
    label_of = np.array([lab for g in groups for lab in g])
    kept, held = group_holdout(group_of, fraction, seed, label_of if by_label else None)
    assert sorted([*kept, *held]) == list(range(len(group_of)))
    assert not set(group_of[kept]) & set(group_of[held])  # whole groups
    if len(groups) == 1:
        assert len(held) == 0
        return
    assert len(held) and len(kept)
    if not by_label:
        assert len(held) <= max(fraction * len(group_of), min(sizes))
        return
    others = [set().union(*(set(h) for j, h in enumerate(groups) if j != i)) for i in range(len(groups))]
    holdable = [i for i, g in enumerate(groups) if set(g) <= others[i]]  # held alone, it leaves every label kept
    if holdable:
        assert set(label_of[kept]) == set(label_of)  # training keeps every label
    # where two groups of each label can go, validation gets one of each (beyond the fraction): both classes
    two_each = np.repeat([0, 7, 14, 21], 3)
    _, held = group_holdout(two_each, 0.15, seed, np.repeat(list("aabb"), 3))
    assert sorted(set(np.repeat(list("aabb"), 3)[held])) == ["a", "b"]


def test_a_fold_one_group_fills_is_refused_with_the_group_named(tmp_path: Path) -> None:
    """A training part that is one group (here a publisher's split whose train rows are one patient's) leaves
    nothing to validate on beside it: refused before training, naming the group (a grouped k-fold split of BUSI
    images with patients joined by near duplicates had given a fold 0 training images, and training crashed in it
    with "num_samples=0"); and a group holding more than a fold's share is said."""
    rows = ["image,label,patient,part"]
    for i in range(36):
        save(tmp_path / f"{i}.png", noise_image(i))
        patient = "big" if i < 24 else f"p{i}"
        rows.append(f"{i}.png,{'x' if i % 2 else 'y'},{patient},{'train' if i < 24 else 'test'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path)
    with pytest.raises(
        DataError, match=r"fold 0 would have 24 training, 0 validation and 12 test .* holds 24 \(1 patient \(big\)\)"
    ):
        make_splits(m, split_column="part", group_by="patient")
    table = m.table.copy()
    table["part"] = np.where(table["patient"] == "big", "test", "train")  # now 12 patients train: fine
    small = table["patient"].isin(["p24", "p25"])  # ... and two train, the big one tested: named as they are
    table.loc[~small & (table["patient"] != "big"), "part"] = "test"
    table.loc[small, "patient"] = "small"
    table.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"outside the test part holds 2 \(1 patient \(small\)\)"):
        make_splits(load_manifest(tmp_path), split_column="part", group_by="patient")
    s = make_splits(m, folds=3, group_by="patient")
    assert any("one group holds 24 of 36 images (67%: 1 patient (big))" in n for n in s["notes"]), s["notes"]
    for fold in s["folds"]:
        assert fold["train"] and fold["val"]


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["train", "valid", "test"])), min_size=6, max_size=14),
    st.integers(0, 99),
)
def test_exported_copies_of_one_source_image_are_never_split(sources, seed) -> None:
    """Roboflow exports each source image as `<stem>_<ext>.rf.<hash>.jpg`, augmented copies (a flip, a brightness
    change) beside it under other hashes, in any split folder: one image, never on both sides of a test part (a
    3-fold split had put a flip in training and its source in test, for 4 of 10 sources)."""
    import hashlib
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["image,label"]
        for s, (n_copies, folder) in enumerate(sources):
            for c in range(n_copies):
                digest = hashlib.md5(f"{s}-{c}".encode()).hexdigest()
                name = f"{folder}/case{s}_png.rf.{digest}.jpg"
                save(root / name, np.fliplr(noise_image(s)) if c % 2 else noise_image(s, 32) // (c + 1))
                rows.append(f"{name},{'a' if s % 2 else 'b'}")
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
        m = load_manifest(root)
        split = make_splits(m, folds=3, seed=seed, group_by="none", val_fraction=0.0)
        assert ("export source" in split["group_by"]) == any(n > 1 for n, _ in sources)
        for fold in split["folds"]:
            source = lambda key: key.split("/")[-1].split(".rf.")[0]  # noqa: E731
            assert not {source(k) for k in fold["test"]} & {source(k) for k in fold["train"] + fold["val"]}


def test_two_sources_of_one_upload_name_under_two_labels_are_two_images(tmp_path: Path) -> None:
    """`benign/1.png` and `malignant/1.png` both exported as `1_png.rf.<hash>.jpg` are not one source image; a
    source exported once is no copy."""
    rows = ["image,label"]
    for k, (folder, label) in enumerate([("b", "benign"), ("b", "benign"), ("m", "malignant"), ("s", "benign")]):
        name = f"{folder}/{'one' if folder != 's' else 'single'}_png.rf.{k:032x}.jpg"
        save(tmp_path / name, noise_image(k))
        rows.append(f"{name},{label}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path)
    assert m.export_pairs() == [(0, 0), (0, 1)]  # the two benign copies; not the malignant one, not the single


def test_copies_whose_labels_come_from_their_boxes_stay_one_source(tmp_path: Path) -> None:
    """In a COCO export an image's label is its boxes': a cropped copy that lost its box reads 'background', yet is
    a copy of its source (grouping by label there had split it off)."""
    from medcad.data.manifest import Manifest, make_table

    rows = [{"image": f"train/one_png.rf.{k:032x}.jpg", "label": lab} for k, lab in enumerate(["polyp", "background"])]
    assert Manifest(tmp_path, make_table(rows), "coco").export_pairs() == [(0, 0), (0, 1)]
    assert Manifest(tmp_path, make_table(rows), "folders").export_pairs() == []  # a person's labels: two images


def test_a_label_with_fewer_images_than_folds_is_not_offered_a_grouping(tmp_path: Path) -> None:
    """A label with fewer images than folds cannot be split by any grouping: the error says to add images of it or
    merge it, not to group by a regular expression (which had been the one setting offered)."""
    rows = ["image,label"]
    for k in range(9):
        save(tmp_path / f"{k}.png", noise_image(k, 16))
        rows.append(f"{k}.png,{'rare' if k == 0 else 'x' if k % 2 else 'y'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="'rare': fewer images than 2, which no grouping changes") as e:
        make_splits(load_manifest(tmp_path), folds=2)
    assert "--group-from" not in str(e.value) and "--label-map" in str(e.value)


def test_duplicates_under_two_labels_are_said_when_the_split_groups_them(tmp_path: Path) -> None:
    """One picture under two labels (BUSI has two such groups) is said as the split groups near duplicates, not only
    in the report's audit (a new user trained on them unwarned)."""
    from medcad.data.splits import make_splits

    for k in range(8):
        save(tmp_path / "benign" / f"b{k}.png", noise_image(k))
        save(tmp_path / "malignant" / f"m{k}.png", noise_image(100 + k))
    save(tmp_path / "malignant" / "copy.png", noise_image(3))  # b3 again, labelled malignant
    m = load_manifest(tmp_path)
    make_splits(m, folds=2)
    (said,) = [n for n in m.notes if "near-duplicate group(s) hold images of different labels" in n]
    assert said.startswith("1 near-duplicate") and "benign/b3.png (benign)" in said and "malignant/copy.png" in said
