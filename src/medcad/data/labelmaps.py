"""Label-map masks: several lesion classes in one mask file (0 background, 1 cyst, 2 stone, ...).

The classes of a label map's values come from the user (`--mask-labels 1=cyst,2=stone`) or from a labels file
beside the masks as nnU-Net keeps it (dataset.json, `"labels": {"background": 0, "cyst": 1, "stone": 2}`; the
Medical Segmentation Decathlon's `{"0": "background", "1": "cyst"}` is read too). A mask is read as the index of
its value's class, 1..K in the order the classes are listed, 0 for background; a value that no class names stops the
read with the file and the values found, since a guessed class would be scored as truth.

Masks that hold classes as RGB colours (CVAT's and Pascal VOC's "Segmentation mask" exports) are read through the
colour table beside them, CVAT's labelmap.txt (`name:r,g,b:parts:actions`): each colour is its class's value (the
classes by name, from the setting or dataset.json, else labelmap.txt's own in its order, from 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medcad.data.filekinds import check_file
from medcad.data.io import LOSSY_FORMATS, decode_pil
from medcad.data.masks import mask_plane
from medcad.errors import ConfigError, DataError

LABELS_FILE = "dataset.json"  # nnU-Net's name for a dataset's labels (and more)
COLOUR_FILE = "labelmap.txt"  # CVAT's (Pascal VOC style) class colours: `name:r,g,b:parts:actions`
BACKGROUND_NAMES = ("background", "bg", "0", "_background_")  # labelme and VOC tools write _background_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskLabels:
    """The lesion classes of label-map masks.

    Attributes:
        values: the mask value of each class, (K,), in class order (class index i + 1 in a read mask).
        names: the class names (K,).
        source: where they came from ("--mask-labels", or the labels file's path), for messages.
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    source: str
    colours: tuple[tuple[int, int, int, int], ...] = ()  # (r, g, b, value) of coloured masks (COLOUR_FILE)

    def describe(self) -> str:
        """The classes as `--mask-labels` takes them: "1=cyst,2=stone"."""
        return ",".join(f"{v}={n}" for v, n in zip(self.values, self.names, strict=True))


class NoLabelsMapping(DataError):
    """A dataset.json without a "labels" mapping: another tool's file of that name, not a labels file."""


def parse_mask_labels(value: str | dict, source: str = "--mask-labels") -> MaskLabels:
    """Classes from "1=cyst,2=stone" (or a {value: name} mapping); 0 is background and cannot be a class
    ("0=background" is taken as said and left out).

    Raises:
        ConfigError: a part that is not VALUE=NAME, a value given twice, a name given twice, or value 0.
    """
    pairs = value.items() if isinstance(value, dict) else [p.split("=", 1) for p in str(value).split(",") if p.strip()]
    values, names = [], []
    for pair in pairs:
        if len(pair) != 2 or not str(pair[0]).strip().lstrip("-").isdigit() or not str(pair[1]).strip():
            raise ConfigError(f"{source}: {'='.join(map(str, pair))!r} is not VALUE=NAME (e.g. 1=cyst,2=stone)")
        v, name = int(str(pair[0]).strip()), str(pair[1]).strip()
        if v == 0 and name.lower() in BACKGROUND_NAMES:  # "0=background,1=cyst", as dataset.json lists them
            continue
        if v == 0:
            raise ConfigError(f"{source}: value 0 is the background; name the lesion values from 1 (e.g. 1=cyst)")
        if v in values or name in names:
            raise ConfigError(f"{source}: {'value ' + str(v) if v in values else 'class ' + name!r} given twice")
        values.append(v)
        names.append(name)
    if not values:
        raise ConfigError(f"{source}: no class given; write VALUE=NAME pairs, e.g. 1=cyst,2=stone")
    return MaskLabels(tuple(values), tuple(names), source)


def read_labels_file(path: Path) -> MaskLabels:
    """The classes of an nnU-Net dataset.json (`labels`: {name: value}, or MSD's {"value": name}); background left
    out.

    Raises:
        DataError: unreadable JSON, no `labels`, or nnU-Net's region labels (a list of values per name).
    """
    try:
        raw = path.read_bytes()
        # UTF-8 with or without a byte-order mark; json detects UTF-16 / UTF-32 (Windows editors' "Unicode") itself
        labels = json.loads(raw.decode("utf-8-sig") if raw.startswith(b"\xef\xbb\xbf") else raw).get("labels")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(path, f"cannot read its labels ({e})") from e
    if not isinstance(labels, dict) or not labels:
        raise NoLabelsMapping(path, 'has no "labels" mapping (nnU-Net: "labels": {"background": 0, "cyst": 1})')
    if all(str(k).strip().lstrip("-").isdigit() for k in labels):  # MSD: {"0": "background", "1": "cyst"}
        mapping = {int(k): str(v) for k, v in labels.items()}
    else:
        if any(not isinstance(v, int) for v in labels.values()):
            raise DataError(path, "has region labels (a list of values for one name); give --mask-labels instead")
        mapping = {v: str(k) for k, v in labels.items()}
    ignore = [v for v, n in mapping.items() if n.lower() == "ignore"]
    if ignore:  # nnU-Net v2: pixels of this value are unannotated, left out of loss and metrics
        raise DataError(
            path,
            f"has nnU-Net's 'ignore' label (value {ignore[0]}: unannotated pixels), which medcad does not leave out "
            "of training and scoring; relabel those pixels, or drop the images",
        )
    lesions = {v: n for v, n in mapping.items() if v != 0 and n.lower() not in BACKGROUND_NAMES}
    return parse_mask_labels(lesions, str(path))


def find_labels_file(root: Path, mask_paths: Sequence[Path], name: str = LABELS_FILE) -> Path | None:
    """A labels file (`name`: dataset.json, labelmap.txt) in the dataset's folder, or beside the masks or one folder
    above them (nnU-Net keeps dataset.json beside labelsTr/, CVAT labelmap.txt beside SegmentationClass/)."""
    places = [root]
    for p in mask_paths[:1]:
        places += [p.parent, p.parent.parent]
    for place in dict.fromkeys(places):
        if (place / name).is_file():
            return place / name
    return None


def read_colour_file(path: Path) -> dict[str, tuple[int, int, int]]:
    """{class name: (r, g, b)} of a CVAT / Pascal VOC labelmap.txt, background included, in the file's order.

    Raises:
        DataError: a line that is not `name:r,g,b:...`, or a colour given to two classes.
    """
    out: dict[str, tuple[int, int, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeError) as e:
        raise DataError(path, f"cannot read its class colours ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        rgb = parts[1].split(",") if len(parts) > 1 else []
        if len(rgb) != 3 or not all(c.strip().isdigit() and int(c) < 256 for c in rgb) or not parts[0].strip():
            raise DataError(path, f"line {n} {line!r} is not NAME:R,G,B (CVAT's label:color_rgb:parts:actions)")
        colour, name = tuple(int(c) for c in rgb), parts[0].strip()
        if colour in out.values() or name in out:
            twice = f"colour {colour}" if colour in out.values() else f"class {name!r}"
            raise DataError(path, f"line {n}: {twice} is given twice")
        out[name] = colour  # type: ignore[assignment]
    return out


def _with_colours(classes: MaskLabels, path: Path) -> MaskLabels:
    """`classes` with the colours `path` (a labelmap.txt) gives their names (letter case aside); background is value
    0. A class the file gives no colour has none: only a coloured mask that holds a colour no class has stops a
    read (`_label_plane`), so grey or palette masks read as before whatever the file holds."""
    colours = read_colour_file(path)
    value = {n.casefold(): v for v, n in zip(classes.values, classes.names, strict=True)}
    value |= {n.casefold(): 0 for n in colours if n.lower() in BACKGROUND_NAMES}
    table = tuple((*rgb, value[n.casefold()]) for n, rgb in colours.items() if n.casefold() in value)
    unused = [n for n, rgb in colours.items() if n.casefold() not in value and rgb != (0, 0, 0)]  # black: background
    named = {n.casefold() for n in colours}
    uncoloured = [n for n in classes.names if n.casefold() not in named]
    if unused:
        log.warning(
            "note: %s: class(es) %s are no class of %s (%s); a mask pixel of their colour stops the read",
            path,
            ", ".join(unused),
            classes.source,
            classes.describe(),
        )
    if uncoloured:
        log.warning(
            "note: %s gives no colour to class(es) %s of %s: a coloured mask cannot hold them (names match letter "
            "case aside)",
            path,
            ", ".join(uncoloured),
            classes.source,
        )
    return dataclasses.replace(classes, colours=table)


SCANNED = 500  # masks read for the values an error names (20 had missed a class the first masks lack)


def resolve_mask_labels(
    setting: str | None, root: Path, mask_paths: Sequence[Path], source: str = "--mask-labels"
) -> MaskLabels:
    """The classes of a dataset's label maps: the setting when given (`source` says where it came from, for
    messages), else its labels file.

    Raises:
        ConfigError: neither given (the message names the values the first masks hold).
    """
    colour_file = find_labels_file(root, mask_paths, COLOUR_FILE)
    found = find_labels_file(root, mask_paths)
    if setting:
        classes = parse_mask_labels(setting, source)
    elif found is not None:
        classes = read_labels_file(found)
    elif colour_file is not None:  # its own classes, in its order, from 1
        named = [n for n in read_colour_file(colour_file) if n.lower() not in BACKGROUND_NAMES]
        classes = parse_mask_labels({i: n for i, n in enumerate(named, 1)}, str(colour_file))
    else:
        classes = None
    if classes is not None:
        return _with_colours(classes, colour_file) if colour_file is not None else classes
    read = mask_paths[:SCANNED]
    seen = sorted({int(v) for p in read for v in np.unique(_label_plane(p)) if v != 0})
    where = f"the first {len(read)} of {len(mask_paths)} masks" if len(read) < len(mask_paths) else "the masks"
    raise ConfigError(
        f"{root}: segment-multiclass needs the class of each mask value: give --mask-labels "
        f"(e.g. {','.join(f'{v}=NAME' for v in seen[:4]) or '1=cyst,2=stone'}) or put an nnU-Net {LABELS_FILE} "
        f"beside the masks; values found in {where}: {', '.join(map(str, seen)) or 'none but 0'}"
    )


def _label_plane(path: Path, classes: MaskLabels | None = None, page: int | None = None) -> np.ndarray:
    """One mask file's values as an integer (H, W) plane, oriented as displayed: grey values, 16-bit and float
    values, a palette image's indices (Pascal VOC, CVAT and labelme write classes so), a grey image saved as RGB,
    RGB colours through `classes.colours` (each colour its class's value).

    Raises:
        DataError: missing, unreadable, lossy (JPEG values are not classes), or coloured (classes as RGB colours:
            their channels would merge, e.g. red and green into one value) without a colour table, or with a colour
            the table does not hold.
    """
    check_file(path)
    arr, fmt, _ = decode_pil(path, None, keep_alpha=True, palette_indices=True, page=page, as_stored=True)
    if fmt in LOSSY_FORMATS:
        raise DataError(path, f"a label map must be lossless (PNG, TIFF, ...); {fmt} changes the values of classes")
    if arr.ndim == 3 and arr.shape[2] >= 3 and (np.ptp(arr[..., :3], axis=2) > 0).any():
        colours, index = np.unique(arr[..., :3].reshape(-1, 3), axis=0, return_inverse=True)
        shown = ", ".join(str(tuple(int(c) for c in rgb)) for rgb in colours[:6])
        if classes is None or not classes.colours:
            raise DataError(
                path,
                f"holds classes as RGB colours ({len(colours)}: {shown}{' ...' if len(colours) > 6 else ''}); save "
                f"one value (or palette index) per class, e.g. 0 background, 1 cyst, 2 stone, or put a {COLOUR_FILE} "
                "(CVAT's name:r,g,b lines) beside the masks",
            )
        table = {(0, 0, 0): 0} | {(r, g, b): v for r, g, b, v in classes.colours}  # black: background, unless named
        found = [tuple(int(c) for c in rgb) for rgb in colours]
        unknown = [rgb for rgb in found if rgb not in table]
        if unknown:
            raise DataError(
                path,
                f"holds colour(s) {', '.join(map(str, unknown[:6]))} that no class of {classes.source} has in "
                f"{COLOUR_FILE} (classes: {classes.describe()})",
            )
        values = np.array([table[rgb] for rgb in found], np.int64)
        return values[index.reshape(-1)].reshape(arr.shape[:2])
    plane, _ = mask_plane(arr)
    if np.issubdtype(plane.dtype, np.floating):
        if not np.array_equal(plane, np.round(plane)):
            raise DataError(path, "holds fractional values; a label map holds one integer class value per pixel")
        plane = plane.astype(np.int64)
    return plane


def read_label_map(paths: Sequence[Path], classes: MaskLabels, pages: Sequence[int | None] | None = None) -> np.ndarray:
    """The class index per pixel, uint8 (H, W): 0 background, i + 1 for `classes.values[i]`; several files of one
    image are overlaid in order (a later file's classes win where both name one); each file at its page of `pages`
    (`medcad.data.masks.sample_mask_pages`), page 0 without.

    Raises:
        DataError: a value no class names (with the values found and where the classes came from), files of one
            image with different sizes, or an unreadable / lossy file.
    """
    out: np.ndarray | None = None
    lut = {0: 0} | {v: i + 1 for i, v in enumerate(classes.values)}
    for path, page in zip(paths, pages or [None] * len(paths), strict=True):
        plane = _label_plane(Path(path), classes, page)
        values = np.unique(plane)
        unknown = [int(v) for v in values if int(v) not in lut]
        if unknown:
            raise DataError(
                path,
                f"holds value(s) {', '.join(map(str, unknown[:8]))} that no class names (classes from "
                f"{classes.source}: {classes.describe()}; values in the file: {', '.join(map(str, values[:16]))})",
            )
        index = np.zeros(plane.shape, np.uint8)
        for v in values:
            index[plane == v] = lut[int(v)]
        if out is None:
            out = index
        elif out.shape != index.shape:
            raise DataError(path, f"mask size {index.shape[1]}x{index.shape[0]} differs from {paths[0]}")
        else:
            out = np.where(index > 0, index, out)
    if out is None:
        raise ValueError("read_label_map needs at least one path")
    return out


def resize_label_map(index: np.ndarray, size: int, n_classes: int) -> np.ndarray:
    """uint8 class indices (H, W) -> (size, size): each class's area share when shrinking, then the largest share
    (a 0.5 rule for one class, as binary masks are resized)."""
    area = cv2.INTER_AREA
    shares = np.stack(
        [cv2.resize((index == c).astype(np.float32), (size, size), interpolation=area) for c in range(n_classes + 1)]
    )
    return shares.argmax(0).astype(np.uint8)
