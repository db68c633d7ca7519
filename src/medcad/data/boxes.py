"""Bounding boxes: from masks, checked against their image, scaled to the training size, as arrays.

A box is `[x0, y0, x1, y1, label]` in pixel coordinates of its image, x1/y1 exclusive (COCO's x + w), as in
the manifest's `boxes` column. Bad boxes in user data are clipped or dropped with a message naming the file,
never an exception: one mislabelled frame should not stop a study.

Frame classes (`--frame-classes normal,unclear`, the colonoscopy design's normal / unclear / tumour): frames whose
label is one of them are whole-frame detections of their class, one box [0, 0, W, H] with that label, so that an
SSD learns them beside the lesion boxes and its top detection decides the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medcad.data.manifest import label_map_advice
from medcad.data.masks import SPECK_AREA, lesion_components
from medcad.errors import DataError


def boxes_from_mask(mask: np.ndarray, label: str, min_area: int = SPECK_AREA) -> list[list]:
    """One box per connected component (8-connectivity) of a mask.

    Args:
        mask: (H, W) mask; nonzero is foreground.
        label: class name given to every box.
        min_area: components with fewer pixels are specks and give no box.

    Returns:
        [[x0, y0, x1, y1, label], ...] with int coordinates, x1/y1 exclusive, in component order.
    """
    regions = lesion_components(mask)
    return [[int(x), int(y), int(x + w), int(y + h), label] for x, y, w, h, area in regions if area >= min_area]


def _coords(box: object) -> tuple[list[float], object] | None:
    """(x0, y0, x1, y1) as finite floats and the label, or None when the box is malformed."""
    if not isinstance(box, list | tuple) or len(box) != 5:
        return None
    try:
        xy = [float(v) for v in box[:4]]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in xy) or not isinstance(box[4], str | int):
        return None
    return xy, box[4]


def clean_boxes(boxes: list[list], width: int, height: int, source: str) -> tuple[list[list], list[str]]:
    """Clip boxes to the image and drop the unusable ones, saying what was done.

    Args:
        boxes: [[x0, y0, x1, y1, label], ...] in pixels of the image.
        width: image width in pixels.
        height: image height in pixels.
        source: the image's name, used in the messages (e.g. "images/a.jpg").

    Returns:
        (kept boxes with float coordinates clipped to [0, width] x [0, height], human-readable problems, each
        "<source>: ..." as `checked_boxes` words it).
    """
    kept, problems = checked_boxes(boxes, width, height)
    return kept, [f"{source}: {p}" for p in problems]


def checked_boxes(boxes: list[list], width: int, height: int) -> tuple[list[list], list[str]]:
    """`clean_boxes` without the image's name in its problems ("box [...] (polyp) outside the 40x30 image; dropped"):
    for messages that name the image their own way (the audit's table, the ledger's reasons)."""
    kept: list[list] = []
    problems: list[str] = []
    for box in boxes or []:
        parsed = _coords(box)
        if parsed is None:
            problems.append(f"{box!r} is not a box [x0, y0, x1, y1, label] with numbers; dropped")
            continue
        (x0, y0, x1, y1), label = parsed
        cx0, cx1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        cy0, cy1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        shown, clipped = [x0, y0, x1, y1], (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < 1:
            why = f"outside the {width}x{height} image" if clipped else "has no area (under 1 pixel)"
            problems.append(f"box {shown} ({label}) {why}; dropped")
            continue
        if clipped:
            problems.append(f"box {shown} ({label}) outside the {width}x{height} image, clipped")
        kept.append([cx0, cy0, cx1, cy1, label])
    return kept, problems + _doubtful(kept)


THIN_BOX = 2.0  # px: a box narrower or lower than this is a line, not a lesion's extent


def _doubtful(kept: list[list]) -> list[str]:
    """Kept boxes under `THIN_BOX` px across or `SPECK_AREA` px in area (Kvasir-SEG's JSON has 129x1, 61x1, 3x134,
    2x2 px boxes, each inside a real one): kept, but named, with the box they lie inside where there is one (they
    count as lesions nobody can find, and cap a detector's sensitivity)."""
    said = []
    for box in kept:
        x0, y0, x1, y1, label = box
        w, h = x1 - x0, y1 - y0
        if min(w, h) >= THIN_BOX and w * h >= SPECK_AREA:
            continue
        inside = next(
            (o for o in kept if o is not box and o[0] <= x0 and o[1] <= y0 and o[2] >= x1 and o[3] >= y1), None
        )
        within = f", inside box {[round(v, 1) for v in inside[:4]]}" if inside else ""
        shown = [round(v, 1) for v in (x0, y0, x1, y1)]
        said.append(f"box {shown} ({label}) is {w:g}x{h:g} px: a line or a speck, not a lesion's extent?{within}; kept")
    return said


def scale_boxes(boxes: list[list], from_wh: tuple[int, int], to_size: int | tuple[int, int]) -> list[list]:
    """Map boxes from an image of size `from_wh` (width, height) to its resized copy.

    Args:
        boxes: [[x0, y0, x1, y1, label], ...] in pixels of the original image.
        from_wh: (width, height) of the original image.
        to_size: side of the square training image, or its (width, height).

    Returns:
        Boxes with float coordinates in the resized image; labels unchanged.
    """
    tw, th = (to_size, to_size) if isinstance(to_size, int) else to_size
    sx, sy = tw / from_wh[0], th / from_wh[1]
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy, *b[4:]] for b in boxes]


COORD_DECIMALS = 1  # a listed box's coordinates: to 0.1 pixel
SCORE_DECIMALS = 4  # its score: as a frame's score is shown (boxes scored 0.51 and 0.55 stay apart)


def listed_boxes(boxes: np.ndarray, labels: Sequence[str]) -> list[list]:
    """Detections as the rows every output lists them in (predict's CSV and --json, serve, a run's predictions.csv).

    Args:
        boxes: (m, 6) [x0, y0, x1, y1, score, class_index] in pixels, score in [0, 1], class_index 0-based.
        labels: the detection classes that class_index indexes.

    Returns:
        [[x0, y0, x1, y1, score, class name], ...] in the order given: coordinates rounded to `COORD_DECIMALS`,
        the score cut (rounded down) to `SCORE_DECIMALS`, so that a listed score reaches a threshold of as many
        decimals exactly where the box did (0.49996 had been listed 0.5000, though a 0.5 threshold drops it).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 6)
    step = 10.0**SCORE_DECIMALS
    xy, score = np.round(b[:, :4], COORD_DECIMALS), np.floor(b[:, 4] * step + 1e-9) / step
    return [[*xy[j].tolist(), float(score[j]), labels[int(b[j, 5])]] for j in range(len(b))]


def listed_to_array(listed: Sequence[Sequence], labels: Sequence[str]) -> np.ndarray:
    """Listed detections back as the (m, 6) [x0, y0, x1, y1, score, class_index] float64 array, in the listing's
    coordinates. The class may be a name among `labels` (`listed_boxes`) or an index (a run's predictions.csv written
    before its boxes were listed so)."""
    out = np.zeros((len(listed), 6), np.float64)
    for j, b in enumerate(listed):
        out[j] = [*b[:5], labels.index(b[5]) if isinstance(b[5], str) else b[5]]
    return out


def boxes_to_array(boxes: Sequence[Sequence], labels: Sequence[str], source: str) -> np.ndarray:
    """Boxes as the (m, 5) float array [x0, y0, x1, y1, class_index] that training and metrics take.

    Raises:
        DataError: a box's label is not among `labels` (class names, background excluded).
    """
    index = {lab: i for i, lab in enumerate(labels)}
    out = np.zeros((len(boxes), 5), np.float32)
    for j, b in enumerate(boxes):
        if b[4] not in index:
            raise DataError(
                source,
                f"box label {b[4]!r} is not one of the detection classes {list(labels)}; "
                + label_map_advice([str(b[4])], list(labels)),
            )
        out[j] = [*b[:4], index[b[4]]]
    return out


def parse_frame_classes(value: str | Sequence[str] | None) -> list[str]:
    """The frame classes of a setting: "normal, unclear" -> ["normal", "unclear"] (blanks and repeats dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(s for s in (str(v).strip() for v in items) if s))


def manifest_boxes(
    manifest, size: int, labels: Sequence[str] | None = None, frame_classes: str | Sequence[str] | None = None
) -> tuple[list[str], list[np.ndarray], list[str], list[tuple[int, int]]]:
    """Every image's boxes at the square training size, for detection.

    A row's boxes come from its `boxes` column, else from its mask's connected components, labelled with the
    row's label; a row without a label or labelled "lesion", with the single detection class where there is one (an
    unnamed lesion mask of a one-class detector is that class), else "lesion"; another label that is not a
    detection class stops (`boxes_to_array`). A row with neither is a background frame.
    A note says so when boxes were made from masks while a JSON file under the dataset folder went unread.
    A row whose label is a frame class gets the whole-frame box [0, 0, W, H] of that label (after the boxes its
    `boxes` column lists, if any; its mask is not read: a frame class is not a lesion). Boxes are clipped or
    dropped by `clean_boxes` (the messages are returned, nothing raises for a bad box).

    Args:
        manifest: a Manifest.
        size: side of the square training image.
        labels: the detection classes; default: every box label found (frame classes included), sorted.
        frame_classes: row labels that make whole-frame detections, e.g. "normal,unclear" (TrainConfig's
            `frame_classes`).

    Returns:
        (labels, per image (m, 5) [x0, y0, x1, y1, class_index] arrays at the training size, problems, per image
        (width, height) in pixels as decoded (orientation applied): the frame its boxes are scaled from, which
        `scale_boxes` maps them back to).

    Raises:
        DataError: a frame class is no image's label (reading for training), or not among the given `labels`.
    """
    from medcad.data.io import image_size
    from medcad.data.masks import read_mask, sample_mask_pages

    frames = parse_frame_classes(frame_classes)
    row_labels = manifest.table["label"].astype(str).tolist()
    if labels is None:
        unused = [c for c in frames if c not in set(row_labels)]
        if unused:
            raise DataError(
                manifest.root,
                f"frame class(es) {unused} (--frame-classes) are no image's label; labels here: "
                f"{sorted(set(row_labels) - {''})}",
            )
    elif any(c not in labels for c in frames):
        raise DataError(manifest.root, f"frame classes {frames} are not all among the run's detection classes {labels}")
    raw, sizes, problems, from_masks = [], [], [], 0
    for i, key in enumerate(manifest.keys):
        w, h = image_size(manifest.image_path(i), manifest.frame(i))
        boxes = manifest.boxes(i)
        if row_labels[i] in frames:
            boxes = [*(boxes or []), [0, 0, w, h, row_labels[i]]]
        elif boxes is None and manifest.mask_paths(i):
            label = row_labels[i]
            if labels is not None and label in ("", "lesion") and len(labels) == 1:  # an unnamed lesion mask: the
                label = labels[0]  # one class; a label of its own stays (BUSI's benign had become a detector's polyp)
            mask = read_mask(manifest.mask_paths(i), sample_mask_pages(manifest, i))
            boxes = boxes_from_mask(mask, label or "lesion")
            from_masks += 1
        kept, found = clean_boxes(boxes or [], w, h, key)
        raw.append(kept)
        sizes.append((w, h))
        problems += found
    _unread_json_note(manifest, from_masks)
    if labels is None:
        labels = sorted({str(b[4]) for boxes in raw for b in boxes})
    if not labels:
        raise DataError(manifest.root, "no boxes (nor masks to derive them from): detection needs boxes")
    arrays = [
        boxes_to_array([[*b[:4], str(b[4])] for b in scale_boxes(kept, wh, size)], labels, key)
        for kept, wh, key in zip(raw, sizes, manifest.keys, strict=True)
    ]
    return list(labels), arrays, problems, sizes


def _unread_json_note(manifest, from_masks: int) -> None:
    """A note when boxes were made from masks while a JSON file under the dataset folder went unread: it may hold
    the boxes in a form no reader recognised."""
    ledger = getattr(manifest, "ledger", None)
    unread = [p for p, _ in ledger.unread if p.lower().endswith(".json")] if ledger is not None else []
    if from_masks and unread:
        manifest.notes.append(
            f"boxes of {from_masks} image(s) made from their masks (one per connected component), while "
            f"{', '.join(unread[:3])} under the dataset folder went unread: if it holds the boxes, its form is not "
            'one medcad reads (COCO, or Kvasir-SEG\'s {"<image>": {"bbox": [{"xmin", ...}]}})'
        )
