"""Video clips and DICOM cine loops for the server as jobs: checked on arrival, predicted frame by frame on one
background thread (`medcad.inference.video.predict_video`), polled for progress, their files deleted as soon as they
are done."""

from __future__ import annotations

import json
import math
import shutil
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from medcad.data.video import probe_video
from medcad.errors import DataError
from medcad.inference.batcher import QueueFull
from medcad.inference.predictor import Predictor
from medcad.inference.uploads import Limits, UploadError, sniff, sniff_video
from medcad.inference.video import predict_video

CLIPS = "MP4, MOV, AVI, MKV, WebM, MPEG-TS, MPEG-PS, Ogg, FLV"  # what sniff_video recognises


class VideoJobs:
    """At most `max_jobs` clips waiting or running (one at a time); the states of the last `keep` are kept.

    Args:
        predictor: the server's predictor.
        workdir: the server's temporary folder (each job gets a subfolder, removed when the job ends).
        limits: upload limits (`max_video_frames`).
        max_jobs: clips waiting or running; one more raises `QueueFull`.
        keep: finished jobs whose results stay available.
    """

    def __init__(self, predictor: Predictor, workdir: Path, limits: Limits, max_jobs: int = 2, keep: int = 16):
        self.predictor, self.workdir, self.limits = predictor, workdir, limits
        self.max_jobs, self.keep = max(1, max_jobs), keep
        self.states: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medcad-video")

    def active(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return sum(s["status"] in ("queued", "running") for s in self.states.values())

    def get(self, job: str) -> dict | None:
        """A copy of a job's state, or None."""
        with self._lock:
            state = self.states.get(job)
            return None if state is None else dict(state)

    def submit(self, data: bytes) -> str:
        """Check a clip and queue it; returns the job id.

        Raises:
            UploadError: 400 empty, 415 not a video, 413 too many frames, 422 undecodable.
            QueueFull: `max_jobs` clips are waiting or running.
        """
        if not data:
            raise UploadError(400, f"the upload is empty (0 bytes); send a video clip ({CLIPS})")
        kind = sniff(data)
        if not sniff_video(data) and kind != "dicom":  # a multi-frame DICOM is a cine: predicted as a clip
            hint = " (it is an image: POST it to /predict)" if kind else ""
            raise UploadError(415, f"the upload is not a video clip ({CLIPS}) or a DICOM cine by its content{hint}")
        if self.active() >= self.max_jobs:
            raise QueueFull(max(5, math.ceil(30 * self.active())))
        job = uuid.uuid4().hex[:16]
        folder = self.workdir / f"job-{job}"
        folder.mkdir()
        clip = folder / ("clip.dcm" if kind == "dicom" else "clip.video")
        clip.write_bytes(data)
        try:
            frames = probe_video(clip).estimated_frames
        except DataError as e:
            shutil.rmtree(folder, ignore_errors=True)
            hint = " (POST a single image to /predict)" if kind == "dicom" and "single-frame" in e.problem else ""
            raise UploadError(422, f"the upload cannot be decoded: {e.problem}{hint}") from e
        if frames > self.limits.max_video_frames:
            shutil.rmtree(folder, ignore_errors=True)
            raise UploadError(
                413, f"the clip has {frames} frames, more than this server's limit of {self.limits.max_video_frames}"
            )
        with self._lock:
            self.states[job] = {"job": job, "status": "queued", "frames_done": 0, "frames_total": frames}
            while len(self.states) > self.keep + self.max_jobs:
                self.states.popitem(last=False)
        self._pool.submit(self._run, job, clip)
        return job

    def _update(self, job: str, **fields) -> None:
        with self._lock:
            if job in self.states:
                self.states[job].update(fields)

    def _run(self, job: str, clip: Path) -> None:
        self._update(job, status="running")
        try:
            summary = predict_video(
                self.predictor,
                clip,
                clip.parent,
                write_video=False,
                progress=lambda done, total: self._update(job, frames_done=done, frames_total=max(done, total)),
            )
            table = pd.read_csv(summary["csv"])
            frames = json.loads(table.to_json(orient="records"))  # NaN -> null
            keep = (
                "frames_predicted",
                "frames_dropped",
                "dropped_frames",
                "truncated",
                "truncation",
                "rotation",
                "mirrored",
                "sample_aspect_ratio",
                "time_gaps",
            )
            keep += ("seconds", "frames_per_s", "source_fps", "latency_ms_per_frame", "smooth")
            self._update(job, status="done", summary={k: summary[k] for k in keep}, frames=frames)
        except Exception as e:  # reported to the client polling the job; the server goes on
            self._update(job, status="failed", error=f"{type(e).__name__}: {getattr(e, 'problem', e)}")
        finally:
            shutil.rmtree(clip.parent, ignore_errors=True)

    def close(self) -> None:
        """Finish the running job; forget waiting ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)
