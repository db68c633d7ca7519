"""Decoded-image cache (decode + resize once per dataset and size, reused across epochs, folds and models) and the
torch Datasets that read it: images with labels, with masks, with boxes (detection)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medcad import usable_cores
from medcad.atomic import atomic_path
from medcad.data.cache import cache_dir, filling
from medcad.data.interface import check_interface, crop_relative, imaging_box, remove_interface
from medcad.data.io import image_size, read_image
from medcad.data.labelmaps import MaskLabels, read_label_map, resize_label_map
from medcad.data.ledger import BROKEN_LINK
from medcad.data.manifest import Manifest, shown_path
from medcad.data.masks import read_mask, sample_mask_pages, size_mismatch
from medcad.data.pairing import MASK_FOLDER_WORDS, mask_base
from medcad.data.versions import file_stamp
from medcad.errors import DataError, UnreadableSamples

if TYPE_CHECKING:
    from torchvision.transforms import v2

CACHE_VERSION = 11  # 2: orientation tags applied, masks decoded from their own values; 3: DICOM rescale before the
# window and VOI LUTs by their own range, 16-bit PNG/TIFF from the bits their data has, 16-bit colour in full; 4:
# JPEGs decoded in full, as predict and serve decode them (a reduced-scale DCT decode had made their inputs differ);
# 5: integer TIFFs beyond 0..65535 by `pixels.integer_scale`, unsigned 32-bit and signed 8-bit TIFFs as such
# 6: TIFFs read by tifffile (`medcad.data.tiff`): 16-bit planar RGB, big-endian Deflate 16/32-bit grey had been
# misread, 16-bit MINISWHITE not inverted
# 7: a stack of masks read page for page beside its stack of frames (`masks.sample_mask_pages`), not page 0 for all
# 8: a Pascal VOC class mask's void border (palette index 255) is background, not lesion (`masks._voc_void`)
# 9: floats holding whole numbers within 0..65535 read as those integers (`pixels.whole_number_bits`)
# 10: a volume stack's pages scaled alike, from all its values (`volumes.stack_scale`)
# 11: a TIFF stack's pages scaled alike, from all its values (`io._tiff_stack_scale`)


# how `resize_square` interpolates, in words (model cards, ONNX metadata)
RESIZE_RULE = (
    "to S x S without keeping the aspect ratio; OpenCV INTER_AREA (area averaging) when S < min(h, w), i.e. when "
    "both sides shrink; INTER_CUBIC (bicubic) otherwise, also when one side shrinks and the other grows"
)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (h, w, 3) image to (size, size, 3) by `RESIZE_RULE`: area averaging when size < min(h, w) (both
    sides shrink), bicubic otherwise (also when one side shrinks and the other grows)."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


BILATERAL = {"d": 7, "sigmaColor": 40, "sigmaSpace": 7}  # speckle-reducing bilateral filter (`bilateral`)


def preprocess(rgb: np.ndarray, size: int, bilateral: bool = False, interface: str = "none") -> np.ndarray:
    """The deterministic part of preprocessing: optional removal of the scanner interface (crop to the imaging area,
    inpaint burned-in marks: `medcad.data.interface`), optional bilateral denoising (speckle), then resize."""
    rgb = remove_interface(rgb, interface)
    if bilateral:
        rgb = cv2.bilateralFilter(rgb, **BILATERAL)
    return resize_square(rgb, size)


def image_cache_key(manifest: Manifest, size: int, bilateral: bool, interface: str = "none") -> str:
    removed = "" if check_interface(interface) == "none" else f"|{interface}"  # "none" keeps the keys made before
    h = hashlib.sha1(f"v{CACHE_VERSION}|{manifest.root.resolve()}|{size}|{bilateral}{removed}".encode())
    for i, key in enumerate(manifest.keys):
        h.update(f"|{key}|{file_stamp(manifest.image_path(i))}".encode())
    return h.hexdigest()[:20]


def _cached_array(path, shape: tuple[int, ...], fill, n: int, description: str, progress: bool) -> np.ndarray:
    """Load the memmap at `path` if it has `shape`, else fill row i with `fill(i)` in threads and save atomically.

    `fill` raises DataError for a bad sample; all bad samples are collected and reported together.
    """
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == shape:
                return arr
        except (OSError, ValueError):
            pass
    out = np.empty(shape, np.uint8)
    errors: list[DataError] = []

    def one(i: int) -> None:
        try:
            out[i] = fill(i)
        except DataError as e:
            errors.append(e)

    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        it = pool.map(one, range(n))
        if progress:
            it = filling(it, n, description)
        for _ in it:
            pass
    if errors:
        first = errors[0]
        files = Counter(os.path.basename(str(e.path)) for e in errors[1:])  # a stack's pages: its name once
        named = [f"{f} ({n} pages or frames)" if n > 1 else f for f, n in files.items()]
        others = named[:3] + (["..."] if len(named) > 3 else [])
        more = f" (and {len(errors) - 1} more: {', '.join(others)}; `medcad data audit` lists unreadable images)"
        more = more if len(errors) > 1 else ""
        raise UnreadableSamples(errors, f"{first.problem}{more}")
    with atomic_path(path) as tmp:
        np.save(tmp, out)
    return np.load(path, mmap_mode="r")


def run_images(manifest: Manifest, cfg, *, progress: bool = True) -> np.ndarray:
    """`cached_images` as a run's training prepared them (its TrainConfig's image size, bilateral filter and
    interface option): what every later reader of a run's images (export checks, reports, evaluation) must see; an
    export's checks had seen uncropped images where the run cropped to the imaging area."""
    return cached_images(manifest, cfg.image_size, bilateral=cfg.bilateral, interface=cfg.interface, progress=progress)


def cached_images(
    manifest: Manifest, size: int, *, bilateral: bool = False, interface: str = "none", progress: bool = True
) -> np.ndarray:
    """All images of a manifest decoded, preprocessed (`preprocess`) and resized to (N, size, size, 3) uint8,
    memory-mapped from disk.

    The file is keyed by the dataset's files (path, size, mtime), the size and the preprocessing, so a second
    run, fold or model reads it back instead of decoding again. Written atomically.

    Raises:
        DataError: naming the first unreadable image and how many more there are.
    """
    path = cache_dir() / "images" / f"{image_cache_key(manifest, size, bilateral, interface)}-{size}.npy"

    def fill(i: int) -> np.ndarray:
        rgb = read_image(manifest.image_path(i), manifest.frame(i))  # as predict and serve decode it
        return preprocess(rgb, size, bilateral, interface)

    shape = (len(manifest), size, size, 3)
    return _cached_array(path, shape, fill, len(manifest), f"Decoding images at {size}px", progress)


MISSING_MASKS = ("error", "empty")


def read_sample_mask(
    manifest: Manifest, i: int, missing: str = "error", classes: MaskLabels | None = None
) -> np.ndarray:
    """The union of sample i's masks as bool (H, W), or with `classes` its label map as uint8 class indices (H, W)
    (`medcad.data.labelmaps.read_label_map`), checked against its image's size.

    Args:
        missing: what an image without a mask gets: "error" (DataError), or "empty" (no lesion, e.g. the normal
            cases of a multitask study).
        classes: the lesion classes of label-map masks (segment-multiclass); None reads every mask as one lesion.

    Raises:
        DataError: no mask (with missing="error"), an unreadable mask, or a mask whose size differs from its
            image (naming both files and both sizes).
    """
    image = manifest.image_path(i)
    w, h = image_size(image, manifest.frame(i))
    paths = manifest.mask_paths(i)
    if not paths:
        gone = _moved_mask(manifest, i)
        if gone:  # its mask is there as a link to a file since moved: the image is no lesion-free one
            raise DataError(image, f"has no mask: its mask {gone} is a link to a missing file; restore the file")
        if missing == "empty":
            return np.zeros((h, w), np.uint8 if classes else bool)
        raise DataError(
            image,
            "has no mask; add one, or use --missing-masks empty to treat such images as lesion-free, or leave-out "
            "to leave them out (named)",
        )
    pages = sample_mask_pages(manifest, i)  # a stack of masks beside a stack of frames: page for page
    mask = read_mask(paths, pages) if classes is None else read_label_map(paths, classes, pages)
    if mask.shape != (h, w):
        said = size_mismatch((mask.shape[1], mask.shape[0]), (w, h))
        raise DataError(paths[0], f"{said} ({image}); masks must match their images")
    return mask


def _moved_mask(manifest: Manifest, i: int) -> str | None:
    """A link to a missing file the read named (the ledger's) where row i's mask would be paired from: beside its
    image under a mask name of its stem ('x_mask.png', 'x_mask_1.png'), or under its stem or a mask name of it in a
    mask folder at the image's depth (images/x.jpg, masks/x.png: `MASK_FOLDER_WORDS`), named as the readers pair
    them (`medcad.data.pairing.mask_base`); else None (a broken link of
    another class folder, benign/1.png beside normal/1.png, is not its mask)."""
    image = Path(manifest.table["image"].iat[i])  # its file, without a frame's '#k'
    for path, why in manifest.ledger.unread if manifest.ledger else ():
        link = Path(path)
        if not why.startswith(BROKEN_LINK) or mask_base(link.stem, {image.stem}) != image.stem:
            continue  # named as its mask would be, as the readers pair them (`mask_base`)
        beside = link.parent == image.parent and link.stem != image.stem
        in_masks = any(w in link.parent.name.lower() for w in MASK_FOLDER_WORDS)  # masks/, labels/, gt/ ...
        if beside or (in_masks and len(link.parts) == len(image.parts)):
            return path
    return None


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool (H, W) -> uint8 {0, 1} (size, size): area average when shrinking, then a 0.5 threshold."""
    return (cv2.resize(mask.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)


def cached_masks(
    manifest: Manifest,
    size: int,
    *,
    missing: str = "error",
    interface: str = "none",
    progress: bool = True,
    classes: MaskLabels | None = None,
) -> np.ndarray:
    """All masks of a manifest as (N, size, size) uint8 {0, 1} (with `classes`: label maps of class indices 0..K),
    memory-mapped and cached like the images; with an `interface` that crops, each mask is cut by the box found on
    its image (as `cached_images` decodes it)."""
    if missing not in MISSING_MASKS:
        raise ValueError(f"missing must be one of {MISSING_MASKS}, not {missing!r}")
    crops = check_interface(interface) != "none"
    kind = (
        ""
        if classes is None
        else f"|classes {classes.describe()}" + (f" colours {classes.colours}" if classes.colours else "")
    )
    h = hashlib.sha1(f"{image_cache_key(manifest, size, False, 'crop' if crops else 'none')}|{missing}{kind}".encode())
    for i in range(len(manifest)):
        for mp in manifest.mask_paths(i):
            h.update(f"|{mp}|{file_stamp(mp) if mp.is_file() else None}".encode())
    path = cache_dir() / "masks" / f"{h.hexdigest()[:20]}-{size}.npy"

    def fill(i: int) -> np.ndarray:
        mask = read_sample_mask(manifest, i, missing, classes)
        if crops:
            rgb = read_image(manifest.image_path(i), manifest.frame(i))
            x0, y0, x1, y1 = imaging_box(rgb)
            h, w = rgb.shape[:2]
            mask = crop_relative(mask, (x0 / w, y0 / h, x1 / w, y1 / h))
        return resize_mask(mask, size) if classes is None else resize_label_map(mask, size, len(classes.values))

    return _cached_array(path, (len(manifest), size, size), fill, len(manifest), f"Reading masks at {size}px", progress)


MOSTLY = 0.9  # the share of masks that must paint the background as lesion for a dataset to be refused


def check_mask_content(manifest: Manifest, masks: np.ndarray, training: bool = True) -> None:
    """Refuse a set whose masks nearly all paint the background as lesion (the whole frame, or most of it and its
    whole border: inverted masks; `masks.background_as_lesion`), and a training set without a lesion pixel in any
    mask (mask files that all decode empty, or images whose missing masks were read as empty): a run on them would
    report a Dice that means nothing. A lesion-free set is a fair evaluation of a trained run (its false positives):
    with `training` False it is said in a note instead. The message names mask files and the values found in them.

    Args:
        masks: (N, S, S) {0, 1} masks of the manifest's rows.
        training: the set trains a new run (else a trained run is evaluated on it).

    Raises:
        DataError: naming the dataset, example files, their values and how they were read.
    """
    from medcad.data.masks import background_as_lesion, decode_mask

    with_file = np.array([bool(manifest.table["mask"].iat[i]) for i in range(len(manifest))])
    if not masks.any():
        if not training:
            manifest.notes.append(
                f"no image has a lesion pixel ({len(manifest)} images, {int(with_file.sum())} with a mask file): "
                "Dice and IoU score the run's false positives alone (1 where it marks nothing)"
            )
            return
        if not with_file.any():
            raise DataError(
                manifest.root,
                f"none of the {len(manifest)} images has a mask file (each read as lesion-free), so a segmentation "
                "run would learn nothing: pair images with their masks (--images/--masks, --mask-suffix; `medcad "
                "data inspect` shows how the folder was read)",
            )
    if not with_file.any():
        return
    fractions = masks[with_file].reshape(with_file.sum(), -1).mean(axis=1)
    if fractions.max() == 0:
        what = "every mask decodes as empty (no lesion pixel)"
    elif (painted := np.array([background_as_lesion(m) for m in masks[with_file]])).astype(bool).mean() >= MOSTLY:
        full = (painted == "full_frame").mean()
        what = f"{(painted != '').mean():.0%} of the masks paint the background as lesion"
        what += (
            f" ({full:.0%} cover the whole frame)" if full else " (most of the frame and its whole border: inverted)"
        )
    else:
        return
    examples = []
    for i in np.flatnonzero(with_file)[:3]:
        path = manifest.mask_paths(int(i))[0]
        _, how = decode_mask(path, sample_mask_pages(manifest, int(i))[0])  # its own page of a stack of masks
        values = ", ".join(f"{v:g}" for v in how.values[:6])
        examples.append(f"{shown_path(path, manifest.root)}: {how.n_values} values ({values}), read as {how.rule}")
    raise DataError(
        manifest.root,
        f"{what}, so a segmentation run would learn nothing. " + "; ".join(examples) + ". Check the mask files "
        "(`medcad data audit` lists every mask with how it was read), or pair images with the right masks "
        "(--images/--masks, --mask-suffix).",
    )


class ImageDataset(Dataset):
    """Rows of a cached image array as uint8 (C, H, W) tensors with an int label (training batches are augmented
    whole, in the training step: `transforms.BatchAugmentation`)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.labels, self.rows = images, labels, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows[i]
        x = torch.from_numpy(np.array(self.images[r])).permute(2, 0, 1)  # (C, H, W) uint8, a writable copy
        return x, torch.as_tensor(self.labels[r])  # class index, or a multi-hot float vector (K,)


def manifest_fingerprint(manifest: Manifest) -> str:
    """A short id of the sample list, stored in runs to detect that the data changed."""
    return hashlib.sha1(json.dumps(manifest.keys).encode()).hexdigest()[:12]


class MaskedImageDataset(Dataset):
    """Rows of cached images and masks as (uint8 (C, H, W), float (1, H, W), int label); training batches are
    augmented whole, the masks following their images' geometry (`transforms.BatchAugmentation`)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.masks, self.labels, self.rows = images, masks, labels, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        r = self.rows[i]
        x = torch.from_numpy(np.array(self.images[r])).permute(2, 0, 1)
        m = torch.from_numpy(np.array(self.masks[r]))[None].float()
        return x, m, int(self.labels[r])


class DetectionDataset(Dataset):
    """uint8 images (C, S, S) and SSD targets {"boxes": (m, 4) float, "labels": (m,) int64 1..n} for rows.

    `boxes[i]` is image i's (m, 5) float array [x0, y0, x1, y1, class_index] in pixels of the S x S cached image,
    class_index 0-based (no background); `transform` is a paired image + box transform
    (`medcad.data.transforms.box_augmentation`).
    """

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], rows: np.ndarray, transform: v2.Transform) -> None:
        self.images, self.boxes, self.rows, self.transform = images, boxes, np.asarray(rows), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        i = int(self.rows[j])
        img = tv_tensors.Image(torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1))  # copy: memmap is r/o
        b = np.asarray(self.boxes[i], dtype=np.float32).reshape(-1, 5)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(b[:, :4]), format="XYXY", canvas_size=img.shape[-2:]),
            "labels": torch.from_numpy(b[:, 4]).long() + 1,  # 0 is background for torchvision
        }
        img, target = self.transform(img, target)
        return img.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in target.items()}


def collate_detections(batch: list) -> tuple[list, list]:
    """A DataLoader's collate_fn for `DetectionDataset`: (images, targets) as two lists (sizes and box counts vary)."""
    return tuple(map(list, zip(*batch, strict=True)))
