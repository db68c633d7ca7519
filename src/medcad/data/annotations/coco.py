"""COCO JSON: boxes, and polygon or RLE segmentation (pycocotools) as masks."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from medcad.config import DataOptions
from medcad.data.annotations.shapes import (
    ShapeTally,
    _load_json,
    boxed_note,
    boxes_only,
    exact_images,
    image_dims,
    image_places,
    locate_image,
    majority_label,
    mask_folder,
    read_whole,
    tail_taken,
    write_mask,
)
from medcad.data.manifest import Manifest, label_key, make_table
from medcad.data.media import expand_frames, find_coco_jsons
from medcad.data.splits import split_from_folders, split_said
from medcad.errors import DataError


def _coco_mask(seg, height: int, width: int) -> np.ndarray:
    """One annotation's `segmentation` (polygons, uncompressed or compressed RLE) as bool (H, W)."""
    import warnings

    from pycocotools import mask as mu

    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]  # pycocotools reads a 4-number polygon as a box
        if not polys:
            return np.zeros((height, width), bool)
        rle = mu.merge(mu.frPyObjects(polys, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mu.frPyObjects(seg, *seg["size"])
    else:
        rle = dict(seg)
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"RLE size {rle['size'][1]}x{rle['size'][0]} is not the image's {width}x{height}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)  # pycocotools, NumPy 2
        return mu.decode(rle).astype(bool)


def _poly_outside(seg, width: int, height: int) -> bool:
    if not isinstance(seg, list):
        return False
    xs = [v for p in seg for v in p[0::2]]
    ys = [v for p in seg for v in p[1::2]]
    return bool(xs) and (min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height)


def read_coco(path: Path, options: DataOptions) -> Manifest:
    """A COCO JSON, or the several of one export (`media.find_coco_jsons`: Roboflow's train/ valid/ test/, CVAT's
    annotations/ beside images/), read together: boxes per image (label: its most frequent class, else
    'background'), and when annotations carry a `segmentation` (polygons or RLE) a mask per image, the union of its
    annotations' masks. An image's `file_name` (Windows separators read as '/') is looked up beside its JSON, in
    `images/` there, in the dataset folder and in its `images/` (beside an `annotations/` folder), with a note when
    not beside the JSON.

    In a file with segmentation, an image with an annotation that has a box but no segmentation (Label Studio's
    rectangles beside its polygons) gets no mask, its boxes kept (`shapes.boxes_only`, as YOLO and VOC sets do).

    Refused with a reason (left out, counted): annotations whose category_id is not in `categories`, and
    annotations of images not listed in `images`.
    """
    files = [path] if path.is_file() else find_coco_jsons(path)
    if not files:
        raise DataError(path, "no COCO JSON (an object with 'images' and 'annotations' lists) found")
    root = path if path.is_dir() else path.parent
    if path.is_file() and root.name.lower() == "annotations" and (root.parent / "images").is_dir():
        root = root.parent  # CVAT's "COCO 1.0" and the COCO release: annotations/ beside images/
    rows, problems, notes, tally = [], [], [], ShapeTally.of(options)
    seen: dict[str, Path] = {}
    for js in files:
        file_rows = _read_coco_file(js, root, problems, notes, tally)
        shared = [r["image"] for r in file_rows if r["image"] in seen]
        if shared:  # split files list disjoint images; two versions of one annotation list the same ones
            first = seen[shared[0]].relative_to(root).as_posix()
            raise DataError(
                js,
                f"lists {len(shared)} image(s) that {first} lists too (e.g. {shared[0]}): two versions of one "
                "annotation? give the COCO file to read as the dataset path",
            )
        seen |= {r["image"]: js for r in file_rows}
        notes += [f"{js.relative_to(root).as_posix()}: {len(file_rows)} image(s)"] if len(files) > 1 else []
        rows += file_rows
    if len(files) > 1:
        notes.insert(0, f"{len(files)} COCO files read together as one set; {split_said(split_from_folders(rows))}")
    rows, whole = read_whole(rows, problems, "a COCO file")
    notes += tally.notes() + whole
    rows = expand_frames(rows, root, problems)
    sources = [js.relative_to(root).as_posix() for js in files]
    return Manifest(root, make_table(rows), "coco", problems, list(dict.fromkeys(notes)), sources=sources)


def _read_coco_file(js: Path, root: Path, problems: list, notes: list, tally: ShapeTally) -> list[dict]:
    """One COCO JSON's rows (image paths relative to `root`); its problems and notes appended; its annotations of
    categories --mask-shapes leaves out counted in `tally`, not drawn."""
    try:
        coco = _load_json(js)
        cats = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
        images = [(im["id"], str(im["file_name"]), im.get("width"), im.get("height")) for im in coco["images"]]
        anns = [a for a in coco.get("annotations", []) if a.get("image_id") is not None]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(js, f"not a valid COCO JSON ({type(e).__name__}: {e})") from e
    name_js = js.relative_to(root).as_posix() if js.is_relative_to(root) else js.name
    places = image_places(root, js.parent)
    found_in: Counter = Counter()  # where the images were found, when not beside the JSON
    elsewhere: Counter = Counter()  # prefixes of file_names written as paths on another machine, dropped
    backslashed: list[str] = []
    recased: list[str] = []  # file names that differ from the file's in case alone (annotated on Windows or macOS)
    listed = {iid for iid, *_ in images}
    by_image: dict = defaultdict(list)
    dangling: dict = defaultdict(list)
    for a in anns:
        (by_image if a["image_id"] in listed else dangling)[a["image_id"]].append(a)
    unknown = Counter(a.get("category_id") for a in anns if a.get("category_id") not in cats)
    known = ", ".join(f"{k} {v!r}" for k, v in cats.items()) or "none"
    segmented = any(a.get("segmentation") for a in anns)
    folder = mask_folder(js, tally.drawn_labels) if segmented else None
    rows, no_ann, mixed, tied, boxed = [], [], 0, [], []
    n_clipped = 0
    exact = exact_images(places, [name for _, name, *_ in images])
    for k, (iid, name, width, height) in enumerate(images):
        hit = locate_image(places, name, exact)
        if hit is None:
            where = ", ".join(f"{Path(os.path.relpath(d, root)).as_posix()}/" for d in places)
            taken = tail_taken(places, name, root)
            problems.append((name, f"file not found in {where} (looked up for {name_js}){taken}"))
            continue
        found, place, dropped = hit
        rel = Path(os.path.relpath(found, root)).as_posix()
        if place != js.parent:
            found_in[Path(os.path.relpath(place, root)).as_posix()] += 1
        elsewhere[dropped] += 1 if dropped else 0
        backslashed += [f"{name} as {rel}"] if "\\" in name else []
        recased += [f"{name} as {found.name}"] if found.name != Path(name.replace("\\", "/")).name else []
        mine = by_image.get(iid, [])
        bad = sorted({str(a.get("category_id")) for a in mine if a.get("category_id") not in cats})
        if bad:
            problems.append(
                (rel, f"category_id {', '.join(bad)} not in the categories of {name_js} ({known}): refused")
            )
            continue
        masks: list = [None] * len(mine)
        if folder is not None:
            decoded = _image_masks(mine, found, width, height, f"{name_js} (image id {iid})")
            if isinstance(decoded, str):
                problems.append((rel, decoded))
                continue
            masks, width, height, clipped = decoded
            n_clipped += clipped
        elif mine and width and height:  # boxes only: at the size the file declares, which must be the image's
            dims = image_dims(found, width, height, f"{name_js} (image id {iid})")
            if isinstance(dims, str):
                problems.append((rel, dims))
                continue
        try:
            boxes = [_ann_box(a, cats[a["category_id"]], m) for a, m in zip(mine, masks, strict=True)]
        except (ValueError, TypeError) as e:
            problems.append((rel, f"a bbox in {name_js} is not [x, y, width, height] ({e})"))
            continue
        boxes = [b for b in boxes if b is not None]
        names = [b[4] for b in boxes] if boxes else [cats[a["category_id"]] for a in mine]
        label = majority_label(names)
        mixed += len({label_key(v) for v in names}) > 1
        tied += [rel] if not label else []
        no_ann += [rel] if not mine else []
        row = {"image": rel, "label": label, "boxes": json.dumps(boxes)}
        unoutlined = [cats[a["category_id"]] for a, m in zip(mine, masks, strict=True) if m is None]
        if folder is not None and boxes_only(unoutlined, tally):
            boxed.append(rel)
        elif folder is not None:
            drawn = []
            for a, m in zip(mine, masks, strict=True):
                if not tally.draws(cats[a["category_id"]]):
                    tally.not_drawn.append(f"{name_js} annotation {a.get('id', '?')}")
                elif m is not None:
                    drawn.append(m)
            mask = np.logical_or.reduce(drawn) if drawn else np.zeros((height, width), bool)
            row["mask"] = write_mask(folder / f"{k:06d}.png", mask, root)
        rows.append(row)
    for iid, those in dangling.items():
        ids = ", ".join(str(a.get("id", "?")) for a in those[:5]) + (" ..." if len(those) > 5 else "")
        problems.append(
            (
                f"{name_js}#image_id={iid}",
                f"annotations of an image id not in 'images' (image id {iid}: {len(those)} of them, ids {ids})",
            )
        )
    if found_in:
        where = ", ".join(f"{'the dataset folder' if d == '.' else d + '/'} ({n})" for d, n in found_in.most_common())
        notes.append(f"{name_js}: file_name(s) read relative to {where}, not to the JSON's folder")
    for prefix, n in elsewhere.most_common():
        if n:
            notes.append(
                f"{name_js}: {n} file_name(s) start with {prefix!r}, not here (the annotating machine's folder?): "
                "found by their remaining path"
            )
    if backslashed:
        notes.append(
            f"{name_js}: {len(backslashed)} file_name(s) with Windows separators ('\\') read with '/' "
            f"(e.g. {backslashed[0]})"
        )
    if recased:
        notes.append(
            f"{name_js}: {len(recased)} file_name(s) differ from their file's name in case alone (annotated where "
            f"file systems ignore case?): read as that file (e.g. {recased[0]})"
        )
    if segmented:
        notes.append("COCO segmentation (polygons / RLE) read as masks: the union of each image's annotations")
    notes += boxed_note(boxed, f"annotations without segmentation in {name_js}, whose others have one")
    if unknown:
        shown = ", ".join(f"{c} ({n} annotation(s))" for c, n in unknown.most_common())
        notes.append(f"category ids not in the categories of {name_js} ({known}): {shown}; their images are left out")
    if dangling:
        n, ids = sum(len(v) for v in dangling.values()), ", ".join(map(str, list(dangling)[:5]))
        notes.append(f"{n} annotation(s) name {len(dangling)} image id(s) not in 'images' ({ids}): left out, counted")
    if no_ann:
        what = "label 'background'" + (", empty mask" if segmented else "")
        notes.append(f"{len(no_ann)} image(s) have no annotation: {what} (e.g. {no_ann[0]})")
    if mixed:
        notes.append(f"{mixed} image(s) have annotations of several categories: label = the most frequent one")
    if tied:
        notes.append(f"{len(tied)} of them have no most frequent one (e.g. {tied[0]}, a tie): label left empty")
    if n_clipped:
        notes.append(f"{n_clipped} polygon(s) extend past their image's border: clipped to it")
    crowd = sum(bool(a.get("iscrowd")) for a in anns if a["image_id"] in listed)
    if crowd:
        notes.append(
            f"{crowd} annotation(s) marked iscrowd (as CVAT writes its RLE masks): read as lesions like the others, "
            "not as regions to ignore"
        )
    return rows


def _image_masks(anns: list[dict], image: Path, width, height, where: str) -> tuple[list, int, int, int] | str:
    """One image's annotation masks (bool (H, W) each; None for an annotation without segmentation, a box only),
    its width and height, and how many polygons extend past its border; or why they cannot be made (no size, the
    size of another image, an undecodable one)."""
    dims = image_dims(image, width, height, where)
    if isinstance(dims, str):
        return dims
    width, height = dims
    try:
        masks = [_coco_mask(a["segmentation"], height, width) if a.get("segmentation") else None for a in anns]
    except (ValueError, TypeError, KeyError) as e:
        return f"a segmentation in {where} cannot be decoded ({e})"
    return masks, width, height, sum(_poly_outside(a.get("segmentation"), width, height) for a in anns)


def _ann_box(ann: dict, label: str, mask: np.ndarray | None) -> list | None:
    """An annotation's [x0, y0, x1, y1, label]: from its bbox, else its mask's extent (x1, y1 exclusive); None
    without either."""
    if ann.get("bbox"):
        x, y, w, h = ann["bbox"]
        return [x, y, x + w, y + h, label]
    ys, xs = np.nonzero(mask) if mask is not None else ((), ())
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label] if len(xs) else None


# --- CVAT for images --------------------------------------------------------------------------------------------
