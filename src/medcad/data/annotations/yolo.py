"""YOLO label files: one `.txt` per image, a line per object, `class cx cy w h` (a box) or `class x1 y1 x2 y2 ...`
(a polygon, Ultralytics' segmentation format), coordinates normalised to the image's size (0..1).

Where the tools put them: Ultralytics and Roboflow (`data.yaml` with `names`; `<split>/images/x.jpg` with
`<split>/labels/x.txt`), CVAT's "YOLO 1.1" (`obj.names`, `obj_train_data/` with each `.txt` beside its image),
LabelImg (`classes.txt` beside the label files). An image without a label file is a background image (label
'background', no boxes), as Ultralytics reads it. A label file is found as Ultralytics finds it: the image's path
with its last `images` folder below the dataset folder replaced by `labels`, else beside the image; two images of
one name (`x.jpg`, `x.png`) would share it, so both are left out, named. A class id is a line number of the names
file, or a key of data.yaml's `names` dict (which may start at 1).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from medcad.config import DataOptions
from medcad.data.annotations.shapes import ImageShapes, Shape, per_image_rows
from medcad.data.io import image_size
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table
from medcad.data.media import expand_frames, is_media
from medcad.data.pairing import several_images_of_one_name
from medcad.data.splits import split_from_folders, split_said
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


def _yaml_names(path: Path) -> list | dict | None:
    """`names` of an Ultralytics data.yaml as written (a list, or a dict class id -> name), None without one."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    names = data.get("names") if isinstance(data, dict) else None
    return names if isinstance(names, (list, dict)) else None


def class_names(path: Path) -> dict[int, str]:
    """Class id -> name from a names file: data.yaml `names` (a list: ids 0, 1, ...; a dict: its keys are the ids,
    as Ultralytics reads them), or one name per line (obj.names, classes.txt: the line's index is the id, blank lines
    counted as darknet and LabelImg count them; a blank line's id has no name, and a box of it is refused)."""
    if path.suffix != ".yaml":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        return {i: line.strip() for i, line in enumerate(lines) if line.strip()}
    names = _yaml_names(path) or []
    if isinstance(names, list):
        return dict(enumerate(str(n) for n in names))
    bad = [k for k in names if isinstance(k, bool) or not str(k).strip().isdigit()]
    if bad:
        raise DataError(path, f"`names` keys must be class ids (0, 1, ...), not {', '.join(map(repr, bad[:3]))}")
    ids = {int(str(k)): str(v) for k, v in names.items()}
    if len(ids) < len(names):
        raise DataError(path, "`names` gives one class id twice (keys such as 1 and '1')")
    return dict(sorted(ids.items()))


def label_file(image: Path, root: Path) -> Path:
    """Where Ultralytics looks for the labels of an image of the set at `root`: its path with the last `images`
    folder below `root` as `labels`, `.txt`; beside the image when there is none (folders above `root` do not count:
    a set stored under some `/data/images/` keeps its labels)."""
    parts = image.relative_to(root).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            return root.joinpath(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
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
    return names if any(label_file(f, path).is_file() for f in images) else None


def _edge(v: float) -> float:
    """A normalised coordinate within 1 % past an edge (rounding in the export) put on the edge; others as they are
    (a box reaching further past the border is clipped, and counted, where it is drawn)."""
    return min(max(v, 0.0), 1.0) if -0.01 <= v <= 1.01 else v


def _parse(names: dict[int, str], names_file: str):
    known = ", ".join(f"{i} {n!r}" for i, n in names.items())

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
            if cls not in names:
                raise ValueError(f"line {n}: class {cls} is not one of the {len(names)} names of {names_file}: {known}")
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
    rel = names_file.relative_to(path).as_posix()
    images = [f for f in walk_files(path) if is_media(f)]
    labelled = {img: lf for img in images if (lf := label_file(img, path)).is_file()}
    problems: list[tuple[str, str]] = []
    used, label_dirs = set(labelled.values()), {lf.parent for lf in labelled.values()}
    for f in walk_files(path):
        if f.suffix == ".txt" and f.parent in label_dirs and f not in used and f.name not in NAMES_FILES:
            problems.append((f.relative_to(path).as_posix(), "a YOLO label file without its image"))
    by_file: dict[str, list[str]] = defaultdict(list)  # frame1.jpg and frame1.png share labels/frame1.txt
    for img, lf in labelled.items():
        by_file[lf.relative_to(path).as_posix()].append(img.relative_to(path).as_posix())
    shared = several_images_of_one_name(by_file, {k: [k] for k in by_file}, problems, "YOLO label file")
    ambiguous = {img for img, lf in labelled.items() if lf.relative_to(path).as_posix() in shared}
    images = [img for img in images if img not in ambiguous]
    sources = {img: lf for img, lf in labelled.items() if img not in ambiguous}
    rows, notes = per_image_rows(
        path, images, sources, _parse(names, rel), options, problems, "YOLO labels", unannotated="background"
    )  # an image without a labels file is a background image, as Ultralytics reads it
    notes.insert(0, f"classes from {rel}: {', '.join(f'{i} {n!r}' for i, n in names.items())}")
    if list(names) != list(range(len(names))):
        notes[0] += f" (its class ids, not 0..{len(names) - 1}: a label line's class is looked up by id)"
    # train/images/x.jpg (Roboflow) or images/train/x.jpg (Ultralytics' COCO-style sets): the split folder, kept in
    # column `split` where it names one (`--split-column split` trains on it; grouped folds by default)
    splits = sorted({"/".join(p for p in img.relative_to(path).parent.parts if p != "images") for img in images})
    if len(splits) > 1:
        notes.append(f"folders {', '.join(splits)} read together as one set; {split_said(split_from_folders(rows))}")
    used = [rel, *(s.relative_to(path).as_posix() for s in sources.values())]
    other = [f for f in walk_files(names_file.parent) if f.name in NAMES_FILES + ("obj.data", "train.txt")]
    used += [f.relative_to(path).as_posix() for f in other if f != names_file and f.is_relative_to(path)]
    rows = expand_frames(rows, path, problems)
    return Manifest(path, make_table(rows), "yolo", problems, notes, sources=list(dict.fromkeys(used)))
