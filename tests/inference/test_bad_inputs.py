"""Bad files do not stop good ones: a truncated or oversized image gets a failed row, the rest are predicted, and
the command says so and exits 1; oversized images name the file and MEDCAD_MAX_PIXELS everywhere they are read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import png_header
from medcad.cli import app
from medcad.data.io import image_size, read_image
from medcad.data.pixel_limit import MAX_PIXELS_ENV
from medcad.errors import DataError

runner = CliRunner()


def _images(folder: Path, n_png: int = 5, n_jpg: int = 5, side: int = 40) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_png + n_jpg):
        img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / (f"g{k}.png" if k < n_png else f"g{k}.jpg"), quality=90)


def _truncated_jpeg(path: Path) -> None:
    img = np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _predict(run: Path, folder: Path, out: Path, *extra: str):
    args = ["predict", str(run), str(folder), "--backend", "torch-fp32", "--device", "cpu", "--out", str(out)]
    return runner.invoke(app, [*args, "--batch", "4", "--no-overlays", *extra])


def test_a_truncated_jpeg_fails_alone_and_an_oversized_image_names_the_limit(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "new"
    _images(folder)
    _truncated_jpeg(folder / "g4_bad.jpg")  # sorts among the good ones: the batch it is in still predicts

    res = _predict(tiny_run, folder, tmp_path / "out", "--workers", "2")
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines()[-1] == "predicted 10 of 11 images; 1 failed (g4_bad.jpg: truncated JPEG)"
    assert "g4_bad.jpg: truncated JPEG" in res.stderr
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert len(table) == 11 and list(table.columns[:3]) == ["image", "status", "error"]
    assert (table["status"] == "ok").sum() == 10
    bad = table[table["status"] == "failed"]
    assert len(bad) == 1 and bad["image"].iloc[0].endswith("g4_bad.jpg")
    assert bad["error"].iloc[0].startswith("truncated JPEG")
    assert bad["label"].iloc[0] == "" and (table.loc[table["status"] == "ok", "label"] != "").all()
    assert not (tmp_path / "out" / "predictions.csv.partial").exists()

    res = _predict(tiny_run, folder, tmp_path / "out_json", "--json")  # one process, no workers
    assert res.exit_code == 1, res.output
    records = json.loads(res.stdout)
    assert len(records) == 11 and sum("label" in r for r in records) == 10
    (err,) = [r for r in records if "error" in r]
    assert err["image"].endswith("g4_bad.jpg") and "truncated JPEG" in err["error"]

    # over the pixel limit: 40x40 = 1600 pixels pass, 60x60 = 3600 do not
    (folder / "g4_bad.jpg").unlink()
    _images(tmp_path / "big", n_png=1, n_jpg=0, side=60)
    (tmp_path / "big" / "g0.png").rename(folder / "huge.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "0.002")
    res = _predict(tiny_run, folder, tmp_path / "out_big")
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("predicted 10 of 11 images; 1 failed (huge.png: image 60x60")
    table = pd.read_csv(tmp_path / "out_big" / "predictions.csv", keep_default_na=False)
    (why,) = table.loc[table["status"] == "failed", "error"]
    assert "0.002 megapixels" in why and f"{MAX_PIXELS_ENV}=" in why

    monkeypatch.setenv(MAX_PIXELS_ENV, "1")  # raised: every image predicts, exit 0
    res = _predict(tiny_run, folder, tmp_path / "out_ok")
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines()[-1] == "predicted 11 of 11 images"

    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")  # a bad setting is a usage error, said once
    res = _predict(tiny_run, folder, tmp_path / "out_cfg")
    assert res.exit_code == 2 and f"{MAX_PIXELS_ENV}='lots'" in res.stderr


def test_a_decompression_bomb_is_a_data_error_naming_the_file_and_the_variable(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    png_header(bomb, 15000, 12000)  # 180 megapixels: beyond Pillow's own error threshold
    mid = tmp_path / "mid.png"
    png_header(mid, 10000, 10000)  # 100 megapixels: Pillow would only warn
    for path, mp in ((bomb, "180"), (mid, "100")):
        for read in (read_image, image_size):
            with pytest.raises(DataError, match=rf"{path.name}: image .*has {mp} megapixels.*{MAX_PIXELS_ENV}"):
                read(path)


def test_data_inspect_and_audit_report_an_oversized_image_without_a_traceback(
    easy_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png_header(easy_set / "normal" / "bomb.png", 15000, 12000)
    res = runner.invoke(app, ["data", "inspect", str(easy_set), "--out", str(tmp_path / "m.csv"), "--json"])
    assert res.exit_code == 0, res.output
    problems = {p[0]: p[-1] for p in json.loads(res.stdout)["problems"]}
    assert "180 megapixels" in problems["normal/bomb.png"] and MAX_PIXELS_ENV in problems["normal/bomb.png"]

    res = runner.invoke(app, ["data", "audit", str(easy_set), "--json"])
    assert res.exit_code == 0, res.output
    unreadable = dict(json.loads(res.stdout)["unreadable"])
    assert MAX_PIXELS_ENV in unreadable["normal/bomb.png"]

    (easy_set / "normal" / "bomb.png").unlink()
    monkeypatch.setenv(MAX_PIXELS_ENV, "0.001")  # 40x40 = 1600 pixels: every image is over
    res = runner.invoke(app, ["data", "inspect", str(easy_set), "--out", str(tmp_path / "m2.csv"), "--json"])
    assert res.exit_code == 0, res.output
    problems = json.loads(res.stdout)["problems"]
    assert len(problems) == 24 and all("0.001 megapixels" in p[-1] for p in problems)


def test_every_frame_and_page_is_predicted_and_no_output_overwrites_another(tiny_run: Path, tmp_path: Path) -> None:
    """A multi-frame DICOM (each frame a row, its outputs _frame<k>), a 3-page TIFF (each page), a NIfTI sequence
    (each frame) and slice (its outputs named without `.nii.gz`, its scores those of the same pixels as a PNG), two
    files of one stem (kv.webp, kv.gif: two overlays, not one overwritten), and a broken video beside a good one: the
    good one is still predicted, the broken one named, exit 1."""
    import av
    import SimpleITK as sitk

    from conftest import write_dicom

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    write_dicom(folder / "IM00001", rng.integers(0, 60000, (3, 40, 40)).astype(np.uint16))
    pages = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    pages[0].save(folder / "kv.webp")
    pages[1].save(folder / "kv.gif")
    grey = rng.integers(0, 255, (3, 40, 40), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(grey[:2]), str(folder / "seq.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(grey[2:]), str(folder / "case_0000.nii.gz"))  # nnU-Net's slice of one
    Image.fromarray(grey[2]).save(folder / "case_png.png")
    good = tmp_path / "good.mp4"
    with av.open(str(good), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 48
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    broken = tmp_path / "broken.avi"
    broken.write_bytes(good.read_bytes()[:600])  # opens, decodes nothing
    res = runner.invoke(
        app,
        [
            "predict",
            str(tiny_run),
            str(folder),
            str(good),
            str(broken),
            "-o",
            str(tmp_path / "out"),
            "--backend",
            "torch-fp32",
        ],
    )
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    names = sorted(Path(p).name for p in table["image"])
    assert names == [
        "IM00001#0",
        "IM00001#1",
        "IM00001#2",
        "case_0000.nii.gz",
        "case_png.png",
        "kv.gif",
        "kv.webp",
        "seq.nii.gz#0",
        "seq.nii.gz#1",
        "stack.tif#0",
        "stack.tif#1",
        "stack.tif#2",
    ], names
    score = dict(zip(table["image"].map(lambda p: Path(p).name), table["score"], strict=True))
    assert score["case_0000.nii.gz"] == score["case_png.png"], table.to_string()
    assert (table["status"] == "ok").all()
    assert (tmp_path / "out" / "good_frames.csv").is_file()
    overlays = sorted(f.name for f in (tmp_path / "out").glob("*_overlay.png"))  # none overwrote another
    assert overlays == [
        f"{n}_overlay.png"
        for n in (
            "IM00001_frame0",
            "IM00001_frame1",
            "IM00001_frame2",
            "case_0000",
            "case_png",
            "kv_gif",
            "kv_webp",
            "seq_frame0",
            "seq_frame1",
            "stack_frame0",
            "stack_frame1",
            "stack_frame2",
        )
    ]
    assert "note: DICOM 16-bit scaled from its stored range: 1 image file(s)" in res.stderr  # how inputs decode
    assert res.exit_code == 1 and "broken.avi" in res.stderr, res.output  # the broken video failed alone
    assert "predicted 1 of 2 videos; 1 failed" in res.stderr
    from medcad.inference.files import output_names

    stems = output_names([str(folder / "kv.webp"), str(folder / "kv.gif"), f"{folder / 'IM00001'}#2"])
    assert sorted(stems.values()) == ["IM00001_frame2", "kv_gif", "kv_webp"]


def test_serve_takes_what_predict_takes(tmp_path: Path) -> None:
    """Uploads by content: WebP and GIF images, a TIFF's second page, an MPEG transport stream as a video (serve had
    refused the first two with 415, read page 0 only, and refused .ts clips)."""
    import io

    import av

    from medcad.inference.uploads import Limits, decode_upload, sniff, sniff_video

    pages = [np.full((16, 16, 3), v, np.uint8) for v in (10, 200)]
    for fmt, kind in (("WEBP", "webp"), ("GIF", "gif")):
        buf = io.BytesIO()
        Image.fromarray(pages[1]).save(buf, format=fmt)
        assert sniff(buf.getvalue()) == kind and decode_upload(buf.getvalue(), tmp_path, Limits()).kind == kind
    buf = io.BytesIO()
    Image.fromarray(pages[0]).save(buf, format="TIFF", save_all=True, append_images=[Image.fromarray(pages[1])])
    assert decode_upload(buf.getvalue(), tmp_path, Limits(), frame=1).rgb.mean() == pytest.approx(200, abs=1)
    assert decode_upload(buf.getvalue(), tmp_path, Limits()).pages == [0, 1]
    # a TIFF's reduced-resolution copy is a thumbnail, not a page of the set: not offered to the viewer as one
    thumb = io.BytesIO()
    big = Image.fromarray(np.full((200, 200, 3), 90, np.uint8))
    big.save(thumb, format="TIFF", save_all=True, append_images=[big.resize((50, 50))])
    upload = decode_upload(thumb.getvalue(), tmp_path, Limits())
    assert (upload.frames, upload.pages) == (2, [0])
    clip = tmp_path / "c.ts"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        for _ in range(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode())
    assert sniff_video(clip.read_bytes()) and not sniff_video(buf.getvalue())


def test_an_avif_a_manifest_and_a_page_are_predicted_as_given(tiny_run: Path, tmp_path: Path) -> None:
    """An AVIF image is an image everywhere (predict had read it alone but skipped it in a folder, and serve had
    called it a video); a CSV manifest given to predict is read as the dataset it lists (it had been read as an
    image: "not a readable image"); `FILE#k`, the name predict gives a page, is that page for predict and explain
    (both had said "file not found")."""
    from medcad.inference.uploads import Limits, decode_upload, sniff, sniff_video

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    pages = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    pages[0].save(folder / "a.avif")
    pages[0].save(folder / "b.png")
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    data = (folder / "a.avif").read_bytes()
    assert sniff(data) == "avif" and not sniff_video(data)
    upload = decode_upload(data, tmp_path, Limits())
    np.testing.assert_array_equal(upload.rgb, read_image(folder / "a.avif"))
    args = ["--backend", "torch-fp32", "--device", "cpu", "--json"]
    res = runner.invoke(app, ["predict", str(tiny_run), str(folder), "-o", str(tmp_path / "o1"), *args])
    assert res.exit_code == 0, res.output
    assert sorted(Path(r["image"]).name for r in json.loads(res.stdout)) == ["a.avif", "b.png"]
    pd.DataFrame({"Image Path": ["a.avif", "b.png"], "Diagnosis": ["x", "y"]}).to_csv(folder / "list.csv", index=False)
    res = runner.invoke(app, ["predict", str(tiny_run), str(folder / "list.csv"), "-o", str(tmp_path / "o2"), *args])
    assert res.exit_code == 0, res.output
    assert sorted(Path(r["image"]).name for r in json.loads(res.stdout)) == ["a.avif", "b.png"]
    page = f"{tmp_path / 'stack.tif'}#1"
    res = runner.invoke(app, ["predict", str(tiny_run), page, "-o", str(tmp_path / "o3"), *args])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / "stack.tif"), "-o", str(tmp_path / "o4"), *args])
    whole = json.loads(res.stdout)[1]["probabilities"]
    assert whole == pytest.approx(row["probabilities"], abs=1e-5)  # page 1 as the whole file's page 1
    res = runner.invoke(app, ["explain", str(tiny_run), page, "-o", str(tmp_path / "cam.png")])
    assert res.exit_code == 0 and (tmp_path / "cam.png").is_file(), res.output
    res = runner.invoke(app, ["explain", str(tiny_run), str(tmp_path / "stack.tif"), "-o", str(tmp_path / "c0.png")])
    assert res.exit_code == 0 and "has 2 pages or frames; explained page 0" in res.output, res.output


def test_predict_never_writes_over_a_datasets_files_or_into_its_input_folder(tiny_run: Path, tmp_path: Path) -> None:
    """`predict RUN folder -o folder` had replaced the dataset's own `x_mask.png` with its prediction (the name a
    dataset keeps its masks under), and the next predict of the folder predicted the overlays as images."""
    folder = tmp_path / "benign"
    _images(folder, 2, 0)
    truth = np.zeros((40, 40), np.uint8)
    truth[5:20, 5:20] = 255
    Image.fromarray(truth).save(folder / "g0_overlay.png")  # a file of the dataset named as predict names its own
    before = (folder / "g0_overlay.png").read_bytes()
    res = _predict(tiny_run, folder, folder)
    assert res.exit_code == 2 and "inside the input folder" in res.output
    res = _predict(tiny_run, folder, folder / "predictions")
    assert res.exit_code == 2 and "inside the input folder" in res.output
    files = [str(folder / "g0.png"), str(folder / "g1.png")]  # the images given one by one, out = their folder
    args = ["predict", str(tiny_run), *files, "--backend", "torch-fp32", "--device", "cpu", "--out", str(folder)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "g0_overlay.png: exists and was not written by predict into this folder" in res.output
    assert (folder / "g0_overlay.png").read_bytes() == before and not (folder / "predictions.csv").exists()
    out = tmp_path / "out"  # an earlier predict's own files are replaced by the next
    for _ in range(2):
        res = runner.invoke(app, [*args[:-1], str(out), "--json"])
        assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["overlay_file"] == "g0_overlay.png"
    table = pd.read_csv(out / "predictions.csv")
    assert table["overlay_file"].tolist() == ["g0_overlay.png", "g1_overlay.png"]
    # another image into the same folder, then the first again (predictions.csv then lists only the other), and a
    # run interrupted after its first overlay: each may replace what predict wrote (the review had found them refused)
    res = runner.invoke(app, [*args[:2], files[1], *args[4:-1], str(out)])
    assert res.exit_code == 0, res.output
    # the earlier predict's overlay of the image this table does not list is removed, and said (it had stayed,
    # read as this predict's)
    assert sorted(p.name for p in out.glob("*_overlay.png")) == ["g1_overlay.png"]
    assert "removed 1 overlay/mask file(s) an earlier predict wrote" in res.output and "g0_overlay.png" in res.output
    assert "g0_overlay.png" not in (out / ".medcad_outputs").read_text()
    (out / "predictions.csv").unlink()
    res = runner.invoke(app, [*args[:-1], str(out)])
    assert res.exit_code == 0, res.output
    # a user's own predictions.csv in a folder predict never wrote into is not replaced (it had been, without a word)
    own = tmp_path / "own"
    own.mkdir()
    (own / "predictions.csv").write_text("keep\n")
    res = runner.invoke(app, [*args[:-1], str(own)])
    assert res.exit_code == 2 and "predictions.csv: exists and was not written by predict" in res.output
    assert (own / "predictions.csv").read_text() == "keep\n"


def test_predict_says_which_images_make_their_prediction_doubtful(tiny_run: Path, tmp_path: Path) -> None:
    """A mask given as an image and a 1x1 image are predicted, each with a warning in predictions.csv, --json and
    on stderr, as serve answers them (they had been classified without a word)."""
    folder = tmp_path / "in"
    _images(folder, 1, 0)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 255
    Image.fromarray(mask).save(folder / "m.png")
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(folder / "t.png")
    files = [str(folder / n) for n in ("g0.png", "m.png", "t.png")]
    args = [
        "predict",
        str(tiny_run),
        *files,
        "--backend",
        "torch-fp32",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
    ]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    said = {Path(r["image"]).name: r.get("warnings", "") for r in json.loads(res.stdout)}
    assert said["g0.png"] == "" and "two grey values" in said["m.png"] and "1x1 pixels" in said["t.png"]
    assert "note: m.png: the image holds two grey values only" in res.stderr
    table = pd.read_csv(tmp_path / "o" / "predictions.csv", keep_default_na=False)
    assert table["warnings"].tolist() == [said["g0.png"], said["m.png"], said["t.png"]]


def test_predict_claims_only_the_files_each_input_gives(tmp_path: Path) -> None:
    """A video's outputs are its annotated video and frame table, an image's its overlay and mask: predict had
    claimed all four names for every input (refusing a folder holding a video's `v_mask.png`, and later free to
    replace one)."""
    from medcad.inference.files import OUTPUTS_LEDGER, check_output_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "v_mask.png").write_bytes(b"not predict's")
    check_output_folder(out, [tmp_path / "v.mp4", tmp_path / "a.png"], {"v.mp4": "v", "a.png": "a"}, ["v.mp4"])
    claimed = (out / OUTPUTS_LEDGER).read_text().split()
    video = ["v_annotated.mp4", "v_annotated.partial.mp4", "v_frames.csv", "v_frames.partial.csv"]
    assert claimed == ["a_mask.png", "a_overlay.png", "predictions.csv", "predictions.csv.partial", *video]
    # a folder a video alone was predicted into: predict wrote no table there, so a user's own is not its to replace
    only = tmp_path / "only"
    only.mkdir()
    check_output_folder(only, [tmp_path / "v.mp4"], {"v.mp4": "v"}, ["v.mp4"])
    (only / "predictions.csv").write_text("mine\n")
    with pytest.raises(DataError, match="predictions.csv: exists and was not written by predict"):
        check_output_folder(only, [tmp_path / "a.png"], {"a.png": "a"})


def test_a_folder_to_predict_is_read_without_labels_at_any_depth(tmp_path: Path) -> None:
    """Images beside one sub-folder are all predicted (they had been left out as not fitting the class folders'
    pattern `{label}`, and with --allow-missing only the sub-folder's image was predicted); masks stay masks; a
    pattern the user gives is kept."""
    from medcad.config import DataOptions
    from medcad.inference.predictor import expand_inputs

    rgb = np.zeros((8, 8, 3), np.uint8)
    for rel in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(tmp_path / "in" / rel)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "a_mask.png")
    got = sorted(Path(p).relative_to(tmp_path / "in").as_posix() for p in expand_inputs([tmp_path / "in"]))
    assert got == ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png"]
    with pytest.raises(DataError, match="does not fit the pattern"):
        expand_inputs([tmp_path / "in"], DataOptions(pattern="{label}"))


def test_an_image_given_twice_is_predicted_once_and_an_empty_video_is_said_empty(
    tiny_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same file given twice, or given and inside a folder given, is one row, with a note (it had been two
    rows, "predicted 2 of 2"); a 0-byte video is "file is empty" as an empty image is (not "cannot decode")."""
    folder = tmp_path / "in"
    _images(folder, 2, 0)
    one = str(folder / "g0.png")
    args = ["--backend", "torch-fp32", "--device", "cpu", "--json", "-o", str(tmp_path / "out")]
    res = runner.invoke(app, ["predict", str(tiny_run), one, one, str(folder), *args])
    assert res.exit_code == 0, res.output
    assert sorted(Path(r["image"]).name for r in json.loads(res.stdout)) == ["g0.png", "g1.png"]
    assert "2 input(s) given more than once (or also in a folder given) predicted once" in caplog.text
    (tmp_path / "empty.mp4").write_bytes(b"")
    res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / "empty.mp4"), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "empty.mp4: file is empty (0 bytes)" in res.output, res.output


def test_predict_names_a_link_to_a_moved_file(tmp_path: Path) -> None:
    """A link whose file has moved is said as such (it had read "file not found" of a file that is there)."""
    from medcad.inference.predictor import expand_inputs

    (tmp_path / "x.png").symlink_to(tmp_path / "moved" / "x.png")
    with pytest.raises(DataError, match=r"x\.png: a link to a missing file \(.*moved/x\.png\)"):
        expand_inputs([str(tmp_path / "x.png")])


def test_a_volume_slices_mask_is_written_like_it_and_claimed(tiny_segmenter: Path, tmp_path: Path) -> None:
    """A mask predicted for an nnU-Net slice (`imagesTs/case_0000.nii.gz`, depth one, spacing (1, 1, 999)) is written
    as nnU-Net writes its predictions: `case_0000_mask.nii.gz`, its dimensions, spacing, origin and direction the
    image's, values 0 / 1 where the PNG mask of the same pixels says 0 / 255; a stack's pages, predicted whole, as
    one such file of all its pages (a page predicted alone keeps a PNG); the output folder claims the files (a
    second predict replaces them), and a user's own file of that name is refused."""
    import SimpleITK as sitk

    folder = tmp_path / "imagesTs"
    folder.mkdir()
    frame = np.asarray(Image.open(sorted((tiny_segmenter.parent / "synth").rglob("*.png"))[0]).convert("L"))
    image = sitk.GetImageFromArray(frame[None])
    image.SetSpacing((0.5, 0.5, 999.0))
    image.SetOrigin((3.0, -2.0, 0.0))
    sitk.WriteImage(image, str(folder / "case_0000.nii.gz"))
    Image.fromarray(frame).save(folder / "case_png.png")
    Image.fromarray(np.ascontiguousarray(frame[::-1])).save(folder / "flipped_png.png")  # the sequence's second frame
    seq = sitk.GetImageFromArray(np.stack([frame, frame[::-1]]))  # a 2-D+t sequence of two frames
    seq.SetSpacing((0.3, 0.3, 33.0))
    sitk.WriteImage(seq, str(folder / "seq.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(frame), str(folder / "plain.nii"))  # its mask had failed to be written
    out = tmp_path / "out"
    cine = sitk.JoinSeries([sitk.GetImageFromArray(frame[None]), sitk.GetImageFromArray(frame[None])])  # (x, y, 1, t)
    sitk.WriteImage(cine, str(folder / "cine4d.nii.gz"))  # NIfTI keeps time on dim 4: its mask had crashed predict
    for _ in range(2):  # the second run replaces what the first wrote; a batch of 1: the table on disk as it ends
        cmd = ["predict", str(tiny_segmenter), str(folder), "--out", str(out), "--threshold", "0.3", "--batch", "1"]
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    masks = dict(zip(table["image"].map(lambda p: Path(p).name), table["mask_file"], strict=True))
    assert masks == {
        "case_0000.nii.gz": "case_0000_mask.nii.gz",
        "case_png.png": "case_png_mask.png",
        "flipped_png.png": "flipped_png_mask.png",
        "plain.nii": "plain_mask.nii",
        "seq.nii.gz#0": "seq_mask.nii.gz",
        "seq.nii.gz#1": "seq_mask.nii.gz",
        "cine4d.nii.gz#0": "cine4d_mask.nii.gz",
        "cine4d.nii.gz#1": "cine4d_mask.nii.gz",
    }, masks
    assert sitk.ReadImage(str(out / "cine4d_mask.nii.gz")).GetSize() == (48, 48, 1, 2)
    written = sitk.ReadImage(str(out / "case_0000_mask.nii.gz"))
    assert written.GetSize() == image.GetSize() and written.GetSpacing() == image.GetSpacing()
    assert written.GetOrigin() == image.GetOrigin() and written.GetDirection() == image.GetDirection()
    png = np.asarray(Image.open(out / "case_png_mask.png"))
    assert set(np.unique(png)) <= {0, 255} and np.array_equal(sitk.GetArrayFromImage(written)[0], png // 255)
    sequence = sitk.ReadImage(str(out / "seq_mask.nii.gz"))
    source = sitk.ReadImage(str(folder / "seq.nii.gz"))  # as NIfTI keeps it: spacing in float32
    assert sequence.GetSize() == source.GetSize() == (48, 48, 2) and sequence.GetSpacing() == source.GetSpacing()
    flipped = np.asarray(Image.open(out / "flipped_png_mask.png"))
    assert np.array_equal(sitk.GetArrayFromImage(sequence), np.stack([png // 255, flipped // 255]))  # page for page
    assert not list(out.glob("seq_frame*_mask*"))  # overlays stay per page
    alone = tmp_path / "alone"
    res = runner.invoke(app, ["predict", str(tiny_segmenter), f"{folder / 'seq.nii.gz'}#1", "--out", str(alone)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(alone / "seq_frame1_mask.png")), flipped)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "case_0000_mask.nii.gz").write_bytes(b"a user's own file")
    res = runner.invoke(app, ["predict", str(tiny_segmenter), str(folder / "case_0000.nii.gz"), "--out", str(mine)])
    assert res.exit_code != 0 and "case_0000_mask.nii.gz: exists and was not written by predict" in res.output


def test_a_stack_cut_short_keeps_its_pages_masks_and_a_taken_name_keeps_pngs(
    tiny_segmenter: Path, tmp_path: Path
) -> None:
    """A stack whose pages are predicted whole but one fails, or whose predict is interrupted, keeps the PNG masks of
    the pages it predicted, named in predictions.csv (injected here: a volume decodes whole or not at all); a stack
    `a/seq.nii.gz` beside a one-page `b/seq.nii.gz`, whose mask takes the name `seq_mask.nii.gz`, keeps PNGs."""
    import SimpleITK as sitk

    from medcad.inference.files import predict_image_files
    from medcad.inference.registry import load_predictor

    frame = np.asarray(Image.open(sorted((tiny_segmenter.parent / "synth").rglob("*.png"))[0]).convert("L"))
    path = tmp_path / "seq.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([frame] * 3)), str(path))
    predictor = load_predictor(tiny_segmenter, backend="torch-fp32")
    real = predictor.predict_files

    def page_1_lost(paths, *args, **kwargs):
        for pred, image in real(paths, *args, **kwargs):
            lost = not isinstance(pred, DataError) and pred.image.endswith("#1")
            yield (DataError(Path(f"{path}#1"), "page lost") if lost else pred), image

    def stopped_after_page_1(paths, *args, **kwargs):
        for pred, image in real(paths, *args, **kwargs):
            yield pred, image
            if pred.image.endswith("#1"):
                raise KeyboardInterrupt

    predictor.predict_files = page_1_lost
    out = tmp_path / "out"
    table, _ = predict_image_files(predictor, [f"{path}#{k}" for k in range(3)], out, batch=1)
    on_disk = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table["mask_file"].fillna("")) == list(on_disk["mask_file"])
    assert list(on_disk["mask_file"]) == ["seq_frame0_mask.png", "", "seq_frame2_mask.png"]
    assert list(on_disk["status"]) == ["ok", "failed", "ok"]
    assert sorted(p.name for p in out.glob("seq*mask*")) == ["seq_frame0_mask.png", "seq_frame2_mask.png"]
    predictor.predict_files = stopped_after_page_1
    with pytest.raises(KeyboardInterrupt):
        predict_image_files(predictor, [f"{path}#{k}" for k in range(3)], tmp_path / "stopped", batch=1)
    partial = pd.read_csv(tmp_path / "stopped" / "predictions.csv.partial", keep_default_na=False)
    assert list(partial["mask_file"]) == ["seq_frame0_mask.png", "seq_frame1_mask.png"]
    assert all((tmp_path / "stopped" / name).is_file() for name in partial["mask_file"])
    predictor.predict_files = real
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path.rename(tmp_path / "a" / "seq.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(frame[None]), str(tmp_path / "b" / "seq.nii.gz"))
    items = [f"{tmp_path / 'a' / 'seq.nii.gz'}#{k}" for k in range(3)] + [str(tmp_path / "b" / "seq.nii.gz")]
    table, _ = predict_image_files(predictor, items, tmp_path / "both")
    assert list(table["mask_file"]) == [
        "seq_frame0_mask.png",
        "seq_frame1_mask.png",
        "seq_frame2_mask.png",
        "seq_mask.nii.gz",
    ]
    assert sitk.ReadImage(str(tmp_path / "both" / "seq_mask.nii.gz")).GetSize() == (48, 48, 1)  # b's, not a's
