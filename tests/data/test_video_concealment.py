"""Frames decoded from a lost one are named, never passed on as clean (decoders conceal a lost reference without a
word): a generated test over codecs that reorder frames (H.264 with x264's 3 B frames and pyramid, MPEG-2 and MPEG-4
I-B-B-P), containers, key frame intervals, frame threads, which packet is cut short and by how much. Every frame
passed on must be the picture the undamaged file decodes to, bit for bit; every frame is passed on or named; none
decoded before the damage is dropped, nor any shown from the key frame after the last frame named lost or damaged,
nor any but itself for a damaged MPEG-2 / MPEG-4 B frame (no frame refers to it)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medcad.data.video import VideoReader

H, W, N = 64, 80, 36
CODECS = [c for c in ("libx264", "mpeg2video", "mpeg4") if c in av.codecs_available]
SUFFIXES = {"mp4": ".mp4", "matroska": ".mkv", "mpegts": ".ts"}


def moving_noise() -> list[np.ndarray]:
    """N frames of noise panning by a pixel a frame: a concealed frame is far from the picture it stands for."""
    base = np.random.default_rng(7).integers(0, 256, (H + N, W + N, 3), np.uint8)
    return [np.ascontiguousarray(base[i : i + H, i : i + W]) for i in range(N)]


def encode(path: Path, codec: str, gop: int) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size, stream.bit_rate = gop, 1_000_000
        if codec != "libx264":  # x264 keeps its default: 3 B frames, pyramid
            stream.codec_context.max_b_frames = 2
        for rgb in moving_noise():
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cut_packet(src: Path, dst: Path, k: int, keep: float) -> list[tuple[int, bool]]:
    """Copy `src` to `dst` with the k-th packet (in decode order) cut to its first `keep` (a fraction); the packets'
    (pts, key frame) in decode order. (A packet cut short is always noticed by these decoders: the frame is flagged
    or never comes out. Bytes flipped inside a packet may not be, and cannot be told from a picture.)"""
    packets = []
    with av.open(str(src)) as clip, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(clip.streams.video[0])
        for packet in clip.demux(clip.streams.video[0]):
            if not packet.size:
                continue
            packets.append((packet.pts, packet.is_keyframe))
            if len(packets) - 1 == k:
                cut = av.Packet(bytes(packet)[: max(8, int(packet.size * keep))])
                cut.pts, cut.dts, cut.duration = packet.pts, packet.dts, packet.duration
                cut.time_base, cut.is_keyframe = packet.time_base, packet.is_keyframe
                packet = cut
            packet.stream = stream
            out.mux(packet)
    return packets


@pytest.mark.skipif(not CODECS, reason="this PyAV build has none of the encoders")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    codec=st.sampled_from(CODECS),
    container=st.sampled_from(sorted(SUFFIXES)),
    gop=st.sampled_from([6, 12, 50]),
    lost=st.integers(0, N - 1),
    keep=st.sampled_from([0.1, 0.3, 0.6]),
    threads=st.booleans(),
)
def test_no_frame_decoded_from_a_lost_one_passes(
    tmp_path: Path, codec: str, container: str, gop: int, lost: int, keep: float, threads: bool
) -> None:
    # x264's first packet cut to its first tenth holds no slice (its settings SEI is long): the MPEG-TS parser merges
    # what is left with the next frame's, which then has no packet of its own (a gap in the timestamps, not named)
    assume(not (container == "mpegts" and codec == "libx264" and lost == 0 and keep == 0.1))
    suffix = SUFFIXES[container]
    clean = encode(tmp_path / f"clean{suffix}", codec, gop)
    damaged = tmp_path / f"damaged{suffix}"
    packets = cut_packet(clean, damaged, lost, keep)
    with VideoReader(clean) as video:
        pictures = {f.index: f.rgb for f in video.frames()}
    assert len(pictures) == N and not video.report.dropped
    with VideoReader(damaged, threads=threads) as video:
        passed = {f.index: f.rgb for f in video.frames()}
    named = [d.index for d in video.report.dropped]
    assert sorted([*passed, *named]) == list(range(N))  # every frame passed on or named, once
    for i, rgb in passed.items():  # nothing concealed passes as a recorded picture
        assert np.array_equal(rgb, pictures[i]), f"frame {i} passed on but not the recorded picture"
    shown_at = {pts: i for i, pts in enumerate(sorted(p for p, _ in packets))}
    before = {shown_at[pts] for pts, _ in packets[:lost]}
    assert before <= passed.keys(), f"frames decoded before the loss dropped: {sorted(before - passed.keys())}"
    assert lost in {decode_of for decode_of, (pts, _) in enumerate(packets) if shown_at[pts] in named}
    # the decoder may lose more frames for the one (B frames whose reference is gone): from the key frame after the
    # last frame named lost or damaged, in decode order, the frames shown no earlier than it are clean again
    decoded_at = {shown_at[pts]: j for j, (pts, _) in enumerate(packets)}
    last = max(decoded_at[d.index] for d in video.report.dropped if not d.concealed)
    key = next((j for j in range(last + 1, len(packets)) if packets[j][1]), None)
    if key is not None:
        after = {shown_at[pts] for pts, _ in packets[key:] if pts >= packets[key][0]}
        assert after <= passed.keys(), f"frames from the key frame on dropped: {sorted(after - passed.keys())}"
    concealed = [d for d in video.report.dropped if d.concealed]
    assert all(d.reason.startswith(("decoded from frame", "decoded before")) for d in concealed)
    with av.open(str(clean)) as clip:
        kind = {f.pts: f.pict_type for f in clip.decode(video=0)}[packets[lost][0]]
    if codec != "libx264" and kind == PictureType.B:  # no MPEG-2 / MPEG-4 frame refers to a B frame: it costs itself
        assert not concealed and named == [shown_at[packets[lost][0]]], video.report.dropped


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264 encoder")
def test_an_h264_frame_no_frame_refers_to_costs_only_itself(tmp_path: Path) -> None:
    """x264's B frames with nal_ref_idc 0 (its pyramid keeps the middle one as a reference): cut short, each costs
    only itself; a referenced one costs the frames decoded after it up to the key frame."""
    clean = encode(tmp_path / "clean.mp4", "libx264", 50)
    with av.open(str(clean)) as clip:
        stream = clip.streams.video[0]
        first = [bytes(p)[4] for p in clip.demux(stream) if p.size]  # x264's MP4: a frame's first NAL unit header
    slices = [i for i, h in enumerate(first) if h & 0x1F == 1]  # non-IDR slices
    unreferenced = next(i for i in slices if not first[i] & 0x60)  # nal_ref_idc 0
    referenced = next(i for i in slices if first[i] & 0x60)
    for k, refers in ((unreferenced, False), (referenced, True)):
        cut_packet(clean, tmp_path / "damaged.mp4", k, 0.3)
        with VideoReader(tmp_path / "damaged.mp4") as video:
            list(video.frames())
        concealed = [d.index for d in video.report.dropped if d.concealed]
        assert bool(concealed) == refers and len(video.report.dropped) > 0, (k, video.report.dropped)
