"""Videos: frame extraction with sharpness, frame-by-frame prediction with smoothing, damaged and variable-frame-rate
clips (the lost frame listed, the real times), clear errors."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from typer.testing import CliRunner

from medcad.cli import app

runner = CliRunner()


def make_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def make_damaged_vfr_video(path: Path, frames: list[np.ndarray], times_ms: list[int], damaged: int) -> Path:
    """An MPEG-4 clip with the given frame times, a key frame at least every 6 (and where the picture changes),
    whose frame `damaged` holds random bytes."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.bit_rate = "yuv420p", 2_000_000
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.gop_size = 6
        for rgb, t in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with av.open(str(path)) as clip:
        pos, size = [(p.pos, p.size) for p in clip.demux(video=0) if p.size][damaged]  # no B-frames: frame order
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_frames_and_video_prediction(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    images = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))]
    blurred = [cv2.GaussianBlur(im, (9, 9), 5) for im in images[:4]]
    video = make_video(tmp_path / "clip.mp4", (images + blurred) * 2)

    res = runner.invoke(
        app, ["data", "frames", str(video), "--every", "4", "--out", str(tmp_path / "frames"), "--blur-threshold", "50"]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "frames" / "manifest.csv")))
    assert len(rows) == 8 and all(float(r["sharpness"]) >= 0 for r in rows)
    assert (tmp_path / "frames" / rows[0]["image"]).is_file()

    res = runner.invoke(app, ["predict", str(tiny_run), str(video), "--out", str(tmp_path / "pred"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)[0]
    assert summary["frames_predicted"] == 32 and summary["frames_per_s"] > 0
    per_frame = list(csv.DictReader(open(summary["csv"])))
    assert [int(r["frame"]) for r in per_frame] == list(range(32))
    assert {r["smoothed"] for r in per_frame} <= {"lesion", "normal"}
    assert [float(r["time_s"]) for r in per_frame] == [i / 25 for i in range(32)]
    assert summary["frames_dropped"] == 0 and summary["dropped_frames"] == [] and not summary["truncated"]
    cap = cv2.VideoCapture(summary["annotated"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 32

    # one damaged frame of a variable-frame-rate clip: skipped and listed, and so are the frames decoded from it up
    # to the next key frame (the decoder conceals the loss); every frame from the key frame on predicted
    times = [0, 40, 100, 120, 300, 333, 400, 700, 720, 1000, 1010, 1500]
    damaged = make_damaged_vfr_video(tmp_path / "damaged.mp4", images[: len(times)], times, damaged=4)
    with av.open(str(damaged)) as clip:  # no B frames: packets in frame order
        key = next(i for i, p in enumerate(p for p in clip.demux(video=0) if p.size) if i > 4 and p.is_keyframe)
    gone = [4, *range(5, key)]
    assert len(gone) > 1
    res = runner.invoke(app, ["data", "frames", str(damaged), "--every", "1", "--out", str(tmp_path / "dframes")])
    assert res.exit_code == 0, res.output
    assert "1 frame(s) not decodable, skipped: 4 (0.300 s)" in res.output
    what = "decoded from a lost, damaged or missing frame (concealed by the decoder"
    assert f"{len(gone) - 1} frame(s) {what}" in res.output
    rows = list(csv.DictReader(open(tmp_path / "dframes" / "manifest.csv")))
    assert [float(r["time_s"]) for r in rows] == [t / 1000 for i, t in enumerate(times) if i not in gone]
    res = runner.invoke(app, ["predict", str(tiny_run), str(damaged), "--out", str(tmp_path / "dpred"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)[0]
    assert summary["frames_predicted"] == len(times) - len(gone) and summary["frames_in_video"] == len(times)
    assert summary["frames_dropped"] == len(gone)
    assert summary["dropped_frames"][0] == {
        "frame": 4,
        "time_s": 0.3,
        "reason": "could not be decoded",
        "concealed": False,
    }
    assert [d["frame"] for d in summary["dropped_frames"][1:]] == gone[1:]
    assert all(
        d["concealed"] and d["reason"].startswith("decoded from frame 4, lost or damaged")
        for d in summary["dropped_frames"][1:]
    )
    per_frame = list(csv.DictReader(open(summary["csv"])))
    assert [int(r["frame"]) for r in per_frame] == [i for i in range(len(times)) if i not in gone]
    assert [float(r["time_s"]) for r in per_frame] == [t / 1000 for i, t in enumerate(times) if i not in gone]
    with av.open(summary["annotated"]) as annotated:  # each frame at its source time (it had been a constant rate)
        assert annotated.streams.video[0].codec_context.name == "h264"  # browsers play it (tests/report)
        shown = [round(float(f.time) * 1000) for f in annotated.decode(video=0)]
    assert shown == [t for i, t in enumerate(times) if i not in gone]


def test_a_frame_missing_from_the_file_is_named_and_so_are_those_decoded_from_it(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    """A packet left out of the file whole (a recorder or remux that lost it): no error anywhere, yet the frames
    decoded after it come out concealed. predict names the time gap and those frames, and predicts the rest."""
    images = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))]
    clip = make_video(tmp_path / "clip.mp4", (images * 4)[:16])  # MPEG-4 Part 2 in MP4, no B frames
    with av.open(str(clip)) as src, av.open(str(tmp_path / "lost.mp4"), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        packets = [p for p in src.demux(video=0) if p.size]
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        for i, packet in enumerate(packets):
            if i != 3:
                packet.stream = stream
                out.mux(packet)
    res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / "lost.mp4"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "1 frame(s)' time with no frame in the file (1 at 0.120 s, before frame 3)" in res.output, res.output
    res = runner.invoke(
        app, ["predict", str(tiny_run), str(tmp_path / "lost.mp4"), "--out", str(tmp_path / "p"), "--json"]
    )
    summary = json.loads(res.stdout)[0]
    assert summary["time_gaps"] == [{"before_frame": 3, "time_s": 0.12, "frames": 1}]
    key = next((k for k in keys if k > 3), 16)  # frames from the next key frame on are the recorded pictures
    named = [d["frame"] for d in summary["dropped_frames"]]
    assert named == list(range(3, key - 1)) and all(d["concealed"] for d in summary["dropped_frames"])
    assert summary["frames_predicted"] == 15 - len(named)


def test_undecodable_video_is_named(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2000)
    res = runner.invoke(app, ["predict", str(tiny_run), str(bad)])  # fails alone (exit 1), as a bad image does
    assert res.exit_code == 1 and "broken.mp4: cannot decode this video" in res.output
    assert "predicted 0 of 1 videos; 1 failed" in res.output
    res = runner.invoke(app, ["data", "frames", str(bad)])
    assert res.exit_code == 2 and "cannot decode" in res.output


def test_a_video_prediction_cut_off_keeps_its_frames_as_partial(tiny_run: Path, tmp_path: Path) -> None:
    """A video's prediction that fails part-way (a model error, an interruption) keeps the frames it predicted, in
    `<stem>_frames.partial.csv` beside `<stem>_annotated.partial.mp4` (nothing had been kept, and the annotated video
    was left under its final name, cut short); a whole prediction into the same folder later writes the final files
    and leaves no partial one."""
    import pytest

    from medcad.inference.registry import load_predictor
    from medcad.inference.video import predict_video

    rng = np.random.default_rng(5)
    clip = make_video(tmp_path / "clip.mp4", [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(12)])
    predictor = load_predictor(tiny_run, backend="torch-fp32")
    predict, calls = predictor.predict, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict(*args, **kwargs)

    predictor.predict = failing
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_video(predictor, clip, out, batch=4)
    assert sorted(p.name for p in out.iterdir()) == ["clip_annotated.partial.mp4", "clip_frames.partial.csv"]
    with open(out / "clip_frames.partial.csv") as f:
        assert [int(r["frame"]) for r in csv.DictReader(f)] == list(range(8))
    assert av.open(str(out / "clip_annotated.partial.mp4")).streams.video[0].frames == 8
    calls[:] = [1, 1]  # a run cut off at its first batch leaves no partial file, nor the earlier run's
    with pytest.raises(KeyboardInterrupt):
        predict_video(predictor, clip, out, batch=4)
    assert not list(out.iterdir())
    predictor.predict = predict
    summary = predict_video(predictor, clip, out, batch=4)
    assert sorted(p.name for p in out.iterdir()) == ["clip_annotated.mp4", "clip_frames.csv"]
    assert summary["frames_predicted"] == 12 and av.open(summary["annotated"]).streams.video[0].frames == 12


def test_realtime_names_the_frames_it_skips(tiny_run: Path, tmp_path: Path) -> None:
    """--realtime on a clip faster than the model: the skipped frames are listed by index (they were only counted,
    and the console said nothing), and predicted + skipped frames are every frame."""
    rng = np.random.default_rng(3)
    clip = make_video(
        tmp_path / "fast.mp4", [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(120)], 600
    )

    def predict_realtime(out: str, *extra: str):
        args = [str(tiny_run), str(clip), "-o", str(tmp_path / out), "--realtime", "--batch", "1"]
        return runner.invoke(app, ["predict", *args, "--backend", "torch-fp32", *extra])

    res = predict_realtime("out", "--json")
    assert res.exit_code == 0, res.output
    (summary,) = json.loads(res.stdout)
    skipped = summary["skipped_frames"]
    assert skipped and summary["frames_skipped"] == len(skipped)
    with open(summary["csv"]) as f:
        predicted = [int(r["frame"]) for r in csv.DictReader(f)]
    assert sorted(predicted + skipped) == list(range(120))
    res = predict_realtime("out2")
    assert "skipped by --realtime to keep pace" in res.output


def test_an_odd_sized_video_is_annotated_whole(tmp_path: Path) -> None:
    """A 21x17 source (as 721x577 PAL captures are): padded by a pixel to the even sides the encoder needs, every
    source pixel kept (it had been cropped)."""
    from medcad.inference.video import _AnnotatedVideo

    writer = _AnnotatedVideo(tmp_path / "odd.mp4", 25.0)
    frame = np.zeros((17, 21, 3), np.uint8)
    frame[:, -1] = 255  # the last column, which cropping loses
    for k in range(3):
        writer.write(frame, k / 25)
    writer.close()
    with av.open(str(tmp_path / "odd.mp4")) as clip:
        got = [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)]
    assert len(got) == 3 and got[0].shape == (18, 22, 3) and got[0][:, 20].mean() > 200


def test_videos_in_a_folder_are_predicted_as_videos(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """A folder given to predict: its images as images and its videos as videos, named (the videos had been left out
    with 'not an image or an annotation file'); a folder of videos alone is no 'no images found'."""
    frames = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))[:4]]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    make_video(mixed / "clip.mp4", frames)
    cv2.imwrite(str(mixed / "still.png"), frames[0][:, :, ::-1])
    (tmp_path / "only").mkdir()
    make_video(tmp_path / "only" / "a.mp4", frames)
    for folder, n in ((mixed, 2), (tmp_path / "only", 1), (tmp_path / "only", 1)):  # again: its own files replaced
        res = runner.invoke(
            app, ["predict", str(tiny_run), str(folder), "--json", "-o", str(tmp_path / "out" / folder.name)]
        )
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert len(out) == n and any(o.get("frames_predicted") == 4 for o in out), out
        assert "1 video(s) under" in res.output and "predicted as videos" in res.output


def test_the_annotated_video_is_tagged_with_the_colours_it_was_encoded_in(tmp_path: Path) -> None:
    """An HD annotated video is converted and tagged as BT.709, limited range: untagged, its BT.601 conversion had
    been shown with BT.709 (what players assume for untagged HD), colours off by 3-5 levels; read back as tagged, a
    saturated colour comes back within a few levels."""
    from medcad.data.video import VideoReader
    from medcad.inference.video import _AnnotatedVideo

    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, :640] = (200, 40, 60)  # a saturated red-magenta: where BT.601 and BT.709 differ most
    frame[:, 640:] = (30, 170, 90)
    writer = _AnnotatedVideo(tmp_path / "hd.mp4", 25.0)
    for k in range(3):
        writer.write(frame, k / 25)
    writer.close()
    with av.open(str(tmp_path / "hd.mp4")) as clip:
        cc = clip.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)  # BT.709, "tv"
    with VideoReader(tmp_path / "hd.mp4") as video:
        got = [f.rgb for f in video.frames()]
    assert len(got) == 3
    assert np.abs(got[1][100:600, 100:500].astype(int) - frame[100:600, 100:500]).mean(axis=(0, 1)).max() <= 4
    assert np.abs(got[1][100:600, 800:1200].astype(int) - frame[100:600, 800:1200]).mean(axis=(0, 1)).max() <= 4


def test_an_sd_recording_with_non_square_pixels_is_read_as_stored_and_annotated_as_shown(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    """A PAL recording's 720x576 frames shown at 4:3 (sample aspect ratio 16:15, as SD endoscopy towers and DVD
    recorders store them): frames read at their stored size, as ffmpeg and OpenCV extract them, and said; the
    annotated video carries the ratio, so it is shown as the source (it had been shown at 5:4, squeezed); a video
    turned a quarter by its display matrix carries the inverse. As `medcad predict` prints it, and in its JSON."""
    from medcad.data.frames import DecodeReport
    from medcad.data.video import VideoReader

    rgb = cv2.resize(cv2.imread(str(sorted((easy_set / "lesion").glob("*.png"))[0]))[:, :, ::-1], (72, 58))
    with av.open(str(tmp_path / "pal.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 72, 58, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 15)
        for _ in range(4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    with VideoReader(tmp_path / "pal.mp4") as video:
        assert [f.rgb.shape for f in video.frames()] == [(58, 72, 3)] * 4
        assert video.report.sample_aspect_ratio == "16:15" and video.report.upright_aspect() == Fraction(16, 15)
    res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / "pal.mp4"), "--json", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)[0]
    assert summary["sample_aspect_ratio"] == "16:15"
    res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / "pal.mp4"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0 and "its pixels are not square (sample aspect ratio 16:15" in res.output, res.output
    with av.open(summary["annotated"]) as clip:
        assert clip.streams.video[0].sample_aspect_ratio == Fraction(16, 15)
    turned = DecodeReport("v", rotation=90, sample_aspect_ratio="16:15")
    assert turned.upright_aspect() == Fraction(15, 16) and DecodeReport("v").upright_aspect() is None
