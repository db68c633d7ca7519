"""Annotation readers (medcad.data.annotations): labelme JSON, COCO segmentation (polygons, RLE), CVAT XML, xlsx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask
from medcad.errors import DataError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))


def shape(label: str, points: list, kind: str = "polygon") -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def labelme(path: Path, image: str, shapes: list[dict], w: int = 64, h: int = 64) -> Path:
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image, "imageData": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "imageHeight": h, "imageWidth": w}))
    return path


def row(m, image: str) -> int:
    return int(np.flatnonzero(m.table["image"] == image)[0])


def test_labelme_masks_labels_and_notes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for k, name in enumerate(("a", "b", "c", "d")):
        save(root / f"{name}.png", noise_image(k, 64))
    labelme(root / "a.json", "a.png", [shape("polyp", [[10, 10], [30, 20]], "rectangle")])
    circle = shape("adenoma", [[40, 40], [40, 48]], "circle")
    line = shape("polyp", [[0, 0], [5, 5]], "line")
    labelme(root / "b.json", "b.png", [shape("polyp", [[2, 2], [20, 2], [2, 20]]), circle, line])
    labelme(root / "d.json", "d.png", [])
    m = load_manifest(root)
    assert m.layout == "labelme" and "labelme" in m.notes[0]
    assert sorted(m.sources) == ["a.json", "b.json", "d.json"]
    a = row(m, "a.png")
    mask = read_mask(m.mask_paths(a))
    assert mask.shape == (64, 64)
    # a 20 x 10 rectangle: 200 pixels, up to one pixel more along each side (labelme draws the outline too)
    assert 200 <= mask.sum() <= 200 + 2 * (20 + 10) + 1
    assert mask[15, 20] and not mask[40, 40]
    assert m.table["label"].iat[a] == "polyp"
    assert m.boxes(a) == [[10.0, 10.0, 30.0, 20.0, "polyp"]]
    b = row(m, "b.png")
    assert m.table["label"].iat[b] == ""  # shapes disagree: no invented image label
    assert json.loads(m.table["shape_labels"].iat[b]) == ["polyp", "adenoma", "polyp"]
    mb = read_mask(m.mask_paths(b))
    assert mb[40, 40] and mb[5, 5] and abs(mb.sum() - (np.pi * 64 + 18 * 18 / 2)) < 60  # circle r=8 + triangle
    c, d = row(m, "c.png"), row(m, "d.png")
    assert m.table["mask"].iat[c] == "" and m.table["label"].iat[c] == ""  # no JSON: unannotated, not lesion-free
    assert m.table["label"].iat[d] == "background" and read_mask(m.mask_paths(d)).sum() == 0
    text = " | ".join(m.notes)
    assert "1 image(s) have no labelme file" in text and "different labels" in text and "no area" in text
    # what the masks are made of is said: a filled box measures a box, and every label's shapes are one lesion
    assert "1 rectangle(s) filled into the masks" in text and "a.json shape 0 'polyp'" in text
    assert "each mask is the union of the shapes of every label (polyp 2, adenoma 1)" in text
    assert not m.ledger.unread and not m.ledger.left_out
    # the mask paths are relative to the root (through '..'), so every reader of masks can name them
    assert m.mask_paths(a)[0].relative_to(m.root).parts[0] == ".."


def test_labelme_clipping_size_and_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "set"
    save(root / "images" / "x.png", noise_image(1, 64))
    save(root / "images" / "y.png", noise_image(2, 64))
    # JSONs in another folder, imagePath with Windows separators; one rectangle half outside the image
    labelme(root / "ann" / "x.json", "..\\images\\x.png", [shape("polyp", [[54, 0], [74, 9]], "rectangle")])
    labelme(root / "ann" / "y.json", "../images/y.png", [shape("polyp", [[1, 1], [5, 5]], "rectangle")], w=100)
    labelme(root / "ann" / "z.json", "../images/z.png", [])
    m = load_manifest(root)
    x = row(m, "images/x.png")
    mask = read_mask(m.mask_paths(x))
    assert mask[:10, 54:].all() and mask.sum() == 10 * 10  # clipped at x = 63
    assert any("1 shape(s) extend past their image's border" in n for n in m.notes)
    problems = dict(m.problems)
    assert "100x64 image but the image is 64x64" in problems["images/y.png"]
    assert "not found" in problems["ann/z.json"]
    with pytest.raises(DataError, match="left out"):
        m.check_complete(allow_missing=False)


def test_coco_rle_round_trip_and_polygon_fraction(tmp_path: Path) -> None:
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    truth = rng.random((48, 64)) > 0.7
    truth[10:20, 5:40] = True
    rle = mu.encode(np.asfortranarray(truth.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    for k in range(3):
        save(tmp_path / "images" / f"f{k}.png", noise_image(k, 64)[:48])
    coco = {
        "images": [{"id": k, "file_name": f"f{k}.png", "width": 64, "height": 48} for k in range(3)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": rle, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        ],
        "categories": [{"id": 1, "name": "polyp"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert m.layout == "coco" and m.sources == ["coco.json"]
    assert np.array_equal(read_mask(m.mask_paths(row(m, "images/f0.png"))), truth)
    poly = read_mask(m.mask_paths(row(m, "images/f1.png")))
    assert poly.sum() == 200 and poly[15, 20]  # a 20 x 10 polygon
    assert m.boxes(row(m, "images/f1.png")) == [[10, 10, 30, 20, "polyp"]]  # no bbox given: from the mask
    f2 = row(m, "images/f2.png")
    assert m.table["label"].iat[f2] == "background" and read_mask(m.mask_paths(f2)).sum() == 0
    assert any("1 image(s) have no annotation" in n for n in m.notes)


def test_coco_unknown_category_and_dangling_annotations(tmp_path: Path) -> None:
    for k in range(3):
        save(tmp_path / f"f{k}.png", noise_image(k, 32))
    box = {"bbox": [1, 1, 5, 5]}
    coco = {
        "images": [{"id": k, "file_name": f"f{k}.png"} for k in range(3)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, **box},
            {"id": 2, "image_id": 1, "category_id": 3, **box},
            {"id": 3, "image_id": 1, "category_id": 3, **box},
            {"id": 4, "image_id": 17, "category_id": 1, **box},
            {"id": 5, "image_id": 17, "category_id": 1, **box},
        ],
        "categories": [{"id": 1, "name": "tumour"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert "3" not in set(m.table["label"])  # never an invented class
    assert set(m.table["image"]) == {"f0.png", "f2.png"}
    problems = dict(m.problems)
    assert "category_id 3 not in the categories of train.json (1 'tumour'): refused" in problems["f1.png"]
    assert (
        problems["train.json#image_id=17"]
        == "annotations of an image id not in 'images' (image id 17: 2 of them, ids 4, 5)"
    )
    text = " | ".join(m.notes)
    assert "3 (2 annotation(s))" in text and "2 annotation(s) name 1 image id(s) not in 'images' (17)" in text
    assert m.ledger.used == 2 and len(m.ledger.left_out) == 2


def test_coco_box_without_segmentation_in_a_segmentation_file(tmp_path: Path) -> None:
    save(tmp_path / "f0.png", noise_image(0, 32))
    save(tmp_path / "f1.png", noise_image(1, 32))
    coco = {
        "images": [{"id": k, "file_name": f"f{k}.png", "width": 32, "height": 32} for k in range(2)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]], "bbox": [1, 1, 8, 8]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]},
        ],
        "categories": [{"id": 1, "name": "polyp"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    m = load_manifest(tmp_path)
    assert list(m.table["image"]) == ["f0.png", "f1.png"] and not m.problems  # both kept, as YOLO keeps boxes
    assert m.mask_paths(1) == [] and m.boxes(1) == [[1, 1, 9, 9, "polyp"]]  # a box only: no mask, its box kept
    assert read_mask(m.mask_paths(0)).sum() > 0 and m.boxes(0) == [[1, 1, 9, 9, "polyp"]]
    said = "1 image(s) have annotations without segmentation in c.json, whose others have one: no mask"
    said_all = [n for n in m.notes if n.startswith(said) and "boxes kept for detection" in n and "(e.g. f1.png)" in n]
    assert said_all, m.notes


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels><label><name>polyp</name></label><label><name>normal</name></label></labels></task></meta>
  <image id="0" name="a.png" width="64" height="64">
    <polygon label="polyp" points="10,10;30,10;30,20;10,20" z_order="0"/>
    <polyline label="polyp" points="1,1;5,5"/>
  </image>
  <image id="1" name="b.png" width="64" height="64"><tag label="normal"/></image>
  <image id="2" name="c.png" width="64" height="64"><box label="cyst" xtl="1" ytl="1" xbr="5" ybr="5"/></image>
  <image id="3" name="d.png" width="64" height="64">
    <mask label="polyp" rle="2,3,1,4,2" left="20" top="30" width="4" height="3"/>
  </image>
</annotations>
"""


def test_cvat_xml(tmp_path: Path) -> None:
    for k, name in enumerate("abcd"):
        save(tmp_path / "images" / f"{name}.png", noise_image(k, 64))
    (tmp_path / "annotations.xml").write_text(CVAT)
    m = load_manifest(tmp_path)
    assert m.layout == "cvat" and m.sources == ["annotations.xml"]
    a = row(m, "images/a.png")
    mask = read_mask(m.mask_paths(a))
    assert 200 <= mask.sum() <= 231 and m.table["label"].iat[a] == "polyp"
    assert m.table["label"].iat[row(m, "images/b.png")] == "normal"  # the image-level tag
    assert "label cyst not declared in annotations.xml" in dict(m.problems)["images/c.png"]
    d = read_mask(m.mask_paths(row(m, "images/d.png")))
    expect = np.zeros((64, 64), bool)
    expect[30:33, 20:24] = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0], bool).reshape(3, 4)
    assert np.array_equal(d, expect)


def test_xlsx_manifest_reads_like_the_csv(tmp_path: Path) -> None:
    from openpyxl import Workbook

    for k in range(3):
        save(tmp_path / "img" / f"{k}.png", noise_image(k, 32))
    rows = [["Image Path", "Diagnosis", "Patient ID", "age"], ["img/0.png", "benign", 12, 40.5]]
    rows += [["img/1.png", "malignant", 13, 61], ["img/missing.png", "benign", 14, 50]]
    (tmp_path / "manifest.csv").write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    wb = Workbook()
    for r in rows[:2] + [[None] * 4] + rows[2:]:  # an empty row in the sheet is skipped like a blank CSV line
        wb.active.append(r)
    wb.create_sheet("notes")
    wb.save(tmp_path / "sheet.xlsx")
    want = load_manifest(tmp_path / "manifest.csv")
    got = load_manifest(tmp_path / "sheet.xlsx")
    assert got.layout == "xlsx" and got.sources == ["sheet.xlsx"]
    assert got.table.equals(want.table) and got.table["patient"].tolist() == ["12", "13"]
    assert [p for p, _ in got.problems] == [p for p, _ in want.problems] == ["img/missing.png"]
    assert any("sheets 'notes' not" in n for n in got.notes)
    (tmp_path / "manifest.csv").rename(tmp_path / "old.csv")
    (tmp_path / "sheet.xlsx").rename(tmp_path / "manifest.xlsx")
    from medcad.cli import app

    res = runner.invoke(app, ["data", "inspect", str(tmp_path), "--json", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layout"] == "xlsx"


def test_xlsx_with_a_readme_sheet_first_reads_the_sheet_with_the_images(tmp_path: Path) -> None:
    """A workbook whose first sheet explains the data and whose second holds it: had stopped with 'no image column
    ... found 'This workbook lists...'', never saying that a second sheet was there."""
    from openpyxl import Workbook

    save(tmp_path / "img" / "0.png", noise_image(0, 32))
    wb = Workbook()
    wb.active.title = "README"
    wb.active.append(["This workbook lists the images of the study"])
    wb.create_sheet("labels").append(["File name", "Class"])
    wb["labels"].append(["img/0.png", "benign"])
    wb.create_sheet("empty")
    wb.save(tmp_path / "labels.xlsx")
    got = load_manifest(tmp_path / "labels.xlsx")
    assert got.table["label"].tolist() == ["benign"]
    assert any("sheet 'labels' read; sheets 'README', 'empty' not" in n for n in got.notes)
    from openpyxl.chart import BarChart

    wb.create_chartsheet("chart", 1).add_chart(BarChart())  # a chart sheet between them holds no table
    wb.save(tmp_path / "labels.xlsx")
    got = load_manifest(tmp_path / "labels.xlsx")
    assert got.table["label"].tolist() == ["benign"]
    assert any("sheet 'labels' read; sheets 'README', 'empty' not" in n for n in got.notes), got.notes
    wb["labels"]["A1"] = "what"
    wb.save(tmp_path / "labels.xlsx")
    with pytest.raises(DataError, match=r"no sheet has an image column .*sheet 'README': .*sheet 'labels': 'what'"):
        load_manifest(tmp_path / "labels.xlsx")


def test_inspect_names_labelme(tmp_path: Path) -> None:
    from medcad.cli import app

    save(tmp_path / "a.png", noise_image(0, 32))
    labelme(tmp_path / "a.json", "a.png", [shape("polyp", [[1, 1], [9, 1], [9, 9]])], 32, 32)
    res = runner.invoke(app, ["data", "inspect", str(tmp_path), "--json", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["layout"] == "labelme" and out["n_masks"] == 1


@pytest.mark.usefixtures("one_thread")
def test_labelme_masks_flow_into_a_segment_run(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw

    from medcad.config import TrainConfig
    from medcad.engine.train import train_run

    root = tmp_path / "set"
    root.mkdir()
    rng = np.random.default_rng(3)
    for k in range(12):
        im = Image.fromarray(noise_image(k, 64) // 2)
        shapes = []
        if k % 3:  # 8 of 12 frames hold a bright lesion, outlined by a labelme circle
            (cx, cy), r = rng.integers(18, 46, 2).tolist(), int(rng.integers(6, 12))
            ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 200, 180))
            shapes = [shape("polyp", [[cx, cy], [cx + r, cy]], "circle")]
        im.save(root / f"f{k:02d}.png")
        labelme(root / f"f{k:02d}.json", f"f{k:02d}.png", shapes)
    cfg = TrainConfig(task="segment", arch="unet", image_size=64, epochs=2, batch_size=8, folds=2, val_fraction=0.25)
    m = train_run(root, tmp_path / "run", cfg, progress=False)
    seg = m["segmentation"]
    assert seg["n_images"] == 12 and seg["n_lesion_images"] == 8
    assert 0 <= m["dice"]["value"] <= 1


def test_mask_shapes_draws_only_the_lesion_classes(tmp_path: Path) -> None:
    """A polyp and an instrument annotated on one frame, as labelme, COCO and CVAT write them: by default both are
    drawn into the mask (with a note); with --mask-shapes polyp only the polyp, the instrument kept as a box."""
    import json as _json

    from medcad.data.layouts import load_manifest
    from medcad.data.masks import read_mask

    polyp, tool = [[4, 4], [16, 4], [16, 16], [4, 16]], [[24, 20], [36, 20], [36, 30], [24, 30]]
    for kind in ("labelme", "coco", "cvat"):
        root = tmp_path / kind
        save(root / "a.png", noise_image(3, 40))
        if kind == "labelme":
            shapes = [
                {"label": lab, "shape_type": "polygon", "points": pts, "flags": {}}
                for lab, pts in (("polyp", polyp), ("instrument", tool))
            ]
            doc = {"shapes": shapes, "imagePath": "a.png", "imageHeight": 40, "imageWidth": 40}
            (root / "a.json").write_text(_json.dumps(doc))
        elif kind == "coco":
            anns = [
                {"id": k, "image_id": 1, "category_id": k, "segmentation": [sum(pts, [])]}
                for k, pts in ((1, polyp), (2, tool))
            ]
            cats = [{"id": 1, "name": "polyp"}, {"id": 2, "name": "instrument"}]
            doc = {
                "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
                "annotations": anns,
                "categories": cats,
            }
            (root / "coco.json").write_text(_json.dumps(doc))
        else:
            pts = lambda p: ";".join(f"{x},{y}" for x, y in p)  # noqa: E731
            (root / "annotations.xml").write_text(
                '<annotations><image id="0" name="a.png" width="40" height="40">'
                f'<polygon label="polyp" points="{pts(polyp)}"/><polygon label="instrument" points="{pts(tool)}"/>'
                "</image></annotations>"
            )
        both = read_mask(load_manifest(root).mask_paths(0))
        m = load_manifest(root, mask_shapes="polyp")
        only = read_mask(m.mask_paths(0))
        assert both[25, 30] and not only[25, 30] and only[10, 10] and both[10, 10], kind
        assert sorted(b[4] for b in m.boxes(0)) == ["instrument", "polyp"], kind
        assert any("not in --mask-shapes" in n for n in m.notes) and any(
            "labelled polyp (--mask-shapes)" in n for n in m.notes
        ), (kind, m.notes)
        renamed = load_manifest(root, mask_shapes="lesion", label_map="polyp=lesion")  # the name --label-map gives
        assert (read_mask(renamed.mask_paths(0)) == only).all(), kind  # had drawn nothing: shapes matched by old name
        assert not any("no shape is labelled" in n for n in renamed.notes), (kind, renamed.notes)


def test_an_annotation_naming_an_absent_image_paired_by_its_own_name_is_said(tmp_path: Path) -> None:
    """labelme's imagePath and VOC's <filename> naming an image that is not there (a converted x.png for x.jpg): the
    annotation is read with the image of its own name, as before, and now said (it had been silent)."""
    from conftest import noise_image, save

    save(tmp_path / "lm" / "f1.jpg", noise_image(1, 64))
    labelme(tmp_path / "lm" / "f1.json", "other.png", [shape("polyp", [[5, 5], [30, 5], [30, 30]])])
    m = load_manifest(tmp_path / "lm")
    assert list(m.table["image"]) == ["f1.jpg"]
    assert any(
        "name another image than the one of their own" in n and "'other.png', read as f1.jpg" in n for n in m.notes
    )
    save(tmp_path / "voc" / "x.jpg", noise_image(2, 40))
    (tmp_path / "voc" / "x.xml").write_text(
        "<annotation><filename>x.png</filename><size><width>40</width><height>40</height></size><object><name>polyp"
        "</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>"
    )
    m = load_manifest(tmp_path / "voc")
    assert list(m.table["image"]) == ["x.jpg"] and m.boxes(0) == [[2, 3, 20, 25, "polyp"]]
    assert any("name an image that is not there" in n and "'x.png', read as x.jpg" in n for n in m.notes), m.notes


def test_labelme_pairs_each_json_with_the_image_of_its_own_name(tmp_path: Path) -> None:
    """labelme saves x.json beside x.png: a JSON whose imagePath names another image (copied or renamed) annotates
    its own image, said; the other image keeps its own JSON (it had been given the stale JSON's shapes, and its own
    JSON dropped as a second one)."""
    root = tmp_path / "set"
    for k, name in enumerate(("a", "b")):
        save(root / f"{name}.png", noise_image(k, 64))
    labelme(root / "a.json", "b.png", [shape("polyp", [[2, 2], [12, 2], [2, 12]])])  # stale imagePath
    labelme(root / "b.json", "b.png", [shape("polyp", [[30, 30], [60, 30], [60, 60], [30, 60]])])
    m = load_manifest(root)
    assert not m.ledger.left_out and sorted(m.sources) == ["a.json", "b.json"]
    assert m.boxes(row(m, "a.png")) == [[2.0, 2.0, 12.0, 12.0, "polyp"]]
    assert m.boxes(row(m, "b.png")) == [[30.0, 30.0, 60.0, 60.0, "polyp"]]
    assert any("a.json names 'b.png', read as a.png" in n for n in m.notes)
    # a DICOM beside its PNG export, both of the JSON's name: the one its imagePath names
    from conftest import write_dicom

    write_dicom(root / "c.dcm", noise_image(7, 64)[None, ..., 0].astype(np.uint16))
    save(root / "c.png", noise_image(7, 64))
    labelme(root / "c.json", "c.png", [shape("polyp", [[5, 5], [20, 5], [20, 20], [5, 20]])])
    m = load_manifest(root)
    assert m.boxes(row(m, "c.png")) == [[5.0, 5.0, 20.0, 20.0, "polyp"]] and not m.boxes(row(m, "c.dcm"))


def test_via_projects_and_exports_as_vgg_image_annotator_writes_them(tmp_path: Path) -> None:
    """A VIA 2 project (`_via_img_metadata`) and a VIA 1 export (regions as a dict): polygons, circles and rotated
    ellipses rasterised at the image's size, the label from the region attribute named type (or a checkbox's one
    option), a rectangle in a set of outlines kept as a box with no mask (as COCO's reader), polylines and points
    without area, a listed image that is not there named, and an unlisted image unannotated; it had been read as a
    folder of images with the JSON unread, and a segment run offered --missing-masks empty for its 8 polyps."""
    root = tmp_path / "via"
    for k in range(5):
        save(root / f"f{k}.png", noise_image(k, 64))
    poly = {"name": "polygon", "all_points_x": [10, 40, 40, 10], "all_points_y": [10, 10, 30, 30]}
    regions = {
        "f0.png": [{"shape_attributes": poly, "region_attributes": {"type": "polyp", "note": "flat"}}],
        "f1.png": [
            {"shape_attributes": {"name": "circle", "cx": 32, "cy": 32, "r": 8},
             "region_attributes": {"type": "polyp"}},
            {"shape_attributes": {"name": "polyline", "all_points_x": [1, 5], "all_points_y": [1, 5]},
             "region_attributes": {"type": "polyp"}},
        ],
        "f2.png": [{"shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 20, "height": 10},
                    "region_attributes": {"kind": {"adenoma": True, "hyperplastic": False}}}],
        "f3.png": [{"shape_attributes": {"name": "ellipse", "cx": 32, "cy": 32, "rx": 20, "ry": 5, "theta": 1.5708},
                    "region_attributes": {"type": "polyp"}}],
        "gone.png": [],
    }  # fmt: skip
    meta = {f"{n}{k}": {"filename": n, "size": k, "regions": r, "file_attributes": {}} for k, (n, r) in
            enumerate(regions.items())}  # fmt: skip
    (root / "project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": meta}))
    m = load_manifest(root)
    assert m.layout == "via" and m.sources == ["project.json"]
    assert m.table.set_index("image")["label"].to_dict() == {
        "f0.png": "polyp", "f1.png": "polyp", "f2.png": "adenoma", "f3.png": "polyp", "f4.png": ""
    }  # fmt: skip
    assert read_mask(m.mask_paths(row(m, "f0.png"))).sum() == 31 * 21  # corners included, as labelme draws
    circle = read_mask(m.mask_paths(row(m, "f1.png")))
    assert abs(circle.sum() - np.pi * 64) < 40 and circle[32, 32]
    upright = read_mask(m.mask_paths(row(m, "f3.png")))  # rx 20 turned 90 degrees: tall, narrow
    ys, xs = np.nonzero(upright)
    assert ys.max() - ys.min() > 35 and xs.max() - xs.min() < 13
    assert m.table["mask"].iat[row(m, "f2.png")] == "" and m.boxes(row(m, "f2.png")) == [[5, 6, 25, 16, "adenoma"]]
    assert dict(m.ledger.left_out)["gone.png"].startswith("listed in project.json but not found")
    text = " | ".join(m.notes)
    assert "a region's label is its attribute 'type' (4 region(s)), 'kind' (1 region(s))" in text and "no area" in text
    # VIA 1: regions as a dict; an export without the project's wrapper
    v1 = {"f0.png1": {"filename": "f0.png", "size": 1, "regions": {"0": regions["f0.png"][0]}, "file_attributes": {}}}
    (root / "project.json").unlink()
    (root / "via_region_data.json").write_text(json.dumps(v1))
    m = load_manifest(root)
    assert m.layout == "via" and read_mask(m.mask_paths(row(m, "f0.png"))).sum() == 31 * 21
