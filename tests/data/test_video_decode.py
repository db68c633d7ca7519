"""Video decoding through PyAV, on real files made here: a damaged frame is skipped and reported (the frames after it
are still read), a truncated file gives the frames before the cut and says so, times are the presentation
timestamps (variable frame rate), rotation metadata turns frames upright."""

from __future__ import annotations

import csv
import json
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from medcad.data.frame_extraction import extract_frames
from medcad.data.layouts import load_manifest
from medcad.data.video import VideoReader, probe_video
from medcad.errors import ConfigError, DataError

H, W, N = 48, 64, 30


def picture(i: int) -> np.ndarray:
    """Frame i: red level 8 i (read back to tell frames apart), a white top-left quadrant (to tell orientation)."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 8 * i
    rgb[: H // 2, : W // 2] = 255
    return rgb


def encode(
    path: Path,
    n: int = N,
    codec: str = "mpeg4",
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    options: dict | None = None,
    first: int = 0,
    gop: int | None = None,
) -> Path:
    """A real clip of `n` frames of `picture` (from picture `first` on), at 25 frames/s or at the given timestamps;
    `gop`: a key frame every `gop` frames (the encoder's default otherwise)."""
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.bit_rate = 2_000_000  # near lossless: frame k reads back as picture k
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if gop is not None:
            stream.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(picture(first + i), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def garble_packet(path: Path, k: int) -> None:
    """Overwrite the data of the k-th packet (in file order) with random bytes."""
    with av.open(str(path)) as clip:
        where = [(p.pos, p.size) for p in clip.demux(video=0) if p.size]
    pos, size = where[k]
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def read_all(path: Path) -> tuple[list, VideoReader]:
    with VideoReader(path) as video:
        frames = list(video.frames())
    return frames, video


@pytest.mark.parametrize(
    ("name", "codec", "concealed"), [("clip.avi", "mjpeg", []), ("clip.mp4", "mpeg4", [13, 14, 15])]
)
def test_a_corrupt_frame_is_skipped_and_reported(tmp_path: Path, name: str, codec: str, concealed: list[int]) -> None:
    """A lost frame is named; so are the frames decoded from it up to the next key frame (MPEG-4 with a key frame
    every 4: 13-15; MJPEG: none, each frame its own); every frame after those is read."""
    clip = encode(tmp_path / name, codec=codec, gop=4)
    garble_packet(clip, 12)  # no B-frames: packet 12 is frame 12
    frames, video = read_all(clip)
    assert [f.index for f in frames] == [i for i in range(N) if i != 12 and i not in concealed]
    assert [f.time_s for f in frames] == pytest.approx([f.index / 25 for f in frames])
    for f in frames:
        assert abs(float(f.rgb[H // 2 :, :, 0].mean()) - 8 * f.index) < 6  # frame k is picture k
    report = video.report.as_dict()
    assert report["frames_decoded"] == N - 1 - len(concealed) and report["frames_dropped"] == 1 + len(concealed)
    lost = {"frame": 12, "time_s": pytest.approx(0.48), "reason": "could not be decoded", "concealed": False}
    assert report["dropped_frames"] == [lost] + [
        {
            "frame": k,
            "time_s": pytest.approx(k / 25),
            "reason": "decoded from frame 12, lost or damaged (the decoder conceals it: not the recorded picture; "
            "clean again from the next key frame)",
            "concealed": True,
        }
        for k in concealed
    ]
    assert not report["truncated"]
    assert "1 frame(s) not decodable, skipped: 12 (0.480 s)" in video.report.notes()[0]
    if concealed:
        assert "3 frame(s) decoded from a lost, damaged or missing frame" in video.report.notes()[1]


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [("cut.avi", "mjpeg", {}), ("cut.mp4", "mpeg4", {"movflags": "faststart"}), ("cut.mkv", "mpeg4", {})],
)
def test_a_truncated_file_gives_the_frames_before_the_cut(tmp_path: Path, name: str, codec: str, options) -> None:
    clip = encode(tmp_path / name, codec=codec, options=options)
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) * 55 // 100])
    frames, video = read_all(clip)
    n = len(frames)
    assert 3 <= n < N and [f.index for f in frames] == list(range(n))
    assert all(abs(float(f.rgb[H // 2 :, :, 0].mean()) - 8 * f.index) < 6 for f in frames)
    report = video.report
    assert report.truncated and "truncated" in " ".join(report.notes())
    assert [d.index for d in report.dropped] in ([], [n])  # a frame cut in half is listed, not passed on half grey


def test_an_mp4_cut_before_its_index_names_the_file(tmp_path: Path) -> None:
    clip = encode(tmp_path / "noindex.mp4")  # the index (moov) is written last
    clip.write_bytes(clip.read_bytes()[:1500])
    with pytest.raises(DataError, match="noindex.mp4.*cannot decode this video"):
        VideoReader(clip)


@pytest.mark.parametrize(("name", "codec"), [("vfr.mkv", "mpeg4"), ("vfr.mp4", "libx264")])
def test_variable_frame_rate_times_are_the_timestamps(tmp_path: Path, name: str, codec: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    pts = [0, 40, 100, 120, 300, 333, 400, 700, 720, 1000]  # milliseconds
    clip = encode(tmp_path / name, n=len(pts), codec=codec, pts=pts, time_base=Fraction(1, 1000))
    frames, video = read_all(clip)
    assert [f.index for f in frames] == list(range(len(pts)))
    assert [f.time_s for f in frames] == pytest.approx([p / 1000 for p in pts])  # not index / fps
    assert video.report.times_from == "timestamps" and not video.report.dropped


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    clip = encode(tmp_path / "portrait.mp4", n=3, rotation=90)  # shown turned 90 degrees counter-clockwise
    frames, video = read_all(clip)
    assert video.report.rotation == 90 and "rotation metadata applied" in video.report.notes()[0]
    rgb = frames[0].rgb
    assert rgb.shape == (W, H, 3) and rgb.flags.c_contiguous
    assert rgb[-W // 4, H // 4].min() > 200 and rgb[W // 4, H // 4].max() < 60  # top-left quadrant now bottom-left
    assert probe_video(clip).width == H


def test_extract_frames_writes_times_and_the_decode_report(tmp_path: Path) -> None:
    pts = [0, 40, 100, 120, 300, 333, 400, 700, 720, 1000]
    clip = encode(tmp_path / "clip.mp4", n=len(pts), pts=pts, time_base=Fraction(1, 1000), gop=1)
    garble_packet(clip, 4)
    manifest = extract_frames(clip, tmp_path / "frames", every=2)
    rows = list(csv.DictReader(manifest.open()))
    assert [int(r["video_frame"]) for r in rows] == [0, 2, 6, 8]  # frame 4 is lost
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.1, 0.4, 0.72])
    decoded = json.loads((tmp_path / "frames" / "decode.json").read_text())
    assert decoded["frames_dropped"] == 1 and decoded["dropped_frames"][0]["time_s"] == pytest.approx(0.3)
    # medcad reads its own manifest back whole: the video's frame number is no page of a PNG (a `frame_index`
    # column had been read as `frame`, and `data inspect` ended in a bare "Aborted.")
    m = load_manifest(manifest)
    assert len(m) == 4 and not m.problems and list(m.table["patient"]) == ["clip"] * 4
    with pytest.raises(ConfigError, match="every 0"):
        extract_frames(clip, tmp_path / "none", every=0)

    # a frame column naming pages a file does not have: that row named, the others read
    rows[1]["frame"] = "2"
    with (tmp_path / "frames" / "paged.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "frame"])
        writer.writeheader()
        writer.writerows(rows)
    m = load_manifest(tmp_path / "frames" / "paged.csv", allow_missing=True)
    with pytest.raises(DataError, match="no manifest.csv or manifest.tsv"):
        load_manifest(tmp_path / "frames" / "frames", layout="csv")
    problem = "the frame column names page '2', but the file is a single page"
    assert len(m) == 3 and m.problems == [(rows[1]["image"], problem)]


def test_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2000)
    with pytest.raises(DataError, match="broken.mp4.*cannot decode this video"):
        probe_video(bad)
    with pytest.raises(DataError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")


def test_a_short_loop_cut_near_its_end_is_reported(tmp_path: Path) -> None:
    """An MKV (no stream duration) missing its last frames, under the 0.5 s once allowed for an audio track."""
    clip = encode(tmp_path / "loop.mkv", codec="mpeg4")
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) * 80 // 100])
    frames, video = read_all(clip)
    assert len(frames) < N and (N - len(frames)) / 25 < 0.5
    assert video.report.truncated, video.report.as_dict()


def test_transport_streams_and_webm_are_videos(tmp_path: Path) -> None:
    """.ts (recorders' MPEG transport streams) and .webm were taken for images by predict."""
    from medcad.data.filekinds import is_video

    assert all(is_video(f"x{s}") for s in (".ts", ".m2ts", ".mts", ".webm", ".3gp", ".ogv", ".flv", ".vob"))
    frames, video = read_all(encode(tmp_path / "clip.ts", codec="mpeg4"))
    assert len(frames) == N and not video.report.truncated


def test_a_damaged_mjpeg_frame_is_dropped_and_named_not_predicted(tmp_path: Path) -> None:
    """100 bytes zeroed inside frame 10's JPEG (of 664): FFmpeg decoded it as a smear without an error, so it passed
    as a picture; it is now a dropped frame with its index and time."""
    clip = encode(tmp_path / "clip.avi", codec="mjpeg")
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[10] + 400 : starts[10] + 500] = bytes(100)
    clip.write_bytes(bytes(data))
    frames, video = read_all(clip)
    assert [f.index for f in frames] == [i for i in range(N) if i != 10]
    assert [d.index for d in video.report.dropped] == [10]


def test_a_dicom_cine_is_read_as_a_video_timed_by_its_header(tmp_path: Path) -> None:
    """`data frames` on an ultrasound cine DICOM had said "corrupt video, or an MP4 cut off before its index", then
    that a DICOM is no video; a cine is now read as one: its frames in order, timed by Frame Time Vector, Frame Time
    or Cine Rate (said), a truncated file's whole frames read and the rest named."""
    from conftest import write_dicom
    from medcad.data.frame_extraction import extract_frames
    from medcad.data.video import open_video, probe_video

    frames = (np.arange(5)[:, None, None] * 10000 + np.zeros((5, 16, 16))).astype(np.uint16)
    for attrs, times, said in (
        ({"FrameTimeVector": [0, 30, 30, 40, 40]}, [0, 0.03, 0.06, 0.1, 0.14], "Frame Time Vector"),
        ({"FrameTime": 50}, [0, 0.05, 0.1, 0.15, 0.2], "FrameTime"),
        ({"CineRate": 10}, [0, 0.1, 0.2, 0.3, 0.4], "CineRate"),
        ({}, [0, 0.04, 0.08, 0.12, 0.16], "assumed rate of 25 frames/s"),
    ):
        cine = write_dicom(tmp_path / "IM00001", frames, **attrs)
        with open_video(cine) as video:
            got = list(video.frames())
        assert [f.index for f in got] == list(range(5)) and [f.time_s for f in got] == pytest.approx(times)
        assert [int(f.rgb[0, 0, 0]) for f in got] == [round(k * 10000 / 65535 * 255) for k in range(5)]  # in order
        assert said in video.report.times_from and probe_video(cine).estimated_frames == 5
    data = cine.read_bytes()
    cine.write_bytes(data[: len(data) - 2 * 16 * 16 - 10])  # the last frame and a bit of the one before cut off
    with open_video(cine) as video:
        assert [f.index for f in video.frames()] == [0, 1, 2]
    assert [d.index for d in video.report.dropped] == [3, 4] and "truncated" in video.report.dropped[0].reason
    manifest = extract_frames(cine, tmp_path / "frames", every=2)
    assert [r.split(",")[1] for r in manifest.read_text().splitlines()[1:]] == ["0", "2"]
    with pytest.raises(DataError, match="a single-frame DICOM"):
        open_video(write_dicom(tmp_path / "one.dcm", frames[:1]))


def test_a_compressed_cine_is_read_in_one_pass_and_a_bad_frame_costs_only_itself(tmp_path: Path) -> None:
    """An RLE cine without an offset table, its frame 2 undecodable: the others are read in order and equal what
    reading each frame alone gives; frame 2 is named with pydicom's reason (the cine had been read frame by frame,
    each found from the file's start again)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_fragmented_frames
    from pydicom.uid import RLELossless

    from conftest import write_dicom
    from medcad.data.dicom import read_dicom_frame
    from medcad.data.video import open_video

    frames = (np.arange(6)[:, None, None] * 9000 + np.arange(16 * 16).reshape(16, 16) * 7).astype(np.uint16)
    cine = write_dicom(tmp_path / "loop.dcm", frames, FrameTime=40)
    ds = pydicom.dcmread(cine)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    parts = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=6)]
    parts[2] = (99).to_bytes(4, "little") + parts[2][4:]  # an RLE header of 99 segments
    ds.PixelData = encapsulate(parts, has_bot=False)
    ds.save_as(cine)
    with open_video(cine) as video:
        got = list(video.frames())
    assert [f.index for f in got] == [0, 1, 3, 4, 5]
    for f in got:
        assert np.array_equal(f.rgb, read_dicom_frame(cine, f.index))
    assert [d.index for d in video.report.dropped] == [2] and "cannot decode" in video.report.dropped[0].reason
    assert video.report.frames_decoded == 5


def _picture_of(rgb: np.ndarray) -> int:
    """Which `picture` a decoded frame shows (its red level, read away from the white quadrant)."""
    return int(round(float(rgb[H // 2 + 4 :, W // 2 + 4 :, 0].mean()) / 8))


def test_b_frames_in_avi_are_numbered_and_timed_as_shown(tmp_path: Path) -> None:
    """AVI holds no presentation times: FFmpeg's made-up timestamps come out shuffled for H.264 with B-frames
    (1, 2, 4, 5, 3, ...); the frames are numbered in display order all the same, every k-th is the k-th picture, a
    cut file gives its first frames so numbered (a frame lost near the cut cannot be placed: AVI says nothing of
    display order)."""
    clip = encode(tmp_path / "b.avi", codec="libx264", options={})
    with av.open(str(clip)) as c:  # the premise: the shuffled timestamps this is about
        shown = [f.pts for f in c.decode(video=0)]
    assert shown != sorted(shown)
    frames, video = read_all(clip)
    assert [f.index for f in frames] == list(range(N)) == [_picture_of(f.rgb) for f in frames]
    assert [f.time_s for f in frames] == pytest.approx([i / 25 for i in range(N)])
    assert video.report.times_from.startswith("frame rate") and any("frame rate" in n for n in video.report.notes())
    with VideoReader(clip) as again:
        assert [(f.index, _picture_of(f.rgb)) for f in again.frames(every=3)] == [(i, i) for i in range(0, N, 3)]
    with av.open(str(clip)) as c:
        starts = [p.pos for p in c.demux(video=0) if p.size]
    (tmp_path / "cut.avi").write_bytes(clip.read_bytes()[: starts[20] + 10])  # inside packet 20, the index gone
    frames, video = read_all(tmp_path / "cut.avi")
    assert video.report.truncated and 15 < len(frames) < N  # frames around the cut may be lost, unplaceable
    assert [f.index for f in frames[:15]] == [_picture_of(f.rgb) for f in frames[:15]]


def _with_display_matrix(path: Path, a: int, b: int, c: int, d: int) -> None:
    """Write the track header's matrix (a b / c d, shifted to stay on screen) as a camera or editor does."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") + 4 + 4 + 20 + 8 + 8  # version-0 tkhd: the matrix after times, duration, layer, volume
    fixed = [struct.pack(">i", v * 65536) for v in (a, b, c, d)]
    shift = [struct.pack(">i", v * 65536) for v in (W * (a < 0 or c < 0), H * (b < 0 or d < 0))]
    w = struct.pack(">i", 0x40000000)  # 1 in 2.30 fixed point
    data[at : at + 36] = fixed[0] + fixed[1] + bytes(4) + fixed[2] + fixed[3] + bytes(4) + b"".join(shift) + w
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("a", "b", "c", "d"),
    [(1, 0, 0, 1), (-1, 0, 0, 1), (1, 0, 0, -1), (-1, 0, 0, -1), (0, 1, -1, 0), (0, -1, 1, 0), (0, 1, 1, 0)]
    + [(0, -1, -1, 0)],
)
def test_the_display_matrix_turns_and_mirrors_as_players_show(tmp_path: Path, a, b, c, d) -> None:
    """Each of the 8 rotations and mirrorings: a pixel at (x, y) is shown at (a x + c y, b x + d y), shifted onto
    the screen (the matrix's meaning in ISO/IEC 14496-12); a mirror had been taken for a 180-degree turn."""
    clip = encode(tmp_path / "m.mp4", n=2)
    _with_display_matrix(clip, a, b, c, d)
    frames, video = read_all(clip)
    with av.open(str(encode(tmp_path / "plain.mp4", n=2))) as plain:
        source = next(plain.decode(video=0)).to_ndarray(format="rgb24")
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    dx, dy = a * xs + c * ys, b * xs + d * ys
    dx, dy = dx - dx.min(), dy - dy.min()
    want = np.zeros((dy.max() + 1, dx.max() + 1, 3), np.uint8)
    want[dy, dx] = source
    np.testing.assert_array_equal(frames[0].rgb, want)
    assert video.report.mirrored is (a * d - b * c < 0)


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_recordings_joined_in_one_file_follow_each_other(tmp_path: Path, codec: str) -> None:
    """Two MPEG-TS recordings joined byte for byte (as recorders' parts are): the second's timestamps start again.
    Its frames follow the first's in number and time, and where it starts is said; frames had been matched across
    the parts by timestamp, numbered among the first part's and good frames reported undecodable."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    a = encode(tmp_path / "a.ts", n=15, codec=codec)
    b = encode(tmp_path / "b.ts", n=15, codec=codec, first=15)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    frames, video = read_all(joined)
    report = video.report.as_dict()
    assert report["time_restarts"] == [15] and "timestamps start again at frame(s) 15" in " ".join(video.report.notes())
    assert all(_picture_of(f.rgb) == f.index for f in frames)  # frame k is picture k: no part's frames interleaved
    times = [f.time_s for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)  # on from the first part, never back
    assert not any(d["reason"] == "could not be decoded" for d in report["dropped_frames"])
    # the transport stream's continuity break at the join can mark a packet of the first part damaged: said, and the
    # first part's frames decoded from it; the second part, from its key frame, is whole
    assert len(frames) + report["frames_dropped"] == 30 and all(d["frame"] < 15 for d in report["dropped_frames"])
    assert report["frames_dropped"] <= 3


def test_a_matroska_clip_whose_frames_start_late_is_whole(tmp_path: Path) -> None:
    """Matroska's duration counts from the segment's time 0: a clip whose frames start at 5 s announces its end, not
    its length (it had been reported truncated, and 155 frames estimated of 30, which a server's limit refused)."""
    pts = [5000 + 40 * i for i in range(N)]  # milliseconds
    clip = encode(tmp_path / "late.mkv", pts=pts, time_base=Fraction(1, 1000))
    with VideoReader(clip) as video:
        frames = list(video.frames())
        assert video.estimated_frames == N
    assert len(frames) == N and not video.report.truncated
    assert [f.time_s for f in frames] == pytest.approx([i * 0.04 for i in range(N)])


def test_a_decode_timestamp_glitch_is_no_new_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One packet's decode timestamp a frame back (as damaged or captured files have) is a glitch within one
    timeline, not a joined recording: it had made 20 of 30 frames 'could not be decoded'."""
    if "libx264" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx264 encoder")
    clip = encode(tmp_path / "glitch.ts", n=N, codec="libx264")
    packets = VideoReader._decoded_packets

    def glitch(self):
        for i, (packet, decoded, failed) in enumerate(packets(self)):
            if i == 10 and packet is not None and packet.dts is not None:
                packet.dts -= 3700  # a frame and a tick back, at 90 kHz
            yield packet, decoded, failed

    monkeypatch.setattr(VideoReader, "_decoded_packets", glitch)
    frames, video = read_all(clip)
    assert [f.index for f in frames] == list(range(N)) and not video.report.dropped and not video.report.restarts


def test_a_clip_cut_by_stream_copy_between_key_frames_is_read_whole(tmp_path: Path) -> None:
    """A clip cut at a frame that is not a key frame by stream copy (as `ffmpeg -ss T -c copy` does) starts from the
    key frame before the cut, its packets up to the cut marked to decode as references and not to show: the frames
    shown are read, none named lost (the 10 hidden ones had been listed "could not be decoded")."""
    source = encode(tmp_path / "source.mp4", n=N, codec="mpeg4", gop=10)  # key frames 0, 10, 20
    cut = tmp_path / "cut.mp4"
    with av.open(str(source)) as src, av.open(str(cut), "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        per_frame = round(1 / (25 * stream.time_base))
        for packet in src.demux(stream):
            if packet.size and packet.pts is not None and packet.pts >= 10 * per_frame:  # from key frame 10 on
                packet.pts -= 14 * per_frame  # shown from frame 14 on: 10-13 before time 0
                packet.dts -= 14 * per_frame
                packet.stream = copy
                out.mux(packet)
    with av.open(str(cut)) as clip:
        assert sum(p.is_discard for p in clip.demux(video=0) if p.size) == 4  # what the cut made of frames 10-13
    frames, video = read_all(cut)
    assert [f.index for f in frames] == list(range(N - 14)) and not video.report.dropped
    for f in frames:
        assert abs(float(f.rgb[H // 2 :, :, 0].mean()) - 8 * (14 + f.index)) < 6  # frame k is picture 14 + k
    assert [f.time_s for f in frames] == pytest.approx([k / 25 for k in range(N - 14)])


def test_dicom_pixels_that_are_not_square_are_said(tmp_path: Path) -> None:
    """A DICOM cine or image whose pixels are not square (Pixel Aspect Ratio, Pixel Spacing, or an ultrasound
    region's Physical Delta X / Y): read at its stored size and said, as for videos (`sample_aspect_ratio`: a pixel's
    width to its height); square within 1 % is square."""
    from pydicom.dataset import Dataset

    from conftest import write_dicom
    from medcad.data.io import describe_image
    from medcad.data.video import open_video

    frames = np.zeros((3, 16, 16), np.uint16)
    doppler, tissue = Dataset(), Dataset()  # a spectral Doppler region (s against cm/s), then a B-mode one (cm)
    doppler.PhysicalUnitsXDirection, doppler.PhysicalUnitsYDirection, doppler.PhysicalDeltaX = 4, 7, 0.01
    doppler.PhysicalDeltaY = 2.5
    tissue.PhysicalUnitsXDirection = tissue.PhysicalUnitsYDirection = 3
    tissue.PhysicalDeltaX, tissue.PhysicalDeltaY = 0.02, 0.01
    spacing, measures = Dataset(), Dataset()
    spacing.PixelSpacing = [0.3, 0.32]
    measures.PixelMeasuresSequence = [spacing]
    for attrs, aspect in (
        ({"PixelAspectRatio": [15, 16]}, "16:15"),  # vertical \ horizontal size
        ({"PixelSpacing": [0.3, 0.32]}, "16:15"),  # row spacing \ column spacing
        ({"SequenceOfUltrasoundRegions": [doppler, tissue]}, "2:1"),
        ({"SequenceOfUltrasoundRegions": [doppler]}, None),
        ({"SharedFunctionalGroupsSequence": [measures]}, "16:15"),  # an enhanced multi-frame object's
        ({"PixelSpacing": [0.3, 0.302]}, None),
        ({}, None),
    ):
        cine = write_dicom(tmp_path / "cine.dcm", frames, **attrs)
        with open_video(cine) as video:
            assert len(list(video.frames())) == 3 and video.report.sample_aspect_ratio == aspect, attrs
        still = write_dicom(tmp_path / "still.dcm", frames[:1], **attrs)
        said = [n for n in describe_image(still) if "not square" in n]
        assert said == (
            [f"pixels not square (sample aspect ratio {aspect}): read at their stored size"] if aspect else []
        )
