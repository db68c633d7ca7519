"""Every reader accounts for every input: a tiny set laid out as each tool exports it (images + masks folders, COCO,
YOLO, Pascal VOC, labelme, CVAT XML), with strays chosen by hypothesis (annotations without their image, images
without annotation, a mask without its image, an annotation naming an image twice or naming a missing file, files
nobody reads, nested folders). Every file under the folder is used, read as a source or named in the ledger; every
row's boxes and mask are its own image's (image k's are drawn from column k, so a row carrying another image's
annotation shows it); the counts of `ledger.line()` add up."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.data.ledger import reason_kind
from medcad.data.masks import read_mask

EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UNRELATED = ("readme.txt", "Thumbs.db", "notes.csv")  # what sits beside any export: nobody reads them
SIZE = 32


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))


def _box(k: int) -> tuple[int, int, int, int]:
    """Image k's one object, in pixels: from column k (k < 24 on a 32 px image)."""
    return k, 2, k + 8, 12


def _mask(k: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    x0, y0, x1, y1 = _box(k)
    m[y0:y1, x0:x1] = 255
    return m


def _unrelated(root: Path, strays: list[str], where: str = "") -> None:
    for s in strays:
        if s in UNRELATED:
            (root / where / s).parent.mkdir(parents=True, exist_ok=True)
            (root / where / s).write_text("a,b\n1,2\n" if s.endswith(".csv") else "x")


def _named(m, text: str) -> bool:
    """Whether the ledger names `text` (in a path or a reason) as left out or unread."""
    return any(text in p or text in r for p, r in m.ledger.left_out + m.ledger.unread)


def _check(m, root: Path, boxes: dict[str, int], masks: dict[str, int] | None = None) -> None:
    """The invariant: every file under `root` used, read or named with a reason; a used image never named too, nor
    listed twice; each row's boxes and mask its own image's (`boxes`, `masks`: image -> k, its object drawn from
    column k; an image in neither has none); the counts of the ledger's line add up."""
    ledger, masks = m.ledger, masks or {}
    named = {p for p, _ in ledger.left_out + ledger.unread}
    files = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    }
    used = m.used_files()
    assert files <= used | set(m.sources) | named, (sorted(files - used - set(m.sources) - named), m.notes)
    assert all(r.strip() for _, r in ledger.left_out + ledger.unread)
    assert not used & {p for p, _ in ledger.unread}, ledger.unread  # what a row uses is not "not read"
    images = list(m.table["image"])
    assert not set(images) & {p for p, _ in ledger.left_out}, ledger.left_out  # an image used whole or not at all
    assert len(images) == len(set(images)), images
    line = ledger.line()
    assert ledger.used == len(m) and line.startswith(f"used {len(m)} of {len(m) + len(ledger.left_out)}"), line
    for items, what in ((ledger.left_out, " left out ("), (ledger.unread, " file(s) under ")):
        assert (f"; {len(items)}{what}" in line) == bool(items), line
        for kind, n in Counter(reason_kind(r) for _, r in items).items():
            assert f"{n} {kind}" in line, line
    for i, img in enumerate(images):
        got = m.boxes(i) or []
        if img in boxes:
            want = _box(boxes[img])
            assert got and all(np.allclose(b[:4], want, atol=0.02) for b in got), (img, got, want)
        else:
            assert not got, (img, got)
        if img in masks:
            cols = np.flatnonzero(read_mask(m.mask_paths(i)).any(axis=0))
            assert cols.size and cols[0] == _box(masks[img])[0], (img, cols, m.table["mask"].iat[i])
        else:
            assert not m.mask_paths(i) or not read_mask(m.mask_paths(i)).any(), (img, m.table["mask"].iat[i])


# --- images/ + masks/ (Kvasir-SEG, with its box JSON) ------------------------------------------------------------


@EXAMPLES
@given(
    n=st.integers(2, 4),  # f1 at least, whose name no stray takes: a read with no image left stops, as it should
    ext=st.sampled_from(["png", "jpg"]),
    mask_name=st.sampled_from(["{}", "{}_mask"]),
    strays=st.lists(
        st.sampled_from(["orphan-mask", "lone-image", "nested", "nested-same-name", "twins", "box-json", *UNRELATED]),
        unique=True,
    ),
)
def test_images_and_masks_folders_account_for_every_file(n, ext, mask_name, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, masks = Path(tmp) / "kvasir", {}

        def pair(sub: str, stem: str, k: int, image: bool = True, mask: bool = True) -> None:
            if image:
                save(root / "images" / sub / f"{stem}.{ext}", noise_image(k))
            if mask:
                save(root / "masks" / sub / f"{mask_name.format(stem)}.png", _mask(k))
            if image and mask:
                masks[f"images/{sub}{stem}.{ext}"] = k

        for k in range(n):
            pair("", f"f{k}", k)
        if "orphan-mask" in strays:
            pair("", "f10", 10, image=False)
        if "lone-image" in strays:
            pair("", "f11", 11, mask=False)
        if "nested" in strays:
            pair("sub/", "f12", 12)
        if "nested-same-name" in strays:  # sub/f0 beside f0: each with its own mask
            pair("sub/", "f0", 13)
        if "twins" in strays:  # f14.jpg and f14.png, one mask f14: whose it is cannot be told
            save(root / "images" / "f14.jpg", noise_image(14))
            save(root / "images" / "f14.png", noise_image(15))
            save(root / "masks" / f"{mask_name.format('f14')}.png", _mask(14))
        boxes = {}
        if "box-json" in strays:  # Kvasir-SEG's kavsir_bboxes.json: an entry per image of the top folder, one of none
            boxes = {img: k for img, k in masks.items() if img.count("/") == 1}
            entries = {
                Path(img).stem: {
                    "height": SIZE,
                    "width": SIZE,
                    "bbox": [dict(zip(("xmin", "ymin", "xmax", "ymax"), _box(k), strict=True), label="polyp")],
                }
                for img, k in boxes.items()
            }
            entries["f16"] = {"height": SIZE, "width": SIZE, "bbox": [dict(xmin=1, ymin=1, xmax=5, ymax=5)]}
            (root / "kavsir_bboxes.json").write_text(json.dumps(entries))
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "images-masks", m.notes
        if "twins" in strays:
            assert {"images/f14.jpg", "images/f14.png"} <= {p for p, _ in m.ledger.left_out}
        if "orphan-mask" in strays:
            assert _named(m, "masks/f10")
        if "box-json" in strays:
            assert m.sources == ["kavsir_bboxes.json"]
        if "box-json" in strays and "nested-same-name" in strays:  # the entry 'f0' is whose? neither's, both named
            named = {f"images/f0.{ext}", f"images/sub/f0.{ext}"}  # the entry is named in their reason, not as a row
            assert named <= dict(m.ledger.left_out).keys(), m.ledger.left_out
        _check(m, root, boxes, masks)


# --- COCO (a JSON beside the images, the release's annotations/ + images/, Roboflow's split folders) -------------


@EXAMPLES
@given(
    style=st.sampled_from(["flat", "release", "roboflow"]),
    n=st.integers(2, 4),  # f1 at least, whose name no stray takes
    polygons=st.booleans(),
    strays=st.lists(
        st.sampled_from(
            [
                "missing-file",
                "unlisted-image",
                "dangling",
                "twice",
                "twice-unknown",
                "nested",
                "unknown-category",
                "no-annotation",
                "tail-clash",
                "other-json",
                *UNRELATED,
            ]
        ),
        unique=True,
    ),
)
def test_coco_accounts_for_every_file(style, n, polygons, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, boxes = Path(tmp) / "coco", {}
        parts = {"flat": [""], "release": ["images/"], "roboflow": ["train/", "valid/"]}[style]
        files: dict[str, dict] = {p: {"images": [], "annotations": []} for p in parts}
        ids = iter(range(1, 1000))

        def entry(part: str, name: str, k: int | None, image: bool = True, category: int = 1) -> None:
            """An image entry (its file under `part` when `image`), with image k's object when k is given."""
            iid = next(ids)
            files[part]["images"].append({"id": iid, "file_name": name, "width": SIZE, "height": SIZE})
            if image and not (root / part / name).is_file():
                save(root / part / name, noise_image(k if k is not None else iid))
            if k is not None:
                x0, y0, x1, y1 = _box(k)
                ann = {"id": next(ids), "image_id": iid, "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0]}
                if polygons:
                    ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                files[part]["annotations"].append(ann)
                if image and category == 1:
                    boxes[f"{part}{name}"] = k

        for k in range(n):
            entry(parts[k % len(parts)], f"f{k}.jpg", k)
        first = parts[0]
        if "missing-file" in strays:
            entry(first, "f20.jpg", 20, image=False)
        if "unlisted-image" in strays:
            save(root / first / "f21.jpg", noise_image(21))
        if "dangling" in strays:
            files[first]["annotations"].append({"id": 999, "image_id": 998, "category_id": 1, "bbox": [1, 1, 4, 4]})
        if "twice" in strays:  # f0 listed again, a second object of it
            entry(first, "f0.jpg", 0)
        if "twice-unknown" in strays:  # f0 listed again, an object of a category not declared
            entry(first, "f0.jpg", 0, category=7)
        if "nested" in strays:
            entry(first, "sub/f22.jpg", 22)
        if "unknown-category" in strays:
            entry(first, "f23.jpg", 23, category=7)
        if "no-annotation" in strays:
            entry(first, "f24.jpg", None)
        if "tail-clash" in strays:  # another f0, once in old/, not there: not f0's
            entry(first, "old/f0.jpg", 15, image=False)
        if "other-json" in strays:
            (root / first).mkdir(parents=True, exist_ok=True)
            (root / first / "meta.json").write_text(json.dumps({"info": "not COCO"}))
        for part, coco in files.items():
            coco["categories"] = [{"id": 1, "name": "polyp"}]
            where = {"flat": "_annotations.coco.json", "release": "../annotations/instances_default.json"}.get(
                style, "_annotations.coco.json"
            )
            (root / part / where).parent.mkdir(parents=True, exist_ok=True)
            (root / part / where).write_text(json.dumps(coco))
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "coco", m.notes
        if "missing-file" in strays:
            assert _named(m, "f20.jpg")
        if "unlisted-image" in strays:
            assert _named(m, f"{first}f21.jpg")
        if "dangling" in strays:
            assert _named(m, "image_id=998")
        if "unknown-category" in strays:
            assert _named(m, f"{first}f23.jpg")
        if "tail-clash" in strays:
            assert "which the file lists as another image" in dict(m.ledger.left_out)["old/f0.jpg"]
        if "twice-unknown" in strays:  # one listing refused: the image is left out whole
            assert f"{parts[0]}f0.jpg" not in set(m.table["image"]) and _named(m, f"{parts[0]}f0.jpg")
        _check(m, root, boxes, boxes if polygons else None)


# --- YOLO (Ultralytics / Roboflow split folders, Ultralytics' COCO-style folders, CVAT's YOLO 1.1) ---------------


def _yolo_line(k: int) -> str:
    x0, y0, x1, y1 = _box(k)
    return f"0 {(x0 + x1) / 2 / SIZE:.6f} {(y0 + y1) / 2 / SIZE:.6f} {(x1 - x0) / SIZE:.6f} {(y1 - y0) / SIZE:.6f}\n"


@EXAMPLES
@given(
    style=st.sampled_from(["ultralytics", "coco-style", "cvat"]),
    n=st.integers(1, 4),
    strays=st.lists(
        st.sampled_from(["orphan-label", "lone-image", "twins", "nested", "readme-in-labels", *UNRELATED]),
        unique=True,
    ),
)
def test_yolo_accounts_for_every_file(style, n, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, boxes = Path(tmp) / "yolo", {}
        folders = {
            "ultralytics": [("train/images/", "train/labels/"), ("valid/images/", "valid/labels/")],
            "coco-style": [("images/train/", "labels/train/"), ("images/val/", "labels/val/")],
            "cvat": [("obj_train_data/", "obj_train_data/")],
        }[style]

        def item(k: int, name: str, image: bool = True, label: bool = True, where: int = 0, ext: str = "jpg") -> None:
            images, labels = folders[where]
            if image:
                save(root / images / f"{name}.{ext}", noise_image(k))
            if label:
                (root / labels / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
                (root / labels / f"{name}.txt").write_text(_yolo_line(k))
            if image and label:
                boxes[f"{images}{name}.{ext}"] = k

        for k in range(n):
            item(k, f"f{k}", where=k % len(folders))
        if "orphan-label" in strays:
            item(20, "f20", image=False)
        if "lone-image" in strays:
            item(21, "f21", label=False)
        if "twins" in strays:  # f22.jpg and f22.png share f22.txt
            item(22, "f22", label=False)
            item(22, "f22", ext="png")
            boxes.pop(f"{folders[0][0]}f22.png")
        if "nested" in strays:
            item(23, "sub/f23")
        if "readme-in-labels" in strays:
            (root / folders[0][1] / "readme.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / folders[0][1] / "readme.txt").write_text("exported by a tool")
        if style == "cvat":
            (root / "obj.names").write_text("polyp\n")
            (root / "obj.data").write_text("classes = 1\ntrain = data/train.txt\nnames = data/obj.names\n")
            (root / "train.txt").write_text("".join(f"data/obj_train_data/f{k}.jpg\n" for k in range(n)))
        else:
            (root / "data.yaml").write_text("train: train/images\nval: valid/images\nnc: 1\nnames: ['polyp']\n")
        _unrelated(root, strays)
        _unrelated(root, [s for s in strays if s == "Thumbs.db"], folders[0][0])
        m = load_manifest(root)
        assert m.layout == "yolo", m.notes
        if "orphan-label" in strays:
            assert _named(m, "f20.txt")
        if "twins" in strays:
            assert {f"{folders[0][0]}f22.jpg", f"{folders[0][0]}f22.png"} <= {p for p, _ in m.ledger.left_out}
        _check(m, root, boxes)


def _sidecar_set(root: Path, n: int, strays: list[str], images: str, notes: str, kind: str, write) -> dict:
    """A set of one annotation file per image (`write(path, image file name, k)`; the files in `notes`, the images
    in `images`, '' for beside them) with the strays both VOC and labelme sets get: `orphan-<kind>` (no image),
    `lone-image` (no annotation), `second-<kind>` (a copy naming f0: named, not used), `nested` (a sub-folder laid
    out as the top one), `moved` (the annotation in a folder of its own, its image at the top). Returns {image: k}
    of the images whose box k is to be read."""
    boxes: dict[str, int] = {}

    def item(k: int, name: str, image: bool = True, note: str | None = "", sub: str = "") -> None:
        if image:
            save(root / sub / images / f"{name}.jpg", noise_image(k))
        if note is not None:
            write(root / sub / notes / f"{note or name}.{kind}", f"{name}.jpg", k)
        if image and note == "":
            boxes[f"{sub}{images}{name}.jpg"] = k

    for k in range(n):
        item(k, f"f{k}")
    if f"orphan-{kind}" in strays:
        item(20, "f20", image=False)
    if "lone-image" in strays:
        item(21, "f21", note=None)
    if f"second-{kind}" in strays:
        item(0, "f0", image=False, note="f0_copy")
    if "nested" in strays:
        item(22, "f22", sub="site2/")
    if "moved" in strays:
        write(root / "saved" / f"f19.{kind}", "f19.jpg", 19)
        item(19, "f19", note=None)
        boxes[f"{images}f19.jpg"] = 19
    return boxes


# --- Pascal VOC (the release's and CVAT's Annotations/ + JPEGImages/, LabelImg's XML beside each image) ----------


def _voc_xml(path: Path, filename: str, k: int) -> None:
    x0, y0, x1, y1 = _box(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><folder>{path.parent.name}</folder><filename>{filename}</filename><size><width>{SIZE}</width>"
        f"<height>{SIZE}</height><depth>3</depth></size><object><name>polyp</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
    )


@EXAMPLES
@given(
    style=st.sampled_from(["voc", "labelimg"]),
    n=st.integers(1, 4),
    strays=st.lists(
        st.sampled_from(["orphan-xml", "lone-image", "second-xml", "nested", "moved", "other-xml", *UNRELATED]),
        unique=True,
    ),
)
def test_voc_accounts_for_every_file(style, n, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "voc"
        images, xmls = ("JPEGImages/", "Annotations/") if style == "voc" else ("", "")
        # "moved": LabelImg's "Change Save Dir", the XML in a folder of its own, its image at the top
        boxes = _sidecar_set(root, n, strays, images, xmls, "xml", _voc_xml)
        if "other-xml" in strays:
            (root / "config.xml").write_text("<config><tool>x</tool></config>")
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "voc", m.notes
        if "orphan-xml" in strays:
            assert _named(m, "f20")
        if "second-xml" in strays:
            assert _named(m, "f0_copy.xml")
        _check(m, root, boxes)


# --- labelme (JSON beside each image, or in annotations/ beside images/) ----------------------------------------


def _labelme(path: Path, image_path: str, k: int) -> None:
    x0, y0, x1, y1 = _box(k)
    shape = {"label": "polyp", "points": [[x0, y0], [x1, y1]], "group_id": None, "shape_type": "rectangle"}
    data = {"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": image_path, "imageData": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "imageHeight": SIZE, "imageWidth": SIZE}))


@EXAMPLES
@given(
    style=st.sampled_from(["beside", "folders"]),
    n=st.integers(1, 4),
    strays=st.lists(
        st.sampled_from(
            ["orphan-json", "lone-image", "second-json", "nested", "moved", "other-json", "broken-json", *UNRELATED]
        ),
        unique=True,
    ),
)
def test_labelme_accounts_for_every_file(style, n, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "labelme"
        images, jsons, up = ("", "", "") if style == "beside" else ("images/", "annotations/", "../images/")
        # "moved": labelme's --output folder, the JSON in a folder of its own, its image at the top
        boxes = _sidecar_set(root, n, strays, images, jsons, "json", lambda path, name, k: _labelme(path, up + name, k))
        if "other-json" in strays:
            (root / "meta.json").write_text(json.dumps({"tool": "labelme", "classes": ["polyp"]}))
        if "broken-json" in strays:
            (root / jsons / "f23.json").parent.mkdir(parents=True, exist_ok=True)
            (root / jsons / "f23.json").write_text('{"shapes": [')
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "labelme", m.notes
        if "orphan-json" in strays:
            assert _named(m, "f20")
        if "second-json" in strays:
            assert _named(m, "f0_copy.json")
        _check(m, root, boxes, boxes)


# --- CVAT for images 1.1 (annotations.xml beside images/) -------------------------------------------------------


@EXAMPLES
@given(
    n=st.integers(2, 4),  # f1 at least, whose name no stray takes
    shape=st.sampled_from(["box", "polygon"]),
    strays=st.lists(
        st.sampled_from(
            [
                "missing-file",
                "unlisted-image",
                "twice",
                "twice-undeclared",
                "nested",
                "tail-clash",
                "undeclared",
                "empty",
                *UNRELATED,
            ]
        ),
        unique=True,
    ),
)
def test_cvat_accounts_for_every_file(n, shape, strays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, boxes, elements = Path(tmp) / "cvat", {}, []

        def image(name: str, k: int | None, file: bool = True, label: str = "polyp") -> None:
            if file and not (root / "images" / name).is_file():
                save(root / "images" / name, noise_image(k or 0))
            objects = ""
            if k is not None:
                x0, y0, x1, y1 = _box(k)
                objects = (
                    f'<box label="{label}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" z_order="0"/>'
                    if shape == "box"
                    else f'<polygon label="{label}" occluded="0" points="{x0},{y0};{x1},{y0};{x1},{y1};{x0},{y1}"/>'
                )
                if file and label == "polyp":
                    boxes[f"images/{name}"] = k
            elements.append(
                f'<image id="{len(elements)}" name="{name}" width="{SIZE}" height="{SIZE}">{objects}</image>'
            )

        for k in range(n):
            image(f"f{k}.jpg", k)
        if "missing-file" in strays:
            image("f20.jpg", 20, file=False)
        if "unlisted-image" in strays:
            save(root / "images" / "f21.jpg", noise_image(21))
        if "twice" in strays:
            image("f0.jpg", 0)
        if "twice-undeclared" in strays:  # f0 listed again, an object of a label not declared
            image("f0.jpg", 0, label="cyst")
        if "nested" in strays:
            image("sub/f22.jpg", 22)
        if "tail-clash" in strays:  # another f0, once in old/, not there: not f0's
            image("old/f0.jpg", 15, file=False)
        if "undeclared" in strays:
            image("f23.jpg", 23, label="cyst")
        if "empty" in strays:
            image("f24.jpg", None)
        meta = "<meta><task><labels><label><name>polyp</name></label></labels></task></meta>"
        (root / "annotations.xml").write_text(
            f"<?xml version='1.0' encoding='utf-8'?>\n<annotations><version>1.1</version>{meta}"
            + "".join(elements)
            + "</annotations>"
        )
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "cvat", m.notes
        if "missing-file" in strays:
            assert _named(m, "f20.jpg")
        if "unlisted-image" in strays:
            assert _named(m, "images/f21.jpg")
        if "undeclared" in strays:
            assert _named(m, "images/f23.jpg")
        if "tail-clash" in strays:
            assert "which the file lists as another image" in dict(m.ledger.left_out)["old/f0.jpg"]
        if "twice-undeclared" in strays:  # one listing refused: the image is left out whole
            assert "images/f0.jpg" not in set(m.table["image"]) and _named(m, "images/f0.jpg")
        _check(m, root, boxes, boxes)


# --- nnU-Net's raw dataset (imagesTr/<case>_0000 + labelsTr/<case>, dataset.json, imagesTs/) ---------------------


@EXAMPLES
@given(
    n=st.integers(2, 4),
    cases=st.sampled_from(["case_{:03d}", "kidney_{}", "P{}_0001"]),  # a case name may itself end in digits
    strays=st.lists(
        st.sampled_from(["channel", "test-images", "label-without-image", "image-without-label", *UNRELATED]),
        unique=True,
    ),
)
def test_an_nnunet_dataset_accounts_for_every_file(n, cases, strays) -> None:
    """Every file of an nnU-Net raw dataset is used or named: each case's image with its label, further channels
    and imagesTs/ as not read, a label without an image as a problem; dataset.json is a source of the read."""
    with tempfile.TemporaryDirectory() as tmp:
        root, masks = Path(tmp) / "Dataset001_Polyp", {}
        for k in range(n):
            case = cases.format(k)
            save(root / "imagesTr" / f"{case}_0000.png", noise_image(k))
            save(root / "labelsTr" / f"{case}.png", _mask(k))
            masks[f"imagesTr/{case}_0000.png"] = k
        if "channel" in strays:
            save(root / "imagesTr" / f"{cases.format(0)}_0001.png", noise_image(20))
        if "test-images" in strays:
            save(root / "imagesTs" / f"{cases.format(9)}_0000.png", noise_image(21))
        if "label-without-image" in strays:
            save(root / "labelsTr" / f"{cases.format(7)}.png", _mask(7))
        if "image-without-label" in strays:
            save(root / "imagesTr" / f"{cases.format(8)}_0000.png", noise_image(8))
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "polyp": 1}, "file_ending": ".png"}))
        _unrelated(root, strays)
        m = load_manifest(root)
        assert m.layout == "images-masks", m.notes
        said = {
            "channel": f"(channel 0001 of case {cases.format(0)!r})",
            "test-images": "nnU-Net test image",
            "label-without-image": f"labelsTr/{cases.format(7)}.png",
        }
        assert all(_named(m, text) for stray, text in said.items() if stray in strays), m.ledger
        _check(m, root, {}, masks)
