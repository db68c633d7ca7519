"""A table with one row per box (TensorFlow Object Detection CSV, Roboflow's `_annotations.csv`): the rows of one
image are its boxes (they had been merged into one row, the second row's corners lost, as 'the same fields')."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import noise_image, save
from medcad.data.layouts import load_manifest
from medcad.errors import DataError

HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
BOXES = st.lists(
    st.tuples(st.sampled_from(["polyp", "adenoma"]), st.integers(0, 20), st.integers(0, 20), st.integers(1, 12)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=10, deadline=None)
@given(st.lists(BOXES, min_size=1, max_size=4))
def test_rows_of_one_image_are_its_boxes(images: list[list[tuple[str, int, int, int]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, lines, want = Path(tmp), [], {}
        for k, boxes in enumerate(images):
            save(root / f"f{k}.png", noise_image(k, 32))
            want[f"f{k}.png"] = sorted([x, y, x + s, y + s, c] for c, x, y, s in boxes)
            lines += [f"f{k}.png,32,32,{c},{x},{y},{x + s},{y + s}\n" for c, x, y, s in boxes]
        (root / "_annotations.csv").write_text(HEADER + "".join(lines))
        m = load_manifest(root)
        assert m.layout == "csv" and not m.problems
        got = {m.table["image"].iat[i]: sorted(m.boxes(i)) for i in range(len(m))}
        assert got == want
        for i in range(len(m)):
            labels = {b[4] for b in m.boxes(i)}
            assert m.table["label"].iat[i] == (labels.pop() if len(labels) == 1 else "")


def test_box_row_for_another_image_size_is_named(tmp_path: Path) -> None:
    save(tmp_path / "a.png", noise_image(0, 32))
    save(tmp_path / "b.png", noise_image(1, 32))
    rows = "a.png,32,32,polyp,1,2,10,12\nb.png,640,640,polyp,100,100,300,300\n"
    (tmp_path / "boxes.csv").write_text(HEADER + rows)
    m = load_manifest(tmp_path / "boxes.csv")
    assert list(m.table["image"]) == ["a.png"]
    assert "is for a 640x640 image but the image is 32x32" in dict(m.problems)["b.png"]


def test_rows_differing_in_other_columns_are_not_called_the_same(tmp_path: Path) -> None:
    save(tmp_path / "a.png", noise_image(0, 32))
    (tmp_path / "m.csv").write_text("image,label,reader\na.png,polyp,R1\na.png,polyp,R2\n")
    m = load_manifest(tmp_path / "m.csv")
    assert len(m) == 1 and m.table["reader"].iat[0] == "R1"
    assert not any("with the same fields" in n for n in m.notes), m.notes
    assert any("listed more than once with different reader" in n for n in m.notes), m.notes


@pytest.mark.parametrize("corner", ["", "x"])
def test_box_row_without_corners(tmp_path: Path, corner: str) -> None:
    """Empty corners: an image without objects (no box); corners that are not numbers: the row is named."""
    save(tmp_path / "a.png", noise_image(0, 32))
    (tmp_path / "boxes.csv").write_text(HEADER + f"a.png,32,32,normal,{corner},{corner},{corner},{corner}\n")
    if corner:
        with pytest.raises(
            DataError, match=r"a.png: box corners or image size \[.*\] are not numbers \(boxes.csv line 2"
        ):
            load_manifest(tmp_path / "boxes.csv")
    else:
        m = load_manifest(tmp_path / "boxes.csv")
        assert m.boxes(0) == [] and m.table["label"].iat[0] == "normal"


def test_a_box_table_as_pandas_and_spreadsheets_write_it(tmp_path: Path) -> None:
    """Sizes written as 50.0 (pandas, once a column held a gap) are sizes; blank lines and rows of spaces are
    skipped and later problems name their own line; an image one of whose box rows is refused is left out whole
    (its other box alone had been kept: the refused lesion would have scored as background)."""
    for name, size in (("a.png", 32), ("b.png", 32), ("c.png", 32)):
        save(tmp_path / name, noise_image(len(name) + size, size))
    lines = [
        HEADER.strip(),
        "a.png,32.0,32.0,polyp,1,2,10,12",
        "",
        " , , , , , , , ",
        "b.png,32,32,polyp,1,2,10,12",
        "b.png,32,32,polyp,x,2,10,12",
        "c.png,32,32,polyp,3,4,20,22",
    ]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path / "boxes.csv", allow_missing=True)
    assert sorted(m.table["image"]) == ["a.png", "c.png"]
    assert dict(m.problems)["b.png"].endswith("(boxes.csv line 6)")
    assert any("2 row(s) with every cell empty skipped (lines 3-4)" in n for n in m.notes), m.notes
    assert any("1 image(s) listed more than once in the box table, one listing refused" in n for n in m.notes), m.notes


def test_a_roboflow_csv_export_split_into_folders_is_read_together(tmp_path: Path) -> None:
    """Roboflow's TensorFlow CSV export keeps an `_annotations.csv` in each of train/ valid/ test/: one set, read
    together (it had been read as class folders 'train' and 'valid', the tables unread)."""
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        lines = [HEADER.strip()]
        for k in range(n):
            save(tmp_path / split / f"{split}{k}.png", noise_image(k + 10 * n, 32))
            lines += [f"{split}{k}.png,32,32,polyp,1,2,{10 + k},12", f"{split}{k}.png,32,32,adenoma,15,15,30,30"]
        (tmp_path / split / "_annotations.csv").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path)
    assert (
        m.layout == "csv"
        and len(m) == 6
        and sorted(m.sources) == [f"{s}/_annotations.csv" for s in ("test", "train", "valid")]
    )
    i = list(m.table["image"]).index("train/train2.png")
    assert m.boxes(i) == [[1.0, 2.0, 12.0, 12.0, "polyp"], [15.0, 15.0, 30.0, 30.0, "adenoma"]]
    assert m.ledger.line() == "used 6 of 6"
    # the export's split is kept in column split, for --split-column split (it had been dropped)
    assert [Path(img).parts[0] for img in m.table["image"]] == list(m.table["split"])


@pytest.mark.parametrize("cells", ["inf,32,polyp,1,2,10,12", "40.9,32,polyp,1,2,10,12", "32,32,polyp,nan,2,10,12"])
def test_box_rows_with_sizes_or_corners_that_are_no_numbers_are_named(tmp_path: Path, cells: str) -> None:
    """A width 'inf' had raised a traceback, 40.9 been read as 40, a corner 'nan' been written into the boxes."""
    save(tmp_path / "a.png", noise_image(0, 32))
    save(tmp_path / "b.png", noise_image(1, 32))
    (tmp_path / "boxes.csv").write_text(HEADER + f"a.png,{cells}\nb.png,32,32,polyp,1,2,10,12\n")
    m = load_manifest(tmp_path / "boxes.csv", allow_missing=True)
    assert list(m.table["image"]) == ["b.png"] and "are not numbers (boxes.csv line 2)" in dict(m.problems)["a.png"]
