"""Kvasir-SEG's box JSON (`kavsir_bboxes.json`) beside an images/ + masks/ pair: `{"<image>": {"height", "width",
"bbox": [{"label", "xmin", "ymin", "xmax", "ymax"}, ...]}}`, corners in pixels of the image the entry declares."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from medcad.data.annotations.shapes import _image_dims, _load_json
from medcad.errors import DataError


def _entry_boxes(entry: dict) -> list[list]:
    """An entry's boxes as [x0, y0, x1, y1, label] (label 'lesion' when none is given)."""
    return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"], b.get("label", "lesion")] for b in entry.get("bbox", [])]


def add_box_json(root: Path, rows: list[dict], problems: list) -> tuple[list[dict], list[str], list[str]]:
    """`rows` (images relative to `root`) with the boxes of the box JSON in `root`, if there is one: (rows, notes,
    sources). A row without a label gets its boxes' label when they agree. An entry that declares another image size
    than its image's (boxes for a resized copy) leaves its image out, named in `problems`, as COCO and VOC files do:
    its boxes would be clipped or dropped where they do not fit."""
    stems = {Path(r["image"]).stem for r in rows}
    for js in sorted(root.glob("*.json")):
        try:
            data = _load_json(js)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(js, f"cannot parse box JSON ({e})") from e
        if not isinstance(data, dict) or not stems & set(data):
            continue
        kept, labelled, sized = [], Counter(), 0
        for row in rows:
            key = Path(row["image"]).stem
            entry = data.get(key)
            if entry is not None:
                where = f"{js.name} entry {key!r}"
                dims = _image_dims(root / row["image"], entry.get("width"), entry.get("height"), where)
                if isinstance(dims, str):
                    problems.append((row["image"], dims))
                    continue
                sized += 1
                boxes = _entry_boxes(entry)
                row["boxes"] = json.dumps(boxes)
                names = {b[4] for b in boxes}
                if "label" not in row:
                    row["label"] = names.pop() if len(names) == 1 else ""
                    labelled[row["label"]] += 1
            kept.append(row)
        unused = len(set(data) - stems)
        shown = ", ".join(f"{lab!r} {n}" for lab, n in labelled.most_common())
        note = (
            f"boxes from {js.name}: {sized} of {len(rows)} images"
            + (f"; its {unused} entries naming no image here are not used" if unused else "")
            + (f"; labels from the boxes' labels ({shown})" if labelled else "")
        )
        return kept, [note], [js.name]
    return rows, [], []
