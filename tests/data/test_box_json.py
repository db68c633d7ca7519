"""Kvasir-SEG's box JSON beside images/ and masks/: checked against the images it names (size), recognised by what
it holds (entries with a `bbox` list), keyed by image stem or file name."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.errors import DataError


def _pair_set(root: Path, n: int = 3, w: int = 40, h: int = 30) -> list[str]:
    """n images of w x h in images/ with masks in masks/; their stems."""
    for k in range(n):
        save(root / "images" / f"id{k}.png", noise_image(k, max(w, h))[:h, :w].copy())
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5:20] = 255
        save(root / "masks" / f"id{k}.png", mask)
    return [f"id{k}" for k in range(n)]


def _entry(w: int, h: int) -> dict:
    return {"height": h, "width": w, "bbox": [{"label": "polyp", "xmin": 2, "ymin": 3, "xmax": 20, "ymax": 25}]}


@settings(max_examples=12, deadline=None)
@given(st.integers(20, 60), st.integers(20, 60), st.integers(20, 60), st.integers(20, 60))
def test_box_json_declaring_another_image_size_leaves_the_image_out(w: int, h: int, dw: int, dh: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stems = _pair_set(root, n=2, w=w, h=h)
        entries = {stems[0]: _entry(dw, dh), stems[1]: _entry(w, h)}  # id1's entry is for its image
        (root / "kavsir_bboxes.json").write_text(json.dumps(entries))
        m = load_manifest(root)
        problems = dict(m.problems)
        if (dw, dh) == (w, h):
            assert len(m) == 2 and not problems
        else:
            assert list(m.table["image"]) == ["images/id1.png"]
            said = f"kavsir_bboxes.json entry 'id0' is for a {dw}x{dh} image but the image is {w}x{h}"
            assert problems["images/id0.png"].startswith(said)
        assert json.loads(m.table["boxes"].iat[len(m) - 1]) == [[2, 3, 20, 25, "polyp"]]


def test_box_json_for_resized_images_is_refused(tmp_path: Path) -> None:
    """Every image downscaled, the JSON left as it was (the tester's kvbox): no read, the sizes named."""
    stems = _pair_set(tmp_path, n=3, w=40, h=30)
    (tmp_path / "kavsir_bboxes.json").write_text(json.dumps({s: _entry(622, 529) for s in stems}))
    with pytest.raises(DataError, match="is for a 622x529 image but the image is 40x30"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("key", ["stem", "name", "both"])
def test_box_json_keyed_by_file_name_or_stem(tmp_path: Path, key: str) -> None:
    stems = _pair_set(tmp_path, n=3)
    named = {"stem": stems, "name": [f"{s}.png" for s in stems], "both": [stems[0], *(f"{s}.png" for s in stems[1:])]}
    (tmp_path / "bboxes.json").write_text(json.dumps({k: _entry(40, 30) for k in named[key]}))
    m = load_manifest(tmp_path)
    assert m.sources == ["bboxes.json"] and not m.ledger.unread
    assert [m.boxes(i) for i in range(3)] == [[[2, 3, 20, 25, "polyp"]]] * 3
    assert any(n.startswith("boxes from bboxes.json: 3 of 3 images") for n in m.notes), m.notes


def test_json_keyed_by_stem_without_boxes_is_not_a_box_json(tmp_path: Path) -> None:
    """A JSON of other facts per image (the tester's info.json: w, h, area) is no box source; a detection read of the
    set makes boxes from the masks and says that the JSON went unread."""
    from medcad.data.boxes import manifest_boxes

    stems = _pair_set(tmp_path, n=3)
    (tmp_path / "info.json").write_text(json.dumps({s: {"w": 40, "h": 30, "area": 150} for s in stems}))
    m = load_manifest(tmp_path)
    assert m.sources == [] and (m.table["boxes"] == "").all()
    assert not any("boxes from" in n for n in m.notes), m.notes
    assert [p for p, _ in m.ledger.unread] == ["info.json"]
    _, boxes, _, _ = manifest_boxes(m, 32)
    assert all(len(b) == 1 for b in boxes)  # from the masks
    said = "boxes of 3 image(s) made from their masks (one per connected component), while info.json"
    assert any(n.startswith(said) for n in m.notes), m.notes


def test_box_json_entry_without_corners_is_named(tmp_path: Path) -> None:
    stems = _pair_set(tmp_path, n=2)
    bad = {"height": 30, "width": 40, "bbox": [{"label": "polyp", "x": 2, "y": 3}]}
    (tmp_path / "bboxes.json").write_text(json.dumps({stems[0]: _entry(40, 30), stems[1]: bad}))
    m = load_manifest(tmp_path)
    assert list(m.table["image"]) == ["images/id0.png"]
    assert "bboxes.json entry 'id1' is not {bbox: [{label, xmin, ...}]} (KeyError" in dict(m.problems)["images/id1.png"]


def test_images_without_an_entry_are_said_to_take_their_boxes_from_their_masks(tmp_path: Path) -> None:
    """8 of 30 images without an entry had silently had their boxes drawn from their masks."""
    stems = _pair_set(tmp_path, n=3)
    (tmp_path / "kavsir_bboxes.json").write_text(json.dumps({stems[0]: _entry(40, 30)}))
    m = load_manifest(tmp_path)
    note = next(n for n in m.notes if n.startswith("boxes from kavsir_bboxes.json"))
    assert "1 of 3 images; 2 have no entry there (e.g. images/id1.png): detection draws their boxes" in note


def test_the_audit_names_the_boxes_a_detection_run_would_clip_or_drop(tmp_path: Path, monkeypatch) -> None:
    """`data audit` lists boxes outside their image or of no area, and an image left with no usable box as blocking
    (it had said "No blocking problems found." of a set `train --task detect` then stopped on)."""
    from rich.console import Console

    from medcad.data.audit import audit
    from medcad.report.console_data import print_audit

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    stems = _pair_set(tmp_path, n=3)
    boxes = [
        [{"label": "polyp", "xmin": -10, "ymin": 3, "xmax": 20, "ymax": 25}],  # partly outside: clipped
        [{"label": "polyp", "xmin": 50, "ymin": 40, "xmax": 60, "ymax": 45}],  # wholly outside the 40x30 image
        [{"label": "polyp", "xmin": 2, "ymin": 3, "xmax": 20, "ymax": 25}],
    ]
    boxes[2].append({"label": "polyp", "xmin": 5, "ymin": 0, "xmax": 30, "ymax": 1})  # a line, as Kvasir-SEG has two
    entries = {s: {"height": 30, "width": 40, "bbox": b} for s, b in zip(stems, boxes, strict=True)}
    (tmp_path / "kavsir_bboxes.json").write_text(json.dumps(entries))
    r = audit(load_manifest(tmp_path), interface="none")
    assert [row[0] for row in r["box_problems"]] == ["images/id0.png", "images/id1.png", "images/id2.png"]
    assert "clipped" in r["box_problems"][0][1] and "dropped" in r["box_problems"][1][1]
    line = "box [5.0, 0.0, 30.0, 1.0] (polyp) is 25x1 px: a line or a speck, not a lesion's extent?; kept"
    assert r["box_problems"][2][1] == line
    assert r["images_without_usable_boxes"] == ["images/id1.png"]
    console = Console(record=True, width=200)
    print_audit(r, console)
    text = console.export_text()
    assert "1 image(s) have boxes but none usable" in text and "No blocking problems found." not in text
