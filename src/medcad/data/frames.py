"""What decoding a video or a DICOM cine gives: frames (index, presentation time, RGB), the frames dropped as
undecodable, and the report of one file's decoding (`medcad.data.video`, `medcad.data.cine`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from medcad.data.references import GAP, MISSING


class Frame(NamedTuple):
    """One decoded frame: its position in the video (dropped frames count), presentation time, upright RGB."""

    index: int
    time_s: float
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class DroppedFrame:
    index: int
    time_s: float | None
    reason: str
    concealed: bool = False  # decoded, but from a lost or damaged frame (`medcad.data.references`)


def concealed_reason(source: tuple[int, int | None]) -> str:
    """Why a frame decoded from a lost or damaged one is dropped; `source`: the damage's (decode index, frame index)
    from `medcad.data.references.ReferenceChain.source` (decode index -1: the recording's start)."""
    decoded, frame = source
    if frame == MISSING:
        return (
            "decoded after a reference frame missing from the file (the bitstream's reference numbering skips it; "
            "the decoder conceals it: not the recorded picture; clean again from the next key frame)"
        )
    if frame == GAP:
        return (
            "decoded after a gap in the decode timestamps: a frame it may refer to is missing from the file, or was "
            "never recorded (this codec's reference numbering is not read, so it is named, not predicted; clean "
            "again from the next key frame)"
        )
    if decoded < 0:
        return "decoded before its recording's first key frame: it refers to frames not in the file"
    if frame is None:
        return (
            "decoded after a frame the decoder reported an error for (the decoder conceals it: not the recorded "
            "picture; clean again from the next key frame)"
        )
    return (
        f"decoded from frame {frame}, lost or damaged (the decoder conceals it: not the recorded picture; clean "
        "again from the next key frame)"
    )


@dataclass(frozen=True)
class TimeGap:
    """Frames' time with no frame in the file, before frame `before` (at `time_s`, the first missing frame's time):
    lost from the file, or never recorded (a camera or capture card that dropped them)."""

    before: int
    time_s: float | None
    frames: int


class Cadence:
    """Timestamps at a constant frame rate that skip frames' time. `step`: a frame's time in ticks, as FFmpeg
    guesses the rate; every step must be a whole multiple of it (within a tick of rounding: 29.97 frames/s in
    milliseconds steps 33 and 34), else the rate is variable and a step tells nothing.

    `skipped(t)` judges online, for the damage a missing frame does: from the first step on, unless single steps
    have fallen below `UNIT` of them after `SETTLE` (frames every other tick of the guessed rate: no constant rate;
    the first such steps are taken as skips, the safe side). `gaps()` lists the skips at the end, where the whole
    timeline's steps are a constant rate's (at least `SETTLE` single steps, and `UNIT` of them single)."""

    SETTLE, UNIT = 2, 0.75

    def __init__(self, step: float) -> None:
        self.step = step
        self.tol = max(1.0, 0.01 * step)
        self.multiples = step > 0
        self._last: int | None = None
        self._single = self._steps = 0
        self._skips: list[tuple[object, int]] = []  # (the note given with the timestamp after, frames skipped)

    @property
    def regular(self) -> bool:
        """Whether the steps so far are a constant rate's."""
        return self.multiples and self._single >= self.SETTLE and self._single >= self.UNIT * self._steps

    def skipped(self, t: int | None, note: object = None) -> int:
        """Frames' time between the last timestamp and `t` with no timestamp, judged on the steps before it (0
        where `t` is None or not later, or the rate is not constant); `note` is kept with it for `gaps`."""
        if t is None or not self.multiples:
            return 0
        last, self._last = self._last, t if self._last is None else max(t, self._last)
        if last is None or t <= last:
            return 0
        k = round((t - last) / self.step)
        if k < 1 or abs(t - last - k * self.step) > self.tol:
            self.multiples = False  # a variable frame rate: its steps tell nothing
            return 0
        constant = self._steps < self.SETTLE or self._single >= self.UNIT * self._steps  # on the steps before
        self._steps += 1
        self._single += k == 1
        if k > 1:
            self._skips.append((note, k - 1))
        return k - 1 if constant else 0

    def gaps(self) -> list[tuple[object, int]]:
        """(note, frames' time skipped) of every skip, where the whole timeline's steps are a constant rate's."""
        return list(self._skips) if self.regular else []


@dataclass
class DecodeReport:
    """What decoding one video found; complete once `VideoReader.frames` has run to the end."""

    video: str
    frames_decoded: int = 0
    dropped: list[DroppedFrame] = field(default_factory=list)
    truncated: str | None = None  # why the file is taken to end early, or None
    rotation: int = 0  # degrees counter-clockwise applied to make frames upright
    mirrored: bool = False  # the display matrix mirrors left-right (applied before the rotation)
    times_from: str = "timestamps"  # or "frame rate" when the stream has no presentation timestamps
    restarts: list[int] = field(default_factory=list)  # frames where the timestamps start again (joined recordings)
    # "W:H" where the stored pixels are not square (an SD recording's 720x576 shown 4:3: 16:15), else None; frames are
    # read at their stored size, as ffmpeg and OpenCV extract them (`decode_notes` says so)
    sample_aspect_ratio: str | None = None
    gaps: list[TimeGap] = field(default_factory=list)  # frames' time with no frame in the file (constant rate only)

    def upright_aspect(self) -> Fraction | None:
        """The sample aspect ratio of the frames as read (upright): the stored one, inverted where a rotation of 90
        or 270 degrees turned them; None for square pixels."""
        if not self.sample_aspect_ratio:
            return None
        w, h = map(int, self.sample_aspect_ratio.split(":"))
        return Fraction(h, w) if self.rotation % 180 else Fraction(w, h)

    @property
    def frames_dropped(self) -> int:
        return len(self.dropped)

    def as_dict(self) -> dict:
        """JSON-ready: frames_decoded, frames_dropped, dropped_frames [{frame, time_s, reason}], truncated, ..."""
        return {
            "frames_decoded": self.frames_decoded,
            "frames_dropped": self.frames_dropped,
            "dropped_frames": [
                {"frame": d.index, "time_s": d.time_s, "reason": d.reason, "concealed": d.concealed}
                for d in self.dropped
            ],
            "truncated": self.truncated is not None,
            "truncation": self.truncated,
            "rotation": self.rotation,
            "mirrored": self.mirrored,
            "times_from": self.times_from,
            "time_restarts": list(self.restarts),
            "sample_aspect_ratio": self.sample_aspect_ratio,
            "time_gaps": [{"before_frame": g.before, "time_s": g.time_s, "frames": g.frames} for g in self.gaps],
        }

    def notes(self) -> list[str]:
        """One line per problem, for the console."""
        return decode_notes({"video": self.video, **self.as_dict()})


def decode_notes(decoded: dict) -> list[str]:
    """One console line per problem in a `DecodeReport.as_dict` (with `video`), e.g. a frame folder's decode.json."""
    return [line for _, line in decode_lines(decoded)]


def decode_lines(decoded: dict) -> list[tuple[str, str]]:
    """(level, line) of each note on a `DecodeReport.as_dict` (with `video`; a video prediction's summary holds its
    keys): "warning" where frames were not read as recorded (dropped, concealed, cut off, missing), else "note"."""
    video = decoded["video"]
    out = [("warning", line) for line in dropped_notes(video, decoded.get("dropped_frames") or [])]
    if decoded.get("truncation"):
        out.append(("warning", truncation_note(video, decoded["truncation"])))
    if decoded.get("rotation") or decoded.get("mirrored"):
        how = ["mirrored left-right"] * bool(decoded.get("mirrored"))
        how += [f"{decoded['rotation']} degrees counter-clockwise"] * bool(decoded.get("rotation"))
        out.append(("note", f"{video}: rotation metadata applied ({', then '.join(how)})"))
    if decoded.get("times_from", "timestamps") != "timestamps":
        out.append(("note", f"{video}: frame times from the {decoded['times_from']}"))
    if decoded.get("time_restarts"):
        out.append(("note", restart_note(video, decoded["time_restarts"])))
    if decoded.get("sample_aspect_ratio"):
        out.append(("note", aspect_note(video, decoded["sample_aspect_ratio"])))
    if decoded.get("time_gaps"):
        out.append(("warning", gap_note(video, decoded["time_gaps"])))
    return out


def dropped_notes(video: str, dropped: list[dict]) -> list[str]:
    """A line for the frames not decodable and one for those decoded from a lost or damaged frame, among a video's
    `dropped_frames` ({frame, time_s, reason, concealed}); the first ten of each named with their times."""
    out = []
    concealed = [d for d in dropped if d.get("concealed")]
    for group, what in (
        ([d for d in dropped if not d.get("concealed")], "not decodable"),
        (
            concealed,
            "decoded from a lost, damaged or missing frame (concealed by the decoder, not the recorded picture)",
        ),
    ):
        if group:
            shown = ", ".join(
                f"{d['frame']}" + (f" ({d['time_s']:.3f} s)" if d.get("time_s") is not None else "") for d in group[:10]
            )
            more = f" and {len(group) - 10} more" if len(group) > 10 else ""
            out.append(f"{video}: {len(group)} frame(s) {what}, skipped: {shown}{more}")
    return out


def truncation_note(video: str, truncation: str) -> str:
    """What a video taken to be truncated (`DecodeReport.truncated`: why) is read as."""
    return f"{video}: truncated ({truncation}); the frames before the cut were read"


def aspect_note(video: str, sample_aspect_ratio: str) -> str:
    """What a video whose pixels are not square (`DecodeReport.sample_aspect_ratio`) is read as."""
    return (
        f"{video}: its pixels are not square (sample aspect ratio {sample_aspect_ratio}, as SD and anamorphic "
        "recordings store them): frames read at their stored size, as ffmpeg and OpenCV extract them, not stretched "
        "as players show them; an annotated video keeps the ratio"
    )


def restart_note(video: str, restarts: list[int]) -> str:
    """What a video whose timestamps start again at these frames (`DecodeReport.restarts`) is read as."""
    at = ", ".join(map(str, restarts))
    return (
        f"{video}: its timestamps start again at frame(s) {at} (recordings joined in one file): each part's frames "
        "follow the part before in number and time"
    )


def gap_note(video: str, gaps: list[dict]) -> str:
    """What a video whose timestamps skip frames' time (`DecodeReport.gaps` as dicts) is read as."""
    shown = ", ".join(
        f"{g['frames']}"
        + ("" if g["time_s"] is None else f" at {g['time_s']:.3f} s")
        + f", before frame {g['before_frame']}"
        for g in gaps[:10]
    )
    more = f" and {len(gaps) - 10} more gaps" if len(gaps) > 10 else ""
    return (
        f"{video}: {sum(g['frames'] for g in gaps)} frame(s)' time with no frame in the file ({shown}{more}): lost "
        "from the file or never recorded; frames are numbered as they are in the file, their times kept"
    )
