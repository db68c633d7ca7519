"""Video frames through a real demuxer (PyAV): damaged frames, and frames decoded from them, skipped and reported;
presentation times, rotation applied, truncated files read up to the cut (frame extraction for labelling:
`medcad.data.frame_extraction`).

    with VideoReader("clip.mp4") as video:
        for f in video.frames(every=10):  # f.index, f.time_s, f.rgb (H, W, 3), upright
            ...
    video.report  # frames decoded / dropped (which, when, why), truncation, rotation
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import av
import numpy as np
from av.video.frame import PictureType

from medcad.data.bitstreams import UNSURE, Bitstream
from medcad.data.filekinds import is_dicom
from medcad.data.frames import Cadence, DecodeReport, DroppedFrame, Frame, TimeGap, concealed_reason
from medcad.data.references import GAP, MISSING, ReferenceChain
from medcad.errors import DataError

if TYPE_CHECKING:
    from medcad.data.cine import DicomCine


HOLD = 32  # frames held at most for the packets decoded before them (H.264 / HEVC reorder at most 16)
# containers that store decode timestamps (Matroska, WebM and Ogg store presentation times only: FFmpeg makes decode
# times up from them for codecs that reorder frames, and a frame missing shifts them out of place)
DECODE_TIMES = {"mov,mp4,m4a,3gp,3g2,mj2", "mpegts", "mpeg", "flv"}


class _Held(NamedTuple):
    """A frame that came out, waiting to be judged (`ReferenceChain.source`)."""

    part: int  # its timeline
    decoded: int | None  # its packet's decode index (None: not known)
    pts: int | None
    index: int
    time_s: float | None
    frame: av.VideoFrame


class VideoReader:
    """Decode the first video stream of a file, frame by frame, in presentation order.

    A frame whose packet the demuxer marks damaged, that the decoder rejects or flags corrupt, or that never comes
    out of the decoder is skipped and listed in `report.dropped` (with its index and time), and so are the frames
    decoded from it up to the next key frame (decoders conceal a lost reference without a word:
    `medcad.data.references`): the frames after those are still read. A file that ends before its header says
    (recording cut off, copy interrupted) is read up to the cut and `report.truncated` says why it is taken to be
    truncated.

    Raises:
        DataError: the file is missing, is not a video, or has no video stream.
    """

    def __init__(self, path: str | Path, threads: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "video file not found")
        if is_dicom(self.path):
            raise DataError(
                self.path,
                "a DICOM file, not a video file: medcad.data.video.open_video reads a multi-frame DICOM as a video",
            )
        try:
            self._container = av.open(str(self.path), metadata_errors="replace")
        except av.error.FFmpegError as e:
            raise DataError(
                self.path,
                "cannot decode this video (unknown format, corrupt, or an MP4 cut off before its index was written; "
                f"{getattr(e, 'strerror', None) or e})",
            ) from e
        if not self._container.streams.video:
            self._container.close()
            raise DataError(self.path, "cannot decode this video: it has no video stream")
        self._stream = self._container.streams.video[0]
        self._intra = self._stream.codec_context.codec.intra_only  # every frame a key frame (MJPEG, ProRes, ...)
        if self._intra:
            # a damaged frame of an intra-only codec (MJPEG: each frame a JPEG) is an error, not a picture: one with
            # 100 bytes zeroed decoded as a smear, predicted like any other (FFmpeg only logged it); now it is
            # dropped and named. Not for inter codecs (H.264, MPEG-4): there every frame up to the next key frame
            # that refers to a damaged one would fail too, where concealment keeps them.
            self._stream.codec_context.options = {"err_detect": "bitstream+buffer+explode"}
        if threads:
            # slice threads, not frame threads: with frame threads an error surfaces packets later, FFmpeg's H.264
            # decoder flags a damaged frame corrupt or not by chance, and drops the good frames before an error at
            # the end; no faster on two cores (720p H.264: 886 frames/s slice, 698 frame, 680 one thread)
            self._stream.thread_type = "SLICE"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        # AVI holds no presentation times: FFmpeg makes packet timestamps up in decoding order, so where a codec
        # reorders frames (B-frames: H.264, HEVC, MPEG-4) those that come out (in display order) carry them shuffled
        # (1, 2, 4, 5, 3, ...); such a stream's frames are numbered as they come out and timed by the frame rate
        # (AVI's frames are at a constant rate). Intra-only codecs (MJPEG) keep their timestamps: they are right.
        self._output_order = self._container.format.name == "avi" and self._stream.codec_context.codec.reorder
        self._orient: tuple[bool, bool, bool] | None = None  # transpose, flip rows, flip columns
        tb = self._stream.time_base
        self._tb = float(tb) if tb else 1.0 / self.fps
        nominal = self._stream.guessed_rate or rate  # FFmpeg's guess of the constant rate the timestamps follow
        self._step = 1.0 / (float(nominal) * self._tb) if nominal else 0.0  # a frame's time in timestamp ticks
        self._start = self._stream.start_time
        self.report = DecodeReport(str(self.path))
        sar = self._stream.sample_aspect_ratio  # the container's, else the bitstream's (FFmpeg's choice)
        if sar and sar > 0 and sar != 1:
            self.report.sample_aspect_ratio = f"{sar.numerator}:{sar.denominator}"

    @property
    def estimated_frames(self) -> int:
        """Frames the header announces (or duration x frame rate); 0 when unknown."""
        if self._stream.frames:
            return int(self._stream.frames)
        duration = self._duration_s()
        return round(duration * self.fps) if duration else 0

    def _duration_s(self) -> float | None:
        """The video's length as its header announces it (the stream's, else the container's), in seconds."""
        if self._stream.duration:
            return self._stream.duration * self._tb
        if not self._container.duration:
            return None
        duration = self._container.duration / av.time_base
        if "matroska" in self._container.format.name and self._container.start_time:
            # Matroska's segment duration runs from the segment's time 0, not from its first frame: a 1.2 s clip
            # whose frames start at 5 s announces 6.2 s (it had been reported truncated, 155 frames estimated of 30)
            duration -= self._container.start_time / av.time_base
        return duration

    def _time(self, pts: int | None) -> float | None:
        if pts is None:
            return None
        return (pts - (self._start or 0)) * self._tb

    def frames(self, every: int = 1) -> Iterator[Frame]:
        """Every `every`-th frame (by index) as an upright RGB `Frame`; fills `report` as it goes.

        A file that joins recordings (MPEG-TS parts concatenated, a recorder's timestamp reset) restarts its
        timestamps: its decode timestamps go back. Each such part is a timeline of its own (frames are matched to
        their packets within it), its frames follow the part before in index and time, and where it starts is in
        `report.restarts`. (Matched by timestamp across parts, a part's frames had been numbered among the part
        before's and good frames reported undecodable.)

        A frame missing from the file altogether (no packet) is found by the reference numbering of the frames
        after it (`medcad.data.bitstreams.Bitstream`: H.264, MPEG-1 / MPEG-2), or by a gap in the decode timestamps
        of a constant-rate stream (where the container stores them, or the codec does not reorder frames: not HEVC
        or MPEG-4 Part 2 in Matroska), for HEVC told apart from frames never recorded by its picture order count:
        the frames decoded after it up to the next key frame are named, not passed on. Timestamps at a constant
        rate that skip frames' time are listed in `report.gaps` (frames missing from the file or never recorded);
        frames keep their numbers in the file."""
        if self._output_order:
            yield from self._frames_in_output_order(every)
            return
        report = self.report
        chains = [ReferenceChain()]  # per timeline: its frames in decode order, the damage and key frames among them
        damaged: dict[tuple[int, int], str] = {}  # (part, timestamp) -> why the frame is damaged
        codec, extradata = self._stream.codec_context.name, self._stream.codec_context.extradata
        # frames given up on (part, timestamp) -> (their entry, decode index), in case one comes out after all
        lost: dict[tuple[int, int], tuple[DroppedFrame, int | None]] = {}
        held: list[_Held] = []  # frames waiting for the packets decoded before them, in frame order
        bitstream = Bitstream(codec, extradata)  # frames no frame refers to; references missing from the file
        # decode times as the file stores them, or a codec that does not reorder (VP8, VP9, AV1): its presentation
        # times are its decode times; else FFmpeg's guess
        stored = self._container.format.name in DECODE_TIMES or not self._stream.codec_context.codec.reorder
        irap_pts = None  # the last HEVC IRAP picture's, in decode order (its leading pictures are shown before it)
        decode_times, shown_times = [Cadence(self._step)], [Cadence(self._step)]  # per timeline
        index, packets, last_end, last_dts = 0, 0, None, None
        part, last_pts, offset, last_time = 0, None, 0.0, None  # the timeline frames come out of, and its shift

        def time(pts: int | None) -> float | None:  # seconds from the first part's start, parts one after another
            return None if pts is None else self._time(pts) + offset

        def account(k: int, pts: int | None) -> None:  # frame `index` of timeline k, at pts: its times' cadence
            shown_times[k].skipped(pts, (index, time(pts) if k == part else None))

        def declare_lost(k: int, pts: int, time_s: float | None) -> None:
            account(k, pts)
            d = chains[k].lose(pts, index)
            lost[k, pts] = self._drop(index, time_s, "could not be decoded"), d

        for packet, decoded, failed in self._decoded_packets():
            if packet is not None and (packet.size or packet.pts is not None):  # not the final flush packet
                packets += 1
                if packet.size and packet.dts is not None:
                    if last_dts is not None and self._restarts(packet, last_dts):  # a new timeline
                        chains.append(ReferenceChain())
                        decode_times.append(Cadence(self._step))
                        shown_times.append(Cadence(self._step))
                    last_dts = packet.dts
                # (a discarded packet is decoded only as a reference of frames shown after it: a clip cut by stream
                # copy at a frame that is not a key frame starts from the key frame before the cut)
                shown = packet.pts is not None and not packet.is_discard
                if packet.size:
                    skipped = decode_times[-1].skipped(packet.dts)
                    at_s = None if packet.pts is None or not self._step else packet.pts - (self._start or 0)
                    position = None if at_s is None else round(at_s / self._step)  # its time in frames
                    facts = bitstream.read(packet, position, skipped if stored else 0)
                    if bitstream.earlier is not None:  # the verdict on the packet before, left unsure
                        chains[-1].decide(bitstream.earlier, MISSING)
                    if facts.missing is True:
                        chains[-1].missing(MISSING)
                    elif facts.missing is None and skipped and stored and not self._intra:  # numbering cannot tell
                        chains[-1].missing(GAP)
                    if facts.irap:
                        irap_pts = packet.pts
                    d = chains[-1].packet(
                        packet.pts,
                        packet.is_keyframe,
                        shown,
                        referenced=not (shown and facts.disposable),
                        unsure=facts.missing == UNSURE,
                        leading=irap_pts if facts.leading else None,
                    )
                    if failed and not shown:  # a reference only, or no timestamp: the frames after it are its
                        chains[-1].damaged(d, None)
                if packet.size and shown:
                    last_end = packet.pts + (packet.duration or 0)
                    if packet.is_corrupt:
                        damaged[len(chains) - 1, packet.pts] = "damaged in the file (incomplete or corrupt packet)"
                    elif failed:  # its frame may still come out (reordered), concealed and not flagged
                        damaged[len(chains) - 1, packet.pts] = "decoded with errors (the decoder reported one)"
            for frame in decoded:  # a packet that failed to decode gave none: found missing below, by timestamp
                pts = frame.pts
                if pts is not None and last_pts is not None and pts < last_pts and part + 1 < len(chains):
                    for gone_pts in chains[part].awaited():  # the next timeline's frames begin: these never came out
                        declare_lost(part, gone_pts, time(gone_pts))
                        index += 1
                    chains[part].finish()
                    part, last_pts = part + 1, None
                    offset = (last_time or 0.0) + 1.0 / self.fps - self._time(pts)  # on from the part before
                    report.restarts.append(index)
                chain = chains[part]
                for gone_pts in chain.overdue(pts):  # output is in pts order: these are lost
                    declare_lost(part, gone_pts, time(gone_pts))
                    index += 1
                if pts is not None and (part, pts) in lost:  # late after all (a decoder's reorder delay grew)
                    gone, d = lost.pop((part, pts))
                    report.dropped.remove(gone)
                    chain.withdraw(d)
                    at = gone.index
                else:
                    account(part, pts)
                    d = chain.settle(pts)
                    at, index = index, index + 1
                if pts is not None:
                    last_pts, last_time = pts if last_pts is None else max(pts, last_pts), time(pts)
                if pts is not None and (part, pts) in damaged or frame.is_corrupt:
                    chain.damaged(d, at)
                    why = damaged.get((part, pts), "decoded with errors (corrupt frame)")
                    self._drop(at, time(pts), why)
                else:
                    if self._intra or (frame.key_frame and frame.pict_type == PictureType.I):
                        chain.recovered(d, pts)
                    bisect.insort(held, _Held(part, d, pts, at, time(pts), frame), key=lambda f: f.index)
                yield from self._release(held, chains, every)
        for k in range(part, len(chains)):  # packets after the last frame that came out
            for pts in chains[k].awaited():
                declare_lost(k, pts, None if k > part else time(pts))
                index += 1
            chains[k].finish()
        yield from self._release(held, chains, every, final=True)
        for cadence in shown_times:  # frames' time with no frame: at the end, on each timeline's whole cadence
            for (before, after_s), frames in cadence.gaps():
                first = None if after_s is None else round(after_s - frames * self._step * self._tb, 6)
                report.gaps.append(TimeGap(before, first, frames))
        if report.truncated is None:
            report.truncated = self._truncation(packets, None if report.restarts else last_end)

    def _release(self, held: list[_Held], chains: list[ReferenceChain], every: int, final: bool = False):
        """Pass on (every `every`-th) or drop the frames held, in the order they came out, as far as they can be
        judged: once every packet decoded before a frame has come out or been declared lost (`final`: all), or when
        more than `HOLD` wait (a timestamp far off that never comes out: judged on the damage known)."""
        while held and (final or len(held) > HOLD or chains[held[0].part].settled_before(held[0].decoded)):
            f = held.pop(0)
            source = chains[f.part].source(f.decoded, f.pts)
            if source is None:
                self.report.frames_decoded += 1
                if f.index % every == 0:
                    yield self._frame(f.frame, f.index, f.time_s)
            else:
                self._drop(f.index, f.time_s, concealed_reason(source), concealed=True)

    def _restarts(self, packet: av.Packet, last_dts: int) -> bool:
        """Whether a packet starts a new timeline: its decode timestamp goes back by more than two frames, at a key
        frame (where a joined recording starts; a non-monotonic timestamp of a damaged or captured file is a glitch
        within one timeline, not a new one: one packet a tick back had made 51 frames 'undecodable')."""
        return packet.is_keyframe and (last_dts - packet.dts) * self._tb > 2.0 / self.fps

    def _decoded_packets(self) -> Iterator[tuple[av.Packet | None, list[av.VideoFrame], bool]]:
        """(packet, the frames its decoding gave, whether the decoder reported an error decoding it) in file order,
        ending with (None, the frames the decoder still held, False) when the container cannot be read on
        (`report.truncated` says where). A packet that fails to decode gives no frames: the callers find them
        missing; its frame may still come out later (reordered), concealed and not flagged."""
        demux = self._container.demux(self._stream)
        read = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # the container itself cannot be read from here on
                self.report.truncated = f"the container cannot be read past packet {read}: {e.strerror or e}"
                packet = None
            if packet is not None and (packet.size or packet.pts is not None):
                read += 1
            try:
                decoded, failed = self._stream.decode(packet), False
            except av.error.FFmpegError:
                decoded, failed = [], True
            yield packet, decoded, failed
            if packet is None:
                return

    def _drop(self, index: int, time_s: float | None, reason: str, concealed: bool = False) -> DroppedFrame:
        dropped = DroppedFrame(index, None if time_s is None else round(time_s, 6), reason, concealed)
        bisect.insort(self.report.dropped, dropped, key=lambda f: f.index)  # in frame order, as judged or not
        return dropped

    def _frames_in_output_order(self, every: int) -> Iterator[Frame]:
        """`frames` for a stream without presentation times (AVI): numbered in the order the decoder gives them, the
        frames that never come out counted at the end (where they were is not known)."""
        report = self.report
        report.times_from = "frame rate (AVI holds no presentation times)"
        index, packets, last_end, waiting = 0, 0, None, 0
        chain = ReferenceChain()  # in output order: a frame shown before a damaged one it was decoded from is missed
        for packet, decoded, failed in self._decoded_packets():
            if failed:  # a frame not out yet is damaged: those after it, in output order, up to a key frame too
                chain.damaged(chain.decoded - 1, None)
            if packet is not None and packet.size:
                packets, waiting = packets + 1, waiting + 1
                last_end = None if packet.pts is None else packet.pts + (packet.duration or 0)
            for frame in decoded:
                at, index, waiting = index, index + 1, waiting - 1
                d = chain.packet(at)
                chain.settle(at)
                if frame.is_corrupt:
                    chain.damaged(d, at)
                    self._drop(at, at / self.fps, "decoded with errors (corrupt frame)")
                    continue
                if self._intra or (frame.key_frame and frame.pict_type == PictureType.I):
                    chain.recovered(d, at)
                source = chain.source(d, at)
                if source is not None:
                    self._drop(at, at / self.fps, concealed_reason(source), concealed=True)
                    continue
                report.frames_decoded += 1
                if at % every == 0:
                    yield self._frame(frame, at, at / self.fps)
        for _ in range(max(waiting, 0)):
            self._drop(index, None, "could not be decoded (its place among the frames is not known)")
            index += 1
        if report.truncated is None:
            report.truncated = self._truncation(packets, last_end)

    def _frame(self, frame: av.VideoFrame, index: int, time_s: float | None = None) -> Frame:
        if time_s is None:
            time_s = self._time(frame.pts)
        if time_s is None:
            self.report.times_from = "frame rate"
            time_s = index / self.fps
        rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
        if self._orient is None:
            self._orient = self._orientation(frame)
        transpose, flip_rows, flip_cols = self._orient
        if transpose or flip_rows or flip_cols:
            rgb = rgb.swapaxes(0, 1) if transpose else rgb
            rgb = np.ascontiguousarray(rgb[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1])
        return Frame(index, round(time_s, 6), rgb)

    def _orientation(self, frame: av.VideoFrame) -> tuple[bool, bool, bool]:
        """(transpose, flip rows, flip columns) that turn a decoded frame as its display matrix says (rotations and
        mirroring, as players show it), and the rotation / mirroring it amounts to in `report`."""
        matrix = next((sd for sd in frame.side_data if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX), None)
        if matrix is None:
            return False, False, False
        m = np.frombuffer(bytes(matrix), "<i4")  # a b u / c d v / x y w, a..d in 16.16 fixed point
        a, b, c, d = (int(np.sign(round(v / 65536))) for v in (m[0], m[1], m[3], m[4]))
        # a source pixel (x, y) is shown at (a x + c y, b x + d y), up to a shift
        orient = (True, b < 0, c < 0) if a == 0 else (False, d < 0, a < 0)
        self.report.mirrored = a * d - b * c < 0  # a rotation keeps the determinant at 1, a mirror makes it -1
        probe = np.arange(6).reshape(2, 3)
        turned = probe.swapaxes(0, 1) if orient[0] else probe
        turned = turned[:: -1 if orient[1] else 1, :: -1 if orient[2] else 1]
        start = probe[:, ::-1] if self.report.mirrored else probe
        self.report.rotation = next(90 * k for k in range(4) if np.array_equal(np.rot90(start, k), turned))
        return orient

    def _truncation(self, packets: int, last_end: int | None) -> str | None:
        """Why the file looks cut short (packets missing against the header, or the last packet damaged), or None."""
        expected = int(self._stream.frames or 0)
        if expected > packets:
            return f"{packets} of the {expected} frames its header announces are in the file"
        if last_end is None:
            return None
        end_s = (last_end - (self._start or 0)) * self._tb
        duration = self._duration_s()
        # a container's duration may include a longer audio track; without one, two frames' time is the slack (a
        # 1.2 s loop cut at 0.72 s passed the 0.5 s that allowed for audio)
        audio = not self._stream.duration and len(self._container.streams.audio) > 0
        slack = 0.5 if audio else 2.0 / self.fps
        if duration is not None and end_s + slack < duration:
            return f"the video data ends at {end_s:.2f} s of the {duration:.2f} s its header announces"
        return None

    def nothing_decoded(self) -> DataError:
        """The error for a video none of whose frames decoded (after `frames` ran)."""
        why = f"; truncated: {self.report.truncated}" if self.report.truncated else ""
        return DataError(self.path, f"cannot decode this video: none of its frames could be decoded{why}")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    estimated_frames: int
    width: int
    height: int


def open_video(path: str | Path) -> VideoReader | DicomCine:
    """A video file's reader (`VideoReader`), or a multi-frame DICOM's (`medcad.data.cine.DicomCine`: a cine loop
    read as a video, each frame timed by its header).

    Raises:
        DataError: naming the file, when it cannot be opened (a single-frame DICOM is an image, not a video).
    """
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")  # as an empty image is said (not "cannot decode this video")
    if Path(path).is_file() and is_dicom(path):
        from medcad.data.cine import DicomCine

        return DicomCine(path)
    return VideoReader(path)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, announced frame count and size, after checking that at least one frame decodes.

    Raises:
        DataError: naming the file, when it cannot be opened or no frame of it decodes.
    """
    with open_video(path) as video:
        first = next(video.frames(), None)
        if first is None:
            raise video.nothing_decoded()
        h, w = first.rgb.shape[:2]
        return VideoInfo(video.fps, video.estimated_frames, w, h)
