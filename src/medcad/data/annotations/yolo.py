"""YOLO label files: one `.txt` per image, a line per object, `class cx cy w h` (a box) or `class x1 y1 x2 y2 ...`
(a polygon, Ultralytics' segmentation format), coordinates normalised to the image's size (0..1).

Where the tools put them: Ultralytics and Roboflow (`data.yaml` with `names`; `<split>/images/x.jpg` with
`<split>/labels/x.txt`), CVAT's "YOLO 1.1" (`obj.names`, `obj_train_data/` with each `.txt` beside its image),
LabelImg (`classes.txt` beside the label files). A label file is found as Ultralytics finds it: the image's path
with its last `images` folder replaced by `labels`, else beside the image.
"""

from __future__ import annotations

from pathlib import Path

from medcad.config import DataOptions
from medcad.data.annotations.shapes import ImageShapes, Shape, per_image_rows
from medcad.data.io import image_size
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames, is_media
from medcad.errors import DataError

NAMES_FILES = ("data.yaml", "dataset.yaml", "obj.names", "classes.txt")


def _names_file(root: Path) -> Path | None:
    """The class names of a YOLO set: a names file in the folder, else one folder down."""
    for where in (root, *sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))):
        for name in NAMES_FILES:
            found = where / name
            if found.is_file() and (found.suffix != ".yaml" or _yaml_names(found)):
                return found
    return None


def _yaml_names(path: Path) -> list[str] | None:
    """`names` of an Ultralytics data.yaml (a list, or a dict index -> name), None without one."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names] if isinstance(names, list) else None


def class_names(path: Path) -> list[str]:
    """The class names in a names file (data.yaml `names`, or one per line: obj.names, classes.txt)."""
    if path.suffix == ".yaml":
        return _yaml_names(path) or []
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def label_file(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels: its path with the last `images` folder as `labels`, `.txt`;
    beside the image when the path has no `images` folder."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def find_yolo(path: Path) -> Path | None:
    """A YOLO set's names file (data.yaml, obj.names, classes.txt), when label files sit where it says; for
    `detect_layout`."""
    if not path.is_dir():
        return None
    names = _names_file(path)
    if names is None:
        return None
    images = [f for f in walk_files(path) if is_media(f)][:50]
    return names if any(label_file(f).is_file() for f in images) else None


def _edge(v: float) -> float:
    """A normalised coordinate within 1 % past an edge (rounding in the export) put on the edge; others as they are
    (a box reaching further past the border is clipped, and counted, where it is drawn)."""
    return min(max(v, 0.0), 1.0) if -0.01 <= v <= 1.01 else v


def _parse(names: list[str]):
    def parse(source: Path, image: Path) -> ImageShapes:
        w, h = image_size(image)
        shapes, labels = [], []
        for n, line in enumerate(source.read_text(encoding="utf-8-sig").splitlines(), 1):
            values = line.split()
            if not values:
                continue
            try:
                cls, coords = int(values[0]), [float(v) for v in values[1:]]
            except ValueError as e:
                raise ValueError(f"line {n} is not 'class x y ...' numbers ({e})") from None
            if not 0 <= cls < len(names):
                raise ValueError(f"line {n}: class {cls} is not one of the {len(names)} names ({', '.join(names)})")
            if any(not -0.01 <= c <= 1.01 for c in coords):
                raise ValueError(f"line {n}: coordinates outside 0..1 (YOLO's are normalised to the image's size)")
            where = f"{source.name} line {n}"
            if len(coords) == 4:
                cx, cy, bw, bh = coords
                box = (_edge(cx - bw / 2) * w, _edge(cy - bh / 2) * h, _edge(cx + bw / 2) * w, _edge(cy + bh / 2) * h)
                shapes.append(Shape("rectangle", box, names[cls], where))
            elif len(coords) >= 6 and len(coords) % 2 == 0:
                pts = tuple((_edge(x) * w, _edge(y) * h) for x, y in zip(coords[0::2], coords[1::2], strict=True))
                shapes.append(Shape("polygon", pts, names[cls], where))
            else:
                raise ValueError(
                    f"line {n} has {len(coords)} coordinates: 4 for a box, an even 6 or more for a polygon"
                )
            labels.append(names[cls])
        return ImageShapes(shapes, labels, [])

    return parse


def read_yolo(path: Path, options: DataOptions) -> Manifest:
    """A YOLO set (see the module docstring): one row per image, its boxes (and, for polygon labels, its mask drawn
    at its size), its label when its objects agree; every split folder read together."""
    if not path.is_dir():
        raise DataError(path, "give the folder of the YOLO set (with data.yaml, obj.names or classes.txt)")
    names_file = _names_file(path)
    if names_file is None:
        raise DataError(path, f"no YOLO class names found ({', '.join(NAMES_FILES)})")
    names = class_names(names_file)
    if not names:
        raise DataError(names_file, "lists no class names")
    images = [f for f in walk_files(path) if is_media(f)]
    sources = {img: lf for img in images if (lf := label_file(img)).is_file()}
    problems: list[tuple[str, str]] = []
    used, label_dirs = set(sources.values()), {lf.parent for lf in sources.values()}
    for f in walk_files(path):
        if f.suffix == ".txt" and f.parent in label_dirs and f not in used and f.name not in NAMES_FILES:
            problems.append((f.relative_to(path).as_posix(), "a YOLO label file without its image"))
    rows, notes = per_image_rows(path, images, sources, _parse(names), options, problems, "YOLO labels")
    rel = names_file.relative_to(path).as_posix()
    notes.insert(0, f"classes from {rel}: {', '.join(f'{i} {n!r}' for i, n in enumerate(names))}")
    # train/images/x.jpg (Roboflow) or images/train/x.jpg (Ultralytics' COCO-style sets): the split folder
    splits = sorted({"/".join(p for p in img.relative_to(path).parent.parts if p != "images") for img in images})
    if len(splits) > 1:
        notes.append(f"folders {', '.join(splits)} read together as one set; the export's split is not kept")
    used = [rel, *(s.relative_to(path).as_posix() for s in sources.values())]
    other = [f for f in walk_files(names_file.parent) if f.name in NAMES_FILES + ("obj.data", "train.txt")]
    used += [f.relative_to(path).as_posix() for f in other if f != names_file and f.is_relative_to(path)]
    rows = expand_frames(rows, path, problems)
    return Manifest(path, make_table(rows), "yolo", problems, notes, sources=list(dict.fromkeys(used)))
