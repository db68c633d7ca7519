"""Each layout read from tiny generated folders, plus the problems each reader must name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import noise_image, save, write_dicom
from medcad.data.io import read_image
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask
from medcad.errors import DataError


def test_class_folders(class_folders: Path) -> None:
    m = load_manifest(class_folders)
    assert m.layout == "folders"
    assert len(m) == 12
    assert m.labels == ["lesion", "normal"]
    assert m.table["image"].iloc[0].startswith("lesion/")


def test_nested_pattern_domain_and_group(tmp_path: Path) -> None:
    for d, domain in enumerate(["cysto", "uretero"]):
        for label in ["lesion", "normal"]:
            for k in range(2):
                save(tmp_path / domain / label / f"{k}.png", noise_image(d * 10 + k + (5 if label == "lesion" else 0)))
    m = load_manifest(tmp_path, pattern="{domain}/{label}")
    assert sorted(m.table["domain"].unique()) == ["cysto", "uretero"]
    assert (m.table.groupby("label").size() == 4).all()
    g = load_manifest(tmp_path, pattern="{group}/{label}")
    assert sorted(g.table["patient"].unique()) == ["cysto", "uretero"]


def test_pattern_mismatch_is_reported(tmp_path: Path) -> None:
    save(tmp_path / "a" / "lesion" / "x.png", noise_image(1))
    save(tmp_path / "stray" / "y.png", noise_image(2))
    m = load_manifest(tmp_path, pattern="{domain}/{label}")
    assert len(m) == 1
    assert m.problems and "pattern" in m.problems[0][1]


def test_masks_beside_images_union(tmp_path: Path) -> None:
    save(tmp_path / "benign" / "benign (1).png", noise_image(1))
    a = np.zeros((32, 32), np.uint8)
    b = np.zeros((32, 32), np.uint8)
    a[:8, :8] = 255
    b[20:, 20:] = 255
    save(tmp_path / "benign" / "benign (1)_mask.png", a)
    save(tmp_path / "benign" / "benign (1)_mask_1.png", b)
    save(tmp_path / "normal" / "n_M.png", np.zeros((32, 32), np.uint8))
    save(tmp_path / "normal" / "n.png", noise_image(2))
    m = load_manifest(tmp_path)
    assert len(m) == 3  # n_M.png is an image here: the default suffix is _mask
    row = m.table.set_index("image").loc["benign/benign (1).png"]
    assert row["mask"].count("|") == 1
    union = read_mask(m.mask_paths(list(m.table["image"]).index("benign/benign (1).png")))
    assert union.sum() == 64 + 144
    m2 = load_manifest(tmp_path, mask_suffix="_M")
    # with _M, n_M.png is n.png's mask; the _mask files stay masks by their mask word and mask-like content
    assert len(m2) == 2 and (m2.table["mask"] != "").sum() == 2
    assert any("by a mask word" in n for n in m2.notes)


def test_csv_manifest_problems_are_named(tmp_path: Path) -> None:
    save(tmp_path / "img" / "a.png", noise_image(1))
    save(tmp_path / "img" / "b.png", noise_image(2))
    (tmp_path / "data.csv").write_text(
        "path,class,patient_id,domain,age\nimg/a.png,lesion,p1,cysto,61\nimg/b.png,weird,p2,cysto,70\n"
        "img/missing.png,lesion,p3,cysto,50\n"
    )
    m = load_manifest(tmp_path / "data.csv", labels=["lesion", "normal"])
    assert list(m.table["image"]) == ["img/a.png"]
    assert m.table["age"].iloc[0] == "61"  # extra metadata kept
    problems = dict(m.problems)
    assert "file not found" in problems["img/missing.png"] and "line 4" in problems["img/missing.png"]
    assert "weird" in problems["img/b.png"]


def test_csv_label_column_as_clinicians_head_it_or_a_note(tmp_path: Path) -> None:
    save(tmp_path / "img" / "a.png", noise_image(1))
    (tmp_path / "f.csv").write_text("image,Finding,MRN\nimg/a.png,benign,77\n")
    assert load_manifest(tmp_path / "f.csv").labels == ["benign"]
    (tmp_path / "g.csv").write_text("image,grade,MRN\nimg/a.png,benign,77\n")
    m = load_manifest(tmp_path / "g.csv")
    assert m.labels == [] or m.labels == [""]
    assert any("no label column" in n and "grade, MRN" in n for n in m.notes), m.notes


def test_csv_without_image_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(DataError, match="no image column"):
        load_manifest(tmp_path / "m.csv")


def test_images_masks_with_box_json(tmp_path: Path) -> None:
    for k in range(3):
        save(tmp_path / "images" / f"id{k}.jpg", noise_image(k, 40))
        save(tmp_path / "masks" / f"id{k}.jpg", (noise_image(k, 40, gray=True) > 128).astype(np.uint8) * 255)
    boxes = {
        f"id{k}": {
            "height": 40,
            "width": 40,
            "bbox": [{"label": "polyp", "xmin": 1, "ymin": 2, "xmax": 9, "ymax": 10}] * (k + 1),
        }
        for k in range(5)
    }
    (tmp_path / "bboxes.json").write_text(json.dumps(boxes))
    m = load_manifest(tmp_path)
    assert m.layout == "images-masks"
    assert (m.table["mask"] != "").all()
    assert sum(len(m.boxes(i)) for i in range(3)) == 6
    said = "boxes from bboxes.json: 3 of 3 images; its 2 entries naming no image here are not used; labels from"
    assert any(n.startswith(said) for n in m.notes), m.notes
    assert set(m.table["label"]) == {"polyp"}


def test_coco(tmp_path: Path) -> None:
    save(tmp_path / "images" / "f1.png", noise_image(1))
    save(tmp_path / "images" / "f2.png", noise_image(2))
    coco = {
        "images": [{"id": 1, "file_name": "f1.png"}, {"id": 2, "file_name": "f2.png"}, {"id": 3, "file_name": "x.png"}],
        "annotations": [{"image_id": 1, "bbox": [2, 3, 10, 5], "category_id": 7}],
        "categories": [{"id": 7, "name": "tumour"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert m.layout == "coco"
    by_image = m.table.set_index("image")
    assert by_image.loc["images/f1.png", "label"] == "tumour"
    assert by_image.loc["images/f2.png", "label"] == "background"
    assert m.boxes(0) == [[2, 3, 12, 8, "tumour"]]
    assert m.problems[0][0] == "x.png"


def test_dicom_multiframe_one_row_per_frame(tmp_path: Path) -> None:
    frames = (np.random.default_rng(0).random((3, 16, 20)) * 4000).astype(np.uint16)
    write_dicom(tmp_path / "us" / "clip.dcm", frames)
    save(tmp_path / "us" / "still.png", noise_image(3))
    (tmp_path / "us" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    m = load_manifest(tmp_path)
    assert sorted(m.keys) == ["us/clip.dcm#0", "us/clip.dcm#1", "us/clip.dcm#2", "us/still.png"]
    assert m.problems and m.problems[0][0] == "us/broken.dcm" and "DICOM" in m.problems[0][1]
    img = read_image(m.image_path(0), frame=2)
    assert img.shape == (16, 20, 3) and img.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_image_modes(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    arr = {
        "L": np.full((8, 9), 7, np.uint8),
        "RGB": np.zeros((8, 9, 3), np.uint8),
        "RGBA": np.zeros((8, 9, 4), np.uint8),
        "I;16": np.arange(72, dtype=np.uint16).reshape(8, 9) * 900,
    }[mode]
    p = tmp_path / f"x.{'tif' if mode == 'I;16' else 'png'}"
    Image.fromarray(arr).save(p)
    out = read_image(p)
    assert out.shape == (8, 9, 3) and out.dtype == np.uint8
    if mode == "I;16":  # scaled from the full 16-bit range, not stretched per image
        np.testing.assert_array_equal(out[..., 0], np.floor(arr * (255 / 65535) + 0.5).astype(np.uint8))


def test_bad_files_raise_named_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: file is empty"):
        read_image(empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.jpg"):
        read_image(junk)
    with pytest.raises(DataError, match="dataset path not found"):
        load_manifest(tmp_path / "nowhere")


def test_an_image_folder_and_its_mask_folder_are_not_read_as_two_classes(tmp_path: Path) -> None:
    """MONAI / Decathlon: images/ and labels/ whose names do not match: read as classes 'images' and 'labels', a
    classifier had told them apart at AUC 1.000, unsaid. Their dataset.json's "training" list pairs them (and its
    "validation" list is the split 'val'); without it the read is refused, naming both folders; a class folder that
    only has the name keeps its images."""
    for k in range(4):
        save(tmp_path / "images" / f"frame_{k}.png", noise_image(k, 32))
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 10 : 24 + k] = 1
        save(tmp_path / "labels" / f"seg_{k}.png", mask)
    with pytest.raises(DataError, match="'images/' and 'labels/' were read as two classes, but 'labels/' holds masks"):
        load_manifest(tmp_path)
    pairs = [{"image": f"./images/frame_{k}.png", "label": f"./labels/seg_{k}.png"} for k in range(3)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": pairs[:2], "validation": pairs[2:], "test": []}))
    m = load_manifest(tmp_path)
    assert m.layout == "datalist" and list(m.table["split"]) == ["train", "train", "val"]
    assert [read_mask(m.mask_paths(i)).sum() for i in range(3)] == [12 * 14, 12 * 15, 12 * 16]
    assert {p for p, _ in m.ledger.unread} == {"images/frame_3.png", "labels/seg_3.png"}  # not listed: named
    (tmp_path / "dataset.json").unlink()
    for k in range(4):  # photographs in a folder named labels: a class, as before
        save(tmp_path / "labels" / f"seg_{k}.png", noise_image(10 + k, 32))
    assert load_manifest(tmp_path).labels == ["images", "labels"]


def test_a_classification_datalist_gives_each_image_its_class(tmp_path: Path) -> None:
    """MONAI's classification datalists: {"image", "label": a class index}; the Decathlon's "test" list of paths."""
    for k in range(3):
        save(tmp_path / "img" / f"{k}.png", noise_image(k, 32))
    items = [{"image": "img/0.png", "label": 0}, {"image": "img/1.png", "label": 1}]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": items, "test": ["img/2.png"]}))
    m = load_manifest(tmp_path)
    assert m.table[["label", "split"]].values.tolist() == [["0", "train"], ["1", "train"]]
    assert "img/2.png" in dict(m.ledger.unread) and any("its 'test' list have no label" in n for n in m.notes)


def test_the_one_table_of_a_folder_is_its_manifest_by_another_name(tmp_path: Path) -> None:
    """A folder of images and one CSV whose image column names them (`labels_cp1252.csv`): that table is the
    manifest, said (it had been left unread, and the folder read gave every image its folder's name as label); a
    table whose column names no file there, or two tables, leave the folder read as before."""
    for k in range(4):
        save(tmp_path / "Bilder" / f"{k}.png", noise_image(k, 32))
    rows = "".join(f"Bilder\\{k}.png;{'benign' if k % 2 else 'malignant'}\n" for k in range(4))
    (tmp_path / "labels_cp1252.csv").write_text("sep=;\nImage;Diagnosis\n" + rows, encoding="cp1252")
    m = load_manifest(tmp_path)
    assert m.layout == "csv" and m.labels == ["benign", "malignant"] and len(m) == 4
    assert any("labels_cp1252.csv, the one table in the folder" in n for n in m.notes)
    (tmp_path / "other.csv").write_text("patient,age\nP1,40\n")
    assert load_manifest(tmp_path).labels == ["Bilder"]  # two tables: which one is meant is not guessed
    (tmp_path / "other.csv").unlink()
    clinical = "image,age,sex\n" + "".join(f"Bilder/{k}.png,{40 + k},F\n" for k in range(4))
    (tmp_path / "labels_cp1252.csv").write_text(clinical)  # images and clinical columns: no manifest
    assert load_manifest(tmp_path).labels == ["Bilder"]
