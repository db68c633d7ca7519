"""YOLO label files and Pascal VOC XML, laid out as Ultralytics / Roboflow, CVAT and LabelImg write them, read
back by value: every box where it was drawn, every image used or named (they had become one class named after the
tool's folder, their boxes dropped)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.errors import DataError

NAMES = ["polyp", "adenoma", "instrument"]
BOX = st.tuples(st.integers(0, 2), st.floats(0.0, 0.7), st.floats(0.0, 0.7), st.floats(0.05, 0.3), st.floats(0.05, 0.3))


def _image(root: Path, rel: str, seed: int, w: int, h: int) -> None:
    img = noise_image(seed, size=max(w, h))[:h, :w]
    save(root / rel, np.ascontiguousarray(img))


def _yolo_set(root: Path, layout: str, images: list[tuple[int, int, list]]) -> dict[str, tuple[list, str]]:
    """Images with YOLO boxes (class, x0, y0, bw, bh as fractions) in `layout`; returns image -> (boxes in pixels
    [x0, y0, x1, y1, label], the expected image label)."""
    truth = {}
    for i, (w, h, boxes) in enumerate(images):
        if layout == "ultralytics":
            split = ("train", "valid", "test")[i % 3]
            rel, label_file = f"{split}/images/f{i}.jpg", root / split / "labels" / f"f{i}.txt"
        elif layout == "ultralytics-coco-style":  # images/train/x.jpg with labels/train/x.txt
            split = ("train", "val")[i % 2]
            rel, label_file = f"images/{split}/f{i}.jpg", root / "labels" / split / f"f{i}.txt"
        else:  # CVAT "YOLO 1.1": each .txt beside its image
            rel, label_file = f"obj_train_data/f{i}.png", root / "obj_train_data" / f"f{i}.txt"
        _image(root, rel, i, w, h)
        lines = [f"{c} {x0 + bw / 2:.6f} {y0 + bh / 2:.6f} {bw:.6f} {bh:.6f}" for c, x0, y0, bw, bh in boxes]
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + "\n")
        labels = {NAMES[b[0]] for b in boxes}
        pixels = [[x0 * w, y0 * h, (x0 + bw) * w, (y0 + bh) * h, NAMES[c]] for c, x0, y0, bw, bh in boxes]
        truth[rel] = (pixels, labels.pop() if len(labels) == 1 else ("background" if not boxes else ""))
    if layout.startswith("ultralytics"):
        (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: " + str(NAMES))
    else:
        (root / "obj.names").write_text("\n".join(NAMES) + "\n")
        (root / "obj.data").write_text("classes = 3\ntrain = data/train.txt\nnames = data/obj.names\n")
    return truth


@settings(max_examples=15, deadline=None)
@given(
    layout=st.sampled_from(["ultralytics", "ultralytics-coco-style", "cvat"]),
    images=st.lists(
        st.tuples(st.integers(24, 48), st.integers(24, 48), st.lists(BOX, max_size=3)), min_size=1, max_size=5
    ),
    under=st.sampled_from(["", "images/exports"]),
)
@example(layout="cvat", images=[(30, 30, [(0, 0.1, 0.1, 0.2, 0.2)])], under="images/exports")
def test_yolo_boxes_are_read_where_they_were_drawn(layout, images, under) -> None:
    """Each box comes back where it was drawn, in each tool's layout, also in a set stored under a folder named
    `images` (only the folders below the set's own count: CVAT's `obj_train_data/x.txt` beside its image had been
    looked for in `labels/exports/...`, and the set read as class folders)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / under
        truth = _yolo_set(root, layout, images)
        m = load_manifest(root)
        assert m.layout == "yolo" and m.ledger.line() == f"used {len(images)} of {len(images)}"
        splits = len({Path(r).parent for r in truth})
        assert any("read together as one set" in n for n in m.notes) == (splits > 1)
        if splits > 1:  # each image's split folder is kept, for --split-column split (it had been dropped)
            want = [next(p for p in Path(img).parts if p in ("train", "valid", "val", "test")) for img in m.table.image]
            assert list(m.table["split"]) == want
        for img, boxes, label in m.table[["image", "boxes", "label"]].values:
            want, want_label = truth[img]
            got = json.loads(boxes)
            assert [b[4] for b in got] == [b[4] for b in want] and label == want_label
            assert np.allclose([b[:4] for b in got], [b[:4] for b in want], atol=0.01) if want else got == []


def test_yolo_polygons_become_masks_and_bad_lines_are_named(tmp_path: Path) -> None:
    """Ultralytics' segmentation labels (class x1 y1 x2 y2 ...) give masks; a class beyond the names, a line of 5
    numbers plus one, unnormalised coordinates: the image is left out with the line named."""
    for i in range(4):
        _image(tmp_path, f"images/f{i}.png", i, 40, 40)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "f0.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    (labels / "f1.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    (labels / "f2.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n")
    (labels / "f3.txt").write_text("0 20 20 8 8\n")
    (tmp_path / "classes.txt").write_text("polyp\n")
    m = load_manifest(tmp_path)
    assert list(m.table["image"]) == ["images/f0.png"]
    from medcad.data.masks import read_mask

    mask = read_mask(m.mask_paths(0))
    assert mask[10:30, 10:30].all() and mask.sum() == pytest.approx(400, abs=45)
    reasons = dict(m.ledger.left_out)
    assert "class 5 is not one of the 1 names" in reasons["images/f1.png"]
    assert "5 coordinates" in reasons["images/f2.png"] and "outside 0..1" in reasons["images/f3.png"]


TRIANGLE = "0.1 0.1 0.6 0.1 0.1 0.6"  # a polygon line's points, normalised


@settings(max_examples=15, deadline=None)
@given(
    ids=st.lists(st.integers(0, 30), min_size=1, max_size=4, unique=True),
    picks=st.lists(st.integers(0, 40), min_size=1, max_size=4),
)
def test_yolo_class_ids_are_the_keys_of_a_names_dict(ids, picks) -> None:
    """data.yaml's `names: {1: polyp, 2: adenoma}`: a label line's class is looked up by key (it had been the
    position in the sorted keys: class 1 read as 'adenoma'); a class that is no key leaves its image out, its
    file and line named."""
    names, picks = {i: f"class{i}" for i in ids}, [ids[0], *picks]  # one image at least is read
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data.yaml").write_text("names: {" + ", ".join(f"{i}: {n}" for i, n in names.items()) + "}\n")
        for k, cls in enumerate(picks):
            _image(root, f"images/f{k}.png", k, 32, 32)
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"f{k}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
        m = load_manifest(root)
        got = dict(m.table[["image", "label"]].values)
        reasons = dict(m.ledger.left_out)
        for k, cls in enumerate(picks):
            if cls in names:
                assert got[f"images/f{k}.png"] == names[cls]
            else:
                assert reasons[f"images/f{k}.png"].startswith(f"labels/f{k}.txt: line 1: class {cls} is not one of")
        listed = ", ".join(f"{i} 'class{i}'" for i in sorted(ids))
        assert f"classes from data.yaml: {listed}" in m.notes[1]
        assert ("looked up by id" in m.notes[1]) == (sorted(ids) != list(range(len(ids))))


def test_yolo_names_keys_that_are_no_class_ids_are_refused(tmp_path: Path) -> None:
    from medcad.errors import DataError

    _image(tmp_path, "images/f0.png", 0, 32, 32)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("names: {polyp: 0, adenoma: 1}\n")
    with pytest.raises(DataError, match=r"data.yaml: `names` keys must be class ids .*'polyp'"):
        load_manifest(tmp_path)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["box", "polygon"]), max_size=3), min_size=1, max_size=5))
def test_yolo_boxes_among_polygons_get_no_rectangle_mask(kinds) -> None:
    """A segmentation set with some box lines: an image with a box gets no mask (a filled rectangle had been its
    lesion mask) and is named in a note; its boxes stay; images of polygons (or none) get their masks."""
    from medcad.data.masks import read_mask

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "labels").mkdir()
        for k, lines in enumerate(kinds):
            _image(root, f"images/f{k}.png", k, 40, 40)
            text = [f"0 {TRIANGLE}" if kind == "polygon" else "0 0.5 0.5 0.4 0.4" for kind in lines]
            (root / "labels" / f"f{k}.txt").write_text("\n".join(text) + "\n")
        (root / "classes.txt").write_text("polyp\n")
        m = load_manifest(root)
        outlines = any("polygon" in lines for lines in kinds)
        boxed = [f"images/f{k}.png" for k, lines in enumerate(kinds) if outlines and "box" in lines]
        for i, (img, boxes) in enumerate(m.table[["image", "boxes"]].values):
            lines = kinds[int(img[len("images/f") : -len(".png")])]
            assert len(json.loads(boxes)) == len(lines)
            assert bool(m.table["mask"].iat[i]) == (outlines and img not in boxed)
            if m.table["mask"].iat[i]:
                assert read_mask(m.mask_paths(i)).sum() == (0 if not lines else pytest.approx(210, abs=40))
        note = [n for n in m.notes if "have boxes in a set of outlined shapes" in n]
        assert len(note) == bool(boxed)
        if boxed:
            assert note[0].startswith(f"{len(boxed)} image(s)") and f"(e.g. {', '.join(boxed[:3])})" in note[0]


@pytest.mark.parametrize("beside", [False, True])
def test_yolo_images_of_one_name_sharing_a_label_file_are_named(tmp_path: Path, beside: bool) -> None:
    """frame1.jpg and frame1.png share frame1.txt (Ultralytics' labels/ or beside them, as CVAT writes): which
    image it annotates cannot be told, so both and the file are named as the other layouts name them (both had been
    given its boxes)."""
    folder = "obj_train_data" if beside else "images"
    for k, name in enumerate(("frame1.jpg", "frame1.png", "frame2.png")):
        _image(tmp_path, f"{folder}/{name}", k, 32, 32)
    labels = tmp_path / ("obj_train_data" if beside else "labels")
    labels.mkdir(exist_ok=True)
    for stem in ("frame1", "frame2"):
        (labels / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "obj.names").write_text("polyp\n")
    m = load_manifest(tmp_path)
    assert list(m.table["image"]) == [f"{folder}/frame2.png"] and m.labels == ["polyp"]
    both = f"{folder}/frame1.jpg, {folder}/frame1.png"
    reasons = dict(m.ledger.left_out)
    for img in ("frame1.jpg", "frame1.png"):
        assert reasons[f"{folder}/{img}"] == (
            f"another image has its name, so its YOLO label file is ambiguous: rename all but one ({both})"
        )
    label = f"{labels.name}/frame1.txt"
    assert reasons[label] == f"a YOLO label file matching several images of one name: rename all but one ({both})"


@pytest.mark.parametrize("layout", ["voc", "labelimg"])
def test_pascal_voc_boxes_as_cvat_and_labelimg_write_them(tmp_path: Path, layout: str) -> None:
    """VOC's Annotations/ beside JPEGImages/ (CVAT "PASCAL VOC 1.1") and LabelImg's XML beside each image; an image
    without XML gets no label, an XML of an image that is not there is named."""
    boxes = {0: [(3, 4, 20, 18, "polyp")], 1: [(1, 1, 10, 10, "polyp"), (12, 12, 30, 28, "adenoma")], 2: []}
    for i in range(4):
        folder = "JPEGImages" if layout == "voc" else "frames"
        _image(tmp_path, f"{folder}/f{i}.jpg", i, 40, 32)
        if i == 3:
            continue
        objects = "".join(
            f"<object><name>{n}</name><difficult>{int(k == 1)}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
            for k, (a, b, c, d, n) in enumerate(boxes[i])
        )
        xml = (
            f"<annotation><folder>{folder}</folder><filename>f{i}.jpg</filename><size><width>40</width>"
            f"<height>32</height><depth>3</depth></size>{objects}</annotation>"
        )
        where = tmp_path / ("Annotations" if layout == "voc" else folder) / f"f{i}.xml"
        where.parent.mkdir(exist_ok=True)
        where.write_text(xml)
    (tmp_path / ("Annotations" if layout == "voc" else "frames") / "gone.xml").write_text(
        "<annotation><filename>gone.jpg</filename><size><width>40</width><height>32</height></size></annotation>"
    )
    m = load_manifest(tmp_path)
    assert m.layout == "voc" and len(m) == 4
    got = {Path(img).stem: (json.loads(b or "[]"), lab) for img, b, lab in m.table[["image", "boxes", "label"]].values}
    assert got["f0"] == ([[3.0, 4.0, 20.0, 18.0, "polyp"]], "polyp")
    assert got["f1"][0] == [[1.0, 1.0, 10.0, 10.0, "polyp"], [12.0, 12.0, 30.0, 28.0, "adenoma"]] and got["f1"][1] == ""
    assert got["f2"] == ([], "background") and got["f3"] == ([], "")
    assert any("gone.xml" in p for p, _ in m.ledger.left_out)
    assert any("1 object(s) marked difficult" in n for n in m.notes)
    if layout == "voc":  # the release's segmentation PNGs are masks of its images, not more images (they had been)
        for i in range(3):
            for folder in ("SegmentationClass", "SegmentationObject"):
                mask = np.zeros((32, 40), np.uint8)
                mask[4:18, 3:20] = 1
                mask[3, 3:20] = 255  # VOC's void border
                save(tmp_path / folder / f"f{i}.png", mask)
        assert load_manifest(tmp_path).layout == "images-masks"  # the folder pair wins: JPEGImages/ with its masks
        m = load_manifest(tmp_path, layout="voc")  # as chosen where the pair is not at the top (VOC2012/ in a folder)
        assert m.layout == "voc" and sorted(m.table["image"]) == [f"JPEGImages/f{i}.jpg" for i in range(4)]
        unread = dict(m.ledger.unread)
        assert "segmentation mask" in unread["SegmentationClass/f0.png"] and len(unread) == 6
        assert any("6 file(s) in SegmentationClass/, SegmentationObject/ are segmentation masks" in n for n in m.notes)


def test_voc_xml_at_the_top_of_the_dataset_takes_its_own_image_not_one_above(tmp_path: Path) -> None:
    """LabelImg XMLs beside their images at the dataset's top: the image of the same name in a JPEGImages/ of the
    folder above (another dataset) had been taken first, and the XML then left out as naming no image under it."""
    root = tmp_path / "mine"
    _image(tmp_path, "JPEGImages/f0.jpg", 5, 40, 32)  # beside the dataset, not in it
    _image(root, "f0.jpg", 0, 40, 32)
    (root / "f0.xml").write_text(
        "<annotation><filename>f0.jpg</filename><size><width>40</width><height>32</height></size><object>"
        "<name>polyp</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    m = load_manifest(root)
    assert m.layout == "voc" and m.table["image"].tolist() == ["f0.jpg"] and not m.problems
    assert json.loads(m.table["boxes"].iat[0]) == [[1.0, 1.0, 9.0, 9.0, "polyp"]]


def _write_annotations(root: Path, layout: str, present: list[int], orphans: list[int], boxes: dict) -> None:
    """Images f<i>.jpg for `present`, and annotations (one box each where `boxes` has one) for `present` and for
    `orphans` (images that are not there), in `layout`."""
    folder = {"yolo": "images", "coco": "images", "voc": "JPEGImages"}[layout]
    for i in present:
        _image(root, f"{folder}/f{i}.jpg", i, 32, 24)
    annotated = sorted(set(present) | set(orphans))
    if layout == "yolo":
        (root / "labels").mkdir(parents=True, exist_ok=True)
        for i in annotated:
            lines = [f"0 {x + 0.1} {y + 0.1} 0.2 0.2" for x, y in boxes.get(i, [])]
            (root / "labels" / f"f{i}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        (root / "data.yaml").write_text("names: [polyp]\n")
    elif layout == "coco":
        images = [{"id": i, "file_name": f"f{i}.jpg", "width": 32, "height": 24} for i in annotated]
        anns = [
            {"id": 100 * i + k, "image_id": i, "category_id": 1, "bbox": [x * 32, y * 24, 6.4, 4.8], "area": 30.7}
            for i in annotated
            for k, (x, y) in enumerate(boxes.get(i, []))
        ]
        coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "polyp"}]}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "instances.json").write_text(json.dumps(coco))
    else:
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        for i in annotated:
            objects = "".join(
                f"<object><name>polyp</name><bndbox><xmin>{x * 32:.1f}</xmin><ymin>{y * 24:.1f}</ymin><xmax>"
                f"{x * 32 + 6.4:.1f}</xmax><ymax>{y * 24 + 4.8:.1f}</ymax></bndbox></object>"
                for x, y in boxes.get(i, [])
            )
            (root / "Annotations" / f"f{i}.xml").write_text(
                f"<annotation><filename>f{i}.jpg</filename><size><width>32</width><height>24</height></size>"
                f"{objects}</annotation>"
            )


@settings(max_examples=30, deadline=None)
@given(
    layout=st.sampled_from(["yolo", "coco", "voc"]),
    n=st.integers(1, 5),
    orphans=st.lists(st.integers(10, 12), unique=True, max_size=2),
    unannotated=st.lists(st.integers(20, 22), unique=True, max_size=2),
    boxes=st.dictionaries(
        st.integers(0, 12), st.lists(st.tuples(st.sampled_from([0.1, 0.5]), st.just(0.3)), max_size=2)
    ),
    strays=st.lists(st.sampled_from(["README.md", "notes.txt", "extra/x.png", "images/thumbs.db"]), unique=True),
)
def test_every_annotation_file_image_and_box_is_used_or_named(layout, n, orphans, unannotated, boxes, strays) -> None:
    """Whatever an export holds beside its images and annotations (annotations of images that are not there, images
    without annotation, stray files), every file is used, read as a source or named with a reason, and every box of
    an image that is there reaches the manifest where it was drawn."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        present = list(range(n))
        _write_annotations(root, layout, present, orphans, boxes)
        folder = {"yolo": "images", "coco": "images", "voc": "JPEGImages"}[layout]
        for i in unannotated:
            _image(root, f"{folder}/f{i}.jpg", i, 32, 24)
        for s in strays:
            (root / s).parent.mkdir(parents=True, exist_ok=True)
            save(root / s, noise_image(99)) if s.endswith(".png") else (root / s).write_text("x")
        m = load_manifest(root)
        assert m.layout == layout, m.notes
        ledger = m.ledger
        files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        accounted = m.used_files() | set(m.sources) | {p for p, _ in ledger.left_out + ledger.unread}
        assert files <= accounted, (files - accounted, m.notes)
        assert all(reason for _, reason in ledger.left_out + ledger.unread)
        got = {Path(img).stem: json.loads(b or "[]") for img, b in m.table[["image", "boxes"]].values}
        for i in present:  # each annotated image with each of its boxes, in pixels
            want = [[x * 32, y * 24, x * 32 + 6.4, y * 24 + 4.8, "polyp"] for x, y in boxes.get(i, [])]
            assert (
                np.allclose([b[:4] for b in got[f"f{i}"]], [b[:4] for b in want], atol=0.02)
                if want
                else not got[f"f{i}"]
            )
        for i in orphans:  # an annotation of an image that is not there is named, not silently dropped
            assert f"f{i}" not in got
            assert any(f"f{i}" in p or f"f{i}" in r for p, r in ledger.left_out + ledger.unread), ledger.left_out
        for i in unannotated:  # an image without annotation is a row (no label) or named
            assert f"f{i}" in got or any(f"f{i}.jpg" in p for p, _ in ledger.left_out + ledger.unread)


def test_a_yolo_image_without_a_labels_file_is_a_background_image(tmp_path: Path) -> None:
    """As Ultralytics reads it: label 'background', no boxes, said in a note (it had been '(no label)', a class of its
    own that stopped the split, whose advice, a --label-map of '(no label)', could not be followed). A Pascal VOC image
    without its XML stays unlabelled (unannotated is not lesion-free there)."""
    from medcad.data.splits import make_splits

    _write_annotations(tmp_path / "yolo", "yolo", [0, 1, 2, 3], [], {i: [(0.1, 0.3)] for i in range(4)})
    _image(tmp_path / "yolo", "images/f9.jpg", 9, 32, 24)
    m = load_manifest(tmp_path / "yolo")
    row = m.table.set_index("image").loc["images/f9.jpg"]
    assert row["label"] == "background" and json.loads(row["boxes"]) == []
    assert any("1 image(s) have no YOLO labels file: label 'background'" in n for n in m.notes)
    _write_annotations(tmp_path / "voc", "voc", [0, 1], [], {0: [(0.1, 0.3)]})
    _image(tmp_path / "voc", "JPEGImages/f9.jpg", 9, 32, 24)
    unlabelled = load_manifest(tmp_path / "voc")
    assert unlabelled.table.set_index("image").loc["JPEGImages/f9.jpg", "label"] == ""
    with pytest.raises(DataError, match=r"'\(no label\)': 1 image\(s\) without a label.*give them one"):
        make_splits(unlabelled, folds=2, group_by="none")


@pytest.mark.parametrize("layout", ["coco", "voc"])
def test_a_file_name_that_differs_in_case_alone_is_that_file(tmp_path: Path, layout: str) -> None:
    """`f0.jpg` in the annotations, `f0.JPG` on disk (a set annotated on Windows or macOS): read as that file, with a
    note, in COCO as in Pascal VOC (COCO had left it out as not found); its box where it was drawn."""
    _write_annotations(tmp_path, layout, [0, 1], [], {0: [(0.1, 0.3)], 1: [(0.5, 0.3)]})
    folder = {"coco": "images", "voc": "JPEGImages"}[layout]
    (tmp_path / folder / "f0.jpg").rename(tmp_path / folder / "f0.JPG")
    m = load_manifest(tmp_path)
    assert m.ledger.line() == "used 2 of 2", m.ledger.left_out
    boxes = json.loads(m.table.set_index("image").loc[f"{folder}/f0.JPG", "boxes"])
    assert np.allclose(boxes[0][:4], [3.2, 7.2, 9.6, 12.0], atol=0.02)
    assert any("f0.JPG" in n for n in m.notes)
