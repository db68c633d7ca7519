"""Paired folders: the images in one folder, their masks with the same file stems in another, under any names.

`find_paired_folders` looks at the sub-folders of a dataset folder, keeps pairs whose file stems match (a mask
stem may add a suffix such as `_mask`, `_seg`, `_label`, `_gt`, and `_<n>` for one of several masks), and decides
which folder holds the masks from the files' content (few distinct values, or nearly all pixels at the two
extremes) with the folder names as a tie-breaker. It returns its reason, so `data inspect` can show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcad.data.filekinds import MASK_STEM, file_stem
from medcad.data.io import decode_pil
from medcad.data.masks import MAX_LABEL_VALUES
from medcad.data.media import is_media
from medcad.data.splits import is_split_name
from medcad.errors import DataError

MASK_FOLDER_WORDS = ("mask", "label", "gt", "ground", "truth", "seg", "annot", "anno")
MIN_MATCH = 0.5  # at least this fraction of the smaller folder's stems must match
SAMPLE = 6  # files decoded per folder to judge its content


@dataclass(frozen=True)
class FolderPair:
    images: Path
    masks: Path
    reason: str


def mask_base(stem: str, image_stems: set[str], mask_suffix: str = "_mask") -> str | None:
    """The image stem a mask stem belongs to: the same stem, `<stem><mask_suffix>[_n]`, a known mask word, or
    nnU-Net's `<stem>_0000` (its images carry a channel number, its labels none)."""
    if stem in image_stems:
        return stem
    if f"{stem}_0000" in image_stems:
        return f"{stem}_0000"
    if mask_suffix:
        m = re.match(r"^(?P<base>.+?)" + re.escape(mask_suffix) + r"(?:_\d+)?$", stem)
        if m and m.group("base") in image_stems:
            return m.group("base")
    m = MASK_STEM.match(stem)
    if m and m.group("base") in image_stems:
        return m.group("base")
    return None


def mask_likeness(path: Path) -> float:
    """Fraction of pixels at the two extremes of a file's values (1.0 for a label map with few values); for a
    coloured file, the share of its pixels in its MAX_LABEL_VALUES most frequent colours."""
    try:
        arr, fmt, _ = decode_pil(path, 256, keep_alpha=False)
    except DataError:
        return 0.0
    plane = arr if arr.ndim == 2 else arr.max(axis=2)
    if arr.ndim == 3 and arr.shape[2] >= 3 and np.abs(arr[..., 0].astype(int) - arr[..., 1]).mean() > 8:
        # coloured: a photograph or frame, or a colour-coded mask (CVAT, VOC: one colour per class), told apart by
        # the share of pixels that its few most frequent colours cover
        rgb = arr[::2, ::2, :3].astype(np.int64)
        _, counts = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_counts=True)
        return float(np.sort(counts)[::-1][:MAX_LABEL_VALUES].sum() / counts.sum())
    values = np.unique(plane)
    if len(values) <= MAX_LABEL_VALUES:
        return 1.0
    lo, hi = float(values[0]), float(values[-1])
    band = (hi - lo) / 8
    return float(((plane <= lo + band) | (plane >= hi - band)).mean())


def _media(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and is_media(f))


def _name_hint(folder: Path) -> bool:
    name = folder.name.lower()
    return any(w in name for w in MASK_FOLDER_WORDS)


def judge_pair(a: Path, b: Path, mask_suffix: str = "_mask") -> FolderPair | None:
    """Which of two folders holds masks for the other's images, or None when they are no such pair."""
    fa, fb = _media(a), _media(b)
    if not fa or not fb:
        return None
    best = None
    for images, masks, f_img, f_msk in ((a, b, fa, fb), (b, a, fb, fa)):
        stems = {file_stem(f) for f in f_img}
        matched = sum(mask_base(file_stem(f), stems, mask_suffix) is not None for f in f_msk)
        frac = matched / min(len(f_img), len(f_msk))
        if frac < MIN_MATCH:
            continue
        like_m = float(np.mean([mask_likeness(f) for f in f_msk[:: max(1, len(f_msk) // SAMPLE)][:SAMPLE]]))
        like_i = float(np.mean([mask_likeness(f) for f in f_img[:: max(1, len(f_img) // SAMPLE)][:SAMPLE]]))
        score = (like_m - like_i) + 0.2 * (_name_hint(masks) - _name_hint(images))
        if like_m >= 0.95 and score > 0.1 and (best is None or score > best[0]):
            reason = (
                f"images in '{images.name}/', masks in '{masks.name}/': {matched} of {len(f_msk)} mask file names "
                f"match an image; mask files are {like_m:.0%} mask-like (two values or a few colours), image files "
                f"{like_i:.0%}"
            )
            best = (score, FolderPair(images, masks, reason))
    return best[1] if best else None


def find_paired_folders(root: Path, mask_suffix: str = "_mask") -> FolderPair | None:
    """The best (images, masks) pair among the sub-folders of `root` that hold files directly, or None."""
    found = _root_pairs(root, mask_suffix)
    return found[0] if len(found) == 1 else None


def _root_pairs(root: Path, mask_suffix: str) -> list[FolderPair]:
    """The (images, masks) pairs among the sub-folders of `root`: one, or several with no folder in two of them
    (`benign/` + `benign_masks/`, `malignant/` + `malignant_masks/`); [] when none, or when they overlap."""
    if not root.is_dir():
        return []
    subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if len(subs) > 12:  # many class or patient folders: not a paired layout
        return []
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return [FolderPair(root / "images", root / "masks", "folders named 'images/' and 'masks/'")]
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        why = "nnU-Net's imagesTr/ and labelsTr/ (an image <case>_0000 per label <case>; imagesTs/ has no labels)"
        return [FolderPair(root / "imagesTr", root / "labelsTr", why)]
    found = [p for i, a in enumerate(subs) for b in subs[i + 1 :] if (p := judge_pair(a, b, mask_suffix))]
    if len(found) > 1 and len({p.images for p in found}) == 1:
        # one image folder, several mask folders: Pascal VOC's and CVAT's SegmentationClass/ (a colour per class)
        # beside SegmentationObject/ (a colour per instance) - the class masks are the lesion masks
        by_class = [p for p in found if "class" in p.masks.name.lower()]
        if len(by_class) == 1:
            others = ", ".join(f"'{p.masks.name}/'" for p in found if p is not by_class[0])
            pair = by_class[0]
            return [FolderPair(pair.images, pair.masks, f"{pair.reason}; the class masks, not {others}")]
    folders = [d for p in found for d in (p.images, p.masks)]
    return found if len(set(folders)) == len(folders) else []  # a folder in two pairs: no reading is sure


def find_pair_groups(root: Path, mask_suffix: str = "_mask") -> tuple[list[tuple[str, str, FolderPair]], str]:
    """Every (images, masks) folder pair of a dataset folder with the label its images take, the split they belong
    to, and why: the one pair of `find_paired_folders` (no label, no split), several sibling pairs (`benign/` +
    `benign_masks/`, ...: label = the image folder's name; `train/` + `train_masks/`, ...: split = its name), or
    one pair in each of several sub-folders (a release that keeps its polyp frames and its lesion-free frames in two
    such pairs: label = the sub-folder's name; `train/{images,masks}`, `test/{images,masks}`: split = its name).
    Folders whose names are all split names (`is_split_name`) give splits, never labels. ([], '') when there are
    none."""
    pairs = _root_pairs(root, mask_suffix)
    if len(pairs) == 1:
        return [("", "", pairs[0])], pairs[0].reason
    if pairs:
        names = ", ".join(f"'{p.images.name}/' + '{p.masks.name}/'" for p in pairs)
        if all(is_split_name(p.images.name) for p in pairs):  # train/ + train_masks/, test/ + test_masks/
            return [
                ("", p.images.name, p) for p in pairs
            ], f"image and mask folder pairs {names} (a split each: no label)"
        return [
            (p.images.name, "", p) for p in pairs
        ], f"image and mask folder pairs {names} (label = the image folder)"
    subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    if len(subs) > 12:
        return [], ""
    found = [(d.name, pair) for d in subs if (pair := find_paired_folders(d, mask_suffix)) is not None]
    if len(found) < 2:
        return [], ""
    names = ", ".join(f"{name}/" for name, _ in found)
    if all(is_split_name(name) for name, _ in found):  # train/{images,masks}, test/{images,masks}
        return [
            ("", name, pair) for name, pair in found
        ], f"an image/mask folder pair in each of {names} (a split each: no label)"
    return [(name, "", pair) for name, pair in found], (
        f"an image/mask folder pair in each of {names} (read together; label = the folder)"
    )


def several_images_of_one_name(
    images: dict[str, list[str]], attached: dict[str, list[str]], problems: list, what: str = "mask"
) -> set[str]:
    """Names whose files (`attached`: masks, label files) match two images or more (`a.jpg` and `a.png`, both `a`):
    which image such a file belongs to cannot be told, so each of those images and files is named as a problem;
    returns the names to leave out. `images` and `attached` map a name to its images' and files' paths."""
    shared = {name for name, files in images.items() if len(files) > 1 and attached.get(name)}
    for name in sorted(shared):
        both = ", ".join(images[name])
        for m in attached[name]:
            problems.append((m, f"a {what} matching several images of one name: rename all but one ({both})"))
        for img in images[name]:
            ambiguous = f"another image has its name, so its {what} is ambiguous: rename all but one ({both})"
            problems.append((img, ambiguous))
    return shared
