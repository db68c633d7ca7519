"""Boxes from masks, clean-up against the image with messages, scaling, and the array form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import noise_image, save
from medcad.config import TrainConfig
from medcad.data.boxes import boxes_from_mask, boxes_to_array, clean_boxes, scale_boxes
from medcad.data.layouts import load_manifest
from medcad.errors import DataError
from medcad.targets import run_rows


def test_boxes_from_mask_one_per_component_and_specks_dropped() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True  # 10 x 20
    mask[30:33, 40:44] = True  # 12 pixels: a speck at min_area 16
    mask[20:26, 0:4] = True  # 24 pixels, touching the border
    boxes = boxes_from_mask(mask, "polyp")
    assert sorted(boxes) == sorted([[10, 5, 30, 15, "polyp"], [0, 20, 4, 26, "polyp"]])
    assert len(boxes_from_mask(mask, "polyp", min_area=1)) == 3
    assert boxes_from_mask(np.zeros((8, 8), bool), "polyp") == []
    with pytest.raises(ValueError, match="expected"):
        boxes_from_mask(np.zeros((8, 8, 3)), "polyp")


def test_clean_boxes_clips_drops_and_explains() -> None:
    boxes = [
        [10, 10, 50, 40, "polyp"],  # fine
        [-5, 70, 30, 95, "polyp"],  # reaches outside a 100x80 image: clipped
        [120, 10, 150, 40, "polyp"],  # wholly outside: dropped
        [20, 20, 20, 30, "polyp"],  # zero width: dropped
        [20, 20, 20.5, 21.5, "polyp"],  # under 1 pixel: dropped
        [1, 2, 3, "polyp"],  # malformed
        ["a", 2, 3, 4, "polyp"],  # not numbers
        [1, 2, float("nan"), 4, "polyp"],
    ]
    kept, problems = clean_boxes(boxes, 100, 80, "images/a.jpg")
    assert kept == [[10, 10, 50, 40, "polyp"], [0, 70, 30, 80, "polyp"]]
    assert len(problems) == 7 and all(p.startswith("images/a.jpg: ") for p in problems)
    assert "outside the 100x80 image, clipped" in problems[0]
    assert "dropped" in problems[1] and "outside" in problems[1]
    assert "no area" in problems[2] and "no area" in problems[3]
    assert all("not a box" in p for p in problems[4:])
    assert clean_boxes([], 10, 10, "x") == ([], [])


def test_scale_and_array_form() -> None:
    scaled = scale_boxes([[10, 20, 110, 60, "polyp"]], (200, 100), 64)
    assert scaled == [[3.2, 12.8, 35.2, 38.4, "polyp"]]
    assert scale_boxes([[0, 0, 10, 10, "x"]], (20, 20), (40, 80)) == [[0, 0, 20, 40, "x"]]
    arr = boxes_to_array([[1, 2, 3, 4, "tumour"], [5, 6, 7, 8, "normal"]], ["normal", "tumour"], "a.png")
    assert arr.shape == (2, 5) and arr[:, 4].tolist() == [1, 0]
    assert boxes_to_array([], ["normal"], "a.png").shape == (0, 5)
    with pytest.raises(DataError, match=r"a\.png: box label 'cyst' is not one of"):
        boxes_to_array([[1, 2, 3, 4, "cyst"]], ["normal"], "a.png")


def test_an_image_whose_every_box_is_unusable_is_not_a_negative(tmp_path: Path) -> None:
    """A detection run stops at an image whose boxes all fall outside it (it had been scored as lesion-free, its box
    dropped, with nothing said but the dropped box); with --allow-missing it is left out and named in the ledger. An
    image that keeps one usable box is kept; other tasks read every row."""
    lines = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    boxes_of = {"a.png": [(2, 2, 9, 9)], "b.png": [(40, 2, 60, 9)], "c.png": [(1, 1, 5, 5), (0, 50, 9, 70)]}
    for name, boxes in boxes_of.items():
        save(tmp_path / name, noise_image(0, 32))
        lines += [f"{name},32,32,polyp,{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in boxes]
    (tmp_path / "_annotations.csv").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path)
    with pytest.raises(DataError, match=r"1 image\(s\) have boxes but none usable.*b\.png: box \[40\.0, 2\.0"):
        run_rows(m, TrainConfig(task="detect"))
    kept = run_rows(m, TrainConfig(task="detect", allow_missing=True))
    assert sorted(kept.keys) == ["a.png", "c.png"] and kept.ledger.used == 2
    assert [(p, r.split(":")[0]) for p, r in kept.ledger.left_out] == [("b.png", "no usable box")]
    assert "outside the 32x32 image" in kept.ledger.left_out[0][1] and "b.png" in kept.notes[-1]
    assert len(run_rows(m, TrainConfig(task="classify"))) == 3


def test_a_run_made_before_keeps_its_images_without_a_usable_box(tmp_path: Path) -> None:
    """Read again for an existing run (evaluate, report, export), an image the run used stays as it was scored (it
    had been refused, or left out and then called removed from the dataset), said in a note; a new run stops."""
    import json as _json

    from medcad.targets import run_dataset

    lines = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for name, (x0, y0, x1, y1) in {"a.png": (2, 2, 9, 9), "b.png": (40, 2, 60, 9), "c.png": (1, 1, 5, 5)}.items():
        save(tmp_path / "data" / name, noise_image(0, 32))
        lines.append(f"{name},32,32,polyp,{x0},{y0},{x1},{y1}")
    (tmp_path / "data" / "_annotations.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.json").write_text(_json.dumps({"samples": {k: None for k in ("a.png", "b.png", "c.png")}}))
    cfg = TrainConfig(task="detect")
    kept = run_dataset(tmp_path / "data", cfg, run)
    assert sorted(kept.keys) == ["a.png", "b.png", "c.png"]
    assert any("kept as this run used them" in n and "b.png" in n for n in kept.notes)
    with pytest.raises(DataError, match="none usable"):
        run_dataset(tmp_path / "data", cfg)


def test_a_mask_of_another_label_is_not_made_a_one_class_detectors_class(tmp_path: Path) -> None:
    """A polyp detector evaluated on BUSI (benign / malignant masks) had scored them as polyps without a word; an
    unlabelled lesion mask is still the one class's."""
    import pandas as pd

    from medcad.data.boxes import manifest_boxes

    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    for name in ("a", "b"):
        save(tmp_path / f"{name}.png", noise_image(40))
        save(tmp_path / f"{name}_m.png", mask)
    rows = [{"image": f"{n}.png", "mask": f"{n}_m.png", "label": lab} for n, lab in (("a", ""), ("b", "benign"))]
    pd.DataFrame(rows).to_csv(tmp_path / "set.csv", index=False)
    manifest = load_manifest(tmp_path / "set.csv")
    unlabelled = manifest.subset([0])
    labels, arrays, _, _ = manifest_boxes(unlabelled, 32, ["polyp"])
    assert labels == ["polyp"] and arrays[0][:, 4].tolist() == [0]
    with pytest.raises(DataError, match="box label 'benign' is not one of the detection classes"):
        manifest_boxes(manifest, 32, ["polyp"])


def test_boxes_that_are_lines_or_specks_are_kept_and_named_with_the_box_they_lie_in() -> None:
    """Kvasir-SEG's JSON holds 129x1, 61x1, 3x134 and 2x2 px boxes inside real ones: a run keeps them (they are the
    annotator's) but names each, and the box it lies inside; a box of 16 px or more and 2 px across is not named."""
    from medcad.data.boxes import checked_boxes

    boxes = [[0, 0, 50, 50, "polyp"], [10, 10, 12, 12, "polyp"], [60, 5, 60.5, 40, "polyp"], [70, 70, 74, 74, "polyp"]]
    kept, said = checked_boxes(boxes, 100, 100)
    assert len(kept) == 4
    assert said == [
        "box [10.0, 10.0, 12.0, 12.0] (polyp) is 2x2 px: a line or a speck, not a lesion's extent?, inside box "
        "[0.0, 0.0, 50.0, 50.0]; kept",
        "box [60.0, 5.0, 60.5, 40.0] (polyp) is 0.5x35 px: a line or a speck, not a lesion's extent?; kept",
    ]


def test_a_listed_score_reaches_a_threshold_exactly_where_the_box_did() -> None:
    """Listed scores are cut to 4 decimals, not rounded: a box at 0.49996 reads 0.4999, below a 0.5 threshold that
    drops it (rounded, it had read 0.5000 and 17 boxes of a run could not be told apart so)."""
    from medcad.data.boxes import listed_boxes

    scores = np.array([0.49996, 0.5, 0.50004, 0.3, 0.05, 0.99999])
    boxes = np.c_[np.zeros((6, 4)), scores, np.zeros(6)]
    listed = [b[4] for b in listed_boxes(boxes, ["polyp"])]
    assert listed == [0.4999, 0.5, 0.5, 0.3, 0.05, 0.9999]
    for t in (0.05, 0.3, 0.5):
        assert [v >= t for v in listed] == [v >= t for v in scores]
