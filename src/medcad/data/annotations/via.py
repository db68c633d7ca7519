"""VGG Image Annotator (VIA) JSON: a VIA 2 project (`_via_img_metadata`) or its "Export Annotations (as json)"
({key: {filename, size, regions, file_attributes}}; VIA 1's `regions` is a dict), one file for every image.

Regions with area (polygon, rect, circle, ellipse, rotated by `theta`) are rasterised at the image's own size (VIA
keeps no image size); polylines and points have none. A region's label is its region attribute's value: the
attribute named label, class, type, category or name when there is one, else the only one with a value; a
checkbox attribute ({option: true}) gives its one checked option. VIA draws nothing itself, so a set of outlines
keeps its rectangles as boxes, as the COCO and YOLO readers do (`shapes.per_image_rows`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medcad.config import DataOptions
from medcad.data.annotations.shapes import ImageShapes, Shape, _find_image, _load_json, first_json, per_image_rows
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames, is_media
from medcad.errors import DataError

LABEL_ATTRIBUTES = ("label", "class", "type", "category", "name")  # the region attribute read as its label


def via_images(data: object) -> dict | None:
    """The per-image entries of a VIA project or export ({key: {filename, regions, ...}}), or None: not VIA."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not data:
        return None
    entries = list(data.values())
    ok = all(isinstance(e, dict) and "filename" in e and "regions" in e for e in entries)
    return data if ok else None


def find_via(path: Path, limit: int = 20) -> Path | None:
    """The first VIA JSON under a folder, looking into up to `limit` JSON files; for `detect_layout`."""
    return first_json(path, '"regions"', lambda data: via_images(data) is not None, limit, head=65536)


def region_label(attributes: object) -> tuple[str, str]:
    """(label, the attribute it came from) of a region's `region_attributes`; ("", "") without one."""
    if not isinstance(attributes, dict):
        return "", ""

    def value(v: object) -> str:
        if isinstance(v, dict):  # a checkbox: {option: true}
            checked = [str(k) for k, on in v.items() if on]
            return checked[0] if len(checked) == 1 else ""
        return str(v).strip() if v is not None else ""

    named = [k for k in attributes if str(k).strip().lower() in LABEL_ATTRIBUTES and value(attributes[k])]
    valued = [k for k in attributes if value(attributes[k])]
    key = named[0] if named else valued[0] if len(valued) == 1 else None
    return (value(attributes[key]), str(key)) if key is not None else ("", "")


def _region_shape(a: dict, label: str, where: str) -> Shape | None:
    """One region's shape attributes as a Shape; None for regions without area (polyline, point)."""
    kind = a.get("name")
    if kind == "polygon":
        pts = tuple(zip(map(float, a.get("all_points_x", [])), map(float, a.get("all_points_y", [])), strict=True))
        return Shape("polygon", pts, label, where) if len(pts) >= 3 else None
    if kind == "rect":
        x, y, w, h = (float(a[k]) for k in ("x", "y", "width", "height"))
        return Shape("rectangle", (x, y, x + w, y + h), label, where) if w > 0 and h > 0 else None
    if kind == "circle":
        return Shape("ellipse", (float(a["cx"]), float(a["cy"]), float(a["r"]), float(a["r"])), label, where)
    if kind == "ellipse":
        cx, cy, rx, ry, t = (float(a.get(k, 0)) for k in ("cx", "cy", "rx", "ry", "theta"))
        if not t:
            return Shape("ellipse", (cx, cy, rx, ry), label, where)
        ring = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        c, s = math.cos(t), math.sin(t)
        pts = tuple((cx + rx * math.cos(u) * c - ry * math.sin(u) * s, cy + rx * math.cos(u) * s + ry * math.sin(u) * c)
                    for u in ring)  # fmt: skip
        return Shape("polygon", pts, label, where)
    return None


def read_via(path: Path, options: DataOptions) -> Manifest:
    """A VIA project or export and its images (see the module docstring): one row per image of the set, its boxes,
    its label when its regions agree ('background' without regions), a mask where the set has outlines; an image
    the file does not list gets no label."""
    source = path if path.is_file() else find_via(path)
    if source is None:
        raise DataError(path, "no VGG Image Annotator (VIA) JSON found")
    try:
        entries = via_images(_load_json(source))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(source, f"cannot parse as JSON ({e})") from e
    if entries is None:
        raise DataError(source, "not a VIA project or export: no entries with 'filename' and 'regions'")
    root = source.parent
    images = [f for f in walk_files(root) if is_media(f)]
    media = set(images)
    by_image: dict[Path, dict] = {}
    problems: list[tuple[str, str]] = []
    for key, entry in entries.items():
        name = str(entry.get("filename", ""))
        image = _find_image(root, root, name)
        if image is None or image not in media:
            problems.append((name or key, f"listed in {source.name} but not found under {root.name}/"))
        elif image in by_image:
            problems.append((name, f"listed twice in {source.name}: its second entry not used"))
        else:
            by_image[image] = entry
    label_from: dict[str, int] = {}

    def parse(src: Path, img: Path) -> ImageShapes:
        regions = by_image[img].get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions  # VIA 1: {"0": region, ...}
        shapes, labels, no_area = [], [], []
        for k, region in enumerate(regions):
            label, attribute = region_label(region.get("region_attributes"))
            if attribute:
                label_from[attribute] = label_from.get(attribute, 0) + 1
            where = f"{src.name} {img.name} region {k} {label!r}"
            shape = _region_shape(region.get("shape_attributes") or {}, label, where)
            (shapes.append(shape) if shape is not None else no_area.append(where))
            labels.append(label)
        return ImageShapes(shapes, labels, no_area)

    sources = dict.fromkeys(by_image, source)
    rows, notes = per_image_rows(root, images, sources, parse, options, problems, "VIA")
    said = ", ".join(f"'{a}' ({n} region(s))" for a, n in sorted(label_from.items(), key=lambda x: -x[1]))
    notes.append(
        f"VIA: {source.name} lists {len(entries)} image(s); a region's label is its attribute {said}"
        if said
        else f"VIA: {source.name} lists {len(entries)} image(s); no region attribute gives a label"
    )
    rows = expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "via", problems, notes, sources=[source.relative_to(root).as_posix()])
