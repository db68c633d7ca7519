"""Kvasir-SEG's box JSON (`kavsir_bboxes.json`) beside an images/ + masks/ pair: `{"<image>": {"height", "width",
"bbox": [{"label", "xmin", "ymin", "xmax", "ymax"}, ...]}}`, corners in pixels of the image the entry declares."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from medcad.data.annotations.shapes import _load_json, image_dims
from medcad.data.pairing import several_images_of_one_name
from medcad.errors import DataError


def _entry_boxes(entry: dict) -> list[list]:
    """An entry's boxes as [x0, y0, x1, y1, label] (label 'lesion' when none is given)."""
    return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"], b.get("label", "lesion")] for b in entry["bbox"]]


def _holds_boxes(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("bbox"), list)


def _keys(data: object, rows: list[dict]) -> dict[int, str] | None:
    """Row index -> its entry's key (the image's file name or stem) when `data` is a box JSON of these images (an
    object with an entry, holding a `bbox` list, for one of them at least); else None."""
    if not isinstance(data, dict):
        return None
    keys = {}
    for i, row in enumerate(rows):
        name = Path(row["image"]).name
        key = next((k for k in (name, Path(name).stem) if k in data), None)
        if key is not None:
            keys[i] = key
    return keys if any(_holds_boxes(data[k]) for k in keys.values()) else None


def add_box_json(root: Path, rows: list[dict], problems: list) -> tuple[list[dict], list[str], list[str]]:
    """`rows` (images relative to `root`) with the boxes of the box JSON in `root`, if there is one: (rows, notes,
    sources). A JSON is one by what it holds, entries with a `bbox` list, keyed by an image's stem or file name (a
    JSON of other facts keyed alike is not). A row without a label gets its boxes' label when they agree. An entry
    that declares another image size than its image's (boxes for a resized copy) leaves its image out, named in
    `problems`, as COCO and VOC files do: its boxes would be clipped or dropped where they do not fit; so does an
    entry without a `bbox` list of {label, xmin, ymin, xmax, ymax}. An entry whose key names several images
    (`images/sub/x.png` beside `images/x.png`, or `x.jpg` beside `x.png`, for the key `x`) is whose cannot be told:
    those images are left out, named with the entry (each had been given its boxes)."""
    for js in sorted(root.glob("*.json")):
        try:
            data = _load_json(js)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(js, f"cannot parse box JSON ({e})") from e
        keys = _keys(data, rows)
        if keys is None:
            continue
        by_key: dict[str, list[str]] = defaultdict(list)
        for i, key in keys.items():
            by_key[key].append(rows[i]["image"])
        entries = {key: [f"{js.name}#{key}"] for key in by_key}
        said: list = []
        shared = several_images_of_one_name(by_key, entries, said, f"{js.name} entry")
        problems += [(p, why) for p, why in said if not p.startswith(f"{js.name}#")]  # the images, not the entry:
        # an entry is no file or row (it had been counted in the ledger as one)
        kept, labelled = [], Counter()
        for i, row in enumerate(rows):
            key = keys.get(i)
            if key in shared:
                continue
            if key is not None:
                entry, where = data[key], f"{js.name} entry {key!r}"
                try:
                    boxes = _entry_boxes(entry)
                except (KeyError, TypeError, AttributeError) as e:
                    what = f"{type(e).__name__}: {e}"
                    problems.append((row["image"], f"{where} is not {{bbox: [{{label, xmin, ...}}]}} ({what})"))
                    continue
                dims = image_dims(root / row["image"], entry.get("width"), entry.get("height"), where)
                if isinstance(dims, str):
                    problems.append((row["image"], dims))
                    continue
                row["boxes"] = json.dumps(boxes)
                names = {b[4] for b in boxes}
                if "label" not in row:
                    row["label"] = names.pop() if len(names) == 1 else ""
                    labelled[row["label"]] += 1
            kept.append(row)
        unused = len(set(data) - set(keys.values()))
        shown = ", ".join(f"{lab!r} {n}" for lab, n in labelled.most_common())
        boxed = sum(bool(r.get("boxes")) for r in kept)
        without = [r["image"] for r in kept if not r.get("boxes")]
        note = (
            f"boxes from {js.name}: {boxed} of {len(rows)} images"
            + (
                f"; {len(without)} have no entry there (e.g. {without[0]}): detection draws their boxes from their "
                "masks, one per lesion, or none"
                if without
                else ""
            )
            + (f"; its {unused} entries naming no image here are not used" if unused else "")
            + (f"; labels from the boxes' labels ({shown})" if labelled else "")
        )
        return kept, [note], [js.name]
    return rows, [], []
