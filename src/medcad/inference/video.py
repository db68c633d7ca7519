"""Frame-by-frame prediction on a video: decode on a separate thread, small batches, temporal smoothing,
annotated output video and a per-frame CSV. `realtime` drops frames rather than fall behind."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medcad.data.manifest import atomic_write_text
from medcad.data.video import open_video
from medcad.inference.detections import DetectionPredictor, draw_boxes
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


def _draw(bgr: np.ndarray, label: str, p: float) -> np.ndarray:
    h, w = bgr.shape[:2]
    bar = max(18, h // 14)
    cv2.rectangle(bgr, (0, 0), (w, bar), (0, 0, 0), -1)
    cv2.putText(
        bgr, f"{label} {p:.2f}", (6, bar - 5), cv2.FONT_HERSHEY_SIMPLEX, bar / 32, (255, 255, 255), 1, cv2.LINE_AA
    )
    return bgr


def predict_video(
    predictor: Predictor | DetectionPredictor,
    video: str | Path,
    out_dir: str | Path,
    *,
    batch: int = 8,
    smooth: int = 5,
    realtime: bool = False,
    write_video: bool = True,
) -> dict:
    """Predict every frame (or, with `realtime`, every frame the model keeps up with) of a video.

    Writes `<stem>_annotated.mp4` and `<stem>_frames.csv` into `out_dir`: for a classifier the frame's label,
    the label smoothed over `smooth` frames and the probabilities; for a detector the frame decision (top
    detection's class or background), its score (also smoothed) and the number of boxes, boxes drawn.
    Returns a summary with frames/s end to end and per-frame latency.
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
    labels = predictor.labels
    detect = isinstance(predictor, DetectionPredictor)
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
            x = np.stack([predictor.prepare(rgb) for rgb in rgbs])
            if detect:
                outputs = predictor.predict_arrays(x)
            else:
                outputs = predictor.predict_arrays(x, batch)
            latencies.append((time.perf_counter() - t1) / len(items))
            for (i, bgr), rgb, p in zip(items, rgbs, outputs, strict=True):
                record: dict = {"frame": i, "time_s": i / fps}
                if detect:
                    h, w = bgr.shape[:2]
                    dets = predictor.to_image(p, w, h)
                    decision, score = predictor.frame_decision(dets)
                    window.append(np.array([score]))
                    record |= {
                        "label": decision,
                        "top_score": score,
                        "smoothed_top_score": float(np.mean(window)),
                        "n_boxes": int((dets[:, 4] >= predictor.threshold).sum()),
                    }
                    shown = cv2.cvtColor(draw_boxes(rgb, dets, labels, predictor.threshold), cv2.COLOR_RGB2BGR)
                    shown = _draw(shown, decision, score)
                else:
                    window.append(p)
                    sm = np.mean(window, axis=0)
                    k = int(sm.argmax())
                    record |= {
                        "label": labels[int(p.argmax())],
                        "smoothed": labels[k],
                        **{f"p_{lab}": float(v) for lab, v in zip(labels, p, strict=True)},
                    }
                    shown = _draw(bgr, labels[k], float(sm[k]))
                rows.append(record)
                if write_video:
                    if writer is None:
                        h, w = bgr.shape[:2]
                        writer = cv2.VideoWriter(
                            str(out_dir / f"{video.stem}_annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
                        )
                    writer.write(shown)
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
