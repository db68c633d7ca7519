"""Readers for what annotation tools export: labelme JSON beside the images, COCO JSON (boxes, and polygon or RLE
segmentation through pycocotools), CVAT-for-images XML, and Excel .xlsx manifests.

Polygons, rectangles, circles/ellipses and bitmaps become mask files: each image's shapes are rasterised once, at
the image's own size, into a PNG under `cache_dir()/annotation_masks/<hash of the source file, its size and
mtime>/`, and the manifest's `mask` column names that PNG like any other mask file. Files rather than rasterising
on read, because every user of masks (training, the decoded-mask cache, audit, boxes from masks, evaluation) reads
mask files through one decoder (`medcad.data.io.read_mask`): only the readers change, and an edited source gets a
new folder. The mask paths are written relative to the dataset root (with `..`), so that `root / path` and
`path.relative_to(root)` both hold.

Every reader names the file it read in `Manifest.sources`, leaves out with a reason (`Manifest.problems`) what it
cannot use, and says in a note what it decided: shapes clipped at the image border, shapes without area, labels
that disagree, images without annotations. Annotations that name a class the file does not declare are refused,
never given an invented class.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from medcad.config import DataOptions
from medcad.data.cache import cache_dir
from medcad.data.io import image_size
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.errors import DataError

MASK_VERSION = 1  # part of the cache key: raise it when rasterising changes
AREA_SHAPES = {"polygon": "polygon", "rectangle": "rectangle", "circle": "circle", "mask": "bitmap"}


# --- rasterising ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One annotated region in pixel coordinates of its image.

    Attributes:
        kind: "polygon" (data: ((x, y), ...)), "rectangle" (x0, y0, x1, y1; corners inclusive, as labelme draws),
            "ellipse" (cx, cy, rx, ry) or "bitmap" (left, top, bool (h, w) array).
        label: its class name.
        where: the shape in its source, for messages ("a.json shape 2").
    """

    kind: str
    data: tuple
    label: str
    where: str

    def bounds(self) -> tuple[float, float, float, float]:
        if self.kind == "polygon":
            xs, ys = [p[0] for p in self.data], [p[1] for p in self.data]
            return min(xs), min(ys), max(xs), max(ys)
        if self.kind == "rectangle":
            x0, y0, x1, y1 = self.data
            return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
        if self.kind == "ellipse":
            cx, cy, rx, ry = self.data
            return cx - rx, cy - ry, cx + rx, cy + ry
        left, top, arr = self.data
        return left, top, left + arr.shape[1], top + arr.shape[0]


@dataclass
class ShapeTally:
    """Shapes that needed a decision, across one read (each an example for the note)."""

    clipped: list[str]
    outside: list[str]
    no_area: list[str]

    def notes(self) -> list[str]:
        out = []
        for items, what in (
            (self.clipped, "extend past their image's border: clipped to it"),
            (self.outside, "lie wholly outside their image: nothing drawn"),
            (self.no_area, "have no area (lines, points, polygons of < 3 points): not in the masks, labels kept"),
        ):
            if items:
                out.append(f"{len(items)} shape(s) {what} (e.g. {', '.join(items[:3])})")
        return out


def rasterise(shapes: list[Shape], width: int, height: int, tally: ShapeTally) -> np.ndarray:
    """The union of the shapes' pixels as bool (H, W), drawn as labelme draws them (PIL, outline included);
    shapes past the border are clipped and counted in `tally`."""
    im = Image.new("1", (width, height))
    draw = ImageDraw.Draw(im)
    bitmaps = []
    for s in shapes:
        x0, y0, x1, y1 = s.bounds()
        if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
            tally.outside.append(s.where)
            continue
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            tally.clipped.append(s.where)
        if s.kind == "polygon":
            draw.polygon([(float(x), float(y)) for x, y in s.data], fill=1, outline=1)
        elif s.kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=1, outline=1)
        elif s.kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=1, outline=1)
        else:
            bitmaps.append(s.data)
    mask = np.array(im, dtype=bool)  # (H, W)
    for left, top, arr in bitmaps:
        left, top = int(round(left)), int(round(top))
        ys, xs = (
            slice(max(top, 0), min(top + arr.shape[0], height)),
            slice(max(left, 0), min(left + arr.shape[1], width)),
        )
        mask[ys, xs] |= arr[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
    return mask


def clipped_box(s: Shape, width: int, height: int) -> list[float]:
    """[x0, y0, x1, y1] of a shape, clipped to the image."""
    x0, y0, x1, y1 = s.bounds()
    return [max(0, x0), max(0, y0), min(width, x1), min(height, y1)]


def mask_folder(source: Path) -> Path:
    """The cache folder of the masks rasterised from one source file (keyed by its path, size and mtime)."""
    st = source.stat()
    key = f"v{MASK_VERSION}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_dir() / "annotation_masks" / hashlib.sha1(key.encode()).hexdigest()[:20]


def write_mask(path: Path, mask: np.ndarray, root: Path) -> str:
    """Save a bool mask as a 0/255 PNG (unless that file is already there) and return its path for the manifest:
    relative to `root` (with `..`; absolute on another drive)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        os.replace(tmp, path)
    try:
        return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _image_label(labels: list[str]) -> str:
    """An image's label from its shapes' labels: 'background' for none, the label when all agree, else ''."""
    distinct = set(labels)
    return "background" if not labels else (labels[0] if len(distinct) == 1 else "")


def _label_notes(mixed: list[tuple[str, list[str]]], empty: list[str], what: str) -> list[str]:
    out = []
    if empty:
        out.append(
            f"{len(empty)} image(s) have {what} without shapes: label 'background', empty mask (e.g. {empty[0]})"
        )
    if mixed:
        rel, labels = mixed[0]
        out.append(
            f"{len(mixed)} image(s) have shapes of different labels (e.g. {rel}: {', '.join(sorted(set(labels)))}): "
            "image label left empty; every shape's label is in column 'shape_labels'"
        )
    return out


def _image_dims(image: Path, width, height, source: str) -> tuple[int, int] | str:
    """(width, height) to draw an image's shapes at: the size the annotation declares, which must be the image's
    (the image's own when it declares none); else why its shapes cannot be drawn on the image."""
    try:
        w, h = image_size(image)
    except DataError as e:
        return e.problem
    if width and height and (int(width), int(height)) != (w, h):
        return f"{source} is for a {width}x{height} image but the image is {w}x{h}: its shapes would not fit"
    return w, h


def _find_image(root: Path, base: Path, name: str) -> Path | None:
    """An annotated image file: `name` (Windows separators read as '/') under `base`, else under `base/images`,
    else a file of the same stem beside `base`."""
    name = name.replace("\\", "/").strip()
    for cand in (base / name, base / "images" / name, root / name, root / "images" / name):
        if name and cand.is_file():
            return Path(os.path.normpath(cand))  # `a/../b.png` as `b.png`, the path the folder walk gives
    return None


def _fields(rel_dir: str, options: DataOptions) -> dict[str, str] | None:
    """Columns from the folder by --pattern ({} without one), None when the folder does not fit it."""
    if not options.pattern:
        return {}
    from medcad.data.layouts import _pattern_regex

    match = _pattern_regex(options.pattern).match(rel_dir) if rel_dir != "." else None
    return None if match is None else {k: v for k, v in match.groupdict().items() if v is not None}


# --- labelme ----------------------------------------------------------------------------------------------------


def _load_json(path: Path) -> object:
    with open(path, encoding="utf-8-sig") as f:
        return json.load(f)


def is_labelme(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def find_labelme(path: Path, limit: int = 20) -> Path | None:
    """The first labelme JSON (with "shapes" and "imagePath") under a folder, looking into up to `limit` JSON
    files; for `detect_layout`."""
    seen = 0
    for f in walk_files(path):
        if f.suffix.lower() != ".json":
            continue
        seen += 1
        if seen > limit:
            break
        try:
            with open(f, encoding="utf-8-sig") as fh:
                if '"shapes"' not in fh.read(8192):
                    continue
            if is_labelme(_load_json(f)):
                return f
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return None


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
    from medcad.data.layouts import _expand_frames, _is_media

    if not path.is_dir():
        raise DataError(path, "give the folder that holds the images and their labelme JSON files")
    root = path
    files = walk_files(root)
    images = [f for f in files if _is_media(f)]
    media = set(images)
    by_image: dict[Path, tuple[Path, dict]] = {}
    problems: list[tuple[str, str]] = []
    sources: list[str] = []
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
        image = _find_image(root, js.parent, str(data.get("imagePath") or ""))
        if image is None:
            image = next((f for f in images if f.parent == js.parent and f.stem == js.stem), None)
        if image is None:
            problems.append((rel, f"its image {data.get('imagePath')!r} (imagePath) is not found beside it"))
        elif image not in media:
            problems.append((rel, f"its image {data.get('imagePath')!r} is not under {root.name}/: not read"))
        elif image in by_image:
            problems.append((rel, f"{by_image[image][0].name} already annotates {image.name}: second JSON not used"))
        else:
            by_image[image] = (js, data)

    rows, no_json, empty, mixed, folder_wins, flagged = [], [], [], [], [], 0
    tally = ShapeTally([], [], [])
    for img in images:
        rel = img.relative_to(root).as_posix()
        fields = _fields(img.parent.relative_to(root).as_posix(), options)
        if fields is None:
            problems.append((rel, f"folder does not fit the pattern {options.pattern!r}"))
            continue
        row: dict = {"image": rel, **fields}
        if img not in by_image:
            no_json.append(rel)
            rows.append(row)
            continue
        js, data = by_image[img]
        try:
            shapes, labels, no_area = _labelme_shapes(data, js.name)
        except (TypeError, ValueError, IndexError, KeyError, OSError) as e:
            problems.append((rel, f"{js.name}: a shape cannot be read ({type(e).__name__}: {e})"))
            continue
        dims = _image_dims(img, data.get("imageWidth"), data.get("imageHeight"), js.name)
        if isinstance(dims, str):
            problems.append((rel, dims))
            continue
        w, h = dims
        tally.no_area += no_area
        mask = rasterise(shapes, w, h, tally)
        row["mask"] = write_mask(mask_folder(js) / "mask.png", mask, root)
        row["boxes"] = json.dumps([[*clipped_box(s, w, h), s.label] for s in shapes])
        row["shape_labels"] = json.dumps(labels)
        flags = [k for k, v in (data.get("flags") or {}).items() if v is True]
        if flags:
            row["flags"], flagged = json.dumps(flags), flagged + 1
        label = _image_label(labels)
        empty += [rel] if not labels else []
        mixed += [(rel, labels)] if not label else []
        if row.get("label") and label and row["label"] != label:
            folder_wins.append(rel)
        row.setdefault("label", label)
        rows.append(row)
    notes = [
        f"labelme: {len(sources)} JSON file(s) annotate {len(by_image)} of {len(images)} images; each mask is the "
        "union of its polygon/rectangle/circle/mask shapes, drawn at the image's size (imageWidth x imageHeight)"
    ]
    notes += _label_notes(mixed, empty, "a JSON")
    if no_json:
        notes.append(
            f"{len(no_json)} image(s) have no labelme JSON: no label and no mask (e.g. {no_json[0]}); "
            "--missing-masks empty would count them as lesion-free"
        )
    if folder_wins:
        notes.append(f"{len(folder_wins)} image(s): the folder's label (--pattern) differs from the shapes' and wins")
    if flagged:
        notes.append(f"{flagged} image(s) have labelme flags set: kept in column 'flags', not used as labels")
    folders = {Path(r["image"]).parent for r in rows}
    if len(folders) > 1 and not options.pattern:
        notes.append(
            f"the images are in {len(folders)} folders, whose names are not read as labels; "
            "give --pattern '{label}' (or e.g. '{domain}/{label}') to read them"
        )
    notes += tally.notes()
    rows = _expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "labelme", problems, notes, sources=sources)


# --- COCO -------------------------------------------------------------------------------------------------------


def _coco_mask(seg, height: int, width: int) -> np.ndarray:
    """One annotation's `segmentation` (polygons, uncompressed or compressed RLE) as bool (H, W)."""
    import warnings

    from pycocotools import mask as mu

    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]  # pycocotools reads a 4-number polygon as a box
        if not polys:
            return np.zeros((height, width), bool)
        rle = mu.merge(mu.frPyObjects(polys, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mu.frPyObjects(seg, *seg["size"])
    else:
        rle = dict(seg)
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"RLE size {rle['size'][1]}x{rle['size'][0]} is not the image's {width}x{height}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)  # pycocotools, NumPy 2
        return mu.decode(rle).astype(bool)


def _poly_outside(seg, width: int, height: int) -> bool:
    if not isinstance(seg, list):
        return False
    xs = [v for p in seg for v in p[0::2]]
    ys = [v for p in seg for v in p[1::2]]
    return bool(xs) and (min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height)


def read_coco(path: Path, options: DataOptions) -> Manifest:
    """A COCO JSON: boxes per image (label: its most frequent class, else 'background'), and when annotations carry
    a `segmentation` (polygons or RLE) a mask per image, the union of its annotations' masks.

    Refused with a reason (left out, counted): annotations whose category_id is not in `categories`, annotations
    of images not listed in `images`, and in a segmentation file annotations with a box but no segmentation.
    """
    from medcad.data.layouts import _coco_json, _expand_frames

    js = path if path.is_file() else _coco_json(path)
    if js is None:
        raise DataError(path, "no COCO JSON (with 'images' and 'annotations') found")
    try:
        coco = _load_json(js)
        cats = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
        images = [(im["id"], str(im["file_name"]), im.get("width"), im.get("height")) for im in coco["images"]]
        anns = [a for a in coco.get("annotations", []) if a.get("image_id") is not None]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(js, f"not a valid COCO JSON ({type(e).__name__}: {e})") from e
    root = js.parent
    listed = {iid for iid, *_ in images}
    by_image: dict = defaultdict(list)
    dangling: dict = defaultdict(list)
    for a in anns:
        (by_image if a["image_id"] in listed else dangling)[a["image_id"]].append(a)
    unknown = Counter(a.get("category_id") for a in anns if a.get("category_id") not in cats)
    known = ", ".join(f"{k} {v!r}" for k, v in cats.items()) or "none"
    segmented = any(a.get("segmentation") for a in anns)
    folder = mask_folder(js) if segmented else None
    rows, problems, no_ann, mixed = [], [], [], 0
    n_clipped = 0
    for k, (iid, name, width, height) in enumerate(images):
        rel = next((c for c in (name, f"images/{name}") if (root / c).is_file()), None)
        if rel is None:
            problems.append((name, f"file not found next to {js.name} or in images/"))
            continue
        mine = by_image.get(iid, [])
        bad = sorted({str(a.get("category_id")) for a in mine if a.get("category_id") not in cats})
        if bad:
            problems.append(
                (rel, f"category_id {', '.join(bad)} not in the categories of {js.name} ({known}): refused")
            )
            continue
        masks: list = [None] * len(mine)
        if folder is not None:
            no_seg = [str(a.get("id", "?")) for a in mine if not a.get("segmentation")]
            if no_seg:
                problems.append((rel, f"annotation {', '.join(no_seg)} has no segmentation: its mask would miss it"))
                continue
            dims = _image_dims(root / rel, width, height, f"{js.name} (image id {iid})")
            if isinstance(dims, str):
                problems.append((rel, dims))
                continue
            width, height = dims
            try:
                masks = [_coco_mask(a["segmentation"], height, width) for a in mine]
            except (ValueError, TypeError, KeyError) as e:
                problems.append((rel, f"a segmentation in {js.name} cannot be decoded ({e})"))
                continue
            n_clipped += sum(_poly_outside(a["segmentation"], width, height) for a in mine)
        try:
            boxes = [_ann_box(a, cats[a["category_id"]], m) for a, m in zip(mine, masks, strict=True)]
        except (ValueError, TypeError) as e:
            problems.append((rel, f"a bbox in {js.name} is not [x, y, width, height] ({e})"))
            continue
        boxes = [b for b in boxes if b is not None]
        counts = Counter(b[4] for b in boxes) if boxes else Counter(cats[a["category_id"]] for a in mine)
        mixed += len(counts) > 1
        no_ann += [rel] if not mine else []
        row = {
            "image": rel,
            "label": counts.most_common(1)[0][0] if counts else "background",
            "boxes": json.dumps(boxes),
        }
        if folder is not None:
            mask = np.logical_or.reduce(masks) if masks else np.zeros((height, width), bool)
            row["mask"] = write_mask(folder / f"{k:06d}.png", mask, root)
        rows.append(row)
    for iid, those in dangling.items():
        ids = ", ".join(str(a.get("id", "?")) for a in those[:5]) + (" ..." if len(those) > 5 else "")
        problems.append(
            (
                f"{js.name}#image_id={iid}",
                f"{len(those)} annotation(s) ({ids}) of image id {iid}, which is not in 'images'",
            )
        )
    notes = []
    if segmented:
        notes.append("COCO segmentation (polygons / RLE) read as masks: the union of each image's annotations")
    if unknown:
        shown = ", ".join(f"{c} ({n} annotation(s))" for c, n in unknown.most_common())
        notes.append(f"category ids not in the categories of {js.name} ({known}): {shown}; their images are left out")
    if dangling:
        n, ids = sum(len(v) for v in dangling.values()), ", ".join(map(str, list(dangling)[:5]))
        notes.append(f"{n} annotation(s) name {len(dangling)} image id(s) not in 'images' ({ids}): left out, counted")
    if no_ann:
        what = "label 'background'" + (", empty mask" if segmented else "")
        notes.append(f"{len(no_ann)} image(s) have no annotation: {what} (e.g. {no_ann[0]})")
    if mixed:
        notes.append(f"{mixed} image(s) have annotations of several categories: label = the most frequent one")
    if n_clipped:
        notes.append(f"{n_clipped} polygon(s) extend past their image's border: clipped to it")
    rows = _expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "coco", problems, notes, sources=[js.name])


def _ann_box(ann: dict, label: str, mask: np.ndarray | None) -> list | None:
    """An annotation's [x0, y0, x1, y1, label]: from its bbox, else its mask's extent (x1, y1 exclusive); None
    without either."""
    if ann.get("bbox"):
        x, y, w, h = ann["bbox"]
        return [x, y, x + w, y + h, label]
    ys, xs = np.nonzero(mask) if mask is not None else ((), ())
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label] if len(xs) else None


# --- CVAT for images --------------------------------------------------------------------------------------------


def find_cvat(path: Path) -> Path | None:
    """A CVAT XML (root element <annotations>) in a folder, for `detect_layout`."""
    for xml in sorted(path.glob("*.xml")):
        try:
            with open(xml, encoding="utf-8", errors="replace") as f:
                head = f.read(4096)
        except OSError:
            continue
        if "<annotations" in head:
            return xml
    return None


def _cvat_points(text: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in text.split(";") if p.strip())]


def _rotated(cx: float, cy: float, points: list[tuple[float, float]], degrees: float) -> tuple:
    """Points turned `degrees` clockwise (as seen, y pointing down) about (cx, cy)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return tuple((cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points)


def _cvat_shape(el: ET.Element, label: str, where: str) -> Shape | None:
    """One CVAT shape element as a Shape; None for shapes without area (polyline, points, skeleton, cuboid)."""
    g = lambda k: float(el.get(k, 0))  # noqa: E731
    rot = g("rotation")
    if el.tag == "polygon":
        pts = _cvat_points(el.get("points", ""))
        return Shape("polygon", tuple(pts), label, where) if len(pts) >= 3 else None
    if el.tag == "box":
        x0, y0, x1, y1 = g("xtl"), g("ytl"), g("xbr"), g("ybr")
        if not rot:
            return Shape("rectangle", (x0, y0, x1, y1), label, where)
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return Shape("polygon", _rotated((x0 + x1) / 2, (y0 + y1) / 2, corners, rot), label, where)
    if el.tag == "ellipse":
        cx, cy, rx, ry = g("cx"), g("cy"), g("rx"), g("ry")
        if not rot:
            return Shape("ellipse", (cx, cy, rx, ry), label, where)
        ring = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        return Shape("polygon", _rotated(cx, cy, ring, rot), label, where)
    if el.tag == "mask":  # run lengths over the box, row by row, starting with background
        w, h = int(g("width")), int(g("height"))
        flat, pos, on = np.zeros(w * h, bool), 0, False
        for n in (int(v) for v in el.get("rle", "").split(",") if v.strip()):
            flat[pos : pos + n], pos, on = on, pos + n, not on
        return Shape("bitmap", (g("left"), g("top"), flat.reshape(h, w)), label, where)
    return None


def read_cvat(path: Path, options: DataOptions) -> Manifest:
    """A 'CVAT for images 1.1' XML: one row per <image>; its mask is the union of its polygons, boxes, ellipses
    and masks drawn at its width x height; its label is its <tag> when it has one, else its shapes' label when
    they agree ('background' without shapes). Labels not declared in the file's <meta> are refused."""
    from medcad.data.layouts import _expand_frames

    xml = path if path.is_file() else find_cvat(path)
    if xml is None:
        raise DataError(path, "no CVAT XML (root element <annotations>) found")
    try:
        top = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(xml, f"cannot parse as XML ({e})") from e
    if top.tag != "annotations":
        raise DataError(xml, f"not a CVAT XML: its root element is <{top.tag}>, not <annotations>")
    if top.find("image") is None and top.find("track") is not None:
        raise DataError(xml, "a 'CVAT for video' export (<track> elements): export the task as 'CVAT for images 1.1'")
    declared = {n.text.strip() for n in top.iterfind("meta//labels/label/name") if n.text}
    root, folder = xml.parent, mask_folder(xml)
    rows, problems, empty, mixed, tagged = [], [], [], [], 0
    tally = ShapeTally([], [], [])
    for k, el in enumerate(top.iterfind("image")):
        name = el.get("name", "")
        img = _find_image(root, root, name)
        if img is None:
            problems.append((name or f"{xml.name} image {k}", f"file not found next to {xml.name} or in images/"))
            continue
        rel = img.relative_to(root).as_posix()
        shapes, labels, tags, no_area = [], [], [], []
        for j, ch in enumerate(el):
            label = (ch.get("label") or "").strip()
            if ch.tag == "tag":
                tags.append(label)
                continue
            labels.append(label)
            where = f"{xml.name} image {el.get('id', k)} {ch.tag} {j} {label!r}"
            try:
                shape = _cvat_shape(ch, label, where)
            except (ValueError, TypeError) as e:
                problems.append((rel, f"{where} cannot be read ({e})"))
                break
            (shapes.append(shape) if shape is not None else no_area.append(where))
        else:
            undeclared = sorted({x for x in labels + tags if declared and x not in declared})
            if undeclared:
                problems.append((rel, f"label {', '.join(undeclared)} not declared in {xml.name}: refused"))
                continue
            dims = _image_dims(img, el.get("width"), el.get("height"), f"{xml.name} (image {el.get('id', k)})")
            if isinstance(dims, str):
                problems.append((rel, dims))
                continue
            w, h = dims
            tally.no_area += no_area
            mask = rasterise(shapes, w, h, tally)
            label = _image_label(labels)
            if tags:
                tagged += 1
                label = tags[0] if len(set(tags)) == 1 else ""
            else:
                empty += [rel] if not labels else []
                mixed += [(rel, labels)] if not label else []
            row = {"image": rel, "label": label, "shape_labels": json.dumps(labels)}
            row["mask"] = write_mask(folder / f"{k:06d}.png", mask, root)
            row["boxes"] = json.dumps([[*clipped_box(s, w, h), s.label] for s in shapes])
            rows.append(row)
    notes = [f"CVAT: {len(rows)} image(s); each mask is the union of its polygons, boxes, ellipses and masks"]
    if tagged:
        notes.append(f"{tagged} image(s) have an image-level <tag>: it is their label")
    if not declared:
        notes.append(f"{xml.name} declares no labels in <meta>: shape labels taken as they are")
    notes += _label_notes(mixed, empty, "an <image>") + tally.notes()
    rows = _expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "cvat", problems, notes, sources=[xml.name])


# --- Excel manifests --------------------------------------------------------------------------------------------


def _cell_text(v: object) -> str:
    """A cell as the text a CSV export of the sheet would hold."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    return str(v)


def read_sheet(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The first worksheet of an .xlsx workbook as a table of strings, as `layouts._read_table` gives a CSV: the
    first non-empty row is the header, empty rows are skipped, formulas give their saved values."""
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, InvalidFileException ... for files it cannot open
        raise DataError(path, f"cannot open as an Excel .xlsx workbook ({type(e).__name__}: {e})") from e
    try:
        names = wb.sheetnames
        rows = [[_cell_text(v) for v in r] for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, f"sheet {names[0]!r} is empty: the first sheet must hold the manifest")
    width = max(i + 1 for r in rows for i, c in enumerate(r) if c.strip())
    buf = io.StringIO()
    csv.writer(buf).writerows(r[:width] + [""] * (width - len(r)) for r in rows)
    buf.seek(0)
    df = pd.read_csv(buf, dtype=str, keep_default_na=False)
    notes = (
        [f"{path.name}: sheet {names[0]!r} read; sheets {', '.join(map(repr, names[1:]))} not"]
        if len(names) > 1
        else []
    )
    return df, notes


def read_xlsx(path: Path, options: DataOptions) -> Manifest:
    """An Excel .xlsx manifest (a file, or `manifest.xlsx` in a folder), read like a CSV manifest (`read_csv`: same
    column names, path checks and notes)."""
    from medcad.data.layouts import read_csv

    if path.is_dir():
        path = path / "manifest.xlsx"
    if path.suffix.lower() != ".xlsx":
        raise DataError(path, "not an .xlsx file (older .xls workbooks: save as .xlsx or CSV)")
    manifest = read_csv(path, options)
    manifest.layout = "xlsx"
    return manifest
