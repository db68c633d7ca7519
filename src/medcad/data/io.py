"""Reading images, DICOM frames and masks into numpy arrays, with errors that name the file.

One decoding policy for the whole package (train, predict, explain, audit, sizes):
- images are returned as displayed: an EXIF/TIFF orientation tag is applied, so pixels match what viewers and
  labelling tools showed the annotator; colour DICOM is converted to RGB once, by pydicom;
- DICOM: see `medcad.data.dicom` (PS3.3's grey-scale pipeline: rescale, window or VOI LUT, MONOCHROME1);
- bit depth: 8-bit data is kept; 16-bit PNG/TIFF data is scaled from its full range (65535 -> 255, so an 8-bit
  image saved as 16 bit decodes to the same pixels), except where its values were written unscaled from fewer
  bits, as OpenCV and scanner exports write 8-, 10- or 12-bit data: a PNG's sBIT chunk says how many bits are
  significant, else values that all fit 8, 10 or 12 bits are read as such (`stored_bits`; `describe_image` says
  which); 16-bit RGB is read in full (Pillow keeps the high byte);
  integer data below 0 or above 65535 (signed or 32-bit TIFFs; unsigned 32-bit read as such, not as Pillow's signed
  "I") is scaled from its own min..max; floating-point data in [0, 1] by 255, float data of whole numbers within
  0..65535 as those integers (an 8-bit image kept as float32), other float data by its own min..max;
- masks: see `medcad.data.masks.decode_mask` (decided from each mask's own values);
- size (`medcad.data.pixel_limit`): a PNG/JPEG/TIFF/BMP whose header declares more than `max_pixels()` pixels
  (Pillow's own decompression-bomb threshold, about 89.5 megapixels, unless `MEDCAD_MAX_PIXELS` gives another number
  of megapixels) is refused with a DataError naming the file and the variable, before its pixels are decoded.
`describe_image` says which of these decisions applied to a file, for `data inspect` and `data audit`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medcad.data.filekinds import check_file, is_dicom, volume_format, volume_header
from medcad.data.pixel_limit import max_pixels, open_checked, pil_image, too_large
from medcad.data.pixels import integer_scale, scaling_notes, stack_scale, to_rgb
from medcad.data.tiff import (
    MINISWHITE,
    PageTooLarge,
    PillowReads,
    image_pages_and_types,
    is_tiff,
    page_notes,
    page_size,
    pages,
    pillow_miniswhite,
    read_page,
    unreadable_tiff,
)
from medcad.data.versions import file_version, per_file_version
from medcad.errors import ConfigError, DataError, NoSuchFrame

# The policy above in a sentence, for descriptions a user outside medcad reproduces it from (an export's model.json)
DECODING = (
    "image files decoded as displayed: the EXIF/TIFF orientation applied; alpha dropped (not composited); grey and "
    "palette images to three equal channels; integer data wider than 8 bits (16-bit grey or RGB, signed or 32-bit "
    "values within 0..65535) scaled to 8 bits from 0..2^b - 1, b the PNG's sBIT, else the fewest of 8, 10, 12 bits "
    "that hold every value, else 16; integer data below 0 or above 65535 from its own min..max; floats in [0, 1] "
    "times 255, floats of whole numbers within 0..65535 as those integers, else from their finite min..max (NaN at "
    "the lowest); DICOM: colour converted to RGB, monochrome "
    "through rescale, then window or VOI LUT, MONOCHROME1 inverted (PS3.3); values rounded to uint8 "
    "(medcad.data.io.read_image); NIfTI, MetaImage, NRRD, MINC and Analyze files read by SimpleITK in stored voxel "
    "order (x across, y down; the header's orientation not applied), values after the header's rescale, scaled as "
    "TIFF data are (a stack's pages alike, from all their values), each slice or frame of a stack an image, an RGB "
    "image nnU-Net split into <case>_0000, _0001, _0002 read from the three (medcad.data.volumes)"
)

PAGED_SUFFIXES = frozenset({".tif", ".tiff", ".gif", ".webp", ".png"})  # several pages or frames: each an image
ANIMATED_SUFFIXES = frozenset({".gif", ".webp", ".png"})  # frames decoded from the ones before (APNG: a PNG's)
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "AVIF"})
ORIENTATION_TAG = 0x0112  # EXIF / TIFF Orientation
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # width and height swap when these are applied


class _Animations:
    """Animated GIF / WebP / PNG files kept open between reads of their frames, a few at a time: a frame of an animation
    is decoded from the frames before it, so opening the file anew for each frame read every frame of it in
    quadratic time (200 frames of 256 px: 15 s), while one open file seeks forward from where it is (Pillow
    restarts only to go back). One lock: Pillow images are not shared between threads."""

    def __init__(self, size: int = 4) -> None:
        import threading

        self.size, self.lock, self.open = size, threading.RLock(), {}

    @contextmanager
    def frame(self, path: Path, page: int) -> Iterator[Image.Image]:
        key = (*file_version(path), os.getpid())
        with self.lock:
            im = self.open.pop(key, None)
            if im is not None and im.tell() > page:  # going back: opened anew (Pillow's APNG rewind fails)
                im.close()
                im = None
            im = im or open_checked(path)
            try:
                yield im
            except BaseException:
                im.close()
                raise
            self.open[key] = im  # the most recent last
            while len(self.open) > self.size:
                self.open.pop(next(iter(self.open))).close()


_ANIMATIONS = _Animations()


def _opened(path: Path, page: int | None):
    """The open image for reading `page` of `path`: a frame after the first of an animation from `_ANIMATIONS`
    (kept open: its frame count and decoded frames carry over), else the file opened for this read."""
    return _ANIMATIONS.frame(path, page) if page and path.suffix.lower() in ANIMATED_SUFFIXES else pil_image(path)


# PNG chunks that can carry an orientation: EXIF, ImageMagick's raw EXIF profile (text), XMP (international text)
_PNG_METADATA = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


def _png_metadata_after_pixels(path: str | Path) -> bool:
    """Whether a PNG file has a metadata chunk (`_PNG_METADATA`) after its image data, where Pillow reads it only
    when it decodes the pixels; from the chunk headers alone (no pixel data read)."""
    pixels = False
    with open(path, "rb") as f:
        f.seek(8)  # the PNG signature
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND" or (pixels and kind in _PNG_METADATA):
                return kind != b"IEND"
            pixels = pixels or kind == b"IDAT"
            f.seek(length + 4, os.SEEK_CUR)  # the chunk's data and CRC
    return False


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 without one), read as Pillow reads it (EXIF, a raw EXIF profile,
    XMP), without decoding a PNG's pixels unless its metadata follows them."""
    getexif = im.getexif
    if im.format == "PNG":
        if getattr(im, "filename", "") and not _png_metadata_after_pixels(im.filename):
            getexif = partial(Image.Image.getexif, im)  # what the header gave; PNG's own getexif decodes every pixel
        else:
            im.load()  # metadata after the pixels: a corrupt image fails here, not silently inside getexif
    try:
        return int(getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block must not stop decoding: the pixels are still usable
        return 1


def _rgb16(im: Image.Image) -> bool:
    """Whether an opened PNG/TIFF holds 16-bit colour samples (Pillow decodes them to their high byte)."""
    return im.mode in ("RGB", "RGBA") and bool(im.tile) and ";16" in str(im.tile[0][3])


def _read_rgb16(path: Path, keep_alpha: bool) -> np.ndarray:
    """A 16-bit colour PNG/TIFF's first page as uint16 RGB(A) (H, W, 3|4), as stored (not oriented), by OpenCV."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3:
        raise DataError(path, "cannot decode its 16-bit colour image data")
    rgb = arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # BGR(A) -> RGB(A)
    return np.ascontiguousarray(rgb if keep_alpha else rgb[..., :3])


def _oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """`arr` (H, W, ...) with an EXIF orientation applied, as ImageOps.exif_transpose applies it."""
    flips = {2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False)}
    flips |= {6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}
    transpose, flip_rows, flip_cols = flips.get(orientation, (False, False, False))
    out = arr.swapaxes(0, 1) if transpose else arr
    out = out[::-1] if flip_rows else out
    return np.ascontiguousarray(out[:, ::-1] if flip_cols else out)


def decode_pil(
    path: Path,
    draft: int | None,
    keep_alpha: bool = False,
    palette_indices: bool = False,
    page: int | None = None,
    as_stored: bool = False,
) -> tuple[np.ndarray, str, int]:
    """Decode a PIL-readable file as displayed: (array, PIL format, orientation tag that was applied); with
    `palette_indices`, a palette image gives its indices (H, W), as label maps store classes, not its colours;
    `page` of a multi-page TIFF or an animated GIF / WebP (see `image_pages`); with `as_stored`, a MINISWHITE TIFF
    by its stored values (masks: `medcad.data.tiff.STORED_MINISWHITE`). A TIFF is read by tifffile
    (`medcad.data.tiff`) unless it is Pillow's to read; a volume file (NIfTI, MetaImage...) by SimpleITK
    (`medcad.data.volumes`: its format's name for the PIL format)."""
    if kind := volume_format(path):
        from medcad.data.volumes import read_volume_page

        arr = read_volume_page(path, page)
        return (arr if keep_alpha or arr.ndim == 2 else arr[..., :3]), kind, 1
    if not is_tiff(path):
        return _pillow_decode(path, draft, keep_alpha, palette_indices, page)
    try:
        arr, orientation = read_page(path, page, max_pixels(), keep_alpha, palette_indices, as_stored)
        return _oriented(arr, orientation), "TIFF", orientation
    except PageTooLarge as e:
        raise too_large(path, e.pixels, max_pixels(), e.size) from e
    except PillowReads as why:
        try:
            arr, fmt, orientation = _pillow_decode(path, draft, keep_alpha, palette_indices, page, f"tifffile: {why}")
            if why.photometric == MINISWHITE:  # as tifffile's reading gives it
                arr = pillow_miniswhite(arr, as_stored)
            return arr, fmt, orientation
        except (NoSuchFrame, _Unrecognised):
            raise
        except DataError as e:  # both readers' reasons
            raise DataError(path, unreadable_tiff(f"tifffile: {why}; Pillow: {e.problem}")) from e


def _pillow_decode(
    path: Path, draft: int | None, keep_alpha: bool, palette_indices: bool, page: int | None, tiff_why: str = ""
) -> tuple[np.ndarray, str, int]:
    """`decode_pil` by Pillow; `tiff_why`: why tifffile left it to Pillow (said if Pillow does not know it either)."""
    fmt = ""
    try:
        with _opened(path, page) as im:
            fmt = im.format or ""
            if page:
                _to_page(im, path, page)
            frame_palette = getattr(im, "_frame_palette", None)  # a GIF frame's own palette, until it is loaded
            orientation = _orientation(im)
            if draft and fmt == "JPEG":
                im.draft("RGB" if im.mode != "L" else "L", (draft, draft))  # fast DCT-domain downscale
            if _rgb16(im) and not page:
                arr = _read_rgb16(path, keep_alpha)
                return _oriented(arr, orientation), fmt, orientation
            samples = _tiff_samples(im)  # from the file's tags, which a transposed copy no longer has
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            plain = im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB")
            indices = _gif_indices(im, frame_palette) if palette_indices and page and fmt == "GIF" else None
            if indices is not None:
                arr = indices
            elif plain or (keep_alpha and im.mode in ("LA", "RGBA")) or (palette_indices and im.mode == "P"):
                arr = np.asarray(im)
                if samples is not None:  # exact either way: the same bits, or int16 values held in int32
                    arr = arr.view(samples) if arr.dtype.itemsize == np.dtype(samples).itemsize else arr.astype(samples)
            elif im.mode == "P" and keep_alpha:
                arr = np.asarray(im.convert("RGBA"))
            elif im.mode in ("LA", "1"):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise _unreadable(path, f"{tiff_why}; Pillow: does not recognise it" if tiff_why else "") from e
    except (DataError, ConfigError):
        raise
    except OSError as e:  # truncated or corrupt data
        if "truncated" in str(e):
            raise DataError(path, f"truncated {fmt or 'image'}: the file ends before its image data does ({e})") from e
        raise DataError(path, f"corrupt image data ({e})") from e
    except Exception as e:  # Pillow's decoders raise other types for some broken files (ValueError, EOFError ...)
        raise DataError(path, f"cannot decode the image data ({type(e).__name__}: {e})") from e
    return arr, fmt, orientation


def _gif_indices(im: Image.Image, frame_palette) -> np.ndarray | None:
    """A GIF frame after the first as the palette indices it was stored in, (H, W) uint8: Pillow composites such
    frames into RGB colours (a label map's classes would be read as colours), so each colour goes back to its index
    in the palette the frame was stored with (`frame_palette`, read before the frame was loaded). Only where that is
    the GIF's global palette (or the same colours in the same order), as the first frame's indices are read, and
    every colour the frame holds stands for one index (entries at the palette's end that repeat a colour listed
    before them, as GIF writers pad to a power of two, are padding). None otherwise: the frame is left as it was
    (its colours, which a label map refuses), never read by a guess."""
    palette = getattr(im, "global_palette", None)
    if palette is None or frame_palette is None or im.mode != "RGB" or palette.mode != "RGB":
        return None
    table = np.frombuffer(bytes(palette.palette), np.uint8)
    if frame_palette is not palette and bytes(frame_palette.palette) != bytes(palette.palette):
        return None  # a palette of its own, ordered otherwise: its indices are not the first frame's
    packed = table[: len(table) // 3 * 3].reshape(-1, 3).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    start = len(packed)
    while start > 0 and packed[start - 1] == packed[-1]:  # the run of the last colour at the end
        start -= 1
    if packed[-1] in packed[:start]:  # padding that repeats a colour listed before it (black, as writers pad)
        packed = packed[:start]
    rgb = np.asarray(im).astype(np.uint32)
    pixels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(pixels, return_inverse=True)
    index = []
    for colour in colours:
        hits = np.flatnonzero(packed == colour)
        if len(hits) != 1:  # not in the palette, or standing for two indices
            return None
        index.append(hits[0])
    return np.asarray(index, np.uint8)[inverse.reshape(pixels.shape)]


def _tiff_samples(im: Image.Image) -> type | None:
    """The type a grey TIFF's samples have where Pillow decodes them into another: unsigned 32-bit (Pillow's signed
    mode "I": values from 2**31 on came out negative, a gradient wrapped around), signed 8-bit (its unsigned "L": -1
    came out as 255) and signed 16-bit (held in "I": so that the type's limit, a no-data marker, is known). None for
    every other image. TIFF's SampleFormat: 1 (the default) unsigned, 2 signed."""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    if tags is None:
        return None
    first = lambda v: v[0] if isinstance(v, tuple | list) else v  # noqa: E731
    bits, sample_format = first(tags.get(258, 0)), first(tags.get(339, 1))
    if im.mode == "I" and bits == 32 and sample_format == 1:
        return np.uint32
    if im.mode == "L" and bits == 8 and sample_format == 2:
        return np.int8
    if im.mode == "I" and bits == 16 and sample_format == 2:
        return np.int16
    return None


def _to_page(im: Image.Image, path: Path, page: int, decode: bool = True) -> None:
    """Seek `im` to `page` of a multi-page file (DataError when it has no such page). For the size alone
    (`decode` False) an animation is not decoded up to the frame: its frames share the canvas (seeking frame k of a
    GIF decodes the k before it, which made `data inspect` of a 200-frame GIF take 23 s)."""
    n = getattr(im, "n_frames", 1)
    if not 0 <= page < n:
        raise NoSuchFrame(path, f"has {n} page(s); page {page} does not exist")
    if decode or path.suffix.lower() not in ANIMATED_SUFFIXES:
        im.seek(page)
        w, h = im.size  # a TIFF's pages have sizes of their own: page 0's, checked at open, says nothing of this one
        if w * h > (limit := max_pixels()):
            raise too_large(path, w * h, limit, f"{w}x{h} (page {page}) ")


def image_pages(path: Path) -> tuple[list[int], list[int]]:
    """(the pages that are images of the set, the thumbnail pages) of a multi-page TIFF (`medcad.data.tiff.pages`:
    a scanner's or camera's reduced-resolution copies are thumbnails; pages of another size than page 0 had been
    dropped with the pages after them, unsaid), or the frames of an animated GIF / WebP / PNG (APNG); ([0], []) for
    other files."""
    suffix = path.suffix.lower()
    if volume_format(path):
        from medcad.data.volumes import volume_info

        try:
            return list(range(volume_info(path)[2])), []
        except DataError:
            return [0], []  # an unreadable file fails as itself when read
    if suffix not in PAGED_SUFFIXES:
        return [0], []
    try:
        if suffix in (".tif", ".tiff"):
            try:
                return pages(path)
            except PillowReads:
                return [0], []  # an unreadable file fails as itself when read
        with pil_image(path) as im:
            return list(range(int(getattr(im, "n_frames", 1) or 1))), []  # animation frames share the canvas
    except (UnidentifiedImageError, OSError, DataError, EOFError):
        return [0], []  # an unreadable file fails as itself when read


def read_image(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Read one image as displayed, RGB uint8 (H, W, 3) (see the module docstring for the policy).

    Args:
        path: PNG/JPEG/TIFF/BMP (8 or 16 bit; grey, RGB, RGBA or palette) or DICOM (by suffix or by content).
        frame: frame index for multi-frame DICOM.

    Raises:
        DataError: naming the file and the problem.
    """
    p = Path(path)
    check_file(p)
    if is_dicom(p):
        from medcad.data.dicom import read_dicom_frame

        return read_dicom_frame(p, 0 if frame is None else int(frame))
    arr, fmt, _ = decode_pil(p, None, page=frame)  # in full: every command's model input decodes alike
    if (whole := _stack_scale(p, frame)) is not None:  # a stack: one scale for all its pages
        return to_rgb(arr, whole[1], whole[0])
    scale = integer_scale(arr, p, fmt)
    return to_rgb(arr) if scale is None else to_rgb(arr, scale[1], scale[0])


def _stack_scale(path: Path, frame: int | None = None) -> tuple[float, float, str] | None:
    """How page `frame` of a stack scales to 8 bits, as all its pages do (a volume's: `volumes.stack_scale`; a TIFF's
    image pages: `_tiff_stack_scale`), or None for a file of one page or of 8-bit values, and a TIFF's thumbnail."""
    if volume_format(path):
        from medcad.data.volumes import stack_scale as volume_stack_scale

        return volume_stack_scale(path)
    if not is_tiff(path):
        return None
    scale, images = _tiff_stack_scale(path)
    return scale if (frame or 0) in images else None


@per_file_version(maxsize=4096)  # small tuples: a set's every TIFF, not decided again each epoch
def _tiff_stack_scale(path: Path) -> tuple[tuple[float, float, str] | None, frozenset[int]]:
    """(how a TIFF stack's image pages scale to 8 bits, decided over all of them at once: `pixels.stack_scale`, those
    pages), kept per file version (its pages are read once per process, not once per page). The scale is None for a
    TIFF of one image page, of 8-bit samples (from the pages' headers, nothing decoded), or one tifffile cannot parse
    (Pillow reads that page by page); pages that cannot be decoded are left out of it and said (each fails as itself
    when read). Decided page by page, a 16-bit cine's frames had come out at other brightnesses: a frame whose values
    stay below 4096 was read as 12-bit, the next, reaching 5000, as 16-bit (3000 -> 187, then 12)."""
    try:
        images, types = image_pages_and_types(path)  # one opening of the file
        if len(images) < 2 or types <= {np.dtype(np.uint8), np.dtype(bool)}:
            return None, frozenset(images)
    except PillowReads:
        return None, frozenset()
    decoded, failed = [], []
    for k in images:
        try:
            decoded.append(decode_pil(path, None, page=k)[0].ravel())
        except DataError:
            failed.append(k)
    scale = stack_scale(np.concatenate(decoded), path, len(decoded)) if decoded else None
    if scale is not None and failed:
        scale = (*scale[:2], f"{scale[2]} (page(s) {', '.join(map(str, failed))} left out: they cannot be decoded)")
    return scale, frozenset(images)


def image_size(path: str | Path, frame: int | None = None) -> tuple[int, int]:
    """(width, height) as displayed (orientation tag applied), from the file header without decoding pixels."""
    p = Path(path)
    check_file(p)
    if is_dicom(p):
        from medcad.data.dicom import read_header

        ds = read_header(p)
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError(p, "DICOM file holds no image (no Rows/Columns)")
        return int(ds.Columns), int(ds.Rows)
    if volume_format(p):
        from medcad.data.volumes import volume_size

        return volume_size(p, frame)
    tiff_why = ""
    if is_tiff(p):
        try:
            w, h, orientation = page_size(p, frame, max_pixels())
            return (h, w) if orientation in TRANSPOSED_ORIENTATIONS else (w, h)
        except PageTooLarge as e:
            raise too_large(p, e.pixels, max_pixels(), e.size) from e
        except PillowReads as why:
            tiff_why = f"tifffile: {why}"
    try:
        with _opened(p, frame) as im:
            if frame:
                _to_page(im, p, frame, decode=False)
            w, h = im.size
            return (h, w) if _orientation(im) in TRANSPOSED_ORIENTATIONS else (w, h)
    except (UnidentifiedImageError, OSError, EOFError) as e:
        raise _unreadable(p, tiff_why) from e


class _Unrecognised(DataError):
    """A file Pillow does not recognise (`_unreadable`): its message already says all there is."""


def _unreadable(path: Path, reasons: str = "") -> DataError:
    """The error for a file Pillow does not recognise: a TIFF by its first bytes is named as one, with `reasons` (a
    float64 TIFF, as scientific tools write, had been called unknown or corrupt)."""
    if is_tiff(path):
        return _Unrecognised(path, unreadable_tiff(reasons))
    if header := volume_header(path):
        return _Unrecognised(path, f"the voxel data of {header.name}, read with it: give {header.name} itself")
    return _Unrecognised(path, "not a readable image (unknown or corrupt format)")


def describe_image(path: str | Path) -> list[str]:
    """The decoding decisions that apply to one image file, from its header (empty for plain 8-bit files); its pixels
    are decoded only where their values decide the scaling (integers wider than 8 bits, floats).

    E.g. "EXIF orientation 6 applied", "16-bit scaled from 0..65535", "DICOM YBR_FULL_422 converted to RGB".
    """
    p = Path(path)
    notes = []
    try:
        if is_dicom(p):
            from medcad.data.dicom import describe_dicom

            return describe_dicom(p)
        if volume_format(p):
            from medcad.data.volumes import stack_scale, volume_notes

            notes = volume_notes(p)  # a stack's scale, decided over all its pages, among them
            if stack_scale(p) is not None:
                return notes
            arr = decode_pil(p, None)[0]
            return notes + (scaling_notes(arr, p, "") if arr.dtype != np.uint8 else [])
        if is_tiff(p):
            try:
                notes, dtype = page_notes(p)
                if (whole := _tiff_stack_scale(p)[0]) is not None:  # decided over all its pages
                    return notes + [whole[2]]
                if dtype not in (np.uint8, bool):  # values decide the scaling: decoded, as for 16-bit PNGs
                    notes += scaling_notes(decode_pil(p, None)[0], p, "TIFF")
                return notes
            except PillowReads:
                pass
        with pil_image(p) as im:
            o = _orientation(im)
            if o != 1:
                notes.append(f"{'TIFF' if im.format == 'TIFF' else 'EXIF'} orientation {o} applied")
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") or _rgb16(im) or _tiff_samples(im) is np.int8:
                arr, fmt, _ = decode_pil(p, None)
                notes += scaling_notes(arr, p, fmt)
            elif im.mode in ("RGBA", "LA", "PA"):
                notes.append("alpha channel dropped")
            elif im.mode == "CMYK":
                notes.append("CMYK converted to RGB")
    except Exception:  # unreadable files are reported elsewhere
        return notes
    return notes
