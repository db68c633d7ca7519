"""Values as other tools write them: missing-value markers (R's NA, pandas' nan, Python's None), one patient id in
several number forms or cases, one class in several cases across labels, boxes, shapes and tags, and majority ties.
Each is read as one value, or left empty, and said."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.data.splits import sample_groups
from medcad.data.tables import AMBIGUOUS_MARKERS, MISSING_MARKERS

FORMS = ("{n}", "{n:03d}", "{n}.0", " {n} ", "P{n}", "p{n}", "P-{n}", "P_{n}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from(FORMS),
            st.sampled_from([None, *sorted(MISSING_MARKERS | AMBIGUOUS_MARKERS), ""]),
        ),
        min_size=2,
        max_size=10,
    ),
    label_marker=st.sampled_from(sorted(MISSING_MARKERS)),
)
def test_patient_ids_in_any_form_are_one_patient_and_missing_markers_are_empty(rows, label_marker) -> None:
    """Patient 7 written 7, 007, 7.0 or ' 7 ' (and P7, p7, P-7, P_7) is one patient, whose images share one group
    in every split, with a note; an id cell holding a missing-value marker (NA, nan, None, N/A, -, ...) is empty,
    not a patient that holds every such image; a label cell holding one is no class. Each is said."""
    with tempfile.TemporaryDirectory() as tmp:
        root, table, truth = Path(tmp), [], {}
        for i, (n, form, missing) in enumerate(rows):
            save(root / f"{i}.png", noise_image(i))
            written = form.format(n=n) if missing is None else missing
            table.append({"image": f"{i}.png", "label": "benign" if i else label_marker, "patient": written})
            kind = "P-" if form[1:2] in "-_" and form[0] == "P" else form[0] if form[0] in "Pp" else "number"
            truth[f"{i}.png"] = None if missing is not None else (kind.upper(), n, written.strip())
        pd.DataFrame(table).to_csv(root / "manifest.csv", index=False)
        m = load_manifest(root)
        got = dict(zip(m.table["image"], m.table["patient"], strict=True))
        assert "" not in m.labels and label_marker not in m.labels
        assert m.table.set_index("image").at["0.png", "label"] == ""
        members: dict[tuple, list[str]] = {}
        for image, patient in truth.items():
            assert (got[image] == "") == (patient is None), (image, got[image])
            if patient is not None:
                members.setdefault(patient[:2], []).append(image)
        spellings = {p: {got[i] for i in images} for p, images in members.items()}
        assert all(len(s) == 1 for s in spellings.values()), spellings  # one spelling per patient
        assert len(set().union(*spellings.values())) == len(members)  # and none shared
        notes = " ".join(m.notes)
        written = {p: {truth[i][2] for i in images} for p, images in members.items()}
        assert ("patient ids merged" in notes) == any(len(w) > 1 for w in written.values()), notes
        assert "missing-value markers read as empty cells: 1 label cell(s)" in notes
        blank = sum(q is None for q in truth.values())
        if 0 < blank < len(truth):
            assert f"{blank} of {len(truth)} images have no patient id" in notes
        if members:
            groups, _ = sample_groups(m, "patient")
            by_image = dict(zip(m.table["image"], groups, strict=True))
            assert all(len({by_image[i] for i in images}) == 1 for images in members.values())
            assert len({by_image[images[0]] for images in members.values()}) == len(members)


def _coco(root: Path, per_image: list[list[str]]) -> None:
    """A COCO file with one 8 x 8 box per name, categories in the order first seen."""
    cats = list(dict.fromkeys(n for names in per_image for n in names))
    images, anns = [], []
    for i, names in enumerate(per_image):
        save(root / f"{i}.png", noise_image(i, size=40))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 40})
        for k, n in enumerate(names):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": cats.index(n) + 1, "bbox": [k, k, 8, 8]}
            )
    categories = [{"id": j + 1, "name": n} for j, n in enumerate(cats)]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )


def test_box_classes_in_two_cases_are_one_class_and_a_majority_tie_is_no_label(tmp_path: Path) -> None:
    """COCO categories `polyp` and `Polyp` are one detection class (they had been two), and an image whose
    annotations tie between two categories gets no label, said (annotation order had decided it)."""
    from medcad.data.boxes import manifest_boxes
    from medcad.data.summary import summarize

    _coco(tmp_path, [["polyp", "polyp", "Polyp"], ["polyp"], ["Polyp", "adenoma"], ["adenoma", "polyp", "adenoma"]])
    coco = json.loads((tmp_path / "annotations.json").read_text())
    coco["annotations"][0]["iscrowd"] = 1  # as CVAT marks its RLE masks: a lesion all the same, said
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert any(n.startswith("1 annotation(s) marked iscrowd") for n in m.notes)
    labels = dict(zip(m.table["image"], m.table["label"], strict=True))
    assert labels == {"0.png": "polyp", "1.png": "polyp", "2.png": "", "3.png": "adenoma"}
    assert sorted(manifest_boxes(m, 40)[0]) == ["adenoma", "polyp"]
    assert summarize(m)["box_classes"] == {"adenoma": 3, "polyp": 6}  # inspect's per-class box count
    notes = " ".join(m.notes)
    assert "Polyp -> polyp" in notes and "1 of them have no most frequent one (e.g. 2.png, a tie)" in notes


def test_shapes_and_tags_in_two_cases_agree_and_different_tags_are_said(tmp_path: Path) -> None:
    """A VOC image with a `Polyp` and a `polyp` box has one label, both boxes its class (its label had been left
    empty as mixed, its boxes two classes); a
    YOLO classes.txt with a blank line numbers its classes as darknet and LabelImg do; CVAT <tag>s of two labels
    leave the label empty, said (the note had called the tag the label)."""
    voc = tmp_path / "voc"
    save(voc / "JPEGImages" / "a.jpg", noise_image(1, size=40))
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        for n in ("Polyp", "polyp")
    )
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>40</width><height>40</height></size>{objects}</annotation>"
    )
    m = load_manifest(voc)
    (label,) = m.table["label"]  # one class, as spelled most often (a tie here: either spelling)
    assert label in ("Polyp", "polyp") and {b[4] for b in json.loads(m.table["boxes"].iat[0])} == {label}

    yolo = tmp_path / "yolo"
    save(yolo / "a.png", noise_image(2, size=40))
    (yolo / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    (yolo / "classes.txt").write_text("polyp\n\nadenoma\n")
    m = load_manifest(yolo)
    assert list(m.table["label"]) == ["adenoma"]
    save(yolo / "b.png", noise_image(4, size=40))
    (yolo / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")  # the blank line's class: no name, refused
    m = load_manifest(yolo)
    assert list(m.table["image"]) == ["a.png"] and "b.png" in dict(m.problems)

    cvat = tmp_path / "cvat"
    save(cvat / "images" / "a.png", noise_image(3, size=40))
    (cvat / "annotations.xml").write_text(
        "<annotations><meta><task><labels><label><name>normal</name></label><label><name>polyp</name></label>"
        '</labels></task></meta><image id="0" name="images/a.png" width="40" height="40">'
        '<tag label="normal" /><tag label="polyp" /></image></annotations>'
    )
    m = load_manifest(cvat)
    assert list(m.table["label"]) == [""]
    assert any("<tag>s of different labels (e.g. images/a.png): label left empty" in n for n in m.notes)


@pytest.mark.parametrize(
    ("subfolders", "column"),
    [(["benign", "malignant"], "label"), ([f"P{k:03d}" for k in range(6)], "patient"), (["train", "test"], "split")],
)
def test_sub_folders_of_paired_image_and_mask_folders_are_read_and_said(
    tmp_path: Path, subfolders: list[str], column: str
) -> None:
    """`images/benign/1.png` beside `masks/benign/1.png`: the sub-folders give the label (six or more named as ids:
    the patient; train / test: the split column), with a note; they had been dropped without a word."""
    from PIL import Image

    for k, sub in enumerate(subfolders):
        save(tmp_path / "images" / sub / f"{k}.png", noise_image(k))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 255
        (tmp_path / "masks" / sub).mkdir(parents=True)
        Image.fromarray(mask).save(tmp_path / "masks" / sub / f"{k}.png")
    m = load_manifest(tmp_path)
    assert m.layout == "images-masks" and (m.table["mask"] != "").all()
    assert sorted(m.table[column]) == sorted(subfolders)
    assert any(n.startswith("sub-folders of images/ read with the folder pattern") for n in m.notes), m.notes


def test_a_second_column_a_standard_name_would_read_is_said(tmp_path: Path) -> None:
    """`class` beside `pathology` (both label names), `patient_id` beside `case`: the first is read and the other
    said, once, as kept metadata (it had been listed only among the extra columns)."""
    save(tmp_path / "0.png", noise_image(0))
    pd.DataFrame(
        {"image": ["0.png"], "pathology": ["benign"], "class": ["mass"], "patient_id": [1], "case": ["a"]}
    ).to_csv(tmp_path / "manifest.csv", index=False)
    m = load_manifest(tmp_path)
    assert m.labels == ["mass"] and list(m.table["patient"]) == ["1"]
    said = [n for n in m.notes if "would also be read as" in n]
    assert said == [
        "column(s) 'pathology' would also be read as 'label': 'class' is, the others are kept as metadata (rename "
        "the one meant to 'label')",
        "column(s) 'case' would also be read as 'patient': 'patient_id' is, the others are kept as metadata (rename "
        "the one meant to 'patient')",
    ]
    assert not any("'case' looks like" in n for n in m.notes)


def test_markers_that_are_also_names_are_kept_in_labels_and_said(tmp_path: Path) -> None:
    """`None` in a severity scale (None, Mild, Moderate, Severe), `NA` as a site: values, kept, with a note saying
    how to mark them missing instead (they had been erased as missing values); in patient ids they are missing."""
    rows = [("None", "NA", "-"), ("Mild", "site1", "P1"), ("None", "site1", "P2"), ("Severe", "NA", "None")]
    for i in range(len(rows)):
        save(tmp_path / f"{i}.png", noise_image(i))
    pd.DataFrame(
        {"image": [f"{i}.png" for i in range(4)], "label": [r[0] for r in rows], "domain": [r[1] for r in rows],
         "patient": [r[2] for r in rows]}
    ).to_csv(tmp_path / "manifest.csv", index=False)  # fmt: skip
    m = load_manifest(tmp_path)
    assert m.labels == ["Mild", "None", "Severe"] and sorted(set(m.table["domain"])) == ["NA", "site1"]
    assert list(m.table["patient"]) == ["", "P1", "P2", ""]
    assert any("label 'None', domain 'NA' kept as value(s)" in n for n in m.notes), m.notes
