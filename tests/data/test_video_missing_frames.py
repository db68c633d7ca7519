"""Frames missing from a video file altogether (a packet dropped whole: a recorder or capture card that lost it, a
remux that skipped it) leave no error: the decoder conceals the missing reference and the frames after it come out
smeared. A generated test over codecs (H.264 and HEVC with x264's and x265's B pyramid; MPEG-2 and MPEG-4 with and
without B frames; VP9),
containers, key frame intervals, threads, which packets are dropped: every frame passed on is the recorded picture,
bit for bit; every recorded time up to the last frame read is passed on, named, or in a time gap; nothing decoded
before the drop is dropped, nor anything from the next key frame on; where the bitstream's reference numbering is
read (H.264, MPEG-2), a dropped frame no frame refers to costs no other frame."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medcad.data.bitstreams import Bitstream
from medcad.data.frames import Cadence
from medcad.data.video import VideoReader

H, W, N, RATE = 64, 80, 36, 25
CODECS = [
    (c, b)
    for c, b in (
        ("libx264", 3),
        ("mpeg2video", 0),
        ("mpeg2video", 2),
        ("mpeg4", 0),
        ("mpeg4", 2),
        ("libx265", 3),
        ("libx265", 0),  # x265 with closed GOPs: IDR pictures, a new picture count at each
        ("libvpx-vp9", 0),
    )
    if c in av.codecs_available
]
READ = ("libx264", "mpeg2video")  # codecs whose reference numbering medcad reads
SUFFIXES = {"mp4": ".mp4", "matroska": ".mkv", "mpegts": ".ts"}


def encode(path: Path, codec: str, b_frames: int, gop: int) -> Path:
    """N frames of noise panning by a pixel a frame; scene-cut detection off, so the anchors are P frames."""
    base = np.random.default_rng(7).integers(0, 256, (H + N, W + N, 3), np.uint8)
    with av.open(str(path), "w") as out:
        options = {"sc_threshold": "1000000000"} if codec in ("mpeg2video", "mpeg4") else {}
        if codec == "libx265" and not b_frames:
            options = {"x265-params": "open-gop=0"}
        stream = out.add_stream(codec, rate=RATE, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size, stream.bit_rate = gop, 1_000_000
        if codec in ("mpeg2video", "mpeg4"):  # x264 and x265 keep their default: 3 B frames, pyramid
            stream.codec_context.max_b_frames = b_frames
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[i : i + H, i : i + W]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def drop_packets(src: Path, dst: Path, first: int, count: int) -> list[tuple[float, bool, bool]]:
    """Copy `src` to `dst` without the packets `first` .. `first + count - 1` (decode order); every packet's
    (time in s, key frame, referenced) in decode order."""
    packets = []
    with av.open(str(src)) as clip, av.open(str(dst), "w") as out:
        video = clip.streams.video[0]
        codec, extradata = video.codec_context.name, video.codec_context.extradata
        stream = out.add_stream_from_template(video)
        start = video.start_time or 0
        for packet in clip.demux(video):
            if not packet.size:
                continue
            time_s = round(float((packet.pts - start) * video.time_base), 6)
            packets.append((time_s, packet.is_keyframe, not Bitstream(codec, extradata).read(packet).disposable))
            if first <= len(packets) - 1 < first + count:
                continue
            packet.stream = stream
            out.mux(packet)
    return packets


@pytest.mark.skipif(not CODECS, reason="this PyAV build has none of the encoders")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    codec=st.sampled_from(CODECS),
    container=st.sampled_from(sorted(SUFFIXES)),
    gop=st.sampled_from([6, 12, 50]),
    first=st.integers(1, N - 3),
    count=st.integers(1, 2),
    threads=st.booleans(),
)
def test_no_frame_decoded_from_a_missing_one_passes(
    tmp_path: Path, codec: tuple[str, int], container: str, gop: int, first: int, count: int, threads: bool
) -> None:
    name, b_frames = codec
    # MPEG-4 Part 2's and HEVC's numbering is not read: their missing frames are told by decode timestamps, which
    # Matroska does not store (FFmpeg makes them up there for codecs that reorder): frames decoded from one may pass
    assume(not (name in ("mpeg4", "libx265") and container == "matroska"))
    assume(not (name == "libvpx-vp9" and container == "mpegts"))  # MPEG-TS carries no VP9
    suffix = SUFFIXES[container]
    clean = encode(tmp_path / f"clean{suffix}", name, b_frames, gop)
    packets = drop_packets(clean, tmp_path / f"dropped{suffix}", first, count)
    with VideoReader(clean) as video:
        pictures = {f.time_s: f.rgb for f in video.frames()}
    assert len(pictures) == N and not video.report.dropped and not video.report.gaps
    with VideoReader(tmp_path / f"dropped{suffix}", threads=threads) as video:
        passed = {f.time_s: f.rgb for f in video.frames()}
    report = video.report
    named = {d.time_s for d in report.dropped}
    for t, rgb in passed.items():  # nothing concealed passes as a recorded picture
        assert np.array_equal(rgb, pictures[t]), f"frame at {t} s passed on but not the recorded picture"
    gaps = {round(g.time_s + i / RATE, 6) for g in report.gaps for i in range(g.frames)}
    last = max([*passed, *named])
    unaccounted = {t for t in pictures if t <= last} - passed.keys() - named - gaps
    assert not unaccounted, f"recorded frames neither read, named nor in a gap: {sorted(unaccounted)}"
    dropped = packets[first : first + count]
    before = {t for t, _, _ in packets[:first]}
    # an MPEG-2 stream's first P picture whose B pictures are all dropped may as well follow missing anchors (no two
    # anchors seen next to each other yet, nor a B picture): it is named, the safe side
    unsure = name == "mpeg2video" and b_frames and first <= 2
    if not unsure:
        assert before <= passed.keys(), f"frames decoded before the drop named: {sorted(before - passed.keys())}"
    key = next((j for j in range(first + count, len(packets)) if packets[j][1]), None)
    if key is not None:
        after = {t for t, _, _ in packets[key:] if t >= packets[key][0]}
        assert after <= passed.keys(), f"frames from the key frame on named: {sorted(after - passed.keys())}"
    if name in READ and not unsure and not any(referenced for _, _, referenced in dropped):  # costs nothing
        assert not report.dropped, report.dropped


def test_a_constant_rate_names_its_gaps_and_a_variable_one_none() -> None:
    """Online, once the rate has shown itself; at the end, over the whole timeline. A variable rate, or frames every
    other tick of the rate FFmpeg guessed, has no gaps."""
    ticks = [0, 3600, 10800, 14400, 18000, 21600, 28800] + [28800 + 3600 * i for i in range(1, 30)]
    cadence = Cadence(3600.0)  # 25 frames/s in MPEG-TS ticks
    assert [cadence.skipped(t, i) for i, t in enumerate(ticks)][:7] == [0, 0, 1, 0, 0, 0, 1]
    assert cadence.gaps() == [(2, 1), (6, 1)] and cadence.regular
    assert cadence.skipped(None) == 0 and cadence.skipped(100) == 0  # no time, or earlier: nothing skipped
    ms = Cadence(1000 / 29.97)  # 29.97 frames/s in Matroska's milliseconds: steps of 33 and 34
    assert [ms.skipped(t) for t in (0, 33, 67, 100, 133, 167, 234)] == [0, 0, 0, 0, 0, 0, 1]
    variable = Cadence(3000.0)  # a phone's variable rate: steps that are no multiple of the nominal one
    assert [variable.skipped(t) for t in (0, 3000, 6000, 9000, 10700, 16700)] == [0] * 6 and not variable.gaps()
    every_other = Cadence(1500.0)  # 30 frames/s timed on a 60 frames/s guess: every step a double one
    judged = [every_other.skipped(3000 * i) for i in range(40)]  # the first two taken as skips: the safe side
    assert judged == [0, 1, 1] + [0] * 37 and not every_other.gaps()


@pytest.mark.parametrize("codec", [c for c in ("libx264", "mpeg2video", "libx265") if c in av.codecs_available])
def test_a_frame_never_recorded_is_a_time_gap_and_costs_no_frame(tmp_path: Path, codec: str) -> None:
    """A capture card or camera that dropped frames before encoding: the timestamps skip, the bitstream's reference
    numbering (HEVC: its picture order count) does not (the encoder never had them). The gap is noted; every frame
    is the recorded picture."""
    base = np.random.default_rng(7).integers(0, 256, (H + N, W + N, 3), np.uint8)
    never = {7, 20, 21}  # frame times with no frame
    path = tmp_path / "capture.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = W, H, "yuv420p", 50
        for i in (i for i in range(N) if i not in never):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[i : i + H, i : i + W]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as clip:
        pictures = {round(float(f.time), 6): f.to_ndarray(format="rgb24") for f in clip.decode(video=0)}
    with VideoReader(path) as video:
        passed = {f.time_s: f.rgb for f in video.frames()}
    assert not video.report.dropped, video.report.dropped
    assert [(g.before, g.time_s, g.frames) for g in video.report.gaps] == [(7, 0.28, 1), (19, 0.8, 2)]
    assert passed.keys() == pictures.keys() and all(np.array_equal(passed[t], pictures[t]) for t in passed)
    assert "3 frame(s)' time with no frame in the file" in video.report.notes()[0]


def mpeg2_picture(kind: str, tr: int, gop: bool = False) -> bytes:
    """An MPEG-2 packet's headers: a GOP header where `gop`, then a picture header (temporal_reference `tr`)."""
    header = b"\x00\x00\x01\xb8\x00\x08\x00\x00" if gop else b""
    code = " IPB".index(kind)
    return header + b"\x00\x00\x01\x00" + bytes([tr >> 2, ((tr & 3) << 6) | (code << 3), 0xFF, 0xF8])


OPEN_GOP = [("I", 2, True), ("B", 0, False), ("B", 1, False), ("P", 5, False), ("B", 3, False), ("B", 4, False)]
# one GOP of I-B-B-P numbered past 1,024 (decode order: P n+3, B n+1, B n+2), and one with each field a packet
WRAP_IBBP = [("I", 1, True)] + [
    (k, (n + d) % 1024, False) for n in range(1, 1200, 3) for k, d in (("P", 3), ("B", 1), ("B", 2))
]
FIELDS = [(k, tr, gop and not f) for k, tr, gop in [("I", 0, True), ("P", 3, False), ("B", 1, False)] for f in (0, 1)]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [  # (kind, temporal_reference, GOP header) in decode order -> verdict per packet (the next packet's on UNSURE)
        ([("I", 0, True)] + [("P", n % 1024, False) for n in range(1, 1100)], [False] * 1100),  # wraps, one GOP
        ([("I", 0, True), ("P", 1, False), ("P", 4, False), ("B", 2, False), ("B", 3, False)], [False] * 5),
        (
            [("I", 0, True), ("P", 1, False), ("P", 2, False), ("P", 4, False), ("P", 5, False)],
            [False] * 3 + [True, False],
        ),
        (OPEN_GOP + [("P", 11, False), ("B", 9, False)], [False] * 6 + [None, False]),  # an anchor and its Bs: None
        (OPEN_GOP + [("B", 0, False)], [False] * 6 + [True]),  # a GOP header and its I picture
        ([("I", 0, True), ("P", 3, False), ("B", 1, False), ("B", 2, False), ("B", 4, False)], [False] * 4 + [True]),
        (WRAP_IBBP, [False] * len(WRAP_IBBP)),
        (FIELDS + [("P", 6, False)] * 2, [False] * (len(FIELDS) + 2)),
    ],
    ids=[
        "wrap",
        "adaptive-b",
        "lost-p",
        "lost-anchor-and-bs",
        "lost-gop-start",
        "lost-p-before-bs",
        "wrap-b",
        "fields",
    ],
)
def test_mpeg2_reference_numbering(stream: list[tuple[str, int, bool]], expected: list) -> None:
    from medcad.data.bitstreams import UNSURE, Bitstream

    bitstream, verdicts = Bitstream("mpeg2video"), []
    for kind, tr, gop in stream:
        missing = bitstream.read(mpeg2_picture(kind, tr, gop)).missing
        if bitstream.earlier is not None:  # the last UNSURE packet, told by this one
            verdicts[max(i for i, v in enumerate(verdicts) if v == UNSURE)] = bitstream.earlier
        verdicts.append(missing)
    assert UNSURE not in verdicts[:-1] and verdicts == expected, verdicts
