"""`medcad predict | explain`: a run's models on new images and videos, and where they looked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from medcad.cli.common import (
    BackendOpt,
    DeviceOpt,
    JsonOpt,
    OperatingPointOpt,
    _echo_video,
    _fail,
    _print_table,
    _say_notes,
    _serving_predictor,
    app,
    with_data_options,
)
from medcad.config import DataOptions
from medcad.errors import MedcadError

SHOWN_WARNINGS = 5  # predict: the doubtful images named on stderr; the rest counted (all are in predictions.csv)


@app.command()
@with_data_options
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (its folds as an ensemble) or a model.pt file.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images, folders of images, or videos.")],
    fold: Annotated[int | None, typer.Option(help="Use one fold's model instead of the ensemble.")] = None,
    backend: BackendOpt = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int | None, typer.Option(help="Processes decoding images (default: up to 4 when there is more than a batch).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for videos, masks and overlays.")] = Path(
        "predictions"
    ),
    threshold: Annotated[
        float | None,
        typer.Option(
            help="segment: lesion probability threshold; detect: detection score threshold (default 0.5).",
            show_default=False,
        ),
    ] = None,
    smooth: Annotated[int, typer.Option(help="Videos: average probabilities over this many frames.")] = 5,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 8,
    realtime: Annotated[bool, typer.Option(help="Videos: keep pace with the source, dropping frames.")] = False,
    overlays: Annotated[bool, typer.Option(help="Write <image>_overlay.png for every image.")] = True,
    operating_point: OperatingPointOpt = None,
    as_json: JsonOpt = False,
    *,
    options: DataOptions,
) -> None:
    """Predict images or every frame of videos: classes (annotated video + per-frame CSV), lesion masks and overlays
    (segment, multitask), or boxes with the frame decision (detect)."""
    try:
        from medcad.errors import DataError
        from medcad.inference.files import (
            check_output_folder,
            drop_earlier_outputs,
            output_names,
            predict_image_files,
        )
        from medcad.inference.predictor import expand_inputs
        from medcad.inference.video import predict_video

        image_inputs, videos = _images_and_videos(inputs)
        images = expand_inputs(image_inputs, options)  # every input checked before the model loads, `auto` measures
        for v in videos:  # there (a typo fails now, not after the models load); one that cannot be read fails alone
            if not Path(v).is_file():
                raise DataError(v, "file not found")
        _say_notes(_decoding_notes(images))
        # the stems of the files written: images' among the images, videos' among everything (computed once, so
        # that the files claimed in the output folder are the files written)
        clips = {str(v) for v in videos}
        names = output_names(images) | {v: n for v, n in output_names([*images, *videos]).items() if v in clips}
        check_output_folder(out, [*image_inputs, *videos], names, videos)
        size = _job_size(images, videos) if backend == "auto" else None  # only `auto` asks
        predictor = _serving_predictor(run, fold, backend, threads, threshold, device, operating_point, size)
        table, records = (
            predict_image_files(predictor, images, out, batch=batch, overlays=overlays, workers=workers, names=names)
            if images
            else (None, [])
        )
        if table is not None and (dropped := drop_earlier_outputs(out, table)):
            _say_notes(
                [f"removed {len(dropped)} overlay/mask file(s) an earlier predict wrote into {out} of images this "
                 f"predictions.csv does not list (or no longer draws), e.g. {dropped[0]}"]
            )  # fmt: skip
        summaries, video_errors = [], []
        for v in videos:  # a video that fails is named; the others are still predicted
            try:
                summaries.append(
                    predict_video(predictor, v, out, batch=batch, smooth=smooth, realtime=realtime, name=names[str(v)])
                )
            except MedcadError as e:
                video_errors.append({"video": str(v), "error": str(e)})
    except MedcadError as e:
        _fail(e)
    if as_json:
        said = [{k: v for k, v in s.items() if k != "rows"} for s in summaries]  # the frames are in their CSVs
        typer.echo(json.dumps(records + said + video_errors, indent=1, default=str))
    else:
        if table is not None:
            masks = table["mask_file"] if "mask_file" in table else []  # PNG, or a volume's own format
            ends = dict.fromkeys(str(m).rsplit("_mask", 1)[-1] for m in masks if isinstance(m, str) and "_mask" in m)
            written = ["<image>_overlay.png"] * overlays + [f"<image>_mask{end}" for end in ends]
            # the reasons follow on stderr, whole; a detector's boxes (JSON, up to 50 an image) are in predictions.csv
            shown = table.drop(columns=[c for c in ("error", "boxes") if c in table])
            shown = shown.astype(object).where(shown.notna(), "")
            _print_table(shown, False, f"{out}/predictions.csv" + "".join(f"; {w}" for w in written) + f" in {out}/")
        for v in summaries:
            _echo_video(v)
    for v in video_errors:
        typer.echo(f"error: {v['error']}", err=True)
    if video_errors:
        typer.echo(f"predicted {len(summaries)} of {len(videos)} videos; {len(video_errors)} failed", err=True)
    if images:
        doubtful = [f"{Path(r['image']).name}: {r['warnings']}" for r in records if r.get("warnings")]
        more = len(doubtful) - SHOWN_WARNINGS
        _say_notes(
            doubtful[:SHOWN_WARNINGS] + [f"... and {more} more (the warnings column of predictions.csv)"] * (more > 0)
        )
        _say_failures(images, [r for r in records if "error" in r], out)
    if video_errors:
        raise typer.Exit(1)


def _images_and_videos(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """The inputs that hold images (files, folders) and the videos: those given and those in the folders given (a
    folder of videos alone is not read for images), said on stderr."""
    from medcad.data.filekinds import is_video
    from medcad.data.ledger import walk_files
    from medcad.data.media import is_media

    images, videos = [], [p for p in inputs if is_video(p)]
    for p in (p for p in inputs if not is_video(p)):
        files = walk_files(Path(p)) if Path(p).is_dir() else []
        found = [f for f in files if is_video(f)]
        if found:
            shown = ", ".join(f.name for f in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            _say_notes([f"{len(found)} video(s) under {p}/ predicted as videos: {shown}"])
            videos += found
        still = [f for f in files if not is_video(f)]
        if not found or any(is_media(f) for f in still):
            images.append(p)
    return images, videos


def _job_size(images: list[str], videos: list[Path]) -> int | None:
    """The images and video frames a predict will run on (each video's frames as its header announces them), None
    where a video's count is unknown (`auto` then measures, as for many); videos are opened only until the count
    reaches `backends.MEASURE_FROM`, all `auto` asks."""
    from medcad.data.video import open_video
    from medcad.inference.backends import MEASURE_FROM

    frames = 0
    for v in videos:
        if len(images) + frames >= MEASURE_FROM:
            break
        try:
            with open_video(v) as video:
                n = video.estimated_frames
        except MedcadError:
            return None  # predict names the video when it reads it
        if not n:
            return None
        frames += n
    return len(images) + frames


def _decoding_notes(items: list[str]) -> list[str]:
    """How the input images are decoded, counted over their files (as `data inspect` says it): EXIF orientation,
    16-bit scaling, DICOM colour spaces, alpha dropped, ..."""
    from collections import Counter

    from medcad.data.io import describe_image
    from medcad.inference.predictor import split_frame

    files = dict.fromkeys(split_frame(item)[0] for item in items)
    found = Counter(note for f in files if f.is_file() for note in describe_image(f))
    return [f"{note}: {n} image file(s)" for note, n in found.most_common()]


def _say_failures(images: list, failed: list[dict], out: Path, shown: int = 3) -> None:
    """On stderr: each failed image with its reason (the first 10), then the count line, e.g. `predicted 10 of 11
    images; 1 failed (a.jpg: truncated JPEG)`, naming the first `shown` with the first clause of their reasons; exit
    1 when any failed (usage errors exit 2)."""
    for r in failed[:10]:
        typer.echo(f"error: {r['image']}: {r['error']}", err=True)
    if len(failed) > 10:
        typer.echo(f"error: ... and {len(failed) - 10} more (the error column of {out}/predictions.csv)", err=True)
    line = f"predicted {len(images) - len(failed)} of {len(images)} images"
    if not failed:
        typer.echo(line, err=True)
        return
    short = [f"{Path(r['image']).name}: {re.split(r'[:;,(]', r['error'], maxsplit=1)[0].strip()}" for r in failed]
    more = f"; and {len(failed) - shown} more" if len(failed) > shown else ""
    typer.echo(f"{line}; {len(failed)} failed ({'; '.join(short[:shown])}{more})", err=True)
    raise typer.Exit(1)


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    image: Annotated[
        Path, typer.Argument(help="Image to explain; FILE#k: frame or page k of a multi-frame DICOM, TIFF or GIF.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Overlay PNG to write.")] = Path("gradcam.png"),
    fold: Annotated[int | None, typer.Option(help="One fold's model instead of the ensemble.")] = None,
    layer: Annotated[
        str | None, typer.Option(help="Target layer name (default: the backbone's last feature map).")
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="Explain this class instead of the predicted one (multitask: a Grad-CAM of this class of the class "
            "head added to each row; segment models have no class to explain).",
        ),
    ] = None,
) -> None:
    """Where the model looked: Grad-CAM of the predicted class (classify; averaged over the folds' models), the
    predicted outline with CBAM attention maps and Grad-CAM of the lesion (segment, multitask), or EigenCAM under the
    boxes (detect); one row per fold model for masks and boxes."""
    try:
        from PIL import Image

        from medcad.data.filekinds import VIDEO_SUFFIXES, check_file
        from medcad.data.io import image_pages, read_image
        from medcad.errors import DataError
        from medcad.explain.explainers import EXPLAINERS
        from medcad.inference.predictor import split_frame
        from medcad.inference.registry import load_predictor

        path, frame = split_frame(image)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise DataError(path, "a video: explain takes one image (`medcad data frames VIDEO` writes its frames)")
        check_file(path)  # missing, a folder, empty: said before its pages are looked at
        pages = image_pages(path)[0] if frame is None else [frame]
        if frame is None and pages and pages[0] != 0:  # page 0 a thumbnail: the first page of the set
            frame = pages[0]
        rgb = read_image(path, frame)  # a file that cannot be read fails before the models load
        predictor = load_predictor(run, fold, backend="torch-fp32")  # Grad-CAM needs the torch models
        shown, caption = EXPLAINERS[predictor.task](predictor, rgb, layer, label)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shown).save(out)
    except MedcadError as e:
        _fail(e)
    if len(pages) > 1:
        typer.echo(f"note: {path} has {len(pages)} pages or frames; explained page {pages[0]} ({path}#k for page k)")
    typer.echo(f"{out}: {caption}")
