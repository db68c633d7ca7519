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
WAITING = ("checking", "queued", "running")  # a job's states before it is done or failed


class VideoJobs:
    """At most `max_jobs` clips being checked, waiting or running (one at a time); the states of the last `keep`
    finished ones are kept beside them.

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
        """Jobs being checked, waiting or running."""
        with self._lock:
            return self._active()

    def _active(self) -> int:
        return sum(s["status"] in WAITING for s in self.states.values())

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
        job = uuid.uuid4().hex[:16]
        with self._lock:  # the slot is taken before the (slow) check: uploads arriving together cannot all pass
            active = self._active()
            if active >= self.max_jobs:
                raise QueueFull(max(5, math.ceil(30 * active)))
            self.states[job] = {"job": job, "status": "checking", "frames_done": 0, "frames_total": 0}
        folder = self.workdir / f"job-{job}"
        try:
            folder.mkdir()
            clip = folder / ("clip.dcm" if kind == "dicom" else "clip.video")
            clip.write_bytes(data)
            frames = self._checked_frames(clip, kind)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self.states.pop(job, None)
            raise
        with self._lock:
            self.states[job].update(status="queued", frames_total=frames)
            finished = [k for k, s in self.states.items() if s["status"] not in WAITING]
            for k in finished[: max(0, len(finished) - self.keep)]:  # the oldest finished ones; never a waiting one
                del self.states[k]
        self._pool.submit(self._run, job, clip)
        return job

    def _checked_frames(self, clip: Path, kind: str | None) -> int:
        """The clip's estimated frame count. Raises UploadError 422 undecodable, 413 too many frames."""
        try:
            frames = probe_video(clip).estimated_frames
        except DataError as e:
            hint = " (POST a single image to /predict)" if kind == "dicom" and "single-frame" in e.problem else ""
            raise UploadError(422, f"the upload cannot be decoded: {e.problem}{hint}") from e
        if frames > self.limits.max_video_frames:
            raise UploadError(
                413, f"the clip has {frames} frames, more than this server's limit of {self.limits.max_video_frames}"
            )
        return frames

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
            frames = json.loads(pd.DataFrame(summary["rows"]).to_json(orient="records"))  # NaN -> null
            for f in frames:  # a detector's boxes: a list, not the CSV's JSON text
                if isinstance(f.get("boxes"), str):
                    f["boxes"] = json.loads(f["boxes"])
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
            keep += ("smoothed_score_means",)
            self._update(job, status="done", summary={k: summary[k] for k in keep}, frames=frames)
        except Exception as e:  # reported to the client polling the job; the server goes on
            self._update(job, status="failed", error=f"{type(e).__name__}: {getattr(e, 'problem', e)}")
        finally:
            shutil.rmtree(clip.parent, ignore_errors=True)

    def close(self) -> None:
        """Finish the running job; forget waiting ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)
