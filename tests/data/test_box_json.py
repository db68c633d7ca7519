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
