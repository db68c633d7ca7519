"""What every annotation reader shares: shapes, their rasterisation into cached mask files, image sizes and
labels, and the notes a reader writes about them (see the package docstring)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medcad.atomic import atomic_path
from medcad.config import DataOptions
from medcad.data.cache import cache_dir
from medcad.data.io import image_size
from medcad.data.ledger import walk_files
from medcad.data.manifest import label_key
from medcad.data.media import pattern_regex
from medcad.data.paths import existing_tail
from medcad.data.versions import file_stamp
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
    """Shapes that needed a decision, across one read (each an example for the note); and which labels' shapes are
    drawn into the masks (`drawn_labels`, from --mask-shapes; None: every shape), by a shape's own label or the name
    --label-map gives it (`renamed`: with adenoma=polyp, --mask-shapes polyp draws the adenoma shapes)."""

    clipped: list[str]
    outside: list[str]
    no_area: list[str]
    drawn_labels: frozenset[str] | None = None
    not_drawn: list[str] = field(default_factory=list)
    labels_seen: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)
    drawn: Counter = field(default_factory=Counter)  # shapes drawn into masks, by label
    filled_boxes: list[str] = field(default_factory=list)  # rectangles drawn into masks (filled)

    @classmethod
    def of(cls, options: DataOptions) -> ShapeTally:
        return cls([], [], [], mask_shape_labels(options), renamed=options.label_mapping())

    def draws(self, label: str) -> bool:
        """Whether a shape of this label is drawn into the mask (its box is kept either way)."""
        self.labels_seen.add(label)
        drawn = self.drawn_labels
        return drawn is None or label in drawn or self.renamed.get(label) in drawn

    def notes(self, filled: bool = False) -> list[str]:
        """The notes of the shapes that needed a decision; with `filled` (a reader whose masks take every drawn
        shape, boxes filled, as labelme's and CVAT's own rasterisers draw them), what those masks are made of."""
        out = []
        for items, what in (
            (self.clipped, "extend past their image's border: clipped to it"),
            (self.outside, "lie wholly outside their image: nothing drawn"),
            (self.no_area, "have no area (lines, points, polygons of < 3 points): not in the masks, labels kept"),
            (self.not_drawn, "have labels not in --mask-shapes: not in the masks, kept as boxes and shape_labels"),
        ):
            if items:
                out.append(f"{len(items)} shape(s) {what} (e.g. {', '.join(items[:3])})")
        if self.drawn_labels is not None:
            seen = self.labels_seen | {self.renamed[x] for x in self.labels_seen if x in self.renamed}
            unseen = sorted(self.drawn_labels - seen)
            out.append(
                f"masks drawn from the shapes labelled {', '.join(sorted(self.drawn_labels))} (--mask-shapes)"
                + (f"; no shape is labelled {', '.join(unseen)}" if unseen else "")
            )
        if filled and self.filled_boxes:
            out.append(
                f"{len(self.filled_boxes)} rectangle(s) filled into the masks, as labelme and CVAT draw them (e.g. "
                f"{self.filled_boxes[0]}): a box is not an outline, so those masks' areas, Dice and HD95 measure boxes"
                "; --mask-shapes LABELS draws the outlined labels alone, and a detection run reads the boxes"
            )
        if filled and self.drawn_labels is None and len(self.drawn) > 1:
            counts = ", ".join(f"{lab} {n}" for lab, n in self.drawn.most_common())
            out.append(
                f"each mask is the union of the shapes of every label ({counts}): one lesion mask for all of them; "
                "--mask-shapes LABELS draws those labels alone (e.g. leaving out an instrument's)"
            )
        return out


def mask_shape_labels(options: DataOptions) -> frozenset[str] | None:
    """--mask-shapes as a set of shape labels, None when not given (every shape is drawn)."""
    names = [x.strip() for x in (options.mask_shapes or "").split(",") if x.strip()]
    return frozenset(names) if names else None


def rasterise(shapes: list[Shape], width: int, height: int, tally: ShapeTally) -> np.ndarray:
    """The union of the shapes' pixels as bool (H, W), drawn as labelme draws them (PIL, outline included);
    shapes past the border are clipped and counted in `tally`."""
    im = Image.new("1", (width, height))
    draw = ImageDraw.Draw(im)
    bitmaps = []
    for s in shapes:
        if not tally.draws(s.label):
            tally.not_drawn.append(s.where)
            continue
        x0, y0, x1, y1 = s.bounds()
        if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
            tally.outside.append(s.where)
            continue
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            tally.clipped.append(s.where)
        tally.drawn[s.label] += 1
        if s.kind == "rectangle":
            tally.filled_boxes.append(s.where)
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


def mask_folder(source: Path, drawn_labels: frozenset[str] | None = None) -> Path:
    """The cache folder of the masks rasterised from one source file (keyed by its path and version,
    `versions.file_stamp`, and the shape labels drawn when not every shape is)."""
    key = f"v{MASK_VERSION}|{source.resolve()}|{file_stamp(source)}"
    key += f"|{','.join(sorted(drawn_labels))}" if drawn_labels is not None else ""
    return cache_dir() / "annotation_masks" / hashlib.sha1(key.encode()).hexdigest()[:20]


def write_mask(path: Path, mask: np.ndarray, root: Path) -> str:
    """Save a bool mask as a 0/255 PNG (unless that file is already there) and return its path for the manifest:
    relative to `root` (with `..`; absolute on another drive)."""
    if not path.is_file():
        with atomic_path(path) as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    try:
        return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def image_label(labels: list[str]) -> str:
    """An image's label from its shapes' (or tags') labels: 'background' for none; the label when all agree, as
    spelled most often (`Polyp` and `polyp` agree: `manifest.label_key`), else ''."""
    return majority_label(labels) if len({label_key(v) for v in labels}) <= 1 else ""


def majority_label(labels: list[str]) -> str:
    """An image's label from its annotations' categories by majority (COCO): 'background' for none; the category
    more frequent than every other (spellings that differ only in case, spaces or number form counted together, as
    spelled most often), else '' (a tie: which one cannot be told)."""
    if not labels:
        return "background"
    by_key = Counter(label_key(v) for v in labels).most_common(2)
    if len(by_key) > 1 and by_key[0][1] == by_key[1][1]:
        return ""
    return Counter(v for v in labels if label_key(v) == by_key[0][0]).most_common(1)[0][0]


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


def image_dims(image: Path, width, height, source: str) -> tuple[int, int] | str:
    """(width, height) to draw an image's shapes at: the size the annotation declares, which must be the image's
    (the image's own when it declares none); else why its shapes cannot be drawn on the image."""
    try:
        w, h = image_size(image)
    except DataError as e:
        return e.problem
    if width and height and (int(width), int(height)) != (w, h):
        return f"{source} is for a {width}x{height} image but the image is {w}x{h}: its shapes would not fit"
    return w, h


def draw_shapes(
    image: Path, width, height, source: str, shapes: list[Shape], no_area: list[str], tally: ShapeTally
) -> tuple[np.ndarray, int, int] | str:
    """(mask, width, height) of an image's area shapes drawn at the size the annotation declares (`image_dims`),
    counting its shapes without area in `tally`; else why they cannot be drawn on the image."""
    dims = image_dims(image, width, height, source)
    if isinstance(dims, str):
        return dims
    w, h = dims
    tally.no_area += no_area
    return rasterise(shapes, w, h, tally), w, h


def image_places(root: Path, base: Path) -> list[Path]:
    """The folders an annotation's image name is looked up under, in turn: `base` (the annotation's folder), its
    `images/`, the dataset folder `root`, its `images/`."""
    return list(dict.fromkeys((base, base / "images", root, root / "images")))


def locate_image(places: list[Path], name: str, taken: Collection[Path] = ()) -> tuple[Path, Path, str] | None:
    """(the image file, the folder of `places` it was found under, the prefix of `name` dropped to find it) of an
    annotated image `name` (Windows separators read as '/'), None when under none of them. A name found under no
    place as written is looked up by its tail (`data.paths.existing_tail`: another machine's absolute path, as
    Label Studio and CVAT write `file_name`), the prefix then returned; a tail that leads to a file in `taken`
    (`exact_images`: one that another image of the same annotation file names as written) is not taken, for it is
    another image of that name (`old/f0.jpg`, not there, beside `f0.jpg`). A file name that differs only in case
    from the one file there is that file (`x.jpg` for `x.JPG`: a set annotated on Windows or macOS, whose file
    systems ignore case; Pascal VOC's reader paired it, COCO's had not), unless it is in `taken`."""
    name = name.replace("\\", "/").strip()
    hit = _as_written(places, name)
    if hit is not None or not name:
        return hit
    for place in places:
        folder = (place / name).parent
        if folder.is_dir():
            alike = _names_by_case(str(folder), folder.stat().st_mtime_ns).get(Path(name).name.lower(), [])
            if len(alike) == 1 and Path(os.path.normpath(folder / alike[0])) not in taken:
                found = Path(os.path.normpath(folder / alike[0]))
                if found.is_file():
                    return found, place, ""
    for place in places:
        found = existing_tail(place, name)
        if found is not None and Path(os.path.normpath(place / found[0])) not in taken:
            return place / found[0], place, found[1]
    return None


@functools.lru_cache(maxsize=32)
def _names_by_case(folder: str, mtime_ns: int) -> dict[str, list[str]]:
    """The entries of `folder` by their lower-case names, listed once per folder and change (its modification time,
    which adding, removing or renaming an entry changes): a lookup per name had listed the folder again each time
    (500 names not found in a folder of 5,000 files: 5.4 s)."""
    out: dict[str, list[str]] = {}
    for entry in os.scandir(folder):
        out.setdefault(entry.name.lower(), []).append(entry.name)
    return out


def _as_written(places: list[Path], name: str) -> tuple[Path, Path, str] | None:
    """`locate_image` of `name` ('/' separators) as written, not by a tail."""
    for place in places:
        if name and (place / name).is_file():
            return Path(os.path.normpath(place / name)), place, ""  # `a/../b.png` as `b.png`, as the walk gives it
    return None


def exact_images(places: list[Path], names: Iterable[str]) -> set[Path]:
    """The files that an annotation file's image `names` find as written (not by a tail; no tail is looked up):
    `locate_image`'s `taken` for each of its names. `old/f0.jpg`, not there, had been read by its tail as `f0.jpg`,
    which the file lists too, and its objects merged into f0.jpg's."""
    found = (_as_written(places, n.replace("\\", "/").strip()) for n in names)
    return {hit[0] for hit in found if hit is not None}


def tail_taken(places: list[Path], name: str, root: Path) -> str:
    """Why `name`, not found, is not the file its tail finds (that file is another image of the annotation file),
    or "" when its tail finds none."""
    hit = locate_image(places, name)
    if hit is None:
        return ""
    return f"; not {Path(os.path.relpath(hit[0], root)).as_posix()}, which the file lists as another image"


def read_whole(rows: list[dict], problems: list, source: str) -> tuple[list[dict], list[str]]:
    """`rows` less those of an image that `problems` names too (another listing of it in the same annotation file
    refused: an object of a class not declared, a shape that cannot be read), and the note saying so ([] for none):
    its other listing's objects alone would score the refused one's as background, so the image is left out whole,
    as a box table's refused row leaves out its image (it had been used, and named as left out, at once)."""
    refused = {p for p, _ in problems}
    kept = [r for r in rows if r["image"] not in refused]
    dropped = sorted({r["image"] for r in rows} - {r["image"] for r in kept})
    if not dropped:
        return kept, []
    return kept, [
        f"{len(dropped)} image(s) listed more than once in {source}, one listing refused: left out whole, not read "
        f"from the other listing alone (e.g. {dropped[0]})"
    ]


def _find_image(root: Path, base: Path, name: str, taken: Collection[Path] = ()) -> Path | None:
    """An annotated image file: `name` looked up under `image_places(root, base)` (`taken`: see `locate_image`)."""
    found = locate_image(image_places(root, base), name, taken)
    return found[0] if found else None


def _fields(rel_dir: str, options: DataOptions) -> dict[str, str] | None:
    """Columns from the folder by --pattern ({} without one), None when the folder does not fit it."""
    if not options.pattern:
        return {}
    match = pattern_regex(options.pattern).match(rel_dir) if rel_dir != "." else None
    return None if match is None else {k: v for k, v in match.groupdict().items() if v is not None}


# --- labelme ----------------------------------------------------------------------------------------------------


def _load_json(path: Path) -> object:
    with open(path, encoding="utf-8-sig") as f:
        return json.load(f)


def first_json(path: Path, marker: str, accept, limit: int = 20, head: int = 8192) -> Path | None:
    """The first JSON file under a folder whose first `head` characters hold `marker` and whose content `accept`s,
    looking into up to `limit` JSON files (unreadable ones skipped); for `detect_layout`'s finders."""
    for f in [f for f in walk_files(path) if f.suffix.lower() == ".json"][:limit]:
        try:
            with open(f, encoding="utf-8-sig") as fh:
                if marker not in fh.read(head):
                    continue
            if accept(_load_json(f)):
                return f
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return None


# --- one annotation file per image (YOLO, Pascal VOC) -------------------------------------------------------------


@dataclass(frozen=True)
class ImageShapes:
    """One image's annotation file, parsed: its area shapes in pixels, every object's label, the objects without
    area, and the image size the file declares (None: the image's own)."""

    shapes: list[Shape]
    labels: list[str]
    no_area: list[str]
    width: int | None = None
    height: int | None = None
    extra: dict | None = None  # more columns of the row (labelme's flags)


def boxes_only(box_labels: list[str], tally: ShapeTally) -> bool:
    """Whether an image of a set whose masks are drawn from outlines gets no mask: one of its objects drawn into
    masks is a box only (`box_labels`: the labels of its objects that are boxes without an outline). A filled box is
    not its object's outline, and the outlines alone would miss that object (Ultralytics too keeps a mixed set's
    boxes, not its outlines). Its boxes are kept for detection; mask tasks read it as an image without a mask
    (`boxed_note`)."""
    return any(tally.draws(label) for label in box_labels)


def boxed_note(boxed: list[str], what: str = "boxes in a set of outlined shapes") -> list[str]:
    """The note on the images `boxes_only` leaves without a mask ([] for none)."""
    if not boxed:
        return []
    return [
        f"{len(boxed)} image(s) have {what}: no mask (a filled box is not an outline, and the outlines alone would "
        "miss the boxed objects; --missing-masks empty would wrongly count them as lesion-free), boxes kept for "
        f"detection; a mask task leaves them out with --missing-masks leave-out (e.g. {', '.join(boxed[:3])})"
    ]


def per_image_rows(
    root: Path,
    images: list[Path],
    sources: dict[Path, Path],
    parse,
    options: DataOptions,
    problems: list,
    what: str,
    masks: bool | None = None,
    unannotated: str = "",
) -> tuple[list[dict], list[str]]:
    """Rows of images annotated one file each (`sources`: image -> its annotation file), and the notes.

    `parse(source, image) -> ImageShapes` reads one file (ValueError, KeyError, IndexError, TypeError, OSError:
    the file cannot be read, named as the image's problem). Each row has the image's boxes, its label (its
    objects' label when they agree, 'background' without objects, empty when they disagree: every label is in
    column `shape_labels`; a folder's label by --pattern wins, with a note) and a mask drawn from its shapes at the
    image's size: always with `masks` True, never with False, and with None when any file of the set has a shape
    other than a box - then an image with a box gets no mask (a filled box is not its object's outline; Ultralytics
    too keeps a mixed set's boxes, not its outlines), its boxes are kept. An image without a file gets the label
    `unannotated`: none by default (unannotated is not lesion-free), 'background' and no boxes where the format's
    tools read it so (YOLO: Ultralytics reads an image without a labels file as a background image).
    """
    parsed: list[tuple[Path, dict, Path | None, ImageShapes | None]] = []
    for img in images:
        rel = img.relative_to(root).as_posix()
        fields = _fields(img.parent.relative_to(root).as_posix(), options)
        if fields is None:
            problems.append((rel, f"folder does not fit the pattern {options.pattern!r}"))
            continue
        src = sources.get(img)
        if src is None:
            parsed.append((img, {"image": rel, **fields}, None, None))
            continue
        try:
            parsed.append((img, {"image": rel, **fields}, src, parse(src, img)))
        except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
            problems.append((rel, f"{src.relative_to(root).as_posix()}: {e}"))
    shared = len(set(sources.values())) < len(sources)  # one annotation file for several images
    drawn_masks = masks
    if masks is None:
        drawn_masks = any(s.kind != "rectangle" for *_, got in parsed if got for s in got.shapes)
    rows, missing, empty, mixed, folder_wins, tally = [], [], [], [], [], ShapeTally.of(options)
    boxed = []  # images with boxes in a set drawn from outlines: no mask
    for img, row, src, got in parsed:
        if src is None or got is None:
            missing.append(row["image"])
            rows.append(row | ({"label": unannotated, "boxes": "[]"} if unannotated else {}))
            continue
        drawn = draw_shapes(img, got.width, got.height, src.name, got.shapes, got.no_area, tally)
        if isinstance(drawn, str):
            problems.append((row["image"], drawn))
            continue
        mask, w, h = drawn
        if drawn_masks and masks is None and boxes_only([s.label for s in got.shapes if s.kind == "rectangle"], tally):
            boxed.append(row["image"])
        elif drawn_masks:  # a file of one image's: mask.png; of several (VIA): one per image, by its path
            name = hashlib.sha1(row["image"].encode()).hexdigest()[:16] + ".png" if shared else "mask.png"
            row["mask"] = write_mask(mask_folder(src, tally.drawn_labels) / name, mask, root)
        row["boxes"] = json.dumps([[*clipped_box(s, w, h), s.label] for s in got.shapes])
        row["shape_labels"] = json.dumps(got.labels)
        row.update(got.extra or {})
        label = image_label(got.labels)
        empty += [row["image"]] if not got.labels else []
        mixed += [(row["image"], got.labels)] if not label else []
        folder_wins += [row["image"]] if row.get("label") and label and row["label"] != label else []
        row.setdefault("label", label)
        rows.append(row)
    notes = [f"{what}: {len(parsed) - len(missing)} of {len(images)} images annotated"]
    notes[0] += "; each mask the union of its shapes, drawn at the image's size" if drawn_masks else "; boxes, no masks"
    notes += _label_notes(mixed, empty, f"a {what} file")
    if missing:
        hint = ", no mask; --missing-masks empty would count them as lesion-free" if drawn_masks else ""
        read = f"label {unannotated!r}, as the format's tools read them" if unannotated else "no label"
        notes.append(f"{len(missing)} image(s) have no {what} file: {read}, no boxes{hint} (e.g. {missing[0]})")
    notes += boxed_note(boxed)
    if folder_wins:
        notes.append(f"{len(folder_wins)} image(s): the folder's label (--pattern) differs from the shapes' and wins")
    return rows, notes + tally.notes(filled=masks is True)
