"""CVAT-for-images XML: polygons, boxes (rotated too), ellipses, masks and image tags."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from medcad.config import DataOptions
from medcad.data.annotations.shapes import (
    Shape,
    ShapeTally,
    _find_image,
    _label_notes,
    clipped_box,
    draw_shapes,
    exact_images,
    image_label,
    image_places,
    mask_folder,
    read_whole,
    tail_taken,
    write_mask,
)
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames
from medcad.errors import DataError


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
    tally = ShapeTally.of(options)
    root, folder = xml.parent, mask_folder(xml, tally.drawn_labels)
    rows, problems, empty, mixed, tagged, mixed_tags = [], [], [], [], 0, []
    places = image_places(root, root)
    exact = exact_images(places, [el.get("name", "") for el in top.iterfind("image")])
    for k, el in enumerate(top.iterfind("image")):
        name = el.get("name", "")
        img = _find_image(root, root, name, exact)
        if img is None:
            taken = tail_taken(places, name, root)
            problems.append(
                (name or f"{xml.name} image {k}", f"file not found next to {xml.name} or in images/{taken}")
            )
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
            drawn = draw_shapes(
                img, el.get("width"), el.get("height"), f"{xml.name} (image {el.get('id', k)})", shapes, no_area, tally
            )
            if isinstance(drawn, str):
                problems.append((rel, drawn))
                continue
            mask, w, h = drawn
            label = image_label(labels)
            if tags:
                tagged += 1
                label = image_label(tags)
                mixed_tags += [rel] if not label else []
            else:
                empty += [rel] if not labels else []
                mixed += [(rel, labels)] if not label else []
            row = {"image": rel, "label": label, "shape_labels": json.dumps(labels)}
            row["mask"] = write_mask(folder / f"{k:06d}.png", mask, root)
            row["boxes"] = json.dumps([[*clipped_box(s, w, h), s.label] for s in shapes])
            rows.append(row)
    rows, whole = read_whole(rows, problems, xml.name)
    notes = [f"CVAT: {len(rows)} image(s); each mask is the union of its polygons, boxes, ellipses and masks", *whole]
    if tagged:
        notes.append(f"{tagged} image(s) have an image-level <tag>: it is their label")
    if mixed_tags:
        notes.append(
            f"{len(mixed_tags)} image(s) have <tag>s of different labels (e.g. {mixed_tags[0]}): label left empty"
        )
    if not declared:
        notes.append(f"{xml.name} declares no labels in <meta>: shape labels taken as they are")
    notes += _label_notes(mixed, empty, "an <image>") + tally.notes(filled=True)
    rows = expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "cvat", problems, notes, sources=[xml.name])


# --- Excel manifests --------------------------------------------------------------------------------------------
