"""Dataset audit: unreadable files, mask problems, empty labels, exact and near-duplicate images, leakage, and what
the ultrasound interface option would remove from each image (crop box, masked marks)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medcad.data.boxes import checked_boxes
from medcad.data.duplicates import (
    connected_groups,
    content_features,
    cross_label,
    duplicate_groups,
    duplicate_links,
    large_groups,
    largest_group,
    link_groups,
    mask_like,
)
from medcad.data.fingerprints import HASH_VERSION, FileCache, ImageFingerprint, fingerprints, per_sample
from medcad.data.interface import INTERFACE_VERSION, before_after, find_interface
from medcad.data.io import read_image
from medcad.data.labelmaps import (
    COLOUR_FILE,
    LABELS_FILE,
    NoLabelsMapping,
    find_labels_file,
    read_label_map,
    resolve_mask_labels,
)
from medcad.data.manifest import Manifest, shown_path
from medcad.data.masks import (
    SPECK_AREA,
    background_as_lesion,
    decode_mask,
    lesion_components,
    sample_mask_pages,
    size_mismatch,
)
from medcad.data.volumes import geometry_mismatch
from medcad.errors import ConfigError, DataError


def _check_masks(manifest: Manifest, i: int, fp: ImageFingerprint | str) -> list[tuple[str, str, str]]:
    """Findings on one sample's masks: (kind, mask path, detail); kinds: size, geometry (a volume label map on another
    voxel grid: `volumes.geometry_mismatch`), unreadable, non_binary, empty,
    full_frame, inverted (`masks.background_as_lesion`), speck_only, specks (`_specks`), and decoding (the rule
    used, for every mask)."""
    out = []
    root = manifest.root
    try:
        pages = sample_mask_pages(manifest, i)
    except DataError as e:
        return [("unreadable", shown_path(Path(e.path), root), e.problem)]
    decoded, rels = [], []
    for mp, page in zip(manifest.mask_paths(i), pages, strict=True):
        rel = shown_path(mp, root)
        try:
            mask, how = decode_mask(mp, page)
            h, w = mask.shape
            if isinstance(fp, ImageFingerprint) and (w, h) != (fp.width, fp.height):
                out.append(("size", rel, size_mismatch((w, h), (fp.width, fp.height))))
            elif grid := geometry_mismatch(Path(mp), Path(manifest.image_path(i))):
                out.append(("geometry", rel, grid))
            values = ", ".join(f"{v:g}" for v in how.values[:6]) + (" ..." if how.n_values > 6 else "")
            detail = f"{how.n_values} values ({values}): {how.rule}; lesion {how.lesion_fraction:.1%} of the frame"
            out.append(("decoding", rel, detail))
            if not how.binary:
                out.append(("non_binary", rel, detail))
            if how.lesion_fraction == 0:
                out.append(("empty", rel, detail))
            elif painted := background_as_lesion(mask):
                out.append((painted, rel, detail))
            else:
                decoded.append(mask)
                rels.append(rel)
        except DataError as e:
            out.append(("unreadable", rel, e.problem))
    if decoded and len({m.shape for m in decoded}) == 1:  # the image's lesion: its mask files together
        out += _specks(np.logical_or.reduce(decoded), " + ".join(rels))
    return out


def _specks(mask: np.ndarray, rel: str) -> list[tuple[str, str, str]]:
    """A mask's specks (lesion regions under `SPECK_AREA` px): "speck_only" when they are its whole lesion (a slip
    of the pen, or a lesion drawn a pixel wide?), "specks" beside a larger lesion (stray marks, e.g. Kvasir-SEG's
    lone corner pixel), with where the first lies."""
    regions = lesion_components(mask)
    small = regions[regions[:, 4] < SPECK_AREA]
    if not len(small):
        return []
    at = f"{int(small[:, 4].sum())} px; the first at x {small[0, 0]}, y {small[0, 1]}"
    if len(small) == len(regions):
        return [("speck_only", rel, f"its whole lesion is {len(small)} region(s) of under {SPECK_AREA} px ({at})")]
    verb = "is" if len(small) == 1 else "are"
    return [("specks", rel, f"{len(small)} of its {len(regions)} lesion regions {verb} under {SPECK_AREA} px ({at})")]


def _check_boxes(manifest: Manifest, fps: list) -> tuple[list[list[str]], list[str]]:
    """The boxes a detection run would clip or drop (`clean_boxes` against each image's size: [image, what]) or
    keep though they are lines or specks (`medcad.data.boxes.THIN_BOX`, `SPECK_AREA`), and the images whose boxes
    would all be dropped (a detection run stops on them: `medcad.targets`)."""
    problems, unusable = [], []
    keys = manifest.keys
    for i in range(len(manifest)):
        boxes = manifest.boxes(i)
        if boxes is None or not isinstance(fps[i], ImageFingerprint):
            continue
        kept, said = checked_boxes(boxes, fps[i].width, fps[i].height)
        problems += [[keys[i], text] for text in said]
        if boxes and not kept:
            unusable.append(keys[i])
    return problems, unusable


def _check_label_maps(manifest: Manifest, mask_labels: str | None, unreadable: set[str]) -> dict | None:
    """The masks read as label maps, as a segment-multiclass run reads them (`read_label_map`), where the classes are
    given (`mask_labels`, "1=cyst,2=stone") or a labels file lies beside the masks (nnU-Net's dataset.json, CVAT's
    labelmap.txt); None otherwise (binary masks). Masks in `unreadable` (found so already) are not read again.

    Returns:
        {classes: "1=cyst,...", source, images_with_class: {name: images whose masks hold it}, absent_classes,
        problems: [[image, mask, what]]: values no class names, lossy files, colours without their table (a run
        stops on each)}; or {problems: [[dataset, labels file, what]]} where the labels file cannot be used.

    Raises:
        ConfigError: `mask_labels` is not VALUE=NAME pairs.
    """
    mask_paths = [p for i in range(len(manifest)) for p in manifest.mask_paths(i)]
    files = [find_labels_file(manifest.root, mask_paths, name) for name in (LABELS_FILE, COLOUR_FILE)]
    if not mask_paths or (mask_labels is None and not any(files)):
        return None
    try:
        classes = resolve_mask_labels(mask_labels, manifest.root, mask_paths)
    except NoLabelsMapping:  # a dataset.json of another tool: not label maps
        return None
    except DataError as e:  # a labels file a run cannot use (nnU-Net's ignore label, a broken file)
        return {"problems": [[".", shown_path(Path(e.path), manifest.root), e.problem]]}
    except ConfigError as e:  # the file's classes as --mask-labels refuses them (a name given twice)
        if mask_labels is not None:
            raise
        return {"problems": [[".", shown_path(files[0] or files[1], manifest.root), str(e)]]}
    held = np.zeros(len(classes.values) + 1, dtype=int)
    problems = []
    for i, key in enumerate(manifest.keys):
        paths = manifest.mask_paths(i)
        if not paths or any(shown_path(p, manifest.root) in unreadable for p in paths):
            continue
        try:
            index = read_label_map(paths, classes, sample_mask_pages(manifest, i))
        except DataError as e:
            problems.append([key, shown_path(Path(e.path), manifest.root), e.problem])
            continue
        held += np.bincount(index.ravel(), minlength=len(held)) > 0
    names = list(classes.names)
    return {
        "classes": classes.describe(),
        "source": classes.source,
        "images_with_class": {n: int(held[c]) for c, n in enumerate(names, 1)},
        "absent_classes": [n for c, n in enumerate(names, 1) if not held[c]],
        "problems": problems,
    }


def audit(
    manifest: Manifest,
    splits: dict | None = None,
    progress: bool = False,
    interface: str = "crop+marks",
    thumbnails: Path | None = None,
    mask_labels: str | None = None,
    label_maps: bool = True,
) -> dict:
    """Audit a dataset; returns a JSON-ready dict of findings (paths relative to the manifest root).

    Args:
        interface: the interface option whose effect is shown per image ("none" skips it; see `interface_audit`).
        thumbnails: where its before/after thumbnails go (default: under the cache folder; see `interface_audit`).
        mask_labels: the classes of label-map masks ("1=cyst,2=stone", as `--mask-labels`); without them a labels
            file beside the masks gives them, if there is one (`_check_label_maps`: the "label_maps" entry).
        label_maps: False: the masks are not read as label maps at all (a run of a binary mask task's report).

    Raises:
        ConfigError: `mask_labels` is not VALUE=NAME pairs.
    """
    keys = manifest.keys
    fps = fingerprints(manifest, progress=progress)
    unreadable = [[keys[i], f] for i, f in enumerate(fps) if isinstance(f, str)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        mask_findings = list(pool.map(lambda i: _check_masks(manifest, i, fps[i]), range(len(manifest))))
    masks = defaultdict(list)
    for i, found in enumerate(mask_findings):
        for kind, rel, detail in found:
            masks[kind].append([keys[i], rel, detail])
    labels = manifest.table["label"].tolist()
    exact = duplicate_groups(fps, near=False)
    feats = content_features([f if isinstance(f, ImageFingerprint) else None for f in fps])
    links = duplicate_links(fps, near=True, feats=feats)
    near = link_groups(len(fps), links, feats=feats)
    cross = cross_label(near, links, labels)
    gid = {i: k for k, g in enumerate(near) for i in g}
    rules = Counter(detail.split(": ", 1)[1].split(";")[0] for _, _, detail in masks["decoding"])
    box_problems, unusable_boxes = _check_boxes(manifest, fps)
    result = {
        "n_images": len(manifest),
        "manifest_problems": [list(p) for p in manifest.problems],
        # every file under the root that no reader used, named (the ledger's; it had been a count only)
        "not_read": [
            [x["path"], x["reason"]] for x in (manifest.ledger.to_dict() if manifest.ledger else {}).get("not_read", [])
        ],
        "unreadable": unreadable,
        "unreadable_masks": masks["unreadable"],
        "mask_size_mismatch": masks["size"],
        "mask_grid_mismatch": masks["geometry"],  # volume label maps on another voxel grid than their image's
        "non_binary_masks": masks["non_binary"],
        "mask_decoding": dict(rules.most_common()),
        "empty_masks": masks["empty"],
        "full_frame_masks": masks["full_frame"],
        "inverted_masks": masks["inverted"],
        "speck_only_masks": masks["speck_only"],  # the whole lesion under SPECK_AREA px: no box, a doubtful mask
        "speck_masks": masks["specks"],  # stray specks beside a lesion
        "speck_area": SPECK_AREA,
        "all_masks_empty": bool(masks["decoding"]) and len(masks["empty"]) == len(masks["decoding"]),
        "empty_labels": [keys[i] for i, lab in enumerate(labels) if not lab],
        "box_problems": box_problems,  # clipped or dropped, as a detection run would
        "images_without_usable_boxes": unusable_boxes,  # a detection run stops on these (--allow-missing: left out)
        "exact_duplicates": [[keys[i] for i in g] for g in exact],
        "near_duplicates": [[keys[i] for i in g] for g in near],
        "cross_label_duplicates": [[keys[i] for i in g] for g in cross],
        "cross_label_duplicate_labels": [sorted({labels[i] for i in g}) for g in cross],
        "n_images_in_duplicate_groups": sum(len(g) for g in near),
        "largest_duplicate_group": max((len(g) for g in near), default=0),
        "large_duplicate_groups": large_groups(manifest, split_units(manifest, near), links),
        "largest_duplicate_group_detail": largest_group(manifest, near, links),
        "duplicate_grouping": {
            "method": "content hashes (static regions masked), average linkage cut at the near-duplicate test",
            "masked_kinds": feats.kinds,
            "n_links": len(links),
            "n_links_between_groups": len(links) - sum(gid.get(x.i, -1) == gid.get(x.j, -2) for x in links),
        },
        "low_content_images": [keys[i] for i, f in enumerate(fps) if not isinstance(f, str) and feats.blank[i]],
        "mask_like_images": [
            keys[i] for i, f in enumerate(fps) if not isinstance(f, str) and not feats.blank[i] and mask_like(f)
        ],  # a nearly black frame is low content, not a mask
    }
    unreadable_masks = {rel for _, rel, _ in masks["unreadable"]}
    if label_maps and (found := _check_label_maps(manifest, mask_labels, unreadable_masks)) is not None:
        result["label_maps"] = found
    if interface != "none":
        result["interface"] = interface_audit(manifest, interface, thumbnails)
    if splits is not None:
        result["leakage"] = split_leakage(manifest, splits, [[keys[i] for i in g] for g in near])
    return result


THUMBNAILS = 3  # most cropped and most masked images shown before/after
CROPPED, MARKED = 0.99, 0.002  # an image counts as cropped below this kept share, as marked above this masked share


def interface_audit(manifest: Manifest, interface: str, thumbnails: Path | None = None) -> dict:
    """What `interface` (see `medcad.data.interface`) removes from each readable image, at its full size.

    Writes before/after thumbnails (box in green, marks in red, then what the model gets) of the most cropped and
    the most masked images to `thumbnails`, by default <cache>/audit/<dataset>-<hash>/interface (replaced each time).

    Returns:
        {option, images: [{image, box (x0, y0, x1, y1), kept (box share of the frame), masked (share of the box
        inpainted)}], n_cropped, n_marked, kept_median, kept_min, masked_mean, masked_max, thumbnails: folder}.
    """
    from medcad.data.cache import cache_dir

    def one(i: int) -> list:  # [x0, y0, x1, y1, kept, masked]
        cut = find_interface(read_image(manifest.image_path(i), manifest.frame(i)), interface)
        return [*(int(v) for v in cut.box), cut.kept_fraction, cut.masked_fraction]

    cache = FileCache(manifest.root, "interface", f"{HASH_VERSION}.{INTERFACE_VERSION}-{interface}")
    found = per_sample(manifest, cache, one)  # read and cut again only where a file changed
    keys = manifest.keys
    done = [i for i, c in enumerate(found) if not isinstance(c, str)]  # the unreadable are listed as such
    kept_of, masked_of = {i: found[i][4] for i in done}, {i: found[i][5] for i in done}
    rows = [
        {"image": keys[i], "box": found[i][:4], "kept": round(kept_of[i], 4), "masked": round(masked_of[i], 5)}
        for i in done
    ]
    kept = [r["kept"] for r in rows] or [1.0]
    masked = [r["masked"] for r in rows] or [0.0]
    if thumbnails is None:
        tag = hashlib.sha1(str(manifest.root.resolve()).encode()).hexdigest()[:10]
        thumbnails = cache_dir() / "audit" / f"{manifest.root.name}-{tag}" / "interface"
    thumbnails = Path(thumbnails)
    thumbnails.mkdir(parents=True, exist_ok=True)
    for old in thumbnails.glob("*.jpg"):
        old.unlink()
    most_cropped = [i for i in sorted(done, key=kept_of.get) if kept_of[i] < CROPPED]
    most_marked = [i for i in sorted(done, key=lambda i: -masked_of[i]) if masked_of[i] > 0]
    chosen = list(dict.fromkeys(most_cropped[:THUMBNAILS] + most_marked[:THUMBNAILS]))
    from PIL import Image

    for n, i in enumerate(chosen):
        rgb = read_image(manifest.image_path(i), manifest.frame(i))
        tile = before_after(rgb, find_interface(rgb, interface), height=160)
        stem = Path(keys[i]).with_suffix("").as_posix()
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[-60:]
        Image.fromarray(tile).save(thumbnails / f"{n:02d}_{name}.jpg", quality=85)
    return {
        "option": interface,
        "images": rows,
        "n_cropped": sum(k < CROPPED for k in kept),
        "n_marked": sum(m > MARKED for m in masked),
        "kept_median": float(sorted(kept)[len(kept) // 2]),
        "kept_min": float(min(kept)),
        "masked_mean": float(sum(masked) / len(masked)),
        "masked_max": float(max(masked)),
        "thumbnails": str(thumbnails),
    }


def split_units(manifest: Manifest, groups: list[list[int]]) -> list[list[int]]:
    """The units a default split keeps together: near-duplicate groups joined with patient ids where there are
    some (a group that spans two patients puts both patients on one side), the frames of one file and the exported
    copies of one source image together, as `splits.sample_groups` does."""
    first: dict[str, int] = {}
    pairs = [(first.setdefault(p, i), i) for i, p in enumerate(manifest.table["patient"]) if p]
    pairs += manifest.frame_pairs() + manifest.export_pairs()
    if not pairs:
        return groups
    return connected_groups(len(manifest), pairs + [(g[0], j) for g in groups for j in g[1:]])


def split_leakage(manifest: Manifest, splits: dict, dup_groups: list[list[str]]) -> list[dict]:
    """For each fold, the duplicate groups and patients that have members both in training and in test."""
    patients = dict(zip(manifest.keys, manifest.table["patient"], strict=True))
    out = []
    for fold in splits["folds"]:
        train = set(fold["train"]) | set(fold.get("val", []))
        test = set(fold["test"])
        straddle = [g for g in dup_groups if set(g) & train and set(g) & test]
        p_train = {patients[k] for k in train if patients.get(k)}
        p_test = {patients[k] for k in test if patients.get(k)}
        out.append(
            {"fold": fold["fold"], "duplicate_groups_across": straddle, "patients_across": sorted(p_train & p_test)}
        )
    return out
