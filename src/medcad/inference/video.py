"""Frame-by-frame prediction on a video: decode on a separate thread, small batches, temporal smoothing,
annotated output video and a per-frame CSV. `realtime` drops frames rather than fall behind."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medcad.data.manifest import atomic_write_text
from medcad.data.video import open_video
from medcad.inference.prediction import BACKGROUND, LESION, NO_LESION, Prediction
from medcad.inference.predictor import Predictor


def _decoder(path: Path, q: queue.Queue, stop: threading.Event, realtime: bool, fps: float) -> None:
    cap, _, _ = open_video(path)
    i, t0 = 0, time.perf_counter()
    try:
        while not stop.is_set():
            ok, bgr = cap.read()
            if not ok:
                break
            if (
                realtime
            ):  # a live source delivers frames at `fps`: pace reading, drop what the model cannot keep up with
                wait = t0 + i / fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if q.full():
                    try:
                        q.get_nowait()  # drop the oldest pending frame
                    except queue.Empty:
                        pass
            q.put((i, bgr))
            i += 1
    finally:
        cap.release()
        q.put(None)


def predict_video(
    predictor: Predictor,
    video: str | Path,
    out_dir: str | Path,
    *,
    batch: int = 8,
    smooth: int = 5,
    realtime: bool = False,
    write_video: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Predict every frame (or, with `realtime`, every frame the model keeps up with) of a video.

    Writes `<stem>_annotated.mp4` and `<stem>_frames.csv` into `out_dir`: one `Prediction.row` per frame (the
    frame decision, probabilities, lesion fraction or boxes, as the task has) plus the decision smoothed over
    `smooth` frames (mean class probabilities; mean top-box score; mean lesion fraction), drawn on the frame.
    Returns a summary with frames/s end to end and per-frame latency. `progress(frames done, frames in video)`
    is called after each batch.
    """
    video = Path(video)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cap, fps, n_frames = open_video(video)
    cap.release()
    q: queue.Queue = queue.Queue(maxsize=batch * 2)
    stop = threading.Event()
    thread = threading.Thread(target=_decoder, args=(video, q, stop, realtime, fps), daemon=True)
    writer = None
    rows, latencies = [], []
    window: deque[np.ndarray] = deque(maxlen=max(1, smooth))
    t0 = time.perf_counter()
    thread.start()
    done = False
    try:
        while not done:
            items = []
            while len(items) < batch:
                item = q.get()
                if item is None:
                    done = True
                    break
                items.append(item)
                if realtime and q.empty():
                    break  # do not wait for a full batch on a live source
            if not items:
                break
            t1 = time.perf_counter()
            rgbs = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for _, bgr in items]
            preds = predictor.predict(rgbs, [f"{video.name}#{i}" for i, _ in items], batch)
            latencies.append((time.perf_counter() - t1) / len(items))
            for (i, bgr), rgb, pred in zip(items, rgbs, preds, strict=True):
                window.append(_evidence(pred))
                smoothed = np.mean(window, axis=0)
                label, score = _smoothed_decision(pred, smoothed)
                record = {"frame": i, "time_s": i / fps, **pred.row(), "smoothed": label, "smoothed_score": score}
                shown = cv2.cvtColor(pred.draw(rgb, caption=(label, score)), cv2.COLOR_RGB2BGR)
                rows.append(record)
                if write_video:
                    if writer is None:
                        h, w = bgr.shape[:2]
                        writer = cv2.VideoWriter(
                            str(out_dir / f"{video.stem}_annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
                        )
                    writer.write(shown)
            if progress is not None:
                progress(len(rows), n_frames)
    finally:
        stop.set()
        if writer is not None:
            writer.release()
        thread.join(timeout=5)
    elapsed = time.perf_counter() - t0
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / f"{video.stem}_frames.csv", table.to_csv(index=False))
    return {
        "video": str(video),
        "frames_in_video": n_frames,
        "frames_predicted": len(rows),
        "frames_dropped": max(0, n_frames - len(rows)) if realtime else 0,
        "seconds": elapsed,
        "frames_per_s": len(rows) / elapsed if elapsed > 0 else 0.0,
        "source_fps": fps,
        "latency_ms_per_frame": 1000 * float(np.median(latencies)) if latencies else None,
        "csv": str(out_dir / f"{video.stem}_frames.csv"),
        "annotated": str(out_dir / f"{video.stem}_annotated.mp4") if write_video else None,
    }


def _evidence(pred: Prediction) -> np.ndarray:
    """What is averaged over frames: class probabilities, else the top box score, else the lesion fraction."""
    if pred.probabilities is not None:
        return pred.probabilities
    if pred.boxes is not None:
        return np.array([pred.score])
    return np.array([pred.lesion_fraction])


def _smoothed_decision(pred: Prediction, smoothed: np.ndarray) -> tuple[str, float]:
    """The frame decision from the smoothed evidence (the class of a detector's current top box)."""
    if pred.probabilities is not None:
        return pred.labels[int(smoothed.argmax())], float(smoothed.max())
    if pred.boxes is not None:
        top = pred.labels[int(pred.boxes[0, 5])] if len(pred.boxes) else BACKGROUND
        return (top if smoothed[0] >= pred.threshold else BACKGROUND), float(smoothed[0])
    return (LESION if smoothed[0] > 0 else NO_LESION), float(smoothed[0])
