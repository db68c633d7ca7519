"""Ultrasound interface removal: crop a frame to its imaging area and inpaint the marks burned into it.

Ultrasound frames carry the scanner's interface around the scan (black surround, text bands, logos, grey-scale
bars) and marks on it (caliper glyphs '+' / 'x', dotted measurement lines, annotations). A classifier can learn
those instead of the tissue: calipers are drawn on the lesions a sonographer measured. `TrainConfig.interface`:

- "none": the frame as it is (endoscopy, and every run made before this option).
- "crop": the bounding box of the imaging area, found per image from its own pixels: the non-black pixels
  (median-filtered grey above `DARK`), opened to drop thin structures (text, lines, ticks), closed to bridge
  speckle gaps; the box of the largest region and of every region at least `SPLIT_SHARE` of it (an anechoic band
  can cut a scan in two), widened by the opening's radius. No pixel inside the box is changed. A frame whose
  largest region is under `MIN_REGION` of it is kept whole (no imaging area found). Flat black below or beside
  the scan (no echo at depth, an empty panel) is cut away with the surround; the box is then stretched to the
  model's square input like any frame.
- "crop+marks": the crop, then small thin bright marks (white top-hat contrast >= `MARK_CONTRAST` on grey >=
  `MARK_GREY`, taken whole by hysteresis, except long straight streaks, which are tissue such as the skin line or
  ligaments) and coloured pixels (chroma >= `MARK_CHROMA`, except large blobs such as a Doppler box) are
  inpainted (OpenCV Telea) from their surroundings.

Every size is relative to the frame's shorter side, so a frame decoded at a reduced scale gets the same answer.
Bright marks that look like tissue (a tiny isolated echo of the brightness of a caliper dot) are masked too;
`InterfaceCut.masked_fraction` and `medcad data audit` say how much each frame lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medcad.errors import ConfigError

INTERFACES = ("none", "crop", "crop+marks")
INTERFACE_VERSION = (
    1  # raise it where `find_interface` answers otherwise: `medcad data audit` keeps its answers per file
)

DARK = 4  # grey levels (of 255) up to which a median-filtered pixel is surround, not signal
OPEN_SIDE = 0.02  # opening kernel (fraction of the shorter side): removes text strokes, lines, ticks
CLOSE_SIDE = 0.04  # closing kernel: bridges dark speckle inside the scan
SPLIT_SHARE = 0.15  # a region this share of the largest (and >= 1 % of the frame) is part of the scan too
MIN_REGION = 0.05  # the largest region must cover this much of the frame, else the frame is kept whole
MARK_CONTRAST = 100  # white top-hat (grey minus its opening) of a mark's strongest pixel
MARK_GREY = 180  # a mark pixel's brightness (max over channels)
MARK_CHROMA = 50  # max - min over channels: coloured (calipers, annotations) on grey tissue
MARK_SIDE = 0.015  # top-hat kernel (fraction of the shorter side, at least 5 px): marks are thinner than this
STREAK_LENGTH = 0.035  # a bright component this long (fraction of the shorter side) ...
STREAK_ASPECT = 3.0  # ... and this elongated is a tissue streak, not a mark
MARK_AREA = 0.002  # a bright component larger than this fraction of the frame is tissue
GROW = 3  # pixels by which a mark grows into bright (>= MARK_GREY) neighbours
COLOUR_AREA = 0.005  # a coloured component larger than this fraction of the frame is not a mark (Doppler)


CROP_TASKS = ("classify", "multilabel")  # tasks whose outputs do not sit on the frame (no mask or box to place back)


def check_interface(interface: str, task: str | None = None) -> str:
    """`interface` if it is one of INTERFACES (and, given a task, one that task can use); else ConfigError."""
    if interface not in INTERFACES:
        raise ConfigError(f"interface {interface!r} is not one of {', '.join(INTERFACES)}")
    if task is not None and interface != "none" and task not in CROP_TASKS:
        raise ConfigError(
            f"interface {interface!r} is for {' and '.join(CROP_TASKS)} runs for now: a {task} model's masks or "
            "boxes would be placed on the cropped frame, not the original; use --interface none"
        )
    return interface


def _odd(n: float, least: int = 3) -> int:
    return max(least, int(round(n)) | 1)


def _ellipse(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Max over channels (OpenCV: numpy's reduction over a last axis of 3 is ~20x slower)."""
    if rgb.ndim == 2:
        return np.ascontiguousarray(rgb)
    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    return cv2.max(cv2.max(r, g), b)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """Max minus min over channels."""
    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    return cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))


def imaging_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The imaging area of an (H, W, 3) uint8 frame as (x0, y0, x1, y1), end-exclusive (see the module docstring);
    (0, 0, W, H) when none is found."""
    grey = _grey(rgb)
    h, w = grey.shape
    side = min(h, w)
    signal = (cv2.medianBlur(grey, 5) > DARK).astype(np.uint8)
    k = _odd(OPEN_SIDE * side)
    signal = cv2.morphologyEx(signal, cv2.MORPH_OPEN, _ellipse(k))
    signal = cv2.morphologyEx(signal, cv2.MORPH_CLOSE, _ellipse(_odd(CLOSE_SIDE * side)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(signal, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if n < 2 or areas.max() < MIN_REGION * h * w:
        return 0, 0, w, h
    keep = 1 + np.flatnonzero(areas >= max(0.01 * h * w, SPLIT_SHARE * areas.max()))
    x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    x1, y1 = x + stats[keep, cv2.CC_STAT_WIDTH], y + stats[keep, cv2.CC_STAT_HEIGHT]
    m = k // 2 + 1  # the opening rounds the scan's corners (a sector's apex and tips) by up to this
    return max(0, int(x.min()) - m), max(0, int(y.min()) - m), min(w, int(x1.max()) + m), min(h, int(y1.max()) + m)


def _marks_among(candidates: np.ndarray, seeds: np.ndarray, max_area: float, streaks: bool, side: int) -> np.ndarray:
    """The components of a bool mask that hold a seed pixel, are no larger than `max_area` pixels and, with
    `streaks`, are not long straight streaks (see STREAK_LENGTH / STREAK_ASPECT)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
    seeded = np.zeros(n, bool)
    seeded[labels[seeds & candidates]] = True
    keep = seeded & (stats[:, cv2.CC_STAT_AREA] <= max_area)
    keep[0] = False
    if streaks:
        long_boxes = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= STREAK_LENGTH * side
        for i in np.flatnonzero(keep & long_boxes):
            x, y, bw, bh = stats[i, :4]
            ys, xs = np.nonzero(labels[y : y + bh, x : x + bw] == i)
            (_, _), (rw, rh), _ = cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32))
            long, short = max(rw, rh) + 1, min(rw, rh) + 1
            keep[i] = not (long / short >= STREAK_ASPECT and long >= STREAK_LENGTH * side)
    return keep[labels]


def mark_mask(rgb: np.ndarray) -> np.ndarray:
    """Burned-in marks of an (H, W, 3) uint8 frame as bool (H, W): thin bright glyphs and coloured marks, dilated
    by one pixel to take their anti-aliased (or JPEG) edges (see the module docstring).

    Bright marks are found with hysteresis: a glyph needs one pixel of strong contrast (`MARK_CONTRAST` on grey >=
    `MARK_GREY`) and is then taken whole down to half that contrast on grey >= `MARK_GREY` - 40 (its arms over
    bright tissue, its soft edges); where that whole touches a bright tissue streak (and is refused with it), the
    strong pixels alone are taken. Each mark then grows by up to `GROW` pixels into bright neighbours."""
    grey = _grey(rgb)
    h, w = grey.shape
    side = min(h, w)
    tophat = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _ellipse(_odd(MARK_SIDE * side, least=5)))
    strong = (tophat >= MARK_CONTRAST) & (grey >= MARK_GREY)
    weak = (tophat >= MARK_CONTRAST // 2) & (grey >= MARK_GREY - 40)
    marks = _marks_among(weak, strong, MARK_AREA * h * w, streaks=True, side=side)
    marks |= _marks_among(strong, strong, MARK_AREA * h * w, streaks=True, side=side)  # a glyph touching tissue
    if rgb.ndim == 3:
        coloured = _chroma(rgb) >= MARK_CHROMA
        marks |= _marks_among(coloured, coloured, COLOUR_AREA * h * w, streaks=False, side=side)
    marks = marks.astype(np.uint8)
    bright = (grey >= MARK_GREY).astype(np.uint8)
    for _ in range(GROW):  # the glyph's pixels over bright tissue, whose contrast is too low to be found
        marks |= cv2.dilate(marks, np.ones((3, 3), np.uint8)) & bright
    return cv2.dilate(marks, np.ones((3, 3), np.uint8)).astype(bool)


@dataclass(frozen=True)
class InterfaceCut:
    """What an interface option removes from one frame.

    Attributes:
        box: the kept area (x0, y0, x1, y1), end-exclusive, in the frame's pixels.
        size: the frame's (height, width).
        marks: bool (y1 - y0, x1 - x0) of the pixels inpainted inside the box, or None ("none", "crop").
    """

    box: tuple[int, int, int, int]
    size: tuple[int, int]
    marks: np.ndarray | None = None

    @property
    def kept_fraction(self) -> float:
        """The box's share of the frame."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0) / (self.size[0] * self.size[1])

    @property
    def masked_fraction(self) -> float:
        """The share of the box inpainted as marks."""
        return float(self.marks.mean()) if self.marks is not None and self.marks.size else 0.0

    def relative_box(self) -> tuple[float, float, float, float]:
        """The box as fractions of the frame's width and height (to cut a mask of the same frame at another size)."""
        x0, y0, x1, y1 = self.box
        h, w = self.size
        return x0 / w, y0 / h, x1 / w, y1 / h


def find_interface(rgb: np.ndarray, interface: str) -> InterfaceCut:
    """What `interface` removes from an (H, W, 3) uint8 frame (nothing for "none")."""
    h, w = rgb.shape[:2]
    if check_interface(interface) == "none":
        return InterfaceCut((0, 0, w, h), (h, w))
    x0, y0, x1, y1 = box = imaging_box(rgb)
    marks = mark_mask(rgb[y0:y1, x0:x1]) if interface == "crop+marks" else None
    return InterfaceCut(box, (h, w), marks)


def apply_cut(rgb: np.ndarray, cut: InterfaceCut) -> np.ndarray:
    """The frame cropped to the cut's box, its marks inpainted (Telea, radius ~0.6 % of the shorter side)."""
    x0, y0, x1, y1 = cut.box
    out = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    if cut.marks is not None and cut.marks.any():
        radius = max(2, int(round(0.006 * min(out.shape[:2]))))
        out = cv2.inpaint(out, cut.marks.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return out


def remove_interface(rgb: np.ndarray, interface: str) -> np.ndarray:
    """An (H, W, 3) uint8 frame with `interface` applied; the same array for "none"."""
    if check_interface(interface) == "none":
        return rgb
    return apply_cut(rgb, find_interface(rgb, interface))


def crop_relative(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """A mask (H, W) of a frame cut by a box given as fractions of that frame (`InterfaceCut.relative_box`)."""
    h, w = mask.shape[:2]
    x0, y0 = int(round(box[0] * w)), int(round(box[1] * h))
    x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
    return mask[y0:y1, x0:x1]


def before_after(rgb: np.ndarray, cut: InterfaceCut, height: int = 200) -> np.ndarray:
    """A thumbnail: the frame with the box (green) and marks (red) drawn, beside what the model gets."""
    shown = rgb.copy()
    x0, y0, x1, y1 = cut.box
    if cut.marks is not None:
        shown[y0:y1, x0:x1][cut.marks] = (255, 0, 0)
    t = max(1, min(rgb.shape[:2]) // 150)
    cv2.rectangle(shown, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), t)
    after = apply_cut(rgb, cut)

    def fit(im: np.ndarray) -> np.ndarray:
        return cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 6, 3), 255, np.uint8)
    return np.concatenate([fit(shown), gap, fit(after)], axis=1)
