"""Predict image files with any task's predictor: overlays, mask PNGs and predictions.csv, written as it goes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medcad.atomic import atomic_path, atomic_write_text
from medcad.data.filekinds import file_stem
from medcad.data.volumes import ONE_FILE_SUFFIXES
from medcad.errors import DataError
from medcad.inference.outputs import check_png_values
from medcad.inference.predictor import Predictor, split_frame
from medcad.inference.uploads import prediction_warnings
from medcad.runfolder import RunFolder

OK, FAILED = "ok", "failed"  # predictions.csv `status`


def output_names(items: Sequence[str | Path]) -> dict[str, str]:
    """The file-name stem of each input's outputs (`<stem>_overlay.png`, `<stem>_frames.csv`, ...): its stem, with
    `_frame<k>` for a frame of a multi-frame file; where inputs would share one (`IM000000` in two folders of a
    DICOM CD, `kv.webp` beside `kv.gif`, `a.mp4` beside `a.mkv`), each gets its path from the folder they share,
    with `/` and `.` as `_`, so that no output overwrites another's.

    Args:
        items: inputs as `expand_inputs` gives them (paths, `<path>#<frame>`).
    """

    def named(item: str, rel: str | None = None) -> str:
        path, frame = split_frame(item)
        stem = file_stem(path) if rel is None else "".join(c if c.isalnum() or c in "-_" else "_" for c in rel)
        return stem + (f"_frame{frame}" if frame is not None else "")

    out = {str(i): named(str(i)) for i in items}
    counts = Counter(out.values())
    clashing = [i for i, name in out.items() if counts[name] > 1]
    if clashing:
        files = {i: split_frame(i)[0].resolve() for i in clashing}
        common = os.path.commonpath([str(f.parent) for f in files.values()])
        out |= {i: named(i, os.path.relpath(files[i], common)) for i in clashing}
    seen: Counter = Counter()
    for item, name in out.items():  # what is still shared (`a_b.png` beside `a/b.png`): numbered
        seen[name] += 1
        out[item] = name if seen[name] == 1 else f"{name}_{seen[name]}"
    return out


IMAGE_OUTPUTS = ("_overlay.png", "_mask.png")  # what predict writes per image (`predict_image_files`)
VOLUME_MASKS = tuple(f"_mask{end}" for end in ONE_FILE_SUFFIXES)  # ... for a volume's (`volumes.mask_suffix`)
WRITTEN = IMAGE_OUTPUTS + VOLUME_MASKS  # any file predict writes for an image
VIDEO_OUTPUTS = ("_annotated.mp4", "_frames.csv", "_annotated.partial.mp4", "_frames.partial.csv")  # ... per video
# (`medcad.inference.video.predict_video`; the partial ones where it fails or is interrupted)


TABLE = "predictions.csv"  # the images' table predict writes into its output folder (and TABLE.partial as it goes)
OUTPUTS_LEDGER = ".medcad_outputs"  # in an output folder: the names of the files predict claimed there, one a line


def check_output_folder(
    out: str | Path, inputs: Sequence[str | Path], names: dict[str, str], videos: Sequence[str | Path] = ()
) -> None:
    """Refuse an output folder where predict's files would be read as inputs or replace files it did not write, then
    claim the files it will write (OUTPUTS_LEDGER), so that a later predict into the folder - of the same images, a
    video, or after an interruption - may replace them.

    Args:
        out: the output folder.
        inputs: the paths given (files, folders, videos).
        names: `output_names` of the items to predict.
        videos: those of the items that are videos (their outputs are VIDEO_OUTPUTS, the others' IMAGE_OUTPUTS).

    Raises:
        DataError: `out` is (inside) an input folder - its overlays and masks would be predicted as images by the
            next predict of that folder -, or a file predict would write there exists and was not claimed by an
            earlier predict (`<stem>_mask.png` beside the images is how datasets keep their masks).
    """
    where = Path(out).resolve()
    for p in map(Path, inputs):
        if p.is_dir() and (where == p.resolve() or p.resolve() in where.parents):
            raise DataError(
                Path(out),
                f"the output folder is inside the input folder {p}: the overlays and masks written there would be "
                f"read as images by the next predict of {p}; choose --out outside it",
            )
    ledger = where / OUTPUTS_LEDGER
    claimed = set(ledger.read_text(encoding="utf-8").splitlines()) if ledger.is_file() else set()
    if any(name.endswith(WRITTEN) for name in claimed):  # predict wrote images' files here: the table is its
        claimed |= {TABLE, f"{TABLE}.partial"}  # (ledgers before 2026-12-06 did not list it; one of videos only did not
        # write it)
    clips = {str(v) for v in videos}
    targets = [
        f"{stem}{suffix}"
        for item, stem in names.items()
        for suffix in (VIDEO_OUTPUTS if str(item) in clips else _image_outputs(str(item)))
    ]
    if any(str(item) not in clips for item in names):  # images: their table too (a user's own had been replaced)
        targets += [TABLE, f"{TABLE}.partial"]
    targets += sorted({name for _, name, _ in whole_stacks(names).values()})  # a stack's one mask volume
    there = set(os.listdir(where)) if where.is_dir() else set()  # one listing, not a stat per possible output
    for name in targets:
        if name in there and name not in claimed:
            raise DataError(
                where / name,
                "exists and was not written by predict into this folder: predict would replace it; choose another "
                "--out",
            )
    where.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ledger, "\n".join(sorted(claimed | set(targets))) + "\n")


def drop_earlier_outputs(out: str | Path, table: pd.DataFrame) -> list[str]:
    """Remove the overlays and masks an earlier predict wrote into `out` (its OUTPUTS_LEDGER) that the images' table
    just written (`table`: its overlay_file and mask_file columns) does not name, and unclaim them: predictions.csv
    is one predict's, and files beside it of images it does not list (or drawn by an earlier model) had read as
    its. Videos' outputs are each their own and kept. Returns the names removed, sorted."""
    where = Path(out)
    ledger = where / OUTPUTS_LEDGER
    if not ledger.is_file():
        return []
    claimed = set(ledger.read_text(encoding="utf-8").splitlines())
    named = {v for c in ("overlay_file", "mask_file") if c in table for v in table[c].dropna().astype(str) if v}
    stale = {n for n in claimed if n.endswith(WRITTEN) and n not in named}  # some claimed, never written
    removed = sorted(n for n in stale if (where / n).is_file())
    for name in removed:
        (where / name).unlink()
    if stale:
        atomic_write_text(ledger, "\n".join(sorted(claimed - stale)) + "\n")
    return removed


def write_png(path: Path, rgb_or_grey: np.ndarray) -> None:
    """Write an (H, W, 3) RGB uint8 image or an (H, W) grey one, uint8 or uint16 (a 16-bit PNG), as PNG atomically;
    DataError when the folder is not writable."""
    arr = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    try:
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), arr):
                raise DataError(path, "cannot write the image")
    except OSError as e:  # the folder is not writable (atomic_path's temporary file)
        raise DataError(path, f"cannot write the image ({e.strerror})") from e


def _image_outputs(item: str) -> tuple[str, ...]:
    """The ends of the names predict writes for one image item (`<path>` or `<path>#<frame>`): IMAGE_OUTPUTS, and a
    mask in its own format for a one-page volume file (`_volume_mask`)."""
    return (*IMAGE_OUTPUTS, *([f"_mask{end}"] if (end := _volume_mask(item)) else []))


def _volume_mask(item: str) -> str | None:
    """The suffix of the mask predict writes like its image (`volumes.mask_suffix`) for an item that is a one-page
    volume file (an nnU-Net slice, a CAMUS frame), None for every other item (a PNG mask)."""
    from medcad.data.filekinds import volume_format

    source, frame = split_frame(item)
    if frame is not None or not volume_format(source):
        return None
    from medcad.data.volumes import mask_suffix, volume_info

    try:
        return mask_suffix(source) if volume_info(source)[2] == 1 else None
    except DataError:
        return None  # unreadable: it fails as itself when predicted


def _write_mask(pred, out: Path, stem: str) -> str:
    """Write a prediction's mask and give its file name: `<stem>_mask.png` (0 / 255, or a label map's values); for
    an image read from a one-page volume file (an nnU-Net slice, a CAMUS frame), a volume file like it (its class
    values, 0 / 1 for lesion, with its spacing, origin and direction: `volumes.write_like`), as nnU-Net writes its
    predictions, so that its tools and ITK-SNAP lay it over the image."""
    if end := _volume_mask(pred.image):
        from medcad.data.volumes import write_like

        name = f"{stem}_mask{end}"
        write_like(
            split_frame(pred.image)[0], _labels(pred.mask.mask_image(), pred.mask.class_map is not None), out / name
        )
        return name
    write_png(out / f"{stem}_mask.png", pred.mask.mask_image())
    return f"{stem}_mask.png"


def whole_stacks(names: dict[str, str]) -> dict[str, tuple[Path, str, int]]:
    """The items that are pages of a volume stack predicted whole, every page among `names` (`output_names`): item ->
    (the stack's file, the name of its one mask file, its page count). Its masks are written as one volume like it
    (`volumes.write_like`), as nnU-Net writes a prediction and ITK-SNAP lays a sequence's segmentation over it: a
    CAMUS 2-D+t sequence's masks had come out as a PNG per frame. Pages predicted alone (`seq.nii.gz#3`), and a stack
    whose volume's name another input's outputs take (`b/seq.nii.gz` beside the stack `a/seq.nii.gz`), keep PNGs."""
    from medcad.data.filekinds import volume_format
    from medcad.data.volumes import mask_suffix, volume_info

    pages_of: dict[Path, dict[int, str]] = {}
    for item in names:
        source, frame = split_frame(item)
        if frame is not None and volume_format(source):
            pages_of.setdefault(source, {})[frame] = str(item)
    stacks, stems = {}, set(names.values())
    for source, pages in pages_of.items():
        try:
            count = volume_info(source)[2]
        except DataError:
            continue  # unreadable: each page fails as itself
        base = names[pages[0]].removesuffix("_frame0") if 0 in pages else ""
        # a name another input's outputs take (`b/seq.nii.gz` beside the stack `a/seq.nii.gz`): PNGs per page
        if count > 1 and set(pages) == set(range(count)) and base not in stems and f"{base}_frame0" in stems:
            stacks |= {item: (source, f"{base}_mask{mask_suffix(source)}", count) for item in pages.values()}
    return stacks


def _labels(mask_image: np.ndarray, label_map: bool) -> np.ndarray:
    """A mask image's class values, as a volume file keeps them: 0 / 1 for lesion, a label map's own values."""
    return mask_image if label_map else mask_image // 255


def _stack_page(
    pred, stack: tuple[Path, str, int], held: dict, row: int, rows: list, summaries: list, out: Path
) -> list:
    """Keep the mask of a page of a stack predicted whole (`whole_stacks`), whose PNG mask is written and named in its
    row meanwhile (an interrupted predict keeps it); at the stack's last page, write its masks as one volume like it
    (`volumes.write_like`) and name it in the pages' rows. Gives the PNGs it replaces, for the caller to remove once
    the finished table names the volume (until then, the partial table names them). A stack one of whose pages
    fails, or whose volume cannot be written (said in its rows' warnings), keeps its pages' PNGs."""
    source, name, count = stack
    pages = held.setdefault(source, {})
    pages[split_frame(pred.image)[1]] = (row, _labels(pred.mask.mask_image(), pred.mask.class_map is not None))
    if len(pages) < count:
        return []
    from medcad.data.volumes import write_like

    del held[source]
    try:
        write_like(source, np.stack([pages[k][1] for k in range(count)]), out / name)
    except DataError as e:
        for i, _ in pages.values():
            said = f"its stack's mask volume cannot be written ({e.problem}): its PNG mask kept"
            rows[i]["warnings"] = "; ".join(filter(None, [rows[i].get("warnings", ""), said]))
            summaries[i]["warnings"] = rows[i]["warnings"]
        return []
    replaced = [rows[i]["mask_file"] for i, _ in pages.values()]
    for i, _ in pages.values():
        rows[i]["mask_file"] = summaries[i]["mask_file"] = name
    return replaced


def _append_rows(path: Path, rows: list[dict], start: int, end: int, columns: list[str] | None) -> None:
    """Append `rows[start:end]` to a CSV table (its header with the first rows), in `columns` where known."""
    chunk = pd.DataFrame(rows[start:end])
    (chunk.reindex(columns=columns) if columns else chunk).to_csv(path, mode="a", header=start == 0, index=False)


def predict_image_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out: str | Path,
    *,
    batch: int = 16,
    overlays: bool = True,
    workers: int | None = None,
    errors: str = "row",
    names: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Predict every image file (`output_names` gives `<stem>`); write into `out`: `<stem>_overlay.png` (what the
    prediction has, drawn on the image), `<stem>_mask.png` for mask tasks (at the image's size: 0/255; label-map
    models: the class map in the run's mask values, a 16-bit PNG where a value exceeds 255, see
    `LesionMask.mask_image`; for a one-page volume file, `<stem>_mask.nii.gz` or its own format, like the image:
    `_write_mask`; for every page of a volume stack, one such file of all its pages, named in each page's row:
    `whole_stacks`), and predictions.csv (one `Prediction.row` per image, after `image`, `status` ("ok" /
    "failed") and `error` (why a file failed), then `overlay_file` and `mask_file`: the names of the files written
    for it in `out`, and `warnings` where the image makes its prediction doubtful,
    `medcad.inference.uploads.prediction_warnings`). Rows are appended to
    predictions.csv.partial batch by batch, so an interrupted run keeps what it wrote; the finished table replaces
    predictions.csv at the end. Files are decoded in `workers` DataLoader processes (see `Predictor.predict_files`).

    Args:
        errors: "row": an unreadable file (corrupt, truncated, over the pixel limit) gets a failed row and an
            {"image", "error"} record, and the other files go on; "raise": it stops the run with its DataError.
        names: each path's output stem, as `check_output_folder` claimed them (default: `output_names(paths)`).

    Returns:
        the table, and `Prediction.summary`s (an {"image", "error"} record for a failed file), in input order.
    """
    if errors not in ("row", "raise"):
        raise ValueError(f"errors={errors!r}: use 'row' or 'raise'")
    check_png_values(tuple(predictor.class_values or ()))  # before any file is written, not at the first mask
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{TABLE}.partial"
    partial.unlink(missing_ok=True)
    rows: list[dict] = []
    summaries: list[dict] = []
    columns: list[str] | None = None  # from the first prediction; failed rows wait for it in the partial file
    written = 0
    items = predictor.predict_files(paths, batch, workers, errors="raise" if errors == "raise" else "yield")
    names = output_names(paths) if names is None else names
    stacks, held, replaced = whole_stacks(names), {}, []  # a stack's page masks until its last page (`_stack_page`)
    chunks = []  # the rows each append to the partial table took: a stack's finished table is written so too
    for k, (pred, image) in enumerate(items):
        if isinstance(pred, DataError):
            rows.append({"image": pred.path, "status": FAILED, "error": pred.problem})
            summaries.append({"image": pred.path, "error": pred.problem})
        else:
            stem = names.get(pred.image) or file_stem(pred.image)
            files = {}
            if overlays:
                write_png(out / f"{stem}_overlay.png", pred.draw(image))
                files["overlay_file"] = f"{stem}_overlay.png"
            if pred.mask is not None:
                files["mask_file"] = _write_mask(pred, out, stem)
            doubts = "; ".join(prediction_warnings(pred, image, predictor.config.image_size))
            rows.append({"image": pred.image, "status": OK, "error": ""} | pred.row() | files | {"warnings": doubts})
            summaries.append(pred.summary() | files | ({"warnings": doubts} if doubts else {}))
            if pred.mask is not None and pred.image in stacks:
                replaced += _stack_page(pred, stacks[pred.image], held, len(rows) - 1, rows, summaries, out)
            columns = columns or list(rows[-1])
        if (columns is not None and (k + 1) % batch == 0) or k + 1 == len(paths):
            _append_rows(partial, rows, written, len(rows), columns)
            chunks.append((written, len(rows)))
            written = len(rows)
    table = pd.DataFrame(rows)
    if rows and not stacks:  # the partial table is the finished one
        os.replace(partial, RunFolder(out).predictions)
    elif rows:  # a stack's rows, appended before its volume was written, name it now: the rows as they end, in the
        # partial table's pieces (a piece of rows without a failed one writes its whole numbers as such)
        with atomic_path(RunFolder(out).predictions) as tmp:
            for start, end in chunks:
                _append_rows(tmp, rows, start, end, columns)
        partial.unlink(missing_ok=True)
        for name in replaced:  # a whole stack's page PNGs, which its volume replaces
            (out / name).unlink(missing_ok=True)
    return table, summaries
