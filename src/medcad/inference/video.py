"""Frame-by-frame prediction on a video: decode (PyAV, `medcad.data.video.VideoReader`) on a separate thread, small
batches, temporal smoothing, annotated output video and a per-frame CSV. `realtime` skips frames rather than fall
behind."""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from medcad.atomic import atomic_write_text
from medcad.data.frames import DecodeReport
from medcad.data.video import Frame, VideoReader, open_video
from medcad.inference.predictor import Predictor

if TYPE_CHECKING:
    from medcad.data.cine import DicomCine


def _decoder(
    reader: VideoReader | DicomCine, q: queue.Queue, stop: threading.Event, realtime: bool, state: dict
) -> None:
    """Put `Frame`s on `q`, then None; keeps an exception in `state["error"]`, the indices of frames skipped in
    `state["skipped"]`."""
    t0 = first = None
    try:
        for frame in reader.frames():
            if stop.is_set():
                break
            if realtime:  # a live source delivers frames at their times: pace reading, skip what the model misses
                if t0 is None:
                    t0, first = time.perf_counter(), frame.time_s
                wait = t0 + (frame.time_s - first) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if q.full():
                    try:
                        state["skipped"].append(q.get_nowait().index)  # skip the oldest pending frame
                    except queue.Empty:
                        pass
            q.put(frame)
    except BaseException as e:  # re-raised by predict_video, so a decoding failure never ends the video silently
        state["error"] = e
    finally:
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
    name: str | None = None,
) -> dict:
    """Predict every frame (or, with `realtime`, every frame the model keeps up with) of a video.

    Writes `<stem>_annotated.mp4` and `<stem>_frames.csv` into `out_dir` (`name`, else the video's stem; where the
    prediction fails or is interrupted, what was done as `<stem>_annotated.partial.mp4` and
    `<stem>_frames.partial.csv`): one `Prediction.row` per frame (its index in the video, presentation time `time_s`,
    the frame decision, probabilities, lesion fraction or boxes, as the task has) plus the decision smoothed over
    `smooth` frames (mean class probabilities; mean top-box score; mean lesion fraction), drawn on the frame. Frames
    that cannot be decoded are skipped and listed.

    Returns:
        A summary: frames predicted; `frames_dropped` and `dropped_frames` ({frame, time_s, reason}) for frames that
        could not be decoded; `frames_skipped` by `realtime` and their indices (`skipped_frames`);
        `truncated`/`truncation`; `rotation` applied; frames/s end to end and per-frame latency; `smooth`, the
        frames the smoothed decision averages over; `rows`, the frames' rows as the CSV has them (before CSV
        reading could take a class named "None" for a missing value or "0" for a number).
        `progress(frames done, frames in video)` is called after each batch.

    Raises:
        DataError: naming the video, when it cannot be opened or none of its frames decodes.
    """
    video = Path(video)
    out_dir, stem = Path(out_dir), name or Path(video).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = open_video(video)
    fps, n_frames = reader.fps, reader.estimated_frames
    q: queue.Queue = queue.Queue(maxsize=batch * 2)
    stop = threading.Event()
    state: dict = {"skipped": [], "error": None}
    thread = threading.Thread(target=_decoder, args=(reader, q, stop, realtime, state), daemon=True)
    partial = {"video": out_dir / f"{stem}_annotated.partial.mp4", "csv": out_dir / f"{stem}_frames.partial.csv"}
    for left in partial.values():  # an earlier, interrupted run's: not to be taken for this one's
        left.unlink(missing_ok=True)
    writer = _AnnotatedVideo(partial["video"], fps, reader.report) if write_video else None
    rows, latencies = [], []
    window: deque[np.ndarray] = deque(maxlen=max(1, smooth))
    means = ""  # what a smoothed score is where not the label's probability (the decider's, one per predictor)
    t0 = time.perf_counter()
    thread.start()
    done = False
    try:
        while not done:
            items, done = _next_batch(q, batch, realtime)
            if not items:
                break
            t1 = time.perf_counter()
            preds = predictor.predict([f.rgb for f in items], [f"{video.name}#{f.index}" for f in items], batch)
            latencies.append((time.perf_counter() - t1) / len(items))
            means = preds[0].decider.evidence_means if preds else means
            for f, pred in zip(items, preds, strict=True):
                window.append(pred.decider.evidence())  # class probabilities, top box score or lesion fraction
                label, score = pred.decider.smoothed(np.mean(window, axis=0))
                record = {
                    "frame": f.index,
                    "time_s": f.time_s,
                    **pred.row(),
                    "smoothed": label,
                    "smoothed_score": score,
                }
                rows.append(record)
                if writer is not None:
                    mean = f"{len(window)}-frame mean" if len(window) > 1 else ""
                    said = ", ".join(x for x in (means, mean) if x)  # the area, not its peak
                    writer.write(pred.draw(f.rgb, caption=(label, score), note=said, above=False), f.time_s)
            if progress is not None:
                progress(len(rows), n_frames)
    except BaseException:  # what was predicted is kept, named as partial (an interruption, a failing model)
        _keep_partial(rows, partial["csv"])
        raise
    finally:
        stop.set()
        if writer is not None:
            writer.close()
        while thread.is_alive():  # unblock a decoder waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
        reader.close()
    if state["error"] is not None:
        _keep_partial(rows, partial["csv"])
        raise state["error"]
    report = reader.report
    if not rows:
        raise reader.nothing_decoded()
    elapsed = time.perf_counter() - t0
    atomic_write_text(out_dir / f"{stem}_frames.csv", pd.DataFrame(rows).to_csv(index=False))
    if writer is not None:
        os.replace(partial["video"], out_dir / f"{stem}_annotated.mp4")  # whole now
    decode = report.as_dict()  # what its decoding found (frames_decoded: frames_in_video - frames_dropped)
    return {
        "video": str(video),
        "frames_in_video": report.frames_decoded + report.frames_dropped,
        "frames_predicted": len(rows),
        "frames_skipped": len(state["skipped"]),
        "skipped_frames": state["skipped"],
        **{k: v for k, v in decode.items() if k != "frames_decoded"},
        "seconds": elapsed,
        "frames_per_s": len(rows) / elapsed if elapsed > 0 else 0.0,
        "source_fps": fps,
        "smooth": max(1, smooth),
        # what smoothed_score is where it is not the label's probability ("lesion area": a mask's mean lesion share,
        # while a frame's own score is its top lesion probability)
        "smoothed_score_means": means,
        "latency_ms_per_frame": 1000 * float(np.median(latencies)) if latencies else None,
        "csv": str(out_dir / f"{stem}_frames.csv"),
        "rows": rows,
        "annotated": str(out_dir / f"{stem}_annotated.mp4") if write_video else None,
    }


def _keep_partial(rows: list[dict], path: Path) -> None:
    """The frames predicted before a video's prediction failed, written to `path` (`<stem>_frames.partial.csv`,
    beside `<stem>_annotated.partial.mp4`): the failure loses none of them, and no file is named as if whole."""
    if rows:
        atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


def _next_batch(q: queue.Queue, batch: int, realtime: bool) -> tuple[list[Frame], bool]:
    """Up to `batch` decoded frames from the decoder's queue (a live source: what is there, without waiting for a
    full batch), and whether the video ended."""
    items: list[Frame] = []
    while len(items) < batch:
        item = q.get()
        if item is None:
            return items, True
        items.append(item)
        if realtime and q.empty():
            break
    return items, False


@functools.cache
def annotated_codec() -> str:
    """The encoder of annotated videos: H.264 (libx264, in PyAV's wheels), which browsers, PowerPoint and phones play;
    MPEG-4 Part 2 where this FFmpeg has no libx264 (VLC and desktop players only)."""
    import av

    try:
        av.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


class _AnnotatedVideo:
    """An MP4 (H.264 where PyAV has libx264, see `annotated_codec`; its index first, so that a browser starts playing
    before the whole file has arrived) of drawn RGB frames, each shown at its source time, so that a
    variable-frame-rate recording keeps its timing (at a constant `fps`, 2.3 s of source played in 0.8 s); opened
    at the first frame's size, an odd side padded by one pixel (the encoder needs even sides; a 721x577 input had
    been cropped to 720x576), with the source's sample aspect ratio (`report`'s, of the upright frames), so that it
    is shown as the source is (an SD recording's 720x576 frames at 4:3, not 5:4)."""

    def __init__(self, path: Path, fps: float, report: DecodeReport | None = None) -> None:
        self.path, self.fps, self.out, self.stream, self.last = path, fps, None, None, -1
        self.report = report

    def write(self, rgb: np.ndarray, time_s: float | None = None) -> None:
        import av

        h, w = rgb.shape[:2]
        if self.out is None:
            codec = annotated_codec()
            self.out = av.open(str(self.path), "w", options={"movflags": "+faststart"})
            # x264: visually lossless for drawn overlays (crf 20) at a preset that keeps pace with prediction
            x264 = {"preset": "veryfast", "crf": "20"} if codec == "libx264" else None
            self.stream = self.out.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001), options=x264)
            self.stream.width, self.stream.height = w + w % 2, h + h % 2
            self.stream.pix_fmt = "yuv420p"
            if codec == "mpeg4":
                self.stream.bit_rate = max(2_000_000, int(w * h * self.fps * 0.2))
            self.stream.time_base = self.stream.codec_context.time_base = Fraction(1, 1000)
            # BT.709 limited range, converted so and tagged so (untagged, the BT.601 conversion had been shown with
            # HD's BT.709 by players that assume it for untagged HD: colours off by 3-5 levels of 255)
            cc = self.stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 1  # ITU-R BT.709
            cc.color_range = 1  # limited ("tv", MPEG)
            if self.report is not None and (sar := self.report.upright_aspect()):
                cc.sample_aspect_ratio = sar
        if w % 2 or h % 2:
            rgb = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
        pts = round(time_s * 1000) if time_s is not None else self.last + round(1000 / self.fps)
        self.last = frame.pts = max(pts, self.last + 1)
        frame.time_base = Fraction(1, 1000)
        self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        if self.out is not None:
            self.out.mux(self.stream.encode())
            self.out.close()
