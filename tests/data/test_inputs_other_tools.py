"""Readers fed inputs made the way other tools make them, checked by value: labelme on an EXIF-rotated photo,
COCO uncompressed RLE (column-major, as COCO defines it), an Excel sheet with numeric ids, a UTF-16 CSV as
Excel's "Unicode text" export writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medcad.data.io import read_image
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask


def _displayed(h: int = 40, w: int = 60) -> np.ndarray:
    """A displayed image (H, W, 3) with a bright 20 x 10 block at the top left."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[0:10, 0:20] = 230
    return img


def test_labelme_on_an_exif_rotated_jpeg_draws_where_the_reader_shows(tmp_path: Path) -> None:
    """labelme shows (and annotates) a photo with its EXIF orientation applied; medcad reads it so too."""
    root = tmp_path / "lm"
    root.mkdir()
    shown = _displayed()
    raw = np.ascontiguousarray(np.rot90(shown, 1))  # stored sideways; EXIF 6: rotate 90 clockwise to display
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(raw).save(root / "a.jpg", quality=95, exif=exif)
    shapes = [{"label": "polyp", "shape_type": "rectangle", "points": [[0, 0], [20, 10]], "flags": {}}]
    meta = {"version": "5.4.1", "shapes": shapes, "imagePath": "a.jpg", "imageData": None}
    (root / "a.json").write_text(json.dumps({**meta, "imageHeight": 40, "imageWidth": 60}))
    m = load_manifest(root)
    assert m.layout == "labelme" and len(m) == 1 and m.labels == ["polyp"]
    img, mask = read_image(root / "a.jpg"), read_mask(m.mask_paths(0)) > 0
    assert img.shape[:2] == mask.shape == (40, 60)
    bright = img.mean(axis=2) > 135
    assert (mask & bright).sum() / bright.sum() > 0.95 and (mask & ~bright).sum() / mask.sum() < 0.15


def _column_major_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the mask in column-major order, starting with background."""
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    return [*runs, n]


def test_coco_uncompressed_rle_is_read_column_major(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_displayed()).save(root / "images" / "f.png")
    truth = np.zeros((40, 60), bool)
    truth[5:12, 30:55] = True  # 7 x 25, wider than tall: a row-major reading would misplace it
    seg = {"size": [40, 60], "counts": _column_major_counts(truth)}
    coco = {
        "images": [{"id": 1, "file_name": "f.png", "width": 60, "height": 40}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "segmentation": seg,
                "area": 175.0,
                "bbox": [30, 5, 25, 7],
                "iscrowd": 1,
            }
        ],
        "categories": [{"id": 7, "name": "stone"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    m = load_manifest(root)
    assert m.layout == "coco" and m.labels == ["stone"]
    assert ((read_mask(m.mask_paths(0)) > 0) == truth).all()


def test_an_excel_sheet_with_numeric_ids_reads_them_as_written(tmp_path: Path) -> None:
    from openpyxl import Workbook

    root = tmp_path / "xl"
    wb = Workbook()
    ws = wb.active
    ws.append(["Image", "Diagnosis", "Patient ID", "Age"])
    root.mkdir()
    for i in range(6):
        Image.fromarray(_displayed()).save(root / f"{i}.png")
        ws.append([f"{i}.png", ("benign", "malignant")[i % 2], 1000 + i // 2, 40.5 + i])  # ids as numbers
    wb.save(root / "manifest.xlsx")
    m = load_manifest(root)
    assert m.layout == "xlsx" and len(m) == 6
    assert list(m.table["patient"]) == ["1000", "1000", "1001", "1001", "1002", "1002"]  # not "1000.0"
    assert list(m.table["Age"])[:2] == ["40.5", "41.5"]


def test_a_utf16_csv_from_excel_unicode_text_export(tmp_path: Path) -> None:
    root = tmp_path / "u16"
    root.mkdir()
    rows = []
    for i, label in enumerate(["bénin", "malin", "bénin", "malin"]):
        Image.fromarray(_displayed()).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": label})
    text = pd.DataFrame(rows).to_csv(index=False, sep="\t")
    (root / "manifest.csv").write_bytes(text.encode("utf-16"))  # with its byte-order mark, as Excel writes it
    m = load_manifest(root)
    assert len(m) == 4 and m.labels == ["bénin", "malin"]
    assert any("UTF-16" in n for n in m.notes)


def _colour_mask(seed: int, colour=(250, 50, 83)) -> tuple[np.ndarray, np.ndarray]:
    """A colour-coded mask (H, W, 3) as CVAT's "Segmentation mask 1.1" writes one (the class's colour on black),
    and its lesion (H, W) bool."""
    lesion = np.zeros((40, 60), bool)
    lesion[5 + seed % 7 : 25, 10 : 30 + seed % 9] = True
    mask = np.zeros((40, 60, 3), np.uint8)
    mask[lesion] = colour
    return mask, lesion


def test_cvat_segmentation_mask_export_reads_its_class_masks(tmp_path: Path) -> None:
    """CVAT's "Segmentation mask 1.1" (Pascal VOC style): JPEGImages/, SegmentationClass/ (a colour per class),
    SegmentationObject/ (a colour per instance), labelmap.txt. The coloured masks were taken for frames, and each
    folder for a class; now the class masks pair with the frames, and the same colour masks under other folder
    names too."""
    from conftest import noise_image, save

    root, renamed = tmp_path / "cvat", tmp_path / "renamed"
    truth = {}
    for i in range(6):
        frame = noise_image(i, size=40)
        frame = np.concatenate([frame, frame[:, :20]], axis=1)  # 40 x 60, coloured content
        cls, truth[f"f{i}"] = _colour_mask(i)
        obj, _ = _colour_mask(i, colour=(15 * i, 200, 30))
        for base, images, masks in ((root, "JPEGImages", "SegmentationClass"), (renamed, "frames", "annotations_png")):
            save(base / images / f"f{i}.jpg", frame)
            save(base / masks / f"f{i}.png", cls)
        save(root / "SegmentationObject" / f"f{i}.png", obj)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\npolyp:250,50,83::\n")
    for base in (root, renamed):
        m = load_manifest(base)
        assert m.layout == "images-masks" and len(m) == 6, m.notes
        for i in range(len(m)):
            stem = Path(m.table["image"].iat[i]).stem
            assert (read_mask(m.mask_paths(i)) == truth[stem]).all()
    assert "not 'SegmentationObject/'" in load_manifest(root).notes[0]


def test_masks_beside_images_named_with_a_mask_word_are_masks(tmp_path: Path) -> None:
    """Class folders with `x_segmentation.png` / `x_gt.png` beside `x.jpg` (not the `_mask` suffix): masks of the
    image beside them, with a note; an image whose name merely ends in a mask word but looks like a frame stays an
    image."""
    from conftest import noise_image, save

    root = tmp_path / "ds"
    for i in range(4):
        for label, word in (("benign", "_segmentation"), ("malignant", "_gt")):
            save(root / label / f"{label}_{i}.jpg", noise_image(i + 10 * len(label), size=40))
            mask = np.zeros((40, 40), np.uint8)
            mask[5:20, 5 + i : 25] = 255
            save(root / label / f"{label}_{i}{word}.png", mask)
    save(root / "benign" / "scan_label.jpg", noise_image(77, size=40))
    save(root / "benign" / "scan.jpg", noise_image(78, size=40))
    m = load_manifest(root)
    assert len(m) == 10 and sorted(m.labels) == ["benign", "malignant"]
    masked = dict(zip(m.table["image"], m.table["mask"], strict=True))
    assert masked["benign/benign_2.jpg"] == "benign/benign_2_segmentation.png"
    assert masked["malignant/malignant_3.jpg"] == "malignant/malignant_3_gt.png"
    assert masked["benign/scan_label.jpg"] == "" and masked["benign/scan.jpg"] == ""
    assert any("by a mask word" in n for n in m.notes)


def _coco(names: list[str], label: str = "polyp") -> dict:
    """A COCO dict with one box (and polygon) per image, 40 x 40 images."""
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 40} for i, n in enumerate(names)]
    poly = [[10, 5, 30, 5, 30, 20, 10, 20]]
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 5, 20, 15], "segmentation": poly}
        for i in range(len(names))
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": label}]}


def test_coco_exports_as_roboflow_and_cvat_write_them(tmp_path: Path) -> None:
    """Roboflow's COCO export (train/ valid/ test/, each with images and `_annotations.coco.json`) is read whole,
    not as classes 'train', 'valid', 'test'; CVAT's "COCO 1.0" (annotations/instances_default.json beside images/)
    is found from the folder and read from the JSON too (its images had been 'not found')."""
    from conftest import noise_image, save

    rf = tmp_path / "roboflow"
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        names = [f"{split}{i}_jpg.rf.abc{i}.jpg" for i in range(n)]
        for i, name in enumerate(names):
            save(rf / split / name, noise_image(i + 10 * n, size=40))
        (rf / split / "_annotations.coco.json").write_text(json.dumps(_coco(names)))
    (rf / "README.roboflow.txt").write_text("exported")
    m = load_manifest(rf)
    assert m.layout == "coco" and len(m) == 6 and m.labels == ["polyp"] and (m.table["mask"] != "").all()
    assert sorted(m.sources) == [f"{s}/_annotations.coco.json" for s in ("test", "train", "valid")]
    assert any("3 COCO files read together" in n for n in m.notes) and m.ledger.used == 6
    assert [Path(img).parts[0] for img in m.table["image"]] == list(m.table["split"])  # --split-column split

    cvat = tmp_path / "cvat"
    for i in range(3):
        save(cvat / "images" / f"f{i}.jpg", noise_image(i, size=40))
    (cvat / "annotations").mkdir()
    (cvat / "annotations" / "instances_default.json").write_text(json.dumps(_coco([f"f{i}.jpg" for i in range(3)])))
    for path in (cvat, cvat / "annotations" / "instances_default.json"):
        m = load_manifest(path)
        assert m.layout == "coco" and sorted(m.table["image"]) == [f"images/f{i}.jpg" for i in range(3)], path
        assert m.root == cvat and m.ledger.line() == "used 3 of 3"


def test_coco_file_names_relative_to_the_dataset_folder_or_with_windows_separators(tmp_path: Path) -> None:
    """annotations/instances.json beside images/: a file_name relative to the dataset folder ("images/a.jpg"), one
    with Windows separators ("train\\b.jpg" for images/train/b.jpg) and one relative to images/ are all found (the
    first two had been 'not found'), and a note says where each JSON's file names were read from."""
    from conftest import noise_image, save

    for k, rel in enumerate(("images/a.jpg", "images/train/b.jpg", "images/c.jpg")):
        save(tmp_path / rel, noise_image(k, size=40))
    (tmp_path / "annotations").mkdir()
    coco = _coco(["images/a.jpg", "train\\b.jpg", "c.jpg", "gone.jpg"])
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert m.layout == "coco" and sorted(m.table["image"]) == ["images/a.jpg", "images/c.jpg", "images/train/b.jpg"]
    assert "annotations/instances.json: file_name(s) read relative to images/ (2), the dataset folder (1)" in m.notes[1]
    windows = [n for n in m.notes if "1 file_name(s) with Windows separators" in n]
    assert len(windows) == 1 and "(e.g. train\\b.jpg as images/train/b.jpg)" in windows[0]
    reasons = dict(m.ledger.left_out)
    assert reasons["gone.jpg"].startswith("file not found in annotations/, annotations/images/, ./, images/")


def test_a_json_that_is_not_coco_does_not_take_the_layout(tmp_path: Path) -> None:
    """A metadata JSON with an "images" count, or a Label Studio export (a list of tasks with "annotations"), beside
    class folders: the folders are read; the JSON was taken for COCO and the whole set refused."""
    from conftest import noise_image, save

    for label in ("benign", "normal"):
        for i in range(2):
            save(tmp_path / label / f"{label}{i}.png", noise_image(i + len(label), size=32))
    (tmp_path / "info.json").write_text(json.dumps({"description": "pilot", "images": 4, "annotator": "RM"}))
    tasks = [{"id": 1, "data": {"image": "/data/upload/benign0.png"}, "annotations": [{"result": []}]}]
    (tmp_path / "project-1-at-2024.json").write_text(json.dumps(tasks))
    m = load_manifest(tmp_path)
    assert m.layout == "folders" and len(m) == 4 and m.labels == ["benign", "normal"]
    unread = dict(m.ledger.unread)
    assert unread["project-1-at-2024.json"].startswith("a Label Studio export") and "info.json" in unread


def test_a_tiff_thumbnail_page_is_not_an_image_of_the_set(tmp_path: Path) -> None:
    """A TIFF whose second page is a reduced-resolution thumbnail (as scanners and cameras write) is one image, the
    thumbnail named as left out; a stack of pages is one image per page, whatever their sizes (a page of another
    size than the first had been dropped with every page after it, unsaid), pages marked reduced-resolution
    (NewSubfileType 1) excepted."""
    import tifffile

    from conftest import noise_image

    full = [Image.fromarray(noise_image(k, size=40)) for k in range(3)]
    full[0].save(tmp_path / "thumb.tif", save_all=True, append_images=[full[1].resize((10, 10))])
    full[0].save(tmp_path / "stack.tif", save_all=True, append_images=[full[1].resize((48, 36)), full[2]])
    with tifffile.TiffWriter(tmp_path / "tagged.tif") as tif:
        tif.write(noise_image(5, size=40), photometric="rgb")
        tif.write(noise_image(6, size=30), photometric="rgb", subfiletype=1)  # reduced resolution, by its tag
        tif.write(noise_image(7, size=40), photometric="rgb")
    m = load_manifest(tmp_path, pattern="")
    assert sorted(m.keys) == ["stack.tif#0", "stack.tif#1", "stack.tif#2", "tagged.tif#0", "tagged.tif#2", "thumb.tif"]
    left_out = dict(m.problems)
    assert set(left_out) == {"thumb.tif#1", "tagged.tif#1"} and "thumbnail page" in left_out["thumb.tif#1"]
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "manifest.csv").write_text("image,frame\n../stack.tif,1\n../thumb.tif,1\n")
    m = load_manifest(tmp_path / "list" / "manifest.csv")
    assert m.keys == ["../stack.tif#1"]  # a frame column naming a thumbnail page: said as such
    assert dict(m.problems)["../thumb.tif"] == "the frame column names page 1, a thumbnail (reduced resolution)"


def test_two_versions_of_one_coco_annotation_are_not_merged(tmp_path: Path) -> None:
    """instances_default.json beside a corrected instances_default_v2.json: both list the same images, so the read
    asks which one, instead of leaving every image out as listed twice."""
    import pytest

    from conftest import noise_image, save
    from medcad.errors import DataError

    for i in range(3):
        save(tmp_path / f"{i}.jpg", noise_image(i, size=40))
    for name in ("instances_default.json", "instances_default_v2.json"):
        (tmp_path / name).write_text(json.dumps(_coco([f"{i}.jpg" for i in range(3)])))
    with pytest.raises(DataError, match="instances_default_v2.json: lists 3 image.*give the COCO file"):
        load_manifest(tmp_path)
    assert len(load_manifest(tmp_path / "instances_default_v2.json")) == 3


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([";", ",", "\t"]),
    st.booleans(),
    st.integers(0, 3),
    st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
    st.integers(0, 2),
)
def test_a_csv_as_spreadsheets_save_it(sep: str, hint: bool, trailing: int, encoding: str, missing: int) -> None:
    """Excel's `sep=;` first line is its separator hint, not a header (it had been read as one: "no image column...
    found 'sep='"); rows with every cell empty (its trailing `;;;` lines) are skipped with a note, not left out as
    images without a path; problems still name their line in the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = [f"sep={sep}"] if hint else []
        lines.append(sep.join(["Image", "Label", "Patient ID", "Bemerkung"]))
        for i in range(4):
            Image.fromarray(_displayed()).save(root / f"{i}.png")
            lines.append(sep.join([f"{i}.png", "benign" if i % 2 else "malignant", f"P{i}", "Läsion größer"]))
        for i in range(missing):
            lines.append(sep.join([f"gone{i}.png", "benign", "P9", ""]))
        lines += [sep * 3] * trailing
        (root / "manifest.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
        m = load_manifest(root)
        assert sorted(m.table["image"]) == [f"{i}.png" for i in range(4)]
        assert [why for _, why in m.problems] == [
            f"file not found (manifest.csv line {i + 6 + hint})" for i in range(missing)
        ]
        assert any("separator hint" in n for n in m.notes) == hint
        assert any("every cell empty" in n for n in m.notes) == bool(trailing)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.sampled_from([(250, 50, 83), (51, 221, 255), (36, 179, 83)]), min_size=2, max_size=3, unique=True),
    st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=3), min_size=1, max_size=4),
    st.booleans(),
)
def test_cvat_colour_masks_read_through_labelmap_txt(colours, images, given_setting) -> None:
    """CVAT's "Segmentation mask 1.1" keeps classes as colours with labelmap.txt beside them: each colour is its
    class (by name: from --mask-labels when given, else labelmap.txt's order). segment-multiclass had stopped with
    "holds classes as RGB colours" while labelmap.txt lay there unread."""
    import tempfile

    from medcad.data.labelmaps import read_label_map, resolve_mask_labels

    names = [f"class{k}" for k in range(len(colours))]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
        lines += [f"{n}:{','.join(map(str, c))}::" for n, c in zip(names, colours, strict=True)]
        (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
        paths, truth = [], []
        for i, classes in enumerate(images):
            rgb, index = np.zeros((24, 30, 3), np.uint8), np.zeros((24, 30), np.uint8)
            for j, k in enumerate(classes):
                if k < len(colours):
                    rgb[j * 8 : j * 8 + 6, 3 * k : 3 * k + 20] = colours[k]
                    index[j * 8 : j * 8 + 6, 3 * k : 3 * k + 20] = k + 1
            Image.fromarray(rgb).save(root / f"m{i}.png")
            paths.append(root / f"m{i}.png")
            truth.append(index)
        setting = ",".join(f"{k + 1}={n}" for k, n in enumerate(names)) if given_setting else None
        classes = resolve_mask_labels(setting, root, paths)
        assert list(classes.names) == names
        for p, index in zip(paths, truth, strict=True):
            assert (read_label_map([p], classes) == index).all()


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.sampled_from(["", "images/", "sub/"]), min_size=1, max_size=5),
    st.sampled_from(["C:\\Users\\ann\\label-studio\\media\\upload\\3\\", "/home/annotator/projects/polyps/", ""]),
)
def test_coco_file_names_written_on_another_machine_are_found_by_their_tail(folders, machine) -> None:
    """Label Studio and CVAT write `file_name` as the annotating machine's absolute path; the images lie under the
    dataset folder by their remaining path: found there, with a note naming the prefix (they had been 'file not
    found', while a CSV manifest resolved the same paths)."""
    import tempfile

    from conftest import noise_image, save

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        names = []
        for i, folder in enumerate(folders):
            save(root / folder / f"f{i}.jpg", noise_image(i, size=40))
            written = machine + folder + f"f{i}.jpg"
            names.append(written.replace("/", "\\") if machine.startswith("C:") else written)
        (root / "result.json").write_text(json.dumps(_coco(names)))
        m = load_manifest(root)
        assert sorted(m.table["image"]) == sorted(f"{folder}f{i}.jpg" for i, folder in enumerate(folders))
        assert any("found by their remaining path" in n for n in m.notes) == bool(machine), m.notes


@settings(max_examples=12, deadline=None)
@given(st.integers(20, 60), st.integers(20, 60), st.integers(20, 60), st.integers(20, 60))
def test_a_box_only_coco_declaring_another_image_size_leaves_the_image_out(w: int, h: int, dw: int, dh: int) -> None:
    """A COCO file of boxes alone (no segmentation anywhere) is checked against its images' sizes as one with
    segmentation is: boxes for a 622x529 frame on a 160x136 image had been kept, clipped or dropped later."""
    import tempfile

    from conftest import noise_image, save

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(2):
            save(root / f"f{i}.png", noise_image(i, size=max(w, h))[:h, :w])
        coco = _coco(["f0.png", "f1.png"])
        for im, (iw, ih) in zip(coco["images"], [(dw, dh), (w, h)], strict=True):
            im["width"], im["height"] = iw, ih
        for a in coco["annotations"]:
            del a["segmentation"]
        (root / "result.json").write_text(json.dumps(coco))
        m = load_manifest(root)
        if (dw, dh) == (w, h):
            assert len(m) == 2 and not m.problems
        else:
            assert list(m.table["image"]) == ["f1.png"]
            assert f"is for a {dw}x{dh} image but the image is {w}x{h}" in dict(m.problems)["f0.png"]


def test_a_labelmap_txt_beside_grey_label_maps_changes_nothing(tmp_path: Path) -> None:
    """Grey label maps read with --mask-labels beside a labelmap.txt naming the classes otherwise (`Cyst`) or not
    at all: read as before (the colour file had stopped them: "gives no colour to class(es) cyst, stone")."""
    from medcad.data.labelmaps import read_label_map, resolve_mask_labels

    index = np.zeros((20, 30), np.uint8)
    index[2:8, 3:20], index[10:18, 5:9] = 1, 2
    Image.fromarray(index).save(tmp_path / "m.png")
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\nCyst:250,50,83::\npolyp:51,221,255::\n")
    classes = resolve_mask_labels("1=cyst,2=stone", tmp_path, [tmp_path / "m.png"])
    assert (read_label_map([tmp_path / "m.png"], classes) == index).all()
    assert classes.colours == ((0, 0, 0, 0), (250, 50, 83, 1))  # Cyst is cyst; polyp is no class of the run


def test_labelmap_classes_that_match_no_class_are_named(tmp_path: Path, caplog) -> None:
    """labelmap.txt beside the masks with a class --mask-labels does not name (stone) while --mask-labels names one
    it gives no colour (Stones, a typo): both are said, not dropped silently."""
    import logging

    from medcad.data.labelmaps import resolve_mask_labels

    lines = ["_background_:0,0,0::", "cyst:250,50,83::", "stone:51,221,255::", "Kidney:36,179,83::"]
    (tmp_path / "labelmap.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        classes = resolve_mask_labels("1=cyst,2=Stones,3=kidney", tmp_path, [])
    assert sorted(c[3] for c in classes.colours) == [0, 1, 3]  # background, cyst, kidney (letter case aside)
    assert "class(es) stone are no class of --mask-labels" in caplog.text
    assert "gives no colour to class(es) Stones of --mask-labels" in caplog.text
    assert "_background_" not in caplog.text  # labelme's and VOC tools' name for background
    assert resolve_mask_labels(None, tmp_path, []).names == ("cyst", "stone", "Kidney")  # its own: no background


def test_an_animated_gif_label_map_is_read_by_its_indices_on_every_frame(tmp_path: Path) -> None:
    """Pillow composites a GIF's frames after the first into RGB: a label map's classes had come back as colours
    there (page 0 as indices). Every frame now gives the indices it was stored in, as read_label_map reads them."""
    import pytest

    from medcad.data.labelmaps import parse_mask_labels, read_label_map
    from medcad.errors import DataError

    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253  # padded with black, as palettes are
    expected, frames = [], []
    for k in range(3):
        index = np.zeros((40, 50), np.uint8)
        index[5 + 5 * k : 15 + 5 * k, 5:20], index[20:30, 25 + 5 * k : 35 + 5 * k] = 1, 2
        frame = Image.fromarray(index, "P")
        frame.putpalette(palette)
        expected.append(index)
        frames.append(frame)
    frames[0].save(tmp_path / "labels.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    classes = parse_mask_labels("1=cyst,2=stone", "--mask-labels")
    for page, index in enumerate(expected):
        assert (read_label_map([tmp_path / "labels.gif"], classes, [page]) == index).all(), page
    # a later frame stored with a palette of its own in another order, or a palette giving one colour to two
    # classes: its indices cannot be told from its colours, so it is refused as colours, never read by a guess
    swapped = frames[1].copy()
    swapped.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0, 0, 0] * 253)
    frames[0].save(tmp_path / "swapped.gif", save_all=True, append_images=[swapped], duration=40, loop=0)
    shared = [frame.copy() for frame in frames[:2]]
    for frame in shared:
        frame.putpalette([0, 0, 0, 255, 255, 255, 255, 255, 255] + [0, 0, 0] * 253)
    shared[0].save(tmp_path / "shared.gif", save_all=True, append_images=shared[1:], duration=40, loop=0)
    for name in ("swapped.gif", "shared.gif"):
        with pytest.raises(DataError, match="RGB colours|no class names"):  # as colours, or as grey levels
            read_label_map([tmp_path / name], classes, [1])
