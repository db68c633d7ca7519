"""Tables of one row per box (TensorFlow Object Detection's CSV, Roboflow's `_annotations.csv`:
`filename, width, height, class, xmin, ymin, xmax, ymax`): each row one box of its image, the rows of one image its
boxes, the row's class the box's label, the image's size checked against the row's `width, height` when given."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medcad.data.annotations.shapes import image_dims, read_whole

BOX_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def corner_columns(df: pd.DataFrame, norm: Callable[[str], str]) -> dict[str, str] | None:
    """The columns of box corners (`xmin, ymin, xmax, ymax`, and the image's `width, height` when given) of a table
    with one row per box, by name compared through `norm`; None for a table without them or with a `boxes`
    column."""
    by_norm = {norm(c): c for c in df.columns}
    if "boxes" in df or not all(k in by_norm for k in BOX_CORNERS):
        return None
    return {k: by_norm[k] for k in (*BOX_CORNERS, "width", "height") if k in by_norm}


def row_box(row: dict, corners: dict[str, str], root: Path, where: str, problems: list, sizes: dict) -> bool:
    """A box row's corners as its `boxes` ([] when they are empty: an image without objects), checked against the
    image's size when the row gives it (`sizes` caches each image's check); False, with a problem naming the line,
    when a corner or the size is not a number or the size is not the image's."""
    cells = {k: str(row.pop(c, "")).strip() for k, c in corners.items()}
    if not any(cells[k] for k in BOX_CORNERS):
        row["boxes"] = "[]"
        return True
    try:
        x0, y0, x1, y1 = (float(cells[k]) for k in BOX_CORNERS)
        sizes_given = [float(cells[k]) if cells.get(k) else None for k in ("width", "height")]
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or any(
            v is not None and (not math.isfinite(v) or v != int(v)) for v in sizes_given
        ):
            raise ValueError("not finite, or a size that is not a whole number")
        declared = tuple(int(v) if v is not None else None for v in sizes_given)
    except ValueError:
        shown = [cells.get(k, "") for k in (*BOX_CORNERS, "width", "height") if k in cells]
        problems.append((row["image"], f"box corners or image size {shown} are not numbers ({where})"))
        return False
    key = (row["image"], declared)
    if key not in sizes:
        sizes[key] = image_dims(root / row["image"], *declared, where)
    if isinstance(sizes[key], str):
        problems.append((row["image"], sizes[key]))
        return False
    row["boxes"] = json.dumps([[x0, y0, x1, y1, str(row.get("label", "")).strip() or "lesion"]])
    return True


def box_rows(rows: list[dict], corners: dict[str, str], problems: list) -> tuple[list[dict], list[str]]:
    """The read box rows less every row of an image one of whose rows was refused (in `problems`: its other boxes
    alone would score its missing lesion as background), and what the table was read as. An image whose boxes have
    several labels gets no image label (its rows would otherwise disagree and all be left out)."""
    kept, whole = read_whole(rows, problems, "the box table")
    labels: dict[str, set[str]] = {}
    for row in kept:
        labels.setdefault(os.path.normpath(row["image"]), set()).add(str(row.get("label", "")).strip())
    mixed = {k for k, v in labels.items() if len(v) > 1}
    for row in kept:
        if os.path.normpath(row["image"]) in mixed:
            row["label"] = ""
    sized = ", ".join(corners[k] for k in ("width", "height") if k in corners)
    notes = [
        f"one row per box: corners from columns {', '.join(corners[k] for k in BOX_CORNERS)}, the row's label as the "
        f"box's; the rows of one image are its boxes ({sum(r['boxes'] != '[]' for r in kept)} boxes on "
        f"{len(labels)} images)" + (f"; each image's size checked against {sized}" if sized else "")
    ]
    notes += whole
    if mixed:
        notes.append(f"{len(mixed)} image(s) have boxes of several labels: image label left empty (e.g. {min(mixed)})")
    return kept, notes
