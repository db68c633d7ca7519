"""Lesion boxes for new images and video frames from a detection run: the frame decision of the colonoscopy study
(the top detection's class, or "background" when none passes the score threshold) and boxes drawn on the image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from medcad.config import TrainConfig
from medcad.data.datasets import preprocess
from medcad.data.manifest import atomic_write_text
from medcad.engine.detect import predict_detections
from medcad.inference.predictor import image_batches, load_models

BACKGROUND = "background"
COLOURS = [(255, 60, 60), (60, 160, 255), (255, 200, 40), (180, 90, 255), (40, 220, 120)]  # RGB per class


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
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (40, 220, 40), t)
    for d in dets:
        if d[4] < threshold:
            continue
        colour = COLOURS[int(d[5]) % len(COLOURS)]
        cv2.rectangle(out, (int(d[0]), int(d[1])), (int(d[2]), int(d[3])), colour, t + 1)
        text = f"{labels[int(d[5])]} {d[4]:.2f}"
        cv2.putText(out, text, (int(d[0]) + 2, max(12, int(d[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t)
    return out


class DetectionPredictor:
    """Detections from one fold's detector of a run (default: the fold with the best validation AP50)."""

    def __init__(self, run: str | Path, fold: int | None = None, threshold: float = 0.5, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        run = Path(run)
        if fold is None and run.is_dir():
            fold = _best_fold(run)
        files, loaded = load_models(run, fold, "detect")
        (self.model, meta), self.file = loaded[0], files[0]
        self.labels: list[str] = meta["labels"]
        self.config = TrainConfig.from_dict(meta["config"])
        self.threshold = threshold

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.config.image_size, self.config.bilateral)

    def predict_arrays(self, images: np.ndarray) -> list[np.ndarray]:
        """Per prepared image (S, S, 3) its detections (m, 6) [x0, y0, x1, y1, score, class] in S x S pixels."""
        return predict_detections(self.model, images, np.arange(len(images)))

    def frame_decision(self, dets: np.ndarray) -> tuple[str, float]:
        """The top detection's class and score, or ("background", top score) when none passes the threshold."""
        if len(dets) == 0:
            return BACKGROUND, 0.0
        top = dets[dets[:, 4].argmax()]
        return (self.labels[int(top[5])] if top[4] >= self.threshold else BACKGROUND), float(top[4])

    def to_image(self, dets: np.ndarray, width: int, height: int) -> np.ndarray:
        """Detections scaled from the S x S model input back to an image of (width, height)."""
        s = self.config.image_size
        out = dets.copy()
        out[:, [0, 2]] *= width / s
        out[:, [1, 3]] *= height / s
        return out


def _best_fold(run: Path) -> int | None:
    import json

    scores = {}
    for p in run.glob("fold_*/result.json"):
        r = json.loads(p.read_text())
        if r.get("val_ap50") is not None:
            scores[int(r["fold"])] = r["val_ap50"]
    return max(scores, key=scores.get) if scores else None


def predict_detection_files(
    run: str | Path,
    inputs: Sequence[Path],
    out: str | Path,
    *,
    fold: int | None = None,
    threshold: float = 0.5,
    batch: int = 16,
) -> pd.DataFrame:
    """Write <stem>_boxes.png per image into `out` and predictions.csv (frame decision, top score, boxes in the
    image's pixels at or above the threshold)."""
    predictor = DetectionPredictor(run, fold, threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for paths, originals, prepared in image_batches(inputs, predictor.prepare, batch):
        dets = predictor.predict_arrays(prepared)
        for path, image, d in zip(paths, originals, dets, strict=True):
            h, w = image.shape[:2]
            d = predictor.to_image(d, w, h)
            decision, score = predictor.frame_decision(d)
            shown = draw_boxes(image, d, predictor.labels, threshold)
            cv2.imwrite(str(out / f"{Path(path).stem}_boxes.png"), cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
            kept = d[d[:, 4] >= threshold]
            records.append(
                {
                    "image": str(path),
                    "frame": decision,
                    "top_score": score,
                    "n_boxes": len(kept),
                    "boxes": [[*np.round(b[:5], 1).tolist(), predictor.labels[int(b[5])]] for b in kept],
                }
            )
    table = pd.DataFrame(records)
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False))
    return table
