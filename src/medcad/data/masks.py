"""Reading mask files into lesion pixels, decided from each mask's own values (`decode_mask_array`), decoded as
the images are (`medcad.data.io.decode_pil`: orientation applied, errors naming the file)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medcad.data.filekinds import check_file
from medcad.data.io import LOSSY_FORMATS, decode_pil
from medcad.data.media import file_frames
from medcad.data.tiff import MINISWHITE, STORED_MINISWHITE, imagej_hyperstack, is_tiff, photometric
from medcad.errors import DataError

MAX_LABEL_VALUES = 16  # a lossless mask with at most this many values is a label map: every non-zero value is lesion
FULL_FRAME = 0.95  # a mask with at least this lesion fraction covers (nearly) the whole frame
INVERTED_BORDER = 0.9  # with over half of the frame, a lesion on this share of the border is the background


SPECK_AREA = 16  # a lesion region of fewer pixels is a speck: a stray mark, no lesion (and no box: `boxes_from_mask`)


def lesion_components(mask: np.ndarray) -> np.ndarray:
    """The connected lesion regions (8-connectivity) of a mask (H, W), nonzero being lesion: (n, 5) int
    [x, y, width, height, area in pixels] each, in OpenCV's order."""
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask has shape {m.shape}; expected (H, W)")
    n, _, stats, _ = cv2.connectedComponentsWithStats((m != 0).astype(np.uint8), connectivity=8)
    return stats[1:n]


def background_as_lesion(mask: np.ndarray) -> str:
    """Whether a mask paints the background as lesion: 'full_frame' when its lesion covers (nearly) the whole frame
    (`FULL_FRAME`), 'inverted' when it covers over half of the frame and (nearly) its whole border
    (`INVERTED_BORDER`), as an export that inverts its masks (a black lesion on white) makes; else ''. Real lesion
    masks stay far from the border rule: at most 33 % of the border in Kvasir-SEG's 1000 masks, 3 % in BUSI's 798.

    Args:
        mask: (H, W) lesion mask, any dtype (non-zero is lesion).
    """
    m = np.asarray(mask).astype(bool)
    fraction = float(m.mean()) if m.size else 0.0
    if fraction >= FULL_FRAME:
        return "full_frame"
    border = np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]]) if m.size else m.ravel()
    return "inverted" if fraction > 0.5 and border.mean() >= INVERTED_BORDER else ""


@dataclass(frozen=True)
class MaskDecoding:
    """How one mask file was read: the rule used and what it found.

    Attributes:
        rule: "label map: non-zero is lesion", "halfway threshold T", "alpha channel", or "constant".
        values: up to MAX_LABEL_VALUES distinct values found (the smallest ones), for messages.
        n_values: number of distinct values.
        lesion_fraction: fraction of pixels decoded as lesion, 0..1.
    """

    rule: str
    values: tuple[float, ...]
    n_values: int
    lesion_fraction: float

    @property
    def binary(self) -> bool:
        return self.n_values <= 2


def mask_plane(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """One plane from a mask array: alpha when every colour channel is constant (one colour, e.g. an editor's red
    layer) and alpha is not, else the channel max."""
    if arr.ndim == 2:
        return arr, ""
    if arr.shape[2] in (2, 4):
        colour, alpha = arr[..., :-1], arr[..., -1]
        flat = colour.reshape(-1, colour.shape[-1])
        if (flat.min(axis=0) == flat.max(axis=0)).all() and alpha.min() != alpha.max():
            return alpha, "alpha channel, "
        arr = colour
    return arr.max(axis=2), ""


def decode_mask_array(arr: np.ndarray, lossy: bool) -> tuple[np.ndarray, MaskDecoding]:
    """Lesion pixels of one mask array, decided from its own values.

    - Lossless files with at most MAX_LABEL_VALUES distinct values are label maps (0/1, 0/255, 16-bit, palette
      indices, several lesion classes): every non-zero value is lesion.
    - Lossy files (JPEG) and smooth masks (anti-aliased, probabilities) are thresholded halfway between their
      lowest and highest value, when that range spans at least a quarter of the data's full scale; a narrower
      range is compression noise around one value, so the mask is constant (empty when that value is low) -
      except 0/1 masks saved lossy (values 0 to at most 8, a share of them 1 or more): thresholded at 0.5.

    Args:
        arr: (H, W) or (H, W, C) array of any dtype, as decoded.
        lossy: the file used lossy compression.

    Returns:
        bool (H, W) lesion mask and how it was decided.
    """
    plane, how = mask_plane(arr)
    values = np.unique(plane)
    shown = tuple(float(v) for v in values[:MAX_LABEL_VALUES])
    lo, hi = float(values[0]), float(values[-1])
    if np.issubdtype(plane.dtype, np.floating):
        full = 1.0 if hi <= 1 else hi
    else:
        full = 255.0 if hi <= 255 else 65535.0
    if len(values) <= MAX_LABEL_VALUES and not lossy:
        mask, rule = plane != 0, how + "label map: non-zero is lesion"  # signed masks: -1 is lesion too
    elif hi - lo >= full / 4:
        t = (lo + hi) / 2
        mask, rule = plane > t, how + f"halfway threshold {t:g}"
    elif lossy and lo == 0 and 1 <= hi <= 8 and 0.001 <= (plane >= 1).mean():
        mask, rule = plane >= 1, how + "0/1 values saved lossy: threshold 0.5"
    else:
        mask = np.full(plane.shape, hi >= full / 2, bool)
        rule = how + "constant (value range below a quarter of full scale)"
    return mask, MaskDecoding(rule, shown, len(values), float(mask.mean()))


def size_mismatch(mask: tuple[int, int], image: tuple[int, int]) -> str:
    """ "mask WxH but image WxH" for a mask (width, height) that is not its image's size, with what a mask of the
    image's size swapped says: written in another axis order (a volume nibabel wrote from an (H, W) array, beside
    one SimpleITK wrote) or saved rotated."""
    said = f"mask {mask[0]}x{mask[1]} but image {image[0]}x{image[1]}"
    if mask == image[::-1] and mask != image:
        said += (
            " (its width and height swapped: written in another axis order, as nibabel lays out an (H, W) array "
            "beside SimpleITK's, or saved rotated)"
        )
    return said


def decode_mask(path: str | Path, page: int | None = None) -> tuple[np.ndarray, MaskDecoding]:
    """One mask file (its page `page` of a multi-page one: `sample_mask_pages`) as bool (H, W) lesion pixels,
    oriented as displayed, and how it was decided.

    Raises:
        DataError: the file is missing, empty or unreadable.
    """
    p = Path(path)
    mask, how, fmt = _decoded(p, page)
    if fmt == "TIFF" and photometric(p, page) == MINISWHITE:  # said, for the audit and the messages only
        how = replace(how, rule=f"{STORED_MINISWHITE}; {how.rule}")
    return mask, how


VOID_INDEX, VOID_COLOUR = 255, (224, 224, 192)  # Pascal VOC's void (object borders) in its palette class masks
VOID_RULE = "palette index 255 (Pascal VOC's void: object borders) read as background"


def _decoded(p: Path, page: int | None) -> tuple[np.ndarray, MaskDecoding, str]:
    """`decode_mask` without saying how a MINISWHITE TIFF was read (that opens its header once more), and the format.
    A VOC class mask's void band around each object (`_voc_void`) is background: as lesion it had added a 5 px border
    to every object (+23 % lesion area on a VOC-style set)."""
    check_file(p)
    arr, fmt, _ = decode_pil(p, None, keep_alpha=True, page=page, as_stored=True)
    mask, how = decode_mask_array(arr, fmt in LOSSY_FORMATS)
    if fmt == "PNG" and how.rule.endswith("label map: non-zero is lesion") and (void := _voc_void(p)) is not None:
        if void.shape == mask.shape and void.any() and (mask & ~void).any():
            mask &= ~void
            how = replace(how, rule=f"{how.rule}, {VOID_RULE}", lesion_fraction=float(mask.mean()))
    return mask, how, fmt


def _voc_void(p: Path) -> np.ndarray | None:
    """The void pixels (bool (H, W)) of a Pascal VOC class mask: a palette PNG whose entry 255 is VOC's void colour;
    None for any other file (a grey or 16-bit mask's value 255 is its lesion, and so is a palette's own colour 255),
    told from the header before a second decode."""
    from PIL import Image

    with Image.open(p) as im:
        if im.mode != "P":
            return None
        palette = im.getpalette() or []
        if tuple(palette[3 * VOID_INDEX : 3 * VOID_INDEX + 3]) != VOID_COLOUR:
            return None
        return np.asarray(im) == VOID_INDEX


def read_mask(paths: str | Path | Sequence[str | Path], pages: Sequence[int | None] | None = None) -> np.ndarray:
    """Read one or more mask files (see `decode_mask`; each at its page of `pages`, page 0 without) and return their
    union as bool (H, W).

    Raises:
        DataError: a file is unreadable, or the masks of one image differ in size.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    union: np.ndarray | None = None
    for path, page in zip(paths, pages or [None] * len(paths), strict=True):
        m, _, _ = _decoded(Path(path), page)
        if union is None:
            union = m
        elif union.shape != m.shape:
            raise DataError(
                path,
                f"mask size {m.shape[1]}x{m.shape[0]} differs from {paths[0]} ({union.shape[1]}x{union.shape[0]})",
            )
        else:
            union |= m
    if union is None:
        raise ValueError("read_mask needs at least one path")
    return union


def _image_pages_of(path: Path) -> tuple[int, ...]:
    """The image pages of a file (`medcad.data.media.file_frames`: thumbnails left out; a DICOM's frames), read once
    per file version; (0,) for a file that is not there or holds no image (named where it is read)."""
    try:
        return tuple(file_frames(path)[0])
    except (OSError, DataError):
        return (0,)


def sample_mask_pages(manifest, i: int) -> list[int | None]:
    """The page of each of sample i's mask files that is the mask of its image's page or frame (`manifest.frame(i)`:
    a multi-page TIFF, an animation, a multi-frame DICOM): a mask file with a page per image page gives the same
    page (an ImageJ or tifffile stack of masks beside its stack of frames; every page had been given page 0's mask);
    a one-page mask file is that page's mask (None: its only page; `shared_mask_notes` says where several pages
    share one); None for an image of one page, whose mask files must have one page (a CAMUS ED frame beside its
    sequence's label map had taken page 0 unsaid).

    Raises:
        DataError: a multi-page mask file whose pages do not match its image's in number, or beside an image of one
            page (naming both).
    """
    frame, image = manifest.frame(i), Path(manifest.image_path(i))
    paths = [Path(p) for p in manifest.mask_paths(i)]
    if frame is None:  # an image of one page: a mask file of several is another image's stack, not its mask
        for path in paths:
            if len(pages := _image_pages_of(path)) > 1:
                raise DataError(
                    path,
                    f"has {len(pages)} mask pages for the one page of its image {image}: which page is its mask "
                    "cannot be told (give it a mask of one page; a stack's masks go with the stack)",
                )
        return [None] * len(paths)
    image_pages_ = _image_pages_of(image)
    out: list[int | None] = []
    for path in paths:
        mask_pages = _image_pages_of(path)
        if len(mask_pages) == 1:
            out.append(None)
        elif len(mask_pages) != len(image_pages_) or frame not in image_pages_:
            planes = imagej_hyperstack(image) if is_tiff(image) else ""
            hyper = (
                f" (its pages are an ImageJ hyperstack's {planes}: save the channel or slice the masks were drawn on "
                "as a stack of its own)"
                if planes
                else ""
            )
            raise DataError(
                path,
                f"has {len(mask_pages)} mask pages for the {len(image_pages_)} pages of its image {image}{hyper}: "
                "which page is whose mask cannot be told (give each page's mask its own file, or one page per image "
                "page)",
            )
        else:
            out.append(mask_pages[image_pages_.index(frame)])
    return out


def shared_mask_notes(manifest) -> list[str]:
    """One line per one-page mask file that several pages (or frames) of one image share: `sample_mask_pages` gives
    it to each, and the reader says so (`medcad.data.layouts.load_manifest`)."""
    frames: dict[tuple[Path, Path], set[int]] = {}
    for i in range(len(manifest)):
        if (frame := manifest.frame(i)) is not None:
            for mp in manifest.mask_paths(i):
                frames.setdefault((Path(mp), Path(manifest.image_path(i))), set()).add(frame)
    return [
        f"{mask.name}: one mask page for {len(pages)} pages of {image.name}, the mask of each"
        for (mask, image), pages in frames.items()
        if len(pages) > 1 and len(_image_pages_of(mask)) == 1
    ]
