"""Pascal VOC XML: one `<annotation>` file per image with its objects' boxes (`<object><name>`, `<bndbox>`), as
the VOC release and CVAT's "PASCAL VOC 1.1" export write them (`Annotations/` beside `JPEGImages/`) and LabelImg
does (each `.xml` beside its image). Box corners are read as written, in pixels of the image."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from medcad.config import DataOptions
from medcad.data.annotations.shapes import ImageShapes, Shape, _find_image, per_image_rows
from medcad.data.ledger import in_voc_mask_folder, walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames, is_media
from medcad.errors import DataError


def is_voc_xml(path: Path) -> bool:
    """Whether an XML file is a Pascal VOC annotation (root element <annotation>, not CVAT's <annotations>)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(2048)
    except OSError:
        return False
    return "<annotation>" in head or "<annotation " in head


def find_voc(path: Path, limit: int = 20) -> Path | None:
    """The first Pascal VOC XML under a folder (`Annotations/` first), looking into up to `limit` XML files; for
    `detect_layout`."""
    if not path.is_dir():
        return None
    xmls = [f for f in walk_files(path) if f.suffix.lower() == ".xml"]
    xmls.sort(key=lambda f: f.parent.name != "Annotations")
    return next((f for f in xmls[:limit] if is_voc_xml(f)), None)


def segmentation_masks(images: list[Path]) -> set[Path]:
    """The files of VOC's segmentation folders (SegmentationClass/, SegmentationObject/, SegmentationClassAug/; CVAT's
    VOC exports keep the names) that are masks of an image of the set, by its name: not images. (A VOC release's 20
    SegmentationClass PNGs had been read as 20 more images, 'background' without an XML, and scored so.)"""
    stems = {f.stem for f in images if not in_voc_mask_folder(f)}
    return {f for f in images if in_voc_mask_folder(f) and f.stem in stems}


def _image_of(root: Path, xml: Path, tree: ET.Element, images: dict[tuple[Path, str], Path]) -> Path | None:
    """The image an annotation names (<filename>, else <path>'s file name) beside it, in JPEGImages/ or images/
    beside its folder, or under the root; else the image of the XML's own stem beside it or in JPEGImages/."""
    name = (tree.findtext("filename") or "").strip() or Path((tree.findtext("path") or "").replace("\\", "/")).name
    inside = xml.parent != root  # an XML at the dataset's top: its parent's folders are not the dataset's
    bases = (xml.parent.parent / "JPEGImages", xml.parent.parent / "images") * inside + (root / "JPEGImages",)
    for base in bases:
        if name and (base / name).is_file():
            return base / name
    found = _find_image(root, xml.parent, name) if name else None
    if found is not None:
        return found
    for folder in (xml.parent, *[xml.parent.parent / "JPEGImages"] * inside):
        if (folder, xml.stem) in images:
            return images[(folder, xml.stem)]
    return None


def _parse(source: Path, image: Path) -> ImageShapes:
    tree = ET.parse(source).getroot()
    size = tree.find("size")
    width = int(float(size.findtext("width") or 0)) if size is not None else 0
    height = int(float(size.findtext("height") or 0)) if size is not None else 0
    shapes, labels, no_area = [], [], []
    for k, obj in enumerate(tree.iter("object")):
        label = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        where = f"{source.name} object {k} {label!r}"
        if box is None:
            no_area.append(where)
        else:
            x0, y0, x1, y1 = (float(box.findtext(c) or "nan") for c in ("xmin", "ymin", "xmax", "ymax"))
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"object {k} {label!r}: its bndbox ({x0}, {y0}, {x1}, {y1}) has no area")
            shapes.append(Shape("rectangle", (x0, y0, x1, y1), label, where))
        labels.append(label)
    return ImageShapes(shapes, labels, no_area, width or None, height or None)


def read_voc(path: Path, options: DataOptions) -> Manifest:
    """Pascal VOC XML files and their images (see the module docstring): one row per image, its boxes, its label
    when its objects agree ('background' without objects); an image without an XML gets no label."""
    if not path.is_dir():
        raise DataError(path, "a Pascal VOC XML annotates one image: give the folder of the images and their XML files")
    root = path
    files = walk_files(root)
    images = [f for f in files if is_media(f)]
    masks = segmentation_masks(images)
    images = [f for f in images if f not in masks]
    by_stem, media = {(f.parent, f.stem): f for f in images}, set(images)
    sources: dict[Path, Path] = {}
    problems: list[tuple[str, str]] = []
    difficult = 0
    by_own_name: list[str] = []  # XMLs whose <filename> is not there, paired with the image of their own name
    for xml in (f for f in files if f.suffix.lower() == ".xml" and is_voc_xml(f)):
        rel = xml.relative_to(root).as_posix()
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            problems.append((rel, f"cannot parse as XML ({e})"))
            continue
        image = _image_of(root, xml, tree, by_stem)
        if image is None or image not in media:
            problems.append((rel, f"its image {tree.findtext('filename')!r} is not found under {root.name}/"))
        elif image in sources:
            problems.append((rel, f"{sources[image].name} already annotates {image.name}: second XML not used"))
        else:
            sources[image] = xml
            difficult += sum((o.findtext("difficult") or "0").strip() == "1" for o in tree.iter("object"))
            named = (tree.findtext("filename") or "").strip()
            if named and Path(named.replace("\\", "/")).name != image.name:
                by_own_name.append(f"{rel} names {named!r}, read as {image.name}")
    rows, notes = per_image_rows(root, images, sources, _parse, options, problems, "Pascal VOC XML")
    if by_own_name:
        notes.append(
            f"{len(by_own_name)} XML file(s) name an image that is not there (<filename>): each paired with the "
            f"image of its own name, e.g. {by_own_name[0]}"
        )
    if difficult:
        notes.append(f"{difficult} object(s) marked difficult: kept as boxes like the others")
    if masks:
        folders = ", ".join(sorted({f"{m.parent.name}/" for m in masks}))
        notes.append(
            f"{len(masks)} file(s) in {folders} are segmentation masks of the images (by name), not images: not read "
            "(this layout reads the XML boxes; --images JPEGImages --masks SegmentationClass reads those masks)"
        )
    rows = expand_frames(rows, root, problems)
    used = sorted(x.relative_to(root).as_posix() for x in sources.values())
    return Manifest(root, make_table(rows), "voc", problems, notes, sources=used)
