"""labelme JSON beside the images: polygons, rectangles, circles and masks rasterised at the image's size."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from medcad.config import DataOptions
from medcad.data.annotations.shapes import (
    AREA_SHAPES,
    ImageShapes,
    Shape,
    _find_image,
    _load_json,
    first_json,
    per_image_rows,
)
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames, is_media
from medcad.errors import DataError


def is_labelme(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def find_labelme(path: Path, limit: int = 20) -> Path | None:
    """The first labelme JSON (with "shapes" and "imagePath") under a folder, looking into up to `limit` JSON
    files; for `detect_layout`."""
    return first_json(path, '"shapes"', is_labelme, limit)


def _labelme_shapes(data: dict, name: str) -> tuple[list[Shape], list[str], list[str]]:
    """(area shapes, every shape's label, shapes without area) of one labelme JSON."""
    import base64

    shapes, labels, no_area = [], [], []
    for k, sh in enumerate(data["shapes"]):
        label = str(sh.get("label", "")).strip()
        labels.append(label)
        kind = AREA_SHAPES.get(sh.get("shape_type") or "polygon")
        pts = [(float(p[0]), float(p[1])) for p in sh.get("points") or []]
        where = f"{name} shape {k} {label!r}"
        if kind == "polygon" and len(pts) >= 3:
            shapes.append(Shape("polygon", tuple(pts), label, where))
        elif kind == "rectangle" and len(pts) >= 2:
            shapes.append(Shape("rectangle", (*pts[0], *pts[1]), label, where))
        elif kind == "circle" and len(pts) >= 2:
            r = math.dist(pts[0], pts[1])
            shapes.append(Shape("ellipse", (*pts[0], r, r), label, where))
        elif kind == "bitmap" and pts and sh.get("mask"):
            arr = np.array(Image.open(io.BytesIO(base64.b64decode(sh["mask"]))), dtype=bool)
            shapes.append(Shape("bitmap", (*pts[0], arr), label, where))
        else:
            no_area.append(where)
    return shapes, labels, no_area


def read_labelme(path: Path, options: DataOptions) -> Manifest:
    """labelme JSON files beside (or near) their images: one row per image; its mask is the union of its
    polygon, rectangle, circle and mask shapes, rasterised at the image's size; its label is its shapes' label
    when they agree ('background' without shapes); every shape's label is kept in column `shape_labels`.

    Images without a JSON get no label and no mask (unannotated, which is not lesion-free). With --pattern,
    folders give columns as for the `folders` layout, and a folder label wins over the shapes'.
    """
    if not path.is_dir():
        raise DataError(path, "give the folder that holds the images and their labelme JSON files")
    root = path
    files = walk_files(root)
    images = [f for f in files if is_media(f)]
    media = set(images)
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    for f in images:
        by_stem.setdefault((f.parent, f.stem), []).append(f)
    by_image: dict[Path, tuple[Path, dict]] = {}
    problems: list[tuple[str, str]] = []
    sources: list[str] = []
    by_own_name: list[str] = []  # JSONs whose imagePath names another image, paired with the image of their own name
    for js in (f for f in files if f.suffix.lower() == ".json"):
        rel = js.relative_to(root).as_posix()
        try:
            data = _load_json(js)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append((rel, f"cannot parse as JSON ({e})"))
            continue
        if not is_labelme(data):
            continue  # another JSON: the ledger lists it as not read
        sources.append(rel)
        named = str(data.get("imagePath") or "")
        # labelme saves x.json beside x.jpg: an image of the JSON's own name beside it is its image, whatever its
        # imagePath says (a JSON copied or renamed had given its shapes to the image its stale imagePath named,
        # and that image's own JSON was dropped as a second one); of several (c0.dcm and its c0.png export), the one
        # imagePath names, else none of them is sure and imagePath decides
        same, base = by_stem.get((js.parent, js.stem), []), Path(named.replace("\\", "/")).name
        own = next((f for f in same if f.name == base), None) or (same[0] if len(same) == 1 else None)
        image = own or _find_image(root, js.parent, named)
        if own is not None and named and base != own.name:
            by_own_name.append(f"{rel} names {named!r}, read as {own.name}")
        if image is None:
            problems.append((rel, f"its image {data.get('imagePath')!r} (imagePath) is not found beside it"))
        elif image not in media:
            problems.append((rel, f"its image {data.get('imagePath')!r} is not under {root.name}/: not read"))
        elif image in by_image:
            problems.append((rel, f"{by_image[image][0].name} already annotates {image.name}: second JSON not used"))
        else:
            by_image[image] = (js, data)

    def parse(js: Path, img: Path) -> ImageShapes:
        data = by_image[img][1]
        shapes, labels, no_area = _labelme_shapes(data, js.name)
        flags = [k for k, v in (data.get("flags") or {}).items() if v is True]
        extra = {"flags": json.dumps(flags)} if flags else None
        return ImageShapes(shapes, labels, no_area, data.get("imageWidth"), data.get("imageHeight"), extra)

    annotated = {img: js for img, (js, _) in by_image.items()}
    rows, notes = per_image_rows(root, images, annotated, parse, options, problems, "labelme", masks=True)
    notes[0] = (
        f"labelme: {len(sources)} JSON file(s) annotate {len(by_image)} of {len(images)} images; each mask is the "
        "union of its polygon/rectangle/circle/mask shapes, drawn at the image's size (imageWidth x imageHeight)"
    )
    if by_own_name:
        notes.append(
            f"{len(by_own_name)} JSON file(s) name another image than the one of their own name beside them "
            f"(imagePath): each paired with the image of its own name, as labelme names them, e.g. {by_own_name[0]}"
        )
    flagged = sum(1 for r in rows if r.get("flags"))
    if flagged:
        notes.append(f"{flagged} image(s) have labelme flags set: kept in column 'flags', not used as labels")
    folders = {Path(r["image"]).parent for r in rows}
    if len(folders) > 1 and not options.pattern:
        notes.append(
            f"the images are in {len(folders)} folders, whose names are not read as labels; "
            "give --pattern '{label}' (or e.g. '{domain}/{label}') to read them"
        )
    rows = expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "labelme", problems, notes, sources=sources)


# --- COCO -------------------------------------------------------------------------------------------------------
