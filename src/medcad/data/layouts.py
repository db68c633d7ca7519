"""Readers that turn a dataset layout into a Manifest; `detect_layout` picks one from what is on disk."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

from medcad.config import DataOptions
from medcad.data.annotations import (
    add_box_json,
    find_cvat,
    find_dicom_seg,
    find_labelme,
    find_via,
    find_voc,
    find_yolo,
    is_voc_xml,
    read_coco,
    read_cvat,
    read_dicom_seg,
    read_labelme,
    read_via,
    read_voc,
    read_yolo,
)
from medcad.data.datalist import find_datalist, read_datalist
from medcad.data.filekinds import IMAGE_SUFFIXES, file_stem, is_dicom, volume_format, without_suffix
from medcad.data.folder_patterns import detect_pattern, subfolder_fields
from medcad.data.ledger import BROKEN_LINK, make_ledger, walk_files
from medcad.data.manifest import (
    MASK_SEP,
    Manifest,
    check_label_map,
    label_counts,
    label_spellings,
    make_table,
    merge_patient_spellings,
    nfc,
    note_missing_patients,
    one_row_per_image,
    patients_from_dicom,
    patients_from_paths,
    rename_labels,
)
from medcad.data.masks import shared_mask_notes
from medcad.data.media import MEDIA_SUFFIXES, expand_frames, find_coco_json, pattern_regex, walk_media
from medcad.data.nnunet import first_channels, unnamed_channels_note
from medcad.data.pairing import several_images_of_one_name
from medcad.data.tables import MANIFEST_NAMES, lone_table, read_csv, read_xlsx, split_tables
from medcad.errors import DataError

ANNOTATION_FINDERS = (
    ("coco", find_coco_json, "{} holds COCO 'images'/'annotations'"),
    ("cvat", find_cvat, "{} holds CVAT-for-images <annotations>"),
    ("labelme", find_labelme, "labelme JSON files beside the images (e.g. {})"),
    ("via", find_via, "{} is a VGG Image Annotator (VIA) project or export"),
    ("dicom-seg", find_dicom_seg, "DICOM SEG objects beside DICOM images (e.g. {})"),
    ("yolo", find_yolo, "YOLO label files, classes in {}"),
    ("voc", find_voc, "Pascal VOC XML files (e.g. {})"),
)


def detect_layout(path: Path, options: DataOptions | None = None) -> tuple[str, str]:
    """Guess the layout of a dataset path: (layout, why). Raises DataError with advice when nothing fits."""
    options = options or DataOptions()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt"):
            return "csv", f"a {suffix} manifest file"
        if suffix == ".json":
            return "coco", "a JSON file (COCO)"
        if suffix == ".xml" and is_voc_xml(path):
            return "voc", "a Pascal VOC XML file"
        if suffix in (".xlsx", ".xml"):
            return ("xlsx", "an Excel .xlsx manifest") if suffix == ".xlsx" else ("cvat", "an XML file (CVAT)")
        if is_dicom(path) or suffix in IMAGE_SUFFIXES or volume_format(path):
            return "folders", "a single image file"
        raise DataError(
            path, "not a dataset: give a folder, a CSV/TSV/XLSX manifest, a COCO JSON, a CVAT XML or a DICOM file"
        )
    if options.images or options.masks:
        return "images-masks", "--images/--masks given"
    manifest = next((n for n in MANIFEST_NAMES if (path / n).is_file()), None)
    if manifest:
        return "csv", f"{manifest} in the folder (an explicit manifest wins over what the folders suggest)"
    if (path / "manifest.xlsx").is_file():
        return "xlsx", "manifest.xlsx in the folder (an explicit manifest wins over what the folders suggest)"
    datalist = find_datalist(path)
    if datalist is not None:
        return (
            "datalist",
            f"{datalist.name} lists the images with their masks or classes (a MONAI / Decathlon datalist)",
        )
    table = lone_table(path)
    if table is not None:
        why = f"{table.name}, the one table in the folder, names its images (a manifest by another name)"
        return ("xlsx" if table.suffix.lower() == ".xlsx" else "csv"), why
    tables = split_tables(path)
    if tables:
        where = ", ".join(f"{t.parent.name}/" for t in tables)
        return "csv", f"{tables[0].name} in each of {where} (Roboflow's TensorFlow CSV export, split into folders)"
    from medcad.data.pairing import find_pair_groups

    groups, why = find_pair_groups(path, options.mask_suffix)
    if groups:
        return "images-masks", why
    for layout, find, why in ANNOTATION_FINDERS:
        found = find(path)
        if found is not None:
            return layout, why.format(found.relative_to(path).as_posix())
    return "folders", "folders of images (no manifest, COCO JSON or paired image / mask folders found)"


def read_folders(path: Path, options: DataOptions) -> Manifest:
    """Class-per-folder (`root/<label>/*`) or nested folders mapped by a pattern such as `{domain}/{label}`.

    Files named `<stem><mask_suffix>.*` or `<stem><mask_suffix>_<n>.*` beside an image are its masks.
    """
    pattern, mask_suffix = options.pattern, options.mask_suffix
    if path.is_file():
        rows, problems = [{"image": path.name}], []
        return Manifest(path.parent, make_table(expand_frames(rows, path.parent, problems)), "folders", problems)
    files = first_channels(walk_media(path))  # nnU-Net's imagesTs/ read as a folder (predict): a case per image
    if not files:
        broken: list[tuple[Path, str]] = []
        walk_files(path, broken)
        broken = [(p, why) for p, why in broken if why.startswith(BROKEN_LINK)]
        said = f"; {len(broken)} link(s) to missing files, e.g. {broken[0][0].name}: {broken[0][1]}" if broken else ""
        looked = ", ".join([*sorted(MEDIA_SUFFIXES), "NIfTI, MetaImage, NRRD, MINC, Analyze"])
        raise DataError(path, f"no images found (looked for {looked}){said}")
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for f in files:
        by_dir[f.parent].append(f)
    mask_rx = re.compile(r"^(?P<base>.+?)" + re.escape(mask_suffix) + r"(?:_\d+)?$") if mask_suffix else None
    why = ""
    if pattern is None:
        pattern, why = detect_pattern(path, files)
    regex = pattern_regex(pattern) if pattern else None
    rows, problems, by_word = [], [], []
    stems_in = {folder: {file_stem(f) for f in group} for folder, group in by_dir.items()}
    paired_by_suffix = any(_suffix_base(f, mask_rx, stems_in[f.parent]) for f in files)
    for folder, group in by_dir.items():
        stems = stems_in[folder]
        masks: dict[str, list[str]] = defaultdict(list)
        images = []
        for f in group:
            if (base := _suffix_base(f, mask_rx, stems)) is not None:
                masks[base].append(f.relative_to(path).as_posix())
            elif (base := _mask_by_word(f, stems)) is not None:
                masks[base].append(f.relative_to(path).as_posix())
                by_word.append(f.relative_to(path).as_posix())
            elif why_mask := _orphan_mask(f, mask_rx, paired_by_suffix):
                problems.append((f.relative_to(path).as_posix(), why_mask))
            else:
                images.append(f)
        rel_dir = folder.relative_to(path).as_posix()
        fields: dict[str, str] = {}
        if regex is not None:
            match = regex.match(rel_dir) if rel_dir != "." else None
            if match is None:
                problems += [
                    (f.relative_to(path).as_posix(), f"folder does not fit the pattern {pattern!r}") for f in images
                ]
                continue
            fields = {k: v for k, v in match.groupdict().items() if v is not None}
        stem_of = {f: file_stem(f) for f in images}
        named: dict[str, list[str]] = {stem: [] for stem in stem_of.values()}
        for f in images:
            named[stem_of[f]].append(f.relative_to(path).as_posix())
        shared = several_images_of_one_name(named, masks, problems)
        for f in images:
            if stem_of[f] in shared:
                continue
            row = {"image": f.relative_to(path).as_posix(), **fields}
            if stem_of[f] in masks:
                row["mask"] = MASK_SEP.join(sorted(masks[stem_of[f]], key=lambda s: (len(s), s)))
            rows.append(row)
    rows = expand_frames(rows, path, problems)
    if not rows:
        unfit = sum("does not fit the pattern" in why for _, why in problems)
        other = [(p, why) for p, why in problems if "does not fit the pattern" not in why]
        if other and not unfit:  # e.g. masks alone, without their images: the pattern is not what went wrong
            raise DataError(
                path,
                f"no image to read: the {len(other)} media file(s) found were all set aside, e.g. {other[0][0]}: "
                f"{other[0][1]}",
            )
        besides = (
            f" ({len(other)} more set aside for other reasons, e.g. {other[0][0]}: {other[0][1]})" if other else ""
        )
        raise DataError(
            path, f"no images fit the folder pattern {pattern!r}; set --pattern, e.g. '{{domain}}/{{label}}'{besides}"
        )
    detected = f" (detected{why})" if options.pattern is None else ""
    notes = [f"folder pattern {pattern!r}{detected}"] if pattern or why else []
    if by_word:
        notes.append(
            f"{len(by_word)} file(s) read as the masks of the image beside them by a mask word in their names and "
            f"their mask-like content (e.g. {by_word[0]}; --mask-suffix is {mask_suffix!r})"
        )
    notes += _shared_stem_note(path, by_dir) + unnamed_channels_note(files)
    _no_mask_folder_as_a_class(path, rows)
    return Manifest(path, make_table(rows), "folders", problems, notes)


MASK_FOLDER_NAMES = frozenset(
    {
        "mask",
        "masks",
        "label",
        "labels",
        "labelstr",
        "gt",
        "groundtruth",
        "ground_truth",
        "segmentation",
        "segmentations",
    }
)


def _no_mask_folder_as_a_class(path: Path, rows: list[dict]) -> None:
    """Refuses a class-per-folder read whose classes are an image folder and its mask folder: a folder named as masks
    are (`MASK_FOLDER_NAMES`) whose files are mask-like (`pairing.mask_likeness`) beside images. A MONAI / Decathlon
    set (images/, labels/ and a dataset.json that pairs them) had trained a classifier of 'images' against 'labels'
    to an AUC of 1.000, unsaid. Raises DataError naming both folders and how to read them as images and masks."""
    from medcad.data.pairing import mask_likeness

    by_label: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_label[r.get("label", "")].append(r["image"])
    named = [lab for lab in by_label if lab.lower() in MASK_FOLDER_NAMES]
    others = [lab for lab in by_label if lab and lab not in named]
    for lab in named:
        files = by_label[lab]
        sample = files[:: max(1, len(files) // 8)][:8]
        if others and min(mask_likeness(path / f) for f in sample) >= 0.95:
            images = max(others, key=lambda o: len(by_label[o]))
            image_dir, mask_dir = (Path(by_label[x][0]).parent.as_posix() for x in (images, lab))
            above = Path(mask_dir).parent.as_posix()  # both in one sub-folder (an nnU-Net Dataset<id>_<name>/)
            there = (
                f", or read {path.name}/{above}/ itself"
                if above != "." and Path(image_dir).parent == Path(above)
                else ""
            )
            raise DataError(
                path,
                f"its folders '{images}/' and '{lab}/' were read as two classes, but '{lab}/' holds masks (named so, "
                f"and its files are mask-like, e.g. {files[0]}): pair them as images and masks, with `--images "
                f"{image_dir} --masks {mask_dir}` where their file names match{there}, else with a manifest CSV of "
                "image and mask columns or a dataset.json datalist (MONAI / Decathlon: a 'training' list of image and "
                "label paths)",
            )


def _suffix_base(f: Path, mask_rx: re.Pattern | None, stems: set[str]) -> str | None:
    """The stem of the image beside `f` (`stems`: those of its folder's files) whose mask `f` is by the mask suffix
    (`x_mask.png`, `x_mask_2.png` beside `x.jpg`), else None."""
    m = mask_rx.match(file_stem(f)) if mask_rx else None
    return m.group("base") if m and m.group("base") != file_stem(f) and m.group("base") in stems else None


def _orphan_mask(f: Path, mask_rx: re.Pattern | None, paired_by_suffix: bool) -> str:
    """Why `f`, beside no image of its base name, is a mask without its image rather than an image ("" when it is an
    image): named with the mask suffix in a dataset whose masks are so named, or named with the suffix or a mask
    word and holding a mask's content (`pairing.mask_likeness`). A BUSI `benign (13)_mask.png` whose image was
    missing had been read, and trained on, as an image of its class."""
    from medcad.data.filekinds import MASK_STEM
    from medcad.data.pairing import mask_likeness

    by_suffix = bool(mask_rx and mask_rx.match(file_stem(f)))
    if by_suffix and paired_by_suffix:
        return "a mask (by its name, as the other masks here) without an image of the same name beside it: not read"
    if (by_suffix or MASK_STEM.match(file_stem(f))) and mask_likeness(f) >= 0.95:
        return "a mask (by its name and content) without an image of the same name beside it: not read"
    return ""


def _mask_by_word(f: Path, stems: set[str]) -> str | None:
    """The stem of the image beside `f` whose mask `f` is by a mask word (`x_gt.png`, `x_segmentation.png` beside
    `x.jpg`, as `filekinds.MASK_STEM` knows them) and by its content (mask-like, `pairing.mask_likeness`), else None."""
    from medcad.data.filekinds import MASK_STEM
    from medcad.data.pairing import mask_likeness

    m = MASK_STEM.match(file_stem(f))
    if m is None or m.group("base") not in stems or m.group("base") == file_stem(f):
        return None
    return m.group("base") if mask_likeness(f) >= 0.95 else None


def _shared_stem_note(root: Path, by_dir: dict[Path, list[Path]]) -> list[str]:
    """A warning when two folders hold mostly the same file names and one of them looks like masks (masks read as
    a class?); class folders numbered alike (`benign/1.png`, `malignant/1.png`) get none."""
    from medcad.data.pairing import mask_likeness

    dirs = list(by_dir)
    for i, a in enumerate(dirs):
        for b in dirs[i + 1 :]:
            sa, sb = {file_stem(f) for f in by_dir[a]}, {file_stem(f) for f in by_dir[b]}
            shared = len(sa & sb)
            masky = [mask_likeness(by_dir[d][0]) >= 0.95 for d in (a, b)]
            if shared >= max(2, 0.5 * min(len(sa), len(sb))) and masky[0] != masky[1]:
                ra, rb = a.relative_to(root).as_posix(), b.relative_to(root).as_posix()
                return [
                    f"'{ra}/' and '{rb}/' share {shared} file names; if one of them holds masks, read the set "
                    f"with --images {ra} --masks {rb} (or the other way round)"
                ]
    return []


def _paired_dirs(path: Path, options: DataOptions) -> list[tuple[str, str, Path, Path]]:
    """(label, split, image folder, mask folder) of each pair: from --images/--masks (neither), else those
    `find_pair_groups` finds."""
    from medcad.data.pairing import find_pair_groups

    if options.images or options.masks:
        if not (options.images and options.masks):
            raise DataError(path, "give both --images DIR and --masks DIR (folders relative to the dataset folder)")
        dirs = (path / options.images, path / options.masks)
        for d in dirs:
            if not d.is_dir():
                raise DataError(d, "folder not found (--images and --masks are relative to the dataset folder)")
        return [("", "", dirs[0], dirs[1])]
    groups, _ = find_pair_groups(path, options.mask_suffix)
    if not groups:
        raise DataError(path, "no image and mask folders with matching file names; name them with --images/--masks")
    return [(label, split, p.images, p.masks) for label, split, p in groups]


def _read_pair(path: Path, image_dir: Path, mask_dir: Path, options: DataOptions, problems: list) -> list[dict]:
    """Rows of one image/mask folder pair (paths relative to `path`); masks without an image become problems."""
    from medcad.data.pairing import mask_base

    images = first_channels(walk_media(image_dir))
    stems_in: dict[Path, set[str]] = defaultdict(set)  # image stems per sub-folder of the image folder
    for f in images:
        rel = without_suffix(f.relative_to(image_dir))
        stems_in[rel.parent].add(rel.name)
    masks: dict[str, list[Path]] = defaultdict(list)
    for f in walk_media(mask_dir):
        rel = without_suffix(f.relative_to(mask_dir))
        base = mask_base(rel.name, stems_in.get(rel.parent, set()), options.mask_suffix)
        if base is None:
            problems.append(
                (f.relative_to(path).as_posix(), f"mask without an image of the same name in {image_dir.name}/")
            )
        else:
            masks[(rel.parent / base).as_posix()].append(f)
    named: dict[str, list[str]] = defaultdict(list)
    for f in images:
        named[without_suffix(f.relative_to(image_dir)).as_posix()].append(f.relative_to(path).as_posix())
    shown = {k: [m.relative_to(path).as_posix() for m in v] for k, v in masks.items()}
    shared = several_images_of_one_name(named, shown, problems)
    rows = []
    for f in images:
        key = without_suffix(f.relative_to(image_dir)).as_posix()
        if key in shared:
            continue
        row = {"image": f.relative_to(path).as_posix()}
        if key in masks:
            files = sorted(m.relative_to(path).as_posix() for m in masks[key])
            row["mask"] = MASK_SEP.join(sorted(files, key=lambda s: (len(s), s)))
        rows.append(row)
    return rows


def read_images_masks(path: Path, options: DataOptions) -> Manifest:
    """Images in one folder and masks with the same file stems in another (Kvasir-SEG's `images/` + `masks/`, or
    any names: see `medcad.data.pairing`), plus a Kvasir-style bounding-box JSON when present. A release with one
    such pair in each of several sub-folders (`polyp/images` + `polyp/masks`, `normal/images` + `normal/masks`)
    is read whole, each sub-folder's name being its images' label.

    A mask stem may add a mask word (`_mask`, `_seg`, `_gt`, ...) and `_<n>` for one of several masks (unioned).
    """
    problems: list[tuple[str, str]] = []
    rows, notes = [], []
    for label, split, image_dir, mask_dir in _paired_dirs(path, options):
        pair_rows = _read_pair(path, image_dir, mask_dir, options, problems)
        n_masked = sum(1 for r in pair_rows if "mask" in r)
        where = f"{image_dir.relative_to(path).as_posix()}/"
        notes.append(f"{n_masked} of {len(pair_rows)} images in {where} have a mask in {mask_dir.name}/")
        if label:
            notes[-1] += f" (label {label!r}, from the folder's name)"
            pair_rows = [dict(r, label=label) for r in pair_rows]
        elif split:  # a split's folder: kept as a column
            notes[-1] += f" (split {split!r} in the 'split' column: `data split --split-column split` keeps it)"
            pair_rows = [dict(r, split=split) for r in pair_rows]
        if not label:
            pair_rows, said = subfolder_fields(pair_rows, image_dir.relative_to(path))
            notes += [said] if said else []
        rows += pair_rows
    rows, box_notes, sources = add_box_json(path, rows, problems)
    notes += box_notes
    table = make_table(expand_frames(rows, path, problems))
    return Manifest(path, table, "images-masks", problems, notes, sources=sources)


READERS = {
    "folders": read_folders,
    "csv": read_csv,
    "images-masks": read_images_masks,
    "coco": read_coco,
    "labelme": read_labelme,
    "dicom-seg": read_dicom_seg,
    "cvat": read_cvat,
    "xlsx": read_xlsx,
    "yolo": read_yolo,
    "voc": read_voc,
    "via": read_via,
    "datalist": read_datalist,
}


def load_manifest(
    path: str | Path, options: DataOptions | None = None, *, labels: list[str] | None = None, **option_values
) -> Manifest:
    """Read a dataset in any supported layout into a Manifest.

    Args:
        path: dataset folder, CSV/TSV manifest, COCO JSON or DICOM file.
        options: how to read it (layout, pattern, mask suffix, paired folders, patient ids from file names,
            label renaming); see `medcad.config.DataOptions`. Keyword arguments may give the same fields.
        labels: the allowed labels; rows with other labels are reported as problems and left out.

    Returns:
        The manifest; its `notes` say which layout was chosen and why, and every other interpretation made.

    Raises:
        DataError: the path does not exist or no reader can use it.
        ConfigError: a bad option (unknown layout, bad regular expression or label map).
    """
    options = dataclasses.replace(options or DataOptions(), **option_values)
    p = Path(path)
    if not p.exists():
        raise DataError(p, "dataset path not found")
    if options.layout:
        layout, why = options.layout, "given (--layout, or the layout a run read its data in: its config.json)"
    else:
        layout, why = detect_layout(p, options)
    reader = READERS.get(layout)
    if reader is None:
        raise DataError(p, f"unknown layout {layout!r}; choose one of {', '.join(READERS)}")
    manifest = reader(p, options)
    manifest.notes.insert(0, f"layout {layout!r}: {why}")
    rename_labels(manifest, {v: nfc(v) for v in manifest.table["label"].unique() if nfc(v) != v}, "labels in NFC")
    label_map = {nfc(a): nfc(b) for a, b in options.label_mapping().items()}
    check_label_map(manifest, label_map)
    rename_labels(manifest, label_map)
    rename_labels(manifest, label_spellings(label_counts(manifest)), "label spellings merged")
    merge_patient_spellings(manifest)
    one_row_per_image(manifest)  # after the renames: `benign` and `Benign` are one label, `007` and `7` one patient
    if options.group_from:
        patients_from_paths(manifest, options.group_from)
    patients_from_dicom(manifest)
    note_missing_patients(manifest)
    if labels is not None:
        allowed = set(labels)
        bad = ~manifest.table["label"].isin(allowed)
        for img, lab in zip(manifest.table.loc[bad, "image"], manifest.table.loc[bad, "label"], strict=True):
            what = "has no label" if not lab else f"label {lab!r} is not one of {sorted(allowed)}"
            manifest.problems.append((img, what))
        manifest.table = manifest.table[~bad].reset_index(drop=True)
    whole = p.is_dir() or layout != "folders"  # a single image file: nothing else to account for
    _labels_file_source(manifest)
    used, sources = manifest.used_files(), manifest.sources
    manifest.ledger = make_ledger(manifest.root, layout, used, sources, len(manifest), manifest.problems, whole)
    manifest.notes.append(manifest.ledger.line())
    manifest.notes += shared_mask_notes(manifest)
    if len(manifest.table) == 0:
        found = "; ".join(list(dict.fromkeys(f"{a}: {b}" for a, b in manifest.problems))[:5])
        unread = f"; {manifest.ledger.line()}" if manifest.ledger.unread else ""  # what the folder held instead
        raise DataError(p, f"no usable images found with layout {layout!r}" + (f" ({found})" if found else "") + unread)
    return manifest


def _labels_file_source(manifest: Manifest) -> None:
    """A labels file of label-map masks (nnU-Net's dataset.json) is part of the read: named as a source, with a note
    that segment-multiclass reads its classes (other tasks read every non-zero mask value as lesion)."""
    from medcad.data.labelmaps import find_labels_file

    with_mask = [i for i in range(len(manifest)) if manifest.table["mask"].iat[i]][:1]
    if not with_mask:
        return
    found = find_labels_file(manifest.root, manifest.mask_paths(with_mask[0]))
    if found is None or not found.is_relative_to(manifest.root):
        return
    rel = found.relative_to(manifest.root).as_posix()
    if rel not in manifest.sources:
        manifest.sources.append(rel)
        manifest.notes.append(f"{rel}: the classes of the mask values, for --task segment-multiclass")
