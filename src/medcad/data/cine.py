"""A multi-frame DICOM (an ultrasound or endoscopy cine loop) read as a video: its frames in order, each timed by
the header (Frame Time Vector, Frame Time, Cine Rate or Recommended Display Frame Rate, PS3.3 C.7.6.5), with the
interface of `medcad.data.video.VideoReader`, so that everything that predicts a video predicts a cine.

    with DicomCine("loop.dcm") as cine:
        for f in cine.frames():  # f.index, f.time_s, f.rgb (H, W, 3)
            ...
    cine.report  # frames decoded / dropped (which, when, why); times_from says which attribute timed them
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medcad.data.dicom import iter_dicom_frames, pixel_aspect, read_header
from medcad.data.frames import DecodeReport, DroppedFrame, Frame
from medcad.errors import DataError

ASSUMED_FPS = 25.0  # when the header times no frame


class DicomCine:
    """The frames of a multi-frame DICOM file in order, one decoded at a time; a frame that cannot be decoded is
    skipped and listed in `report.dropped` (a truncated file's whole frames are still read).

    Raises:
        DataError: the file is unreadable, or holds a single frame (an image: predict it as one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        ds = read_header(self.path)
        self.n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if self.n_frames < 2:
            raise DataError(self.path, "a single-frame DICOM: an image, not a cine (predict it as an image)")
        self.times, how = _frame_times(ds, self.n_frames)
        steps = np.diff(self.times)
        self.fps = float(1 / np.median(steps)) if len(steps) and np.median(steps) > 0 else ASSUMED_FPS
        self.report = DecodeReport(str(self.path), times_from=how, sample_aspect_ratio=pixel_aspect(ds))

    @property
    def estimated_frames(self) -> int:
        """Number of Frames of the header."""
        return self.n_frames

    def frames(self, every: int = 1) -> Iterator[Frame]:
        """Every `every`-th frame as an RGB `Frame`; fills `report` as it goes."""
        for index, rgb in iter_dicom_frames(self.path):
            if isinstance(rgb, DataError):
                self.report.dropped.append(DroppedFrame(index, float(self.times[index]), rgb.problem))
                continue
            self.report.frames_decoded += 1
            if index % every == 0:
                yield Frame(index, float(self.times[index]), rgb)

    def nothing_decoded(self) -> DataError:
        """The error for a cine none of whose frames decoded (after `frames` ran)."""
        why = self.report.dropped[0].reason if self.report.dropped else "no frame"
        return DataError(self.path, f"cannot decode this DICOM cine: none of its frames could be decoded ({why})")

    def close(self) -> None:
        pass

    def __enter__(self) -> DicomCine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _frame_times(ds, n: int) -> tuple[np.ndarray, str]:
    """Each frame's time from the first, in seconds (n,), and the attribute they come from."""
    vector = ds.get("FrameTimeVector")
    values = [] if vector is None else [vector] if isinstance(vector, str | int | float) else list(vector)
    if len(values) == n:  # ms since the previous frame, the first 0 (one value: pydicom gives it bare)
        return np.cumsum(np.asarray([float(v) for v in values])) / 1000, "DICOM Frame Time Vector"
    for keyword, per_s in (("FrameTime", False), ("CineRate", True), ("RecommendedDisplayFrameRate", True)):
        value = ds.get(keyword)
        try:
            value = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            step = 1 / value if per_s else value / 1000
            return np.arange(n) * step, f"DICOM {keyword}"
    return np.arange(n) / ASSUMED_FPS, f"assumed rate of {ASSUMED_FPS:g} frames/s (the header times no frame)"
