"""TIFF pages read by tifffile, the reference TIFF library: every sample type (8- to 64-bit integers, 16-, 32- and
64-bit floats, signed or not), grey, grey + alpha, RGB(A), palette, planar or interleaved, either byte order, classic
or BigTIFF, uncompressed or Deflate, LZMA or PackBits compressed.

Pillow, medcad's decoder for other files, cannot read most of these (float64, float RGB, 32-bit RGB, grey + alpha
beyond 8 bits, big-endian BigTIFF) and misread some without a word: 16-bit planar RGB came out as noise, and
big-endian Deflate-compressed 16- and 32-bit grey as wrong values (a generated test, tests/data/test_tiff.py, holds
every kind of that matrix to the samples tifffile reads). A TIFF whose compression tifffile decodes only with the
imagecodecs package (LZW, JPEG, CCITT: the common 8-bit ones), or whose colour space is not grey, RGB or palette
(YCbCr, CMYK, CIELab), is left to Pillow (`PillowReads`), which converts those as viewers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from medcad.errors import DataError, NoSuchFrame

MINISWHITE, MINISBLACK, RGB, PALETTE = 0, 1, 2, 3  # TIFF PhotometricInterpretation (tag 262)
SEPARATE = 2  # PlanarConfiguration (tag 284): one plane per sample
ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA = 1, 2  # ExtraSamples (tag 338)
ORIENTATION, NEW_SUBFILE_TYPE = 274, 254
REDUCED_RESOLUTION = 1  # NewSubfileType bit 0: a reduced-resolution copy of another page
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # little / big endian; classic, BigTIFF


def is_tiff(path: Path) -> bool:
    """Whether a file begins as a TIFF does (`TIFF_MAGIC`), whatever its name."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGIC
    except OSError:
        return False


def unreadable_tiff(reasons: str = "") -> str:
    """Why neither TIFF reader could read a file that begins as a TIFF (`TIFF_MAGIC`), with each reader's `reasons`
    where known (tifffile reads every sample type and layout uncompressed or Deflate, LZMA or PackBits compressed;
    Pillow the common compressions, LZW and JPEG among them, but not big-endian BigTIFF)."""
    return (
        f"a TIFF that neither of medcad's TIFF readers decodes{f' ({reasons})' if reasons else ''}: a "
        "compression only the imagecodecs package decodes here (JPEG 2000, Zstandard, WebP; or LZW, JPEG in a "
        "big-endian BigTIFF or with samples Pillow lacks), or corrupt data; saved uncompressed or "
        "Deflate-compressed, it is read"
    )


# A mask's or label map's MINISWHITE TIFF is read by its stored values, not as displayed: ImageJ writes a binary mask
# with an inverting LUT (its default: the foreground 255 shown black) as WhiteIsZero, and tifffile writes a bool
# array as bilevel WhiteIsZero; as displayed, either mask's lesion was its background.
STORED_MINISWHITE = "MINISWHITE TIFF read by its stored values (ImageJ's inverted-LUT masks, tifffile's bilevel ones)"


def photometric(path: Path, page: int | None = None) -> int | None:
    """A TIFF page's PhotometricInterpretation (page 0 for None; the last page's beyond it, as an ImageJ truncated
    stack's frames share its one page), or None where tifffile cannot parse it."""
    try:
        with _open(path) as tif:
            p = _nth(tif, page or 0)
            return int((p if p is not None else tif.pages[len(tif.pages) - 1]).photometric)
    except (PillowReads, IndexError):
        return None


class PillowReads(Exception):
    """A TIFF page left to Pillow: a compression tifffile decodes only with imagecodecs, or another colour space;
    `photometric`: the page's PhotometricInterpretation where its header was read (None where tifffile could not)."""

    def __init__(self, why: str, photometric: int | None = None) -> None:
        super().__init__(why)
        self.photometric = photometric


class PageTooLarge(Exception):
    """A TIFF page with more pixels than medcad decodes: `pixels`, and its size in words ("WxH (page k) ")."""

    def __init__(self, pixels: int, size: str) -> None:
        super().__init__(f"{size}{pixels} pixels")
        self.pixels, self.size = pixels, size


def _open(source: Path | BinaryIO):
    """The file open in tifffile, with at least one page.

    Raises:
        PillowReads: tifffile cannot parse it, or it has no page (a write cut off before its first IFD).
    """
    import logging

    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings on damaged files: medcad names the file
    try:
        tif = tifffile.TiffFile(source)
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error ... for broken headers
        raise PillowReads(f"tifffile cannot parse it ({type(e).__name__}: {e})") from e
    if _nth(tif, 0) is None:
        tif.close()
        raise PillowReads("tifffile finds no page in it (a write cut off before its first page?)")
    return tif


def _nth(tif, k: int):
    """Page k of an open TiffFile, or None where it has none. tifffile reads the page headers up to k only; counting
    the pages (`len(tif.pages)`) reads every one: each read of a page of a 2,000-page stack had cost 1.3 ms more."""
    try:
        return tif.pages[k] if k >= 0 else None
    except IndexError:
        return None


def _frames(tif) -> int:
    """The images a TIFF holds: its pages, or an ImageJ "truncated" stack's frames (one IFD for every frame, as
    ImageJ writes stacks past 4 GiB and tifffile with `truncate=True`: its metadata's `images`; read as one page, all
    but the first frame had been left out without a word)."""
    series = tif.series[0] if tif.is_imagej and len(tif.pages) == 1 and tif.series else None
    if series is not None and series.kind == "imagej" and getattr(series, "is_truncated", False):
        return int((tif.imagej_metadata or {}).get("images", 1) or 1)  # hyperstacks too: every plane a frame
    return len(tif.pages)


def _page(tif, path: Path, page: int | None, max_pixels: int):
    """Page `page` (0 for None) of an open TiffFile (an ImageJ truncated stack's frames share its one page), its size
    held to `max_pixels`.

    Raises:
        NoSuchFrame: the file has no such page; PageTooLarge: the page has more pixels than `max_pixels`.
    """
    k = page or 0
    p = _nth(tif, k)
    if p is None:
        if not 0 <= k < (n := _frames(tif)):
            raise NoSuchFrame(path, f"has {n} page(s); page {k} does not exist")
        p = tif.pages[len(tif.pages) - 1]  # an ImageJ truncated stack's frames share its one page
    w, h = int(p.imagewidth), int(p.imagelength)
    if w * h > max_pixels:
        raise PageTooLarge(w * h, f"{w}x{h} " + (f"(page {k}) " if k else ""))
    return p


def orientation(p) -> int:
    """A page's Orientation tag (1, top-left, without one)."""
    value = p.tags.valueof(ORIENTATION)
    return int(value) if value and 1 <= int(value) <= 8 else 1


def page_size(path: Path, page: int | None, max_pixels: int) -> tuple[int, int, int]:
    """(width, height, orientation tag) of a TIFF page as stored, from its header.

    Raises:
        PillowReads: tifffile cannot parse the file; NoSuchFrame, PageTooLarge: as `_page`.
    """
    with _open(path) as tif:
        p = _page(tif, path, page, max_pixels)
        return int(p.imagewidth), int(p.imagelength), orientation(p)


def imagej_hyperstack(path: Path) -> str:
    """An ImageJ hyperstack's planes in words ("2 channels x 5 frames"), where it has channels or slices beside its
    frames; "" for any other file."""
    try:
        with _open(path) as tif:
            meta = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    except PillowReads:
        return ""
    axes = {k: int(meta.get(k, 1) or 1) for k in ("channels", "slices", "frames")}
    if axes["channels"] == 1 and axes["slices"] == 1:
        return ""
    return " x ".join(f"{n} {k}" for k, n in axes.items() if n > 1)


def page_pixels(data: bytes, page: int) -> int | None:
    """The pixels of page `page` of a TIFF held in memory (page 0's where it has no such page: its read names
    that), from its header; None where tifffile cannot parse it."""
    import io

    try:
        with _open(io.BytesIO(data)) as tif:
            p = _nth(tif, page)
            p = p if p is not None else tif.pages[0]
            return int(p.imagewidth) * int(p.imagelength)
    except (PillowReads, IndexError):
        return None


def pages(path: Path) -> tuple[list[int], list[int]]:
    """(the pages that are images, the thumbnail pages): a page is a thumbnail when its NewSubfileType says it is a
    reduced-resolution copy, or when it is at most half page 0's width and height.

    Raises:
        PillowReads: tifffile cannot parse the file.
    """
    with _open(path) as tif:
        return _pages(tif)


def _pages(tif) -> tuple[list[int], list[int]]:
    if (n := _frames(tif)) > len(tif.pages):
        return list(range(n)), []  # an ImageJ truncated stack
    images, thumbnails, first = [], [], tif.pages[0]
    for k, p in enumerate(tif.pages):
        small = 2 * p.imagewidth <= first.imagewidth and 2 * p.imagelength <= first.imagelength
        subfile = int(p.tags.valueof(NEW_SUBFILE_TYPE) or 0)
        (thumbnails if subfile & REDUCED_RESOLUTION or small else images).append(k)
    return images or [0], thumbnails if images else []


def image_pages_and_types(path: Path) -> tuple[list[int], set[np.dtype]]:
    """(the image pages, as `pages` gives them; their sample types), from the headers of one opening (no pixel data
    read).

    Raises:
        PillowReads: tifffile cannot parse the file.
    """
    with _open(path) as tif:
        images = _pages(tif)[0]
        kept = [tif.pages[k] for k in images if k < len(tif.pages)]  # an ImageJ truncated stack: its one IFD
        return images, {np.dtype(p.dtype) if p.dtype is not None else np.dtype(np.uint8) for p in kept}


def page_notes(path: Path) -> tuple[list[str], np.dtype]:
    """What reading page 0 of a TIFF decides, from its header (`medcad.data.io.describe_image`), and its samples' type
    (whether their scaling to 8 bits needs saying).

    Raises:
        PillowReads: tifffile cannot parse the file.
    """
    with _open(path) as tif:
        p = tif.pages[0]
        photometric, colours = _colour_space(p)
        notes = [f"TIFF orientation {orientation(p)} applied"] if orientation(p) != 1 else []
        if photometric == MINISWHITE:
            notes.append("MINISWHITE: values inverted (0 is white)")
        if photometric == PALETTE:
            notes.append("palette colours")
        if (extra := int(p.samplesperpixel) - colours) > 0:
            alpha = _alpha_kind(p)
            notes += ["colours divided by their premultiplied alpha"] if alpha == ASSOCIATED_ALPHA else []
            notes += ["alpha channel dropped"] if alpha else []
            notes += [f"{extra - bool(alpha)} extra sample(s) dropped"] if extra > bool(alpha) else []
        return notes, np.dtype(p.dtype) if p.dtype is not None else np.dtype(np.uint8)


def _colour_space(p) -> tuple[int, int]:
    """(PhotometricInterpretation, colour samples) of a page tifffile's reading here handles: grey, RGB or palette.

    Raises:
        PillowReads: another colour space (CMYK, YCbCr, CIELab: Pillow converts them as viewers do).
    """
    photometric = int(p.photometric)
    if photometric not in (MINISWHITE, MINISBLACK, RGB, PALETTE):
        raise PillowReads(f"photometric interpretation {photometric}", photometric)
    return photometric, 3 if photometric == RGB else 1


def _alpha_kind(p) -> int | None:
    """The kind of a page's first extra sample where it is alpha (ExtraSamples, tag 338: ASSOCIATED_ALPHA,
    premultiplied, or UNASSOCIATED_ALPHA; a page with samples beyond its colours and no such tag has it as alpha, as
    Pillow reads it: RGBA masks written without the tag), None where it is something else (0, unspecified)."""
    kind = int(p.extrasamples[0]) if p.extrasamples else UNASSOCIATED_ALPHA
    return kind if kind in (ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA) else None


def read_page(
    path: Path,
    page: int | None,
    max_pixels: int,
    keep_alpha: bool = False,
    palette_indices: bool = False,
    as_stored: bool = False,
) -> tuple[np.ndarray, int]:
    """A TIFF page's samples as a viewer shows them, in their stored type (bilevel as 0 / 255, as Pillow gives it),
    before orientation: (array (H, W) grey, (H, W, 2) grey + alpha or (H, W, 3|4) RGB(A), the page's orientation
    tag); `page_notes` says what was decided.

    MINISWHITE samples are inverted (0 is white: stored maximum - value; floats 1 - value in [0, 1], else negated),
    unless `as_stored` (masks and label maps: `STORED_MINISWHITE`); a palette page gives its colours (the colour
    map's high bytes, as Pillow gives them) or, with `palette_indices`, its indices (label maps); premultiplied
    (associated) alpha is divided out of the colours, as Pillow does; extra samples after the colours are dropped,
    except alpha with `keep_alpha`.

    Raises:
        PillowReads: a compression tifffile decodes only with imagecodecs, or a colour space other than grey, RGB or
            palette; NoSuchFrame, PageTooLarge: as `_page`; DataError: the page's data cannot be decoded.
    """
    from tifffile import TIFF

    with _open(path) as tif:
        p = _page(tif, path, page, max_pixels)
        photometric, colours = _colour_space(p)
        try:
            TIFF.DECOMPRESSORS[p.compression]  # KeyError: a codec of imagecodecs', or unknown
            k = page or 0
            if p.index == k:
                arr = p.asarray()
            else:  # a truncated ImageJ stack: its planes (channels, slices, frames in ImageJ's order) one after another
                arr = np.array(tif.series[0].asarray(out="memmap").reshape(-1, *p.shape)[k])
        except (KeyError, ImportError) as e:  # ImportError: Zstandard's module, Python 3.14's
            raise PillowReads(f"compression {p.compression!r}: {e}", photometric) from e
        except Exception as e:  # truncated strips, corrupt compressed data
            if "imagecodecs" in str(e):
                raise PillowReads(str(e), photometric) from e
            if "failed to read" in str(e) or "truncated" in str(e):
                raise DataError(path, f"truncated TIFF: the file ends before its image data does ({e})") from e
            raise DataError(path, f"cannot decode its TIFF data ({type(e).__name__}: {e})") from e
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # big-endian samples in the machine's order
        if int(p.samplesperpixel) > 1 and int(p.planarconfig) == SEPARATE:
            arr = np.moveaxis(arr, 0, -1)  # (C, H, W) planes -> (H, W, C)
        if arr.ndim not in (2, 3) or arr.shape[:2] != (int(p.imagelength), int(p.imagewidth)):
            raise DataError(path, f"TIFF page of shape {arr.shape}: not one image (a volume or a tiled depth)")
        if arr.ndim == 3 and arr.shape[2] > colours:
            alpha = _alpha_kind(p)
            if alpha == ASSOCIATED_ALPHA:
                arr = np.concatenate([_unpremultiplied(arr[..., :colours], arr[..., colours]), arr[..., colours:]], -1)
            arr = arr[..., : colours + 1] if keep_alpha and alpha else arr[..., :colours]
        if colours == 1 and arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if photometric == MINISWHITE and not as_stored:
            grey = _inverted(arr if arr.ndim == 2 else arr[..., 0], int(p.bitspersample))
            arr = grey if arr.ndim == 2 else np.stack([grey, arr[..., 1]], -1)  # a kept alpha as it is
        elif photometric == PALETTE and not palette_indices:
            index = arr if arr.ndim == 2 else arr[..., 0]
            if p.colormap is None or index.max(initial=0) >= p.colormap.shape[1]:
                raise DataError(path, "palette TIFF whose indices go beyond its colour map (or without one)")
            arr = np.ascontiguousarray((p.colormap[:, index] >> 8).astype(np.uint8).transpose(1, 2, 0))
        if arr.dtype == bool:  # bilevel: 0 / 255, as Pillow's mode "1" gives it (label maps keep their values)
            arr = arr.astype(np.uint8) * 255
        return arr, orientation(p)


def pillow_miniswhite(arr: np.ndarray, as_stored: bool) -> np.ndarray:
    """A MINISWHITE page as Pillow decoded it (`PillowReads.photometric`), made what `read_page` gives: Pillow
    inverts 8- and 1-bit samples but not 16-bit ones (checked: Pillow 13, LZW)."""
    if arr.dtype == np.uint8:
        return 255 - arr if as_stored else arr
    return arr if as_stored else _inverted(arr, 16)


def _unpremultiplied(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colours (H, W, C) premultiplied by `alpha` (H, W), divided out (0 where alpha is 0), in their own type."""
    if not (np.issubdtype(colour.dtype, np.unsignedinteger) or np.issubdtype(colour.dtype, np.floating)):
        return colour
    top = 1.0 if np.issubdtype(colour.dtype, np.floating) else float(np.iinfo(colour.dtype).max)
    a = alpha.astype(np.float64)[..., None]
    out = np.where(a > 0, colour.astype(np.float64) * top / np.where(a > 0, a, 1.0), 0.0)
    if np.issubdtype(colour.dtype, np.floating):
        return out.astype(colour.dtype)
    return np.clip(np.rint(out), 0, top).astype(colour.dtype)


def _inverted(arr: np.ndarray, bits: int) -> np.ndarray:
    """MINISWHITE grey samples as MINISBLACK: the stored maximum minus the value (bool: not; signed: bitwise not, which
    swaps the type's range end for end; floats in [0, 1]: 1 - value, else the negative)."""
    if arr.dtype == bool:
        return ~arr
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        top = (1 << bits) - 1 if bits < 8 * arr.dtype.itemsize else np.iinfo(arr.dtype).max
        return (top - arr).astype(arr.dtype)
    if np.issubdtype(arr.dtype, np.signedinteger):
        return ~arr
    finite = arr[np.isfinite(arr)]
    unit = finite.size and finite.min() >= 0 and finite.max() <= 1
    return (1 - arr) if unit else -arr
