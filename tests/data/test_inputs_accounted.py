"""Every input accounted for: datasets made the way people and other tools make them are read whole, or what is
left out is named with its reason (hand-made cases from users' reports, then generated ones with hypothesis)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.data.manifest import label_key
from medcad.errors import ConfigError, DataError


def _csv_set(root: Path, style: str, n: int = 8) -> list[str]:
    """n images in images/<label>/ and a manifest.csv naming them in `style`; returns the keys expected."""
    rows, keys = [], []
    for i in range(n):
        label = ("benign", "malignant")[i % 2]
        rel = f"images/{label}/b{i}.png"
        save(root / rel, noise_image(i))
        written = {
            "posix": rel,
            "windows": rel.replace("/", "\\"),
            "foreign-absolute": f"C:\\Users\\someone\\release\\{rel}".replace("/", "\\"),
            "unix-absolute": f"/mnt/other-machine/release/{rel}",
            "release-prefix": f"release/{rel}",
        }[style]
        rows.append({"image": written, "label": label})
        keys.append(rel)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return keys


def test_paths_written_elsewhere_are_resolved_with_a_note(tmp_path: Path) -> None:
    for style in ("windows", "foreign-absolute", "unix-absolute", "release-prefix"):
        root = tmp_path / style
        keys = _csv_set(root, style)
        m = load_manifest(root)
        assert sorted(m.keys) == sorted(keys), style  # all 8 rows, by their path under the manifest's folder
        assert m.ledger.line() == "used 8 of 8"
        notes = " ".join(m.notes)
        assert ("Windows separators" in notes) == (style in ("windows", "foreign-absolute"))
        assert ("resolved by their remaining path" in notes) == (style != "windows")


def test_symlinked_class_folder_is_followed_and_loops_end(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere" / "normal"
    for label in ("benign", "malignant"):
        for k in range(3):
            save(root / label / f"{k}.png", noise_image(10 * len(label) + k))
    for k in range(3):
        save(elsewhere / f"{k}.png", noise_image(90 + k))
    os.symlink(elsewhere, root / "normal")
    os.symlink(root, root / "benign" / "loop")  # a link back up: must not recurse forever
    m = load_manifest(root, pattern="{label}")
    assert m.labels == ["benign", "malignant", "normal"] and len(m) == 9


def test_label_spellings_merge_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    rows = []
    for i, label in enumerate(["Benign", "benign", "benign ", "MALIGNANT", "malignant", "malignant", "be\u0301nign"]):
        save(root / f"{i}.png", noise_image(i))
        rows.append({"image": f"{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    m = load_manifest(root)
    assert m.labels == ["benign", "b\u00e9nign", "malignant"]  # accents composed (NFC) and still counted
    assert any("label spellings merged" in n and "MALIGNANT -> malignant" in n for n in m.notes)
    m = load_manifest(root, label_map="be\u0301nign=benign")  # the map's spelling is composed too
    assert m.labels == ["benign", "malignant"]


def test_class_codes_written_as_spreadsheets_write_them_are_one_class(tmp_path: Path) -> None:
    """Class codes 1, 1.0 and 01 (a sheet's number formats) had become three classes without a word; blank label
    cells are named by image when a classifier stops on them."""
    from medcad.config import TrainConfig
    from medcad.targets import load_targets

    labels = ["1", "1.0", "01", "1", "2", "2.0", "2"]
    for i in range(len(labels)):
        save(tmp_path / f"{i}.png", noise_image(i))
    pd.DataFrame({"image": [f"{i}.png" for i in range(len(labels))], "label": labels}).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    m = load_manifest(tmp_path)
    assert m.labels == ["1", "2"] and any("number form" in n for n in m.notes)
    save(tmp_path / "7.png", noise_image(7))
    with (tmp_path / "manifest.csv").open("a") as f:
        f.write("7.png,\n")
    with pytest.raises(DataError, match=r"1 image\(s\) have no label \(7.png\)"):
        load_targets(load_manifest(tmp_path), TrainConfig())


def test_release_with_two_image_mask_pairs_is_read_together(tmp_path: Path) -> None:
    root = tmp_path / "release"
    for label, n in (("polyp", 4), ("normal", 3)):
        for k in range(n):
            save(root / label / "images" / f"{label}{k}.png", noise_image(k + 10 * n))
            mask = noise_image(0, gray=True) * 0
            mask[8:20, 8:20] = 255 if label == "polyp" else 0
            save(root / label / "masks" / f"{label}{k}.png", mask)
    m = load_manifest(root)
    assert m.layout == "images-masks" and len(m) == 7 and m.labels == ["normal", "polyp"]
    assert (m.table["mask"] != "").all() and m.ledger.line() == "used 7 of 7"


def _sibling_pairs(root: Path, parts: dict[str, int], suffix: str, number: str, mask_word: str) -> Path:
    """Image folders with a mask folder each (`<name><suffix>/`), images `<name><number>.png`, masks of those
    stems with `mask_word`."""
    for name, n in parts.items():
        for k in range(n):
            stem = f"{name}{number.format(k)}"
            save(root / name / f"{stem}.png", noise_image(k + 10 * n))
            mask = noise_image(0, gray=True) * 0
            mask[8:20, 8 : 12 + k] = 255
            save(root / f"{name}{suffix}" / f"{stem}{mask_word}.png", mask)
    return root


@pytest.mark.parametrize("suffix", ["_masks", " masks", "_gt"])
def test_sibling_image_and_mask_folders_per_class_are_pairs_not_classes(tmp_path: Path, suffix: str) -> None:
    """`benign/` + `benign_masks/`, `malignant/` + `malignant_masks/` (masks named `<stem>_mask`): had been read as
    four classes, masks among them, with no mask and no word."""
    root = _sibling_pairs(tmp_path / "busi", {"benign": 3, "malignant": 4}, suffix, " ({})", "_mask")
    m = load_manifest(root)
    assert m.layout == "images-masks" and m.labels == ["benign", "malignant"] and len(m) == 7
    assert (m.table["mask"] != "").all() and m.ledger.line() == "used 7 of 7"
    assert any("label = the image folder" in n for n in m.notes)
    for img, mask in zip(m.table["image"], m.table["mask"], strict=True):  # each image with its own mask
        assert mask == f"{Path(img).parent.name}{suffix}/{Path(img).stem}_mask.png"


# Generated datasets: class folders or a CSV, path styles, label spellings, missing files, stray files.
LABELS = st.lists(st.sampled_from(["benign", "Benign", "MALIGNANT", "malignant", "normal", "No finding"]), min_size=2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=LABELS,
    use_csv=st.booleans(),
    style=st.sampled_from(["posix", "windows", "foreign-absolute", "release-prefix"]),
    missing=st.integers(0, 3),
    strays=st.lists(st.sampled_from(["notes.txt", "extra/x.png", "more.csv", "README.md", "broken-link"]), unique=True),
)
def test_every_input_is_used_or_listed(labels, use_csv, style, missing, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        rows = []
        for i, label in enumerate(labels):
            rel = f"{label_key(label).replace(' ', '_')}/img{i}.png" if not use_csv else f"images/img{i}.png"
            save(root / rel, noise_image(i))
            rows.append({"image": rel, "label": label})
        for i in range(missing if use_csv else 0):
            rows.append({"image": f"images/gone{i}.png", "label": labels[0]})
        if use_csv:
            styled = {"posix": "{}", "windows": "{}", "foreign-absolute": "D:/old/{}", "release-prefix": "ds/{}"}
            for r in rows:
                r["image"] = styled[style].format(r["image"])
                r["image"] = r["image"].replace("/", "\\") if style == "windows" else r["image"]
            pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
        for s in strays:
            path = root / s
            if s == "broken-link":  # a link to a file since moved: no image (it had stopped training with a traceback)
                path = root / Path(rows[0]["image"].replace("\\", "/")).parent.name / "moved.png"
                path.symlink_to(Path(tmp) / "elsewhere" / "moved.png")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if s.endswith(".png"):
                save(path, noise_image(99))
            else:
                path.write_text("x")
        m = load_manifest(root)
        ledger = m.ledger
        # every row is used or left out with a reason; every file is used, read as a source, or named as unread
        stray_class = not use_csv and "extra/x.png" in strays  # a folder of images is a class in a folders layout
        assert ledger.used == len(m) == len(labels) + stray_class
        assert ledger.total == ledger.used + (missing if use_csv else 0)
        assert all(reason for _, reason in ledger.left_out + ledger.unread)
        files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
        accounted = m.used_files() | set(m.sources) | {p for p, _ in ledger.left_out + ledger.unread}
        assert files <= accounted
        if "broken-link" in strays:
            assert any(p.endswith("moved.png") and "a link to a missing file" in r for p, r in ledger.unread)
            assert "1 a link to a missing file" in ledger.line()  # one kind, whatever its target
        named = [p for p, _ in ledger.left_out + ledger.unread]
        assert len(named) == len(set(named)), named  # each file named once
        # every row names an image that exists, and labels that differ only in spelling are one class
        assert all((root / img).is_file() for img in m.table["image"])
        assert len(m.labels) == len({label_key(v) for v in labels}) + stray_class


SPELLINGS = ("plain", "dotted", "windows", "absolute", "linked", "detour")


def _spelled(root: Path, rel: str, how: str) -> str:
    """`rel` (a file under `root`) written as a manifest might: ./rel, rel with '\\', this machine's absolute path,
    the absolute path through a symbolic link to the folder, or a detour through ../."""
    if how == "linked":
        link = root.parent / f"{root.name}-link"
        if not link.exists():
            link.symlink_to(root, target_is_directory=True)
        return str(link / rel)
    return {
        "plain": rel,
        "dotted": f"./{rel}",
        "windows": rel.replace("/", "\\"),
        "absolute": str(root.resolve() / rel),
        "detour": f"images/../{rel}",
    }[how]


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["benign", "malignant"]),
            st.sampled_from(["P1", "P2"]),
            st.sampled_from(SPELLINGS),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_an_image_listed_twice_is_read_once_or_named(rows) -> None:
    """Rows naming one image, however spelt (./x, x with '\\', its absolute path, through a symbolic link, via ../),
    are one image with one key: with the same fields one sample; with different fields (a label, a patient) every
    such row is left out and named, never scored with another row's label (an absolute and a relative spelling had
    been two samples, the same image trained and scored with two labels), and no file read is called unread."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        listed = []
        for image, label, patient, how in rows:
            rel = f"images/img{image}.png"
            if not (root / rel).is_file():
                save(root / rel, noise_image(image))
            listed.append({"image": _spelled(root, rel, how), "label": label, "patient": patient})
        pd.DataFrame(listed).to_csv(root / "manifest.csv", index=False)
        fields = {}
        for image, label, patient, _ in rows:
            fields.setdefault(f"images/img{image}.png", set()).add((label, patient))
        agreeing = {img: f.pop() for img, f in fields.items() if len(f) == 1}
        if not agreeing:  # every row left out: the read stops, naming why
            with pytest.raises(DataError, match=r"listed \d+ times with different"):
                load_manifest(root)
            return
        m = load_manifest(root)
        got = {img: (lab, pat) for img, lab, pat in m.table[["image", "label", "patient"]].values}
        assert got == agreeing and len(m) == len(agreeing)  # each image once, by one key, with its only fields
        conflicting = [r for r in rows if f"images/img{r[0]}.png" not in agreeing]
        named = [reason for _, reason in m.ledger.left_out if "listed" in reason]
        assert len(named) == len(conflicting) == m.ledger.total - m.ledger.used
        repeated = sum(1 for img in agreeing if sum(f"images/img{r[0]}.png" == img for r in rows) > 1)
        assert ("listed more than once with the same fields" in " ".join(m.notes)) == (repeated > 0)
        assert not [f for f, _ in m.ledger.unread if f in agreeing], m.ledger.unread  # read files are not "unread"


def test_a_mask_matching_two_images_of_one_name_is_named(tmp_path: Path) -> None:
    """`a.jpg` and `a.png` (two frames) with one mask `a`: which image it belongs to cannot be told, so both
    images and the mask are left out and named (they were both given the mask), in both layouts with masks."""
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    pair, folders = tmp_path / "pair", tmp_path / "folders"
    for i, ext in enumerate(("jpg", "png", "jpg")):
        name = "a" if i < 2 else "b"
        save(pair / "images" / f"{name}.{ext}", noise_image(i))
        save(folders / "benign" / f"{name}.{ext}", noise_image(i))
    for name in ("a", "b"):
        save(pair / "masks" / f"{name}.png", mask)
        save(folders / "benign" / f"{name}_mask.png", mask)
    for root in (pair, folders):
        m = load_manifest(root)
        assert [Path(p).name for p in m.table["image"]] == ["b.jpg"] and m.table["mask"].iat[0]
        left = dict(m.ledger.left_out)
        assert {Path(p).name for p in left} == {"a.jpg", "a.png", "a.png" if root == pair else "a_mask.png"}
        assert all("rename all but one" in r for r in left.values()), left


@settings(max_examples=20, deadline=None)
@given(
    n_classes=st.integers(2, 3),
    per_class=st.integers(1, 3),
    nesting=st.sampled_from(
        [
            "label/patient",
            "label/shared-patient",
            "label/patient/visit",
            "label/named-patient",
            "split/label",
            "release-split/label",
            "site/label",
            "site/grade",
            "modality/label",
        ]
    ),
)
def test_two_folder_levels_are_read_as_what_they_are(n_classes, per_class, nesting) -> None:
    """Images two folders down: class folders holding patient folders (`benign/P007/1.png`) give labels and
    patients (the patient folder had become the label); `train/benign`, `site1/benign` and modality folders with
    classes of their own (`endoscopy/benign-polyp`, HyperKvasir-like) give the inner classes. Patient folders named
    without a digit (`benign/anna_benign`) cannot be told from such classes: read as classes, and the note says how
    to read them as patients (it had said nothing). Patient folders numbered within each class folder
    (`benign/001`, `malignant/001`) and patient folders holding visit folders (`benign/P01/2019-01-01`) give labels
    and patients too (the inner folders had become the classes, without a word); an id under two class folders is
    one patient, said, when there are more of them than a grading scale has: grades inside site folders
    (`aptos/3`, `messidor/3`) stay classes, with the patient reading offered. A release's train / val / test
    folders are kept as its split column (they had been left unsaid), the levels inside read as before."""
    classes = ["benign", "malignant", "normal"][:n_classes]
    with tempfile.TemporaryDirectory() as tmp:
        root, truth, k = Path(tmp), {}, 0
        for c in classes:
            shared = nesting == "label/shared-patient"  # more ids than a grading scale has, as patients are
            grades = nesting == "site/grade"  # every grade under both sites, as grading releases hold them
            for j in range(per_class + nesting.startswith("label/") + shared * 10 + grades):
                outer, inner = (c, f"{c[0]}{j:03d}") if nesting == "label/patient" else (f"{nesting[:4]}{j}", c)
                if nesting == "release-split/label":  # a release's own train / val / test folders
                    outer = ("train", "val", "test")[j % 3]
                if nesting == "label/shared-patient":
                    outer, inner = c, f"{j:03d}"
                if nesting == "modality/label":  # HyperKvasir-like: each modality its own classes, no ids
                    outer, inner = ("endoscopy", "ultrasound")[k % 2], f"{c}-{('polyp', 'cyst')[k % 2]}"
                if nesting == "label/named-patient":
                    outer, inner = c, f"{('anna', 'bert', 'carl', 'dora')[j]}_{c}"
                if nesting == "site/grade":  # grades 0..4 inside sites (aptos/3, messidor/3): classes, not patients
                    outer, inner = ("aptos", "messidor")[j % 2], str(classes.index(c))
                if nesting == "label/patient/visit":
                    outer, inner = c, f"{c[0]}{j:02d}/2019-0{k % 9 + 1}-01"
                rel = f"{outer}/{inner}/img{k}.png"
                save(root / rel, noise_image(k))
                as_inner = nesting in ("modality/label", "label/named-patient", "site/grade")
                patients = nesting.startswith("label/") and nesting != "label/named-patient"
                truth[rel] = (inner if as_inner else c, inner.split("/")[0] if patients else "")
                k += 1
        m = load_manifest(root)
        got = {img: (lab, pat) for img, lab, pat in m.table[["image", "label", "patient"]].values}
        assert got == truth and m.ledger.line() == f"used {k} of {k}"
        if nesting == "release-split/label":
            assert list(m.table["split"]) == [img.split("/")[0] for img in m.table["image"]]
            assert any("folder pattern '{split}/{label}' (detected: the outer folders (" in n for n in m.notes)
        detected = "'{label}/{patient}/*'" if nesting == "label/patient/visit" else "'{label}/{patient}'"
        assert any(f"folder pattern {detected} (detected:" in n for n in m.notes) == patients, m.notes
        if nesting == "label/named-patient":
            assert any("give --pattern '{label}/{patient}'" in n for n in m.notes), m.notes
        if shared:
            assert any("recur under several class folders (e.g. 000 under benign, malignant" in n for n in m.notes)
        if grades:
            assert any("classes (grades) within sites, or patients numbered within each class" in n for n in m.notes)


@pytest.mark.parametrize(
    ("names", "read_as"),
    [
        ([f"patient{k:04d}" for k in range(4)], "named as patients"),  # CAMUS's, however few
        ([f"P{k:02d}" for k in range(3)], "named as patients"),
        ([f"{k:03d}" for k in range(1, 5)], "numbered with leading zeros, as ids are"),
        ([f"id{k}" for k in range(12)], "more than a grading scale has"),
        ([str(k) for k in range(1, 31)], "more than a grading scale has"),  # a small study's patients 1..30
        ([str(k) for k in range(11)], "label, said"),  # class indices 0..10 (a MedMNIST export's 11 classes)
        ([f"{k:05d}" for k in range(43)], "label, said"),  # GTSRB's class folders 00000 ... 00042
        ([f"site{k}" for k in range(3)], "label, said"),  # ids of another kind: classes, the other reading offered
        (list("01234"), "label"),  # grades
    ],
)
def test_one_level_of_folders_named_as_ids_is_read_as_what_they_are(tmp_path, names, read_as) -> None:
    """One folder level: folders named as patients (CAMUS's patient0001/, P07/), however few, or more folders named as
    ids than a grading scale has are patients, not classes (each had become a class of its own, and the folds,
    stratified by it, put a patient's images in training and test), said with the reading as classes; other folders
    named as ids are classes with the patient reading offered, class indices 0 ... N-1 too; grade folders 0..4 are
    classes, unsaid."""
    for k, name in enumerate(names):
        save(tmp_path / name / f"img{k}.png", noise_image(k))
    m = load_manifest(tmp_path)
    patients = not read_as.startswith("label")
    assert sorted(m.table["patient" if patients else "label"]) == sorted(names)
    assert m.ledger.line() == f"used {len(names)} of {len(names)}"
    said = [n for n in m.notes if "folder pattern" in n]
    if patients:
        assert set(m.table["label"]) == {""}
        assert f"folder pattern '{{patient}}' (detected: the {len(names)} folders are named as ids" in said[0], said
        assert read_as in said[0] and "--pattern '{label}' reads them as classes" in said[0], said
    elif read_as == "label, said":
        assert "if they are patients, give --pattern '{patient}'" in said[0], said
    else:
        assert not said or "detected:" not in said[0], said


def test_a_manifest_with_one_row_per_lesion_reads_one_row_per_image(tmp_path: Path) -> None:
    """An image listed once per lesion (its own mask and box per row, a lesion id): one row, the masks' union and
    every box, with a note; a label that differs between the rows is still a conflict, named."""
    from medcad.data.masks import read_mask

    save(tmp_path / "a.png", noise_image(1))
    save(tmp_path / "b.png", noise_image(2))
    for k, (y, x) in enumerate(((4, 4), (20, 20))):
        m = np.zeros((32, 32), np.uint8)
        m[y : y + 6, x : x + 6] = 255
        save(tmp_path / f"a_lesion{k}.png", m)
    box = lambda y, x: f'"[[{x}, {y}, {x + 6}, {y + 6}, ""polyp""]]"'  # noqa: E731
    (tmp_path / "manifest.csv").write_text(
        "image,label,mask,boxes,lesion_id\n"
        f"a.png,polyp,a_lesion0.png,{box(4, 4)},1\n"
        f"a.png,polyp,a_lesion1.png,{box(20, 20)},2\n"
        "b.png,polyp,,,1\nb.png,normal,,,2\n"
    )
    m = load_manifest(tmp_path)
    assert list(m.table["image"]) == ["a.png"] and m.ledger.line().startswith("used 1 of 3")
    assert read_mask(m.mask_paths(0)).sum() == 72 and len(m.boxes(0)) == 2
    assert any("listed once per lesion" in n and "lesion_id kept from the first row" in n for n in m.notes)
    assert all("different label" in r for p, r in m.ledger.left_out if p == "b.png")


def test_duplicates_are_judged_after_labels_are_normalised(tmp_path: Path) -> None:
    """`benign` and `Benign`, or a label --label-map renames to the other, are one label: the rows are one sample."""
    save(tmp_path / "1.png", noise_image(1))
    save(tmp_path / "3.png", noise_image(3))
    (tmp_path / "manifest.csv").write_text("image,label\n1.png,benign\n1.png,Benign\n3.png,benign\n3.png,adenoma\n")
    m = load_manifest(tmp_path, label_map="adenoma=benign")
    assert sorted(m.table["image"]) == ["1.png", "3.png"] and m.ledger.line() == "used 2 of 2"


def test_a_label_map_entry_naming_no_label_stops_with_the_labels_there(tmp_path: Path) -> None:
    """`--label-map benign=abnormal,malignat=abnormal`: the typo had been ignored (a planned two-class study became a
    three-class one) under a note saying it was applied. Labels of multi-label cells count as labels."""
    for i, label in enumerate(["benign", "malignant", "normal"]):
        save(tmp_path / "set" / label / f"{i}.png", noise_image(i))
    with pytest.raises(ConfigError, match=r"'malignat' \(did you mean 'malignant'\?\).*benign, malignant, normal"):
        load_manifest(tmp_path / "set", label_map="benign=abnormal,malignat=abnormal")
    m = load_manifest(tmp_path / "set", label_map="benign=abnormal,malignant=abnormal")
    assert m.labels == ["abnormal", "normal"]
    save(tmp_path / "ml" / "a.png", noise_image(7))
    pd.DataFrame([{"image": "a.png", "label": "stone|cyst"}]).to_csv(tmp_path / "ml" / "manifest.csv", index=False)
    m = load_manifest(tmp_path / "ml", label_map="cyst=renal cyst")  # a label of a multi-label cell, renamed there
    assert list(m.table["label"]) == ["stone|renal cyst"]


@pytest.mark.parametrize("header", ["Labels", "Findings", "Pathology", "Diagnosis"])
def test_label_columns_as_people_head_them(tmp_path: Path, header: str) -> None:
    """A multi-label manifest headed `findings` had been read as having no label column."""
    for i in range(2):
        save(tmp_path / f"{i}.png", noise_image(i))
    pd.DataFrame([{"image": "0.png", header: "stone|cyst"}, {"image": "1.png", header: "cyst"}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    assert list(load_manifest(tmp_path).table["label"]) == ["stone|cyst", "cyst"]


def test_sibling_split_folders_with_their_masks_are_a_split_not_classes(tmp_path: Path) -> None:
    """`train/` + `train_masks/`, `test/` + `test_masks/`: the split's folders had become the labels 'train' and
    'test' (a multitask run would have learned the split as a class); no label now, the split in a column that
    `data split --split-column split` keeps."""
    from medcad.data.splits import make_splits

    m = load_manifest(_sibling_pairs(tmp_path / "release", {"train": 6, "test": 3}, "_masks", "{}", ""))
    assert m.layout == "images-masks" and m.labels == [] and len(m) == 9 and (m.table["mask"] != "").all()
    assert sorted(m.table["split"]) == ["test"] * 3 + ["train"] * 6
    assert any("in the 'split' column" in n for n in m.notes)
    m.table["label"] = "lesion"
    s = make_splits(m, split_column="split", group_by="none")
    assert sorted(s["folds"][0]["test"]) == [f"test/test{k}.png" for k in range(3)]
    # a pair in each split's folder (`train/{images,masks}`, as Kaggle releases are): a split too, not classes (the
    # folders had become the labels 'train' and 'test' here)
    for part, n in {"train": 4, "test": 2}.items():
        _sibling_pairs(tmp_path / "nested" / part, {"images": n}, "_masks", "{}", "")
        (tmp_path / "nested" / part / "images_masks").rename(tmp_path / "nested" / part / "masks")
    m = load_manifest(tmp_path / "nested")
    assert m.labels == [] and len(m) == 6 and (m.table["mask"] != "").all(), (m.notes, m.table)
    assert sorted(m.table["split"]) == ["test"] * 2 + ["train"] * 4


def _binary(seed: int) -> np.ndarray:
    m = np.zeros((32, 32), np.uint8)
    m[seed % 16 : seed % 16 + 10, 4:20] = 255
    return m


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["benign", "malignant"]), st.sampled_from(["pair", "image", "orphan"]))),
    st.booleans(),
)
def test_a_mask_without_its_image_is_named_never_read_as_an_image(files, picture_named_mask) -> None:
    """Class folders with masks beside images (`x.png` + `x_mask.png`): a mask whose image is missing is named
    and left out (a BUSI `benign (13)_mask.png` without its image had been read, and trained on, as a benign
    image); a picture whose name merely ends in `_mask`, in a dataset that pairs nothing by that suffix, is still
    an image."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        for i, (label, kind) in enumerate(files):
            if kind != "orphan":
                save(root / label / f"img{i}.png", noise_image(i))
            if kind != "image":
                save(root / label / f"img{i}_mask.png", _binary(i))
        picture = picture_named_mask and not any(kind == "pair" for _, kind in files)
        if picture:
            save(root / "benign" / "face_mask.png", noise_image(77))
        if not any(kind != "orphan" for _, kind in files) and not picture:
            return  # no image at all: refused as such elsewhere
        m = load_manifest(root)
        images = set(m.table["image"])
        assert images == {f"{lab}/img{i}.png" for i, (lab, k) in enumerate(files) if k != "orphan"} | (
            {"benign/face_mask.png"} if picture else set()
        )
        masked = {img for img, mask in zip(m.table["image"], m.table["mask"], strict=True) if mask}
        assert masked == {f"{lab}/img{i}.png" for i, (lab, k) in enumerate(files) if k == "pair"}
        left_out = {p for p, why in m.problems if "a mask" in why}
        assert left_out == {f"{lab}/img{i}_mask.png" for i, (lab, k) in enumerate(files) if k == "orphan"}


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.sampled_from(["mask", "boxes", "none"]), min_size=1, max_size=8),
    st.sampled_from(["segment", "multitask", "classify", "detect"]),
    st.sampled_from(["error", "empty", "leave-out"]),
)
def test_images_without_a_mask_are_left_out_by_name_when_asked(kinds, task, missing) -> None:
    """`--missing-masks leave-out`: a mask task leaves out, by name in the ledger, the images that have no mask (a
    COCO file's box-only annotations beside its polygons had stopped a segmentation run with no right choice: empty
    would call boxed lesions lesion-free); every other task and setting keeps every row."""
    from medcad.config import TrainConfig
    from medcad.targets import with_masks_only

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i, kind in enumerate(kinds):
            save(root / f"{i}.png", noise_image(i))
            mask = ""
            if kind == "mask":
                save(root / f"{i}_m.png", np.where(noise_image(i)[..., 0] > 128, 255, 0).astype(np.uint8))
                mask = f"{i}_m.png"
            boxes = '"[[1, 2, 10, 12, ""lesion""]]"' if kind == "boxes" else ""
            rows.append(f"{i}.png,{('lesion', 'normal', '')[i % 3]},{mask},{boxes}")
        (root / "manifest.csv").write_text("image,label,mask,boxes\n" + "\n".join(rows) + "\n")
        m = load_manifest(root)
        leaves = missing == "leave-out" and task in ("segment", "multitask")
        if leaves and "mask" not in kinds:  # nothing would be left: said, not a crash later
            with pytest.raises(DataError, match="no image has a mask"):
                with_masks_only(m, TrainConfig(task=task, missing_masks=missing))
            return
        kept = with_masks_only(m, TrainConfig(task=task, missing_masks=missing))
        want = [f"{i}.png" for i, k in enumerate(kinds) if k == "mask" or not leaves]
        assert list(kept.table["image"]) == want and kept.ledger.used == len(want)
        named = {p for p, why in kept.ledger.left_out if "no mask" in why}
        assert named == {f"{i}.png" for i, k in enumerate(kinds) if k != "mask" and leaves}
        if named:
            boxed = sum(k == "boxes" for k in kinds)
            assert any(f"{len(named)} image(s) without a mask left out" in n for n in kept.notes)
            assert any(f"{boxed} of them have boxes" in n for n in kept.notes) == bool(boxed)
        # --missing-masks empty says how many it reads as lesion-free, and names those under a finding's label (an
        # external set's benign image without its mask had been scored a false lesion, unsaid); unlabelled frames and
        # the lesion-free label's are what the flag says
        said = [n for n in kept.notes if "read as lesion-free" in n]
        maskless = [i for i, k in enumerate(kinds) if k != "mask"]
        if missing == "empty" and task in ("segment", "multitask") and maskless:
            (note,) = said
            assert note.startswith(f"{len(maskless)} image(s) without a mask read as lesion-free")
            finding = [i for i in maskless if i % 3 == 0]
            assert (f"{len(finding)} of them under a label that names a finding (lesion {len(finding)})" in note) == (
                bool(finding)
            )
        else:
            assert not said
        # the ledger's line among the notes counts what the run uses ("used 46 of 46" beside "1 left out" had been said)
        assert kept.ledger.line() in kept.notes and f"used {len(want)} of {len(kinds)}" in kept.ledger.line()


def test_one_file_listed_under_two_paths_is_one_image(tmp_path: Path) -> None:
    """A manifest row and another naming the same file through a link (an alias a new user added to an external set
    had been scored twice): read once with a note when the rows agree; both left out, named, when their labels
    differ."""
    save(tmp_path / "a.png", noise_image(1))
    save(tmp_path / "b.png", noise_image(2))
    (tmp_path / "alias").mkdir()
    (tmp_path / "alias" / "x.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,label\na.png,benign\nb.png,benign\nalias/x.png,benign\n")
    m = load_manifest(tmp_path / "m.csv")
    assert len(m) == 2 and any("listed under two or more paths" in n for n in m.notes)
    (tmp_path / "m.csv").write_text("image,label\na.png,benign\nb.png,benign\nalias/x.png,malignant\n")
    m = load_manifest(tmp_path / "m.csv")
    assert list(m.keys) == ["b.png"] and {p for p, _ in m.ledger.left_out} == {"a.png", "alias/x.png"}


def test_a_folder_of_masks_alone_says_so(tmp_path: Path) -> None:
    """Masks copied without their images: the error names a mask and why it was set aside (it had advised a folder
    pattern), and links to moved files are counted where no image is left."""
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 255
    for k in range(3):
        save(tmp_path / "benign" / f"b{k}_mask.png", mask)
    with pytest.raises(DataError, match=r"no image to read: the 3 media file\(s\) found were all set aside, e\.g\. "
                       r"benign/b0_mask\.png: a mask .* without an image"):  # fmt: skip
        load_manifest(tmp_path)
    for k in range(3):  # with images that do not fit a pattern given, the pattern is what to mend
        save(tmp_path / "benign" / f"b{k}.png", noise_image(k))
    save(tmp_path / "benign" / "stray_mask.png", mask)
    with pytest.raises(DataError, match=r"no images fit the folder pattern '\{domain\}/\{label\}'.*\(1 more set aside"):
        load_manifest(tmp_path, pattern="{domain}/{label}")
    links = tmp_path.parent / "links"
    links.mkdir()
    (links / "b0.png").symlink_to(tmp_path / "moved" / "b0.png")
    with pytest.raises(DataError, match=r"no images found .*; 1 link\(s\) to missing files, e\.g\. b0\.png"):
        load_manifest(links)


def test_a_row_naming_a_link_to_a_missing_file_is_named_once(tmp_path: Path) -> None:
    """A manifest row naming a link whose file has moved is left out as missing (--allow-missing) and named once in
    the ledger, as that row (the walk had named it a second time as a link to a missing file)."""
    save(tmp_path / "img" / "a.png", noise_image(0))
    save(tmp_path / "img" / "b.png", noise_image(1))
    (tmp_path / "img" / "gone.png").symlink_to(tmp_path / "moved" / "gone.png")
    (tmp_path / "m.csv").write_text("image,label\nimg/a.png,x\nimg/b.png,y\nimg/gone.png,x\n")
    m = load_manifest(tmp_path / "m.csv", allow_missing=True)
    named = [p for p, _ in m.ledger.left_out + m.ledger.unread if p.endswith("gone.png")]
    assert named == ["img/gone.png"] and len(m) == 2


def test_a_mask_moved_away_or_a_boxed_image_without_a_mask_is_no_lesion_free_frame(tmp_path: Path) -> None:
    """A mask that is a link to a moved file leaves its image maskless: the read says so, even with --missing-masks
    empty (which had trained such a polyp as lesion-free); a broken link that is no mask of it (another class
    folder's image of its name, an old copy beside it) is not blamed; a new run refuses images with boxes and no
    mask under --missing-masks empty."""
    from medcad.config import TrainConfig
    from medcad.data.datasets import read_sample_mask
    from medcad.targets import load_targets

    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 255
    for k in range(3):
        save(tmp_path / "images" / f"p{k}.png", noise_image(k))
        if k == 1:
            save(tmp_path / "masks" / f"p{k}.png", mask)
    (tmp_path / "masks" / "p0.png").symlink_to(tmp_path / "moved" / "p0.png")
    (tmp_path / "images" / "p2_old.png").symlink_to(tmp_path / "moved" / "p2_old.png")  # no mask of p2
    m = load_manifest(tmp_path)
    for missing in ("error", "empty"):
        with pytest.raises(DataError, match=r"has no mask: its mask masks/p0.png is a link to a missing file"):
            read_sample_mask(m, m.keys.index("images/p0.png"), missing)
    assert not read_sample_mask(m, m.keys.index("images/p2.png"), "empty").any()  # lesion-free, as asked
    (tmp_path / "masks" / "p0.png").unlink()
    m = load_manifest(tmp_path)
    assert not read_sample_mask(m, m.keys.index("images/p0.png"), "empty").any()  # a lesion-free frame, as asked
    m.table.loc[m.table["image"] == "images/p0.png", "boxes"] = '[[2, 2, 20, 20, "polyp"]]'
    cfg = TrainConfig(task="segment", missing_masks="empty", image_size=16)
    with pytest.raises(DataError, match=r"1 image\(s\) have boxes \(a lesion\) but no mask: --missing-masks empty"):
        load_targets(m, cfg)


def test_a_broken_link_in_another_class_folder_is_not_an_images_mask(tmp_path: Path) -> None:
    from medcad.data.datasets import read_sample_mask

    save(tmp_path / "normal" / "1.png", noise_image(1))
    save(tmp_path / "benign" / "2.png", noise_image(2))
    (tmp_path / "benign" / "1.png").symlink_to(tmp_path / "moved" / "1.png")
    m = load_manifest(tmp_path)
    assert not read_sample_mask(m, m.keys.index("normal/1.png"), "empty").any()
