"""Drawing what a model found on an image (RGB uint8 arrays, copies): lesion masks and their true outlines, class maps,
boxes with class and score, and the decision written in the corner. Used by predictions, reports and explanations.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

TRUE_COLOUR = (40, 220, 40)  # RGB: ground truth contour / boxes
PRED_COLOUR = (255, 40, 40)  # RGB: predicted contour
BOX_COLOURS = [(255, 60, 60), (60, 160, 255), (255, 200, 40), (180, 90, 255), (40, 220, 120)]  # RGB per class
BOX_COLOUR_NAMES = ["red", "blue", "yellow", "purple", "teal"]  # the same, in words (figure titles)
LEGEND_MIN_SIDE = 200  # a legend written on a smaller image would cover it (and be cut off): said in a title instead


def mask_overlay(image: np.ndarray, pred: np.ndarray | None, true: np.ndarray | None = None, alpha=0.3) -> np.ndarray:
    """RGB image with the predicted lesion tinted and outlined in red and the true lesion outlined in green."""
    out = image.copy()
    for mask, colour, fill in ((true, TRUE_COLOUR, False), (pred, PRED_COLOUR, True)):
        if mask is None:
            continue
        m = mask.astype(np.uint8)
        if fill:  # blend only the lesion pixels (a full-frame float blend costs more than the model on video)
            sel = m > 0
            out[sel] = (out[sel] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, max(1, round(max(out.shape[:2]) / 250)))
    return out


def class_overlay(
    image: np.ndarray, classes: np.ndarray, true: np.ndarray | None = None, names=None, alpha=0.3
) -> np.ndarray:
    """RGB image with each lesion class of a class map (uint8 (H, W), 0 none, c for class c - 1) tinted and outlined
    in its colour (`BOX_COLOURS`, as boxes of that class), the true lesion (any class) outlined in green, and with
    `names` a legend of the classes shown, each in its colour, at the bottom left (on images of at least
    `LEGEND_MIN_SIDE` pixels a side: `colour_legend` words it for smaller ones)."""
    out = mask_overlay(image, None, None if true is None else np.asarray(true) > 0)
    shown = [int(c) for c in np.unique(classes) if c]
    t = max(1, round(max(out.shape[:2]) / 250))
    for c in shown:
        colour, m = BOX_COLOURS[(c - 1) % len(BOX_COLOURS)], (classes == c).astype(np.uint8)
        out[m > 0] = (out[m > 0] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, t)
    line = max(14, out.shape[0] // 20)
    for j, c in enumerate(shown[::-1] if names and min(out.shape[:2]) >= LEGEND_MIN_SIDE else []):
        y = out.shape[0] - 6 - j * line
        colour = BOX_COLOURS[(c - 1) % len(BOX_COLOURS)]
        cv2.putText(out, names[c - 1], (6, y), cv2.FONT_HERSHEY_SIMPLEX, line / 30, colour, t, cv2.LINE_AA)
    return out


def colour_legend(names: Sequence[str]) -> str:
    """The classes' colours in words, as `class_overlay` and `draw_boxes` draw them: "benign red, malignant blue"."""
    return ", ".join(f"{n} {BOX_COLOUR_NAMES[i % len(BOX_COLOUR_NAMES)]}" for i, n in enumerate(names))


def draw_boxes(
    rgb: np.ndarray,
    dets: np.ndarray,
    labels: Sequence[str],
    threshold: float,
    truths: np.ndarray | None = None,
) -> np.ndarray:
    """RGB image with predicted boxes (coloured per class, with class and score) at or above `threshold`, and
    true boxes in green; boxes in the image's own pixel coordinates."""
    out = rgb.copy()
    t = max(1, round(max(out.shape[:2]) / 300))
    for b in truths if truths is not None else []:
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), TRUE_COLOUR, t)
    for d in dets:
        if d[4] < threshold:
            continue
        colour = BOX_COLOURS[int(d[5]) % len(BOX_COLOURS)]
        cv2.rectangle(out, (int(d[0]), int(d[1])), (int(d[2]), int(d[3])), colour, t + 1)
        text = f"{labels[int(d[5])]} {d[4]:.2f}"
        cv2.putText(out, text, (int(d[0]) + 2, max(12, int(d[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t)
    return out


MIN_TEXT_SCALE = 0.35  # OpenCV's font scale below which a caption is not legible: wrapped onto more lines instead


MAX_BAND_LINES = 12  # a caption longer than this is cut, its last line ending in "..."


def text_band(text: str, width: int, line: int) -> np.ndarray:
    """`text` in white on a black band `width` px wide, wrapped at spaces onto as many lines of `line` px as it needs
    (font scale line / 32, at least MIN_TEXT_SCALE; a word wider than the band is broken where it reaches the edge;
    at most MAX_BAND_LINES lines, the last ending in "..." where text is left out), (n * line, width, 3) uint8."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(MIN_TEXT_SCALE, line / 32)
    line, room = max(line, round(32 * scale)), max(width - 6, 1)

    def fits(t: str) -> bool:
        return cv2.getTextSize(t, font, scale, 1)[0][0] <= room

    def pieces(word: str) -> list[str]:  # a word wider than the band, in parts that fit (one character at least)
        out, part = [], ""
        for ch in word:
            if part and not fits(part + ch):
                out.append(part)
                part = ""
            part += ch
        return [*out, part] if part else out

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines += [word] if fits(word) else pieces(word)
    if len(lines) > MAX_BAND_LINES:
        lines = [*lines[: MAX_BAND_LINES - 1], lines[MAX_BAND_LINES - 1][:-3] + "..."]  # OpenCV's font: ASCII
    band = np.zeros((line * max(1, len(lines)), width, 3), np.uint8)
    for i, t in enumerate(lines):
        cv2.putText(band, t, (3, (i + 1) * line - max(3, line // 6)), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def draw_label(rgb: np.ndarray, label: str, p: float, note: str = "", above: bool = False) -> np.ndarray:
    """The decision and its score (and `note`: what else decides what is drawn) written on a black band at the top
    of the image (a copy; RGB or BGR alike), or, with `above`, on a band above it (wrapped onto more lines where it
    is long: (H + band, W, 3)), so that nothing of the image is hidden."""
    h, w = rgb.shape[:2]
    text = f"{label} {p:.2f}" + (f" | {note}" if note else "")
    if above:
        return np.concatenate([text_band(text, w, max(18, h // 14)), rgb])
    out = rgb.copy()
    bar = max(18, h // 14)
    scale = bar / 32
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (w - 12) / max(width, 1))  # the whole text on the band, smaller where it is long
    cv2.rectangle(out, (0, 0), (w, bar), (0, 0, 0), -1)
    cv2.putText(out, text, (6, bar - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
