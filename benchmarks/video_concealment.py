"""Frames decoded from a damaged or missing one, and what medcad passes on: a colonoscopy-like clip (a slow pan
over a real Kvasir-SEG frame, 640 x 480, 250 frames at 25 frames/s; H.264 by x264 with its default 3 B frames,
MPEG-2 with 2 B frames, HEVC by x265, VP9; a key frame every 50) with one packet at a time, at 12 places in decode
order that are not key frames, cut short (`--damage cut`: as a copy cut off or a damaged sector leaves it) or dropped
whole (`--damage drop`: as a recorder, capture card or remux that lost it leaves it); or (`--damage never`) the clip
encoded without the frames at those 12 places, as a camera or capture card that dropped them before the encoder
leaves it (nothing refers to them: every frame should pass). Each damaged clip is read with `VideoReader`; every
frame passed on is compared with the undamaged clip's decode of the frame at the same time.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/video_concealment.py [--damage drop|never]
        [--codec mpeg2video|libx265|libvpx-vp9] [--out benchmarks/results/video_concealment.json]

Reports, over the 12 clips: frames passed on that are not the recorded picture (and by how many grey levels, mean
and largest), frames named (lost or damaged; decoded from one), frames' time in the report's time gaps, and the
reading speed of the undamaged clip (frames/s, median of 3). Runs against any medcad tree (PYTHONPATH) that has
`medcad.data.video.VideoReader`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import av
import cv2
import numpy as np
from common import scratch, write_result

from medcad.data.video import VideoReader

HERE = Path(__file__).resolve().parent
KVASIR = HERE.parent.parent / "shared" / "data" / "kvasir-seg" / "images"
W, H, N, GOP = 640, 480, 250, 50


def pan(path: Path, codec: str, never: frozenset[int] = frozenset()) -> Path:
    """The clip: a 640 x 480 window moving over a Kvasir-SEG frame scaled to 1.6x, a pixel or two a frame; the frames
    `never` not given to the encoder (their times left empty)."""
    source = sorted(KVASIR.glob("*.jpg"))[0]
    image = cv2.imread(str(source))[:, :, ::-1]
    big = cv2.resize(image, (int(W * 1.6), int(H * 1.6)), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = W, H, "yuv420p", GOP
        if codec == "mpeg2video":
            stream.codec_context.max_b_frames, stream.bit_rate = 2, 8_000_000
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in (i for i in range(N) if i not in never):
            x = int((big.shape[1] - W) * (0.5 + 0.5 * np.sin(i / 40)))
            y = int((big.shape[0] - H) * (0.5 + 0.5 * np.cos(i / 55)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y : y + H, x : x + W]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def damage(src: Path, dst: Path, k: int, how: str, keep: float = 0.3) -> None:
    """`src` copied to `dst` with packet k (decode order) cut to its first `keep` (`how` "cut") or left out ("drop")."""
    with av.open(str(src)) as clip, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(clip.streams.video[0])
        packets = (p for p in clip.demux(clip.streams.video[0]) if p.size)
        for i, packet in enumerate(packets):
            if i == k and how == "drop":
                continue
            if i == k:
                short = av.Packet(bytes(packet)[: int(packet.size * keep)])
                short.pts, short.dts, short.duration = packet.pts, packet.dts, packet.duration
                short.time_base, short.is_keyframe = packet.time_base, packet.is_keyframe
                packet = short
            packet.stream = stream
            out.mux(packet)


def read(path: Path) -> tuple[dict[float, np.ndarray], object]:
    """The frames passed on, by time (a frame missing from the file takes no number: indices shift), and the report."""
    with VideoReader(path) as video:
        frames = {f.time_s: f.rgb for f in video.frames()}
    return frames, video.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--damage", choices=["cut", "drop", "never"], default="cut")
    parser.add_argument("--codec", choices=["libx264", "mpeg2video", "libx265", "libvpx-vp9"], default="libx264")
    parser.add_argument("--out", default=str(HERE / "results" / "video_concealment.json"))
    args = parser.parse_args()
    with scratch() as tmp:
        clean = pan(Path(tmp) / "clean.mp4", args.codec)
        pictures, _ = read(clean)
        speeds = []
        for _ in range(3):
            start = time.perf_counter()
            read(clean)
            speeds.append(N / (time.perf_counter() - start))
        with av.open(str(clean)) as clip:
            keys = [p.is_keyframe for p in clip.demux(video=0) if p.size]
        places = [k for k in np.linspace(5, N - 5, 12).astype(int) if not keys[k]]
        wrong, errors, named, concealed, gaps = 0, [], 0, 0, 0
        if args.damage == "never":  # one clip, the frames at the 12 places never encoded: nothing in it is missing,
            # so each frame's reference is its own decode (FFmpeg's, all frames), not the clean clip's (encoded apart)
            pan(Path(tmp) / "damaged.mp4", args.codec, frozenset(int(k) for k in places))
            with av.open(str(Path(tmp) / "damaged.mp4")) as clip:
                pictures = {round(float(f.time), 6): f.to_ndarray(format="rgb24") for f in clip.decode(video=0)}
        for k in places if args.damage != "never" else places[:1]:
            if args.damage != "never":
                damage(clean, Path(tmp) / "damaged.mp4", int(k), args.damage)
            frames, report = read(Path(tmp) / "damaged.mp4")
            named += len(report.dropped)
            concealed += sum(bool(getattr(d, "concealed", False)) for d in report.dropped)
            gaps += sum(g.frames for g in getattr(report, "gaps", []))
            for t, rgb in frames.items():
                off = np.abs(rgb.astype(np.int16) - pictures[t].astype(np.int16))
                if off.any():
                    wrong += 1
                    errors.append((float(off.mean()), int(off.max())))
    result = {
        "clip": f"{W}x{H}, {N} frames, {args.codec} (key frame every {GOP}), pan over {KVASIR.name}/",
        "damage": {
            "cut": "packet cut to its first 30 %",
            "drop": "packet left out whole",
            "never": "frames never given to the encoder (one clip)",
        }[args.damage],
        "damaged_clips": 1 if args.damage == "never" else len(places),
        "packets_damaged": [int(k) for k in places],
        "frames_passed_not_the_recorded_picture": wrong,
        "their_mean_abs_error_grey_levels": round(statistics.mean(e[0] for e in errors), 2) if errors else 0.0,
        "their_largest_error_grey_levels": max((e[1] for e in errors), default=0),
        "frames_named": named,
        "frames_named_as_decoded_from_a_damaged_one": concealed,
        "frames_time_in_time_gaps": gaps,
        "clean_clip_read_frames_per_s": [round(s, 1) for s in speeds],
        "clean_clip_read_frames_per_s_median": round(statistics.median(speeds), 1),
    }
    print(result)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
