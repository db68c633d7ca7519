"""Uploaded files for the server: limits, content checks, decoding through the package's one image policy.

What a client sends is never trusted by its name or content type: the kind of a file is decided from its first
bytes, the pixel count from its header before any pixel is decoded (a decompression bomb is refused before it
can take memory), and decoding goes through `medcad.data.io.read_image` like every other image medcad reads.
Files live only in the server's temporary folder, one per request, deleted as soon as they are decoded. Errors
never carry the upload's name (a file name can hold a patient's name): they say "the upload".
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medcad.data.io import image_pages, read_image
from medcad.data.pixel_limit import bomb_pixels
from medcad.data.tiff import TIFF_MAGIC, page_pixels, unreadable_tiff
from medcad.data.versions import forget
from medcad.errors import DataError, MedcadError, NoSuchFrame

# first bytes -> kind; DICOM is recognised by "DICM" after its 128-byte preamble
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    *((magic, "tiff") for magic in TIFF_MAGIC),  # classic and BigTIFF, as the decoder knows them
    (b"BM", "bmp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
SUFFIX = {  # each upload kind's file suffix, for the decoder
    "png": ".png",
    "jpeg": ".jpg",
    "tiff": ".tif",
    "bmp": ".bmp",
    "dicom": ".dcm",
    "webp": ".webp",
    "gif": ".gif",
    "avif": ".avif",
}
KINDS = "PNG, JPEG, TIFF, BMP, GIF, WebP, AVIF, DICOM or NIfTI"  # the images an upload may be, in words
AVIF_BRANDS = (b"avif", b"avis")  # an ISO-BMFF file (ftyp, as MP4) holding an AVIF image or image sequence


@dataclass(frozen=True)
class Limits:
    """What one request may send.

    Attributes:
        max_image_bytes: largest image upload (bytes).
        max_video_bytes: largest video upload (bytes).
        max_pixels: largest width x height decoded (of one frame: a DICOM cine's other frames are not decoded); a
            40-megapixel default leaves room for any endoscopy or ultrasound frame and refuses decompression bombs.
        max_video_frames: longest clip, in frames.
    """

    max_image_bytes: int = 32 * 2**20
    max_video_bytes: int = 512 * 2**20
    max_pixels: int = 40_000_000
    max_video_frames: int = 20_000


class UploadError(MedcadError):
    """A request the server refuses: an HTTP status (4xx) and a message saying what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class Upload:
    """A decoded upload: the RGB image (H, W, 3) uint8, its kind, for DICOM the header (no pixel data), and which
    of how many frames (DICOM) or pages (TIFF, GIF, WebP) it is."""

    rgb: np.ndarray
    kind: str
    dicom: object | None = None  # pydicom Dataset read with stop_before_pixels
    frame: int = 0
    frames: int = 1
    pages: list[int] | None = None  # the frames that are images of the set (a TIFF's thumbnail pages left out)


TINY_SIDE = 32  # pixels: an image smaller than this on a side holds little for any model


def prediction_warnings(prediction, rgb: np.ndarray, input_size: int) -> list[str]:
    """What makes a prediction of `rgb` doubtful, as predict and serve say it: the input's (`input_warnings`: a tiny
    image, a mask sent as one) and the prediction's own (`Prediction.doubts`: a class label its mask contradicts)."""
    return input_warnings(rgb, input_size) + prediction.doubts()


def input_warnings(rgb: np.ndarray, input_size: int) -> list[str]:
    """What about a decoded upload (H, W, 3) uint8 makes its prediction doubtful, in words (it is still predicted):
    a side below TINY_SIDE pixels (enlarged to the model's `input_size`), or two grey values only (a mask, not an
    image: a BUSI `_mask.png` had been classified without a word)."""
    h, w = rgb.shape[:2]
    out = []
    if min(h, w) < TINY_SIDE:
        out.append(f"the image is {w}x{h} pixels, enlarged to the model's {input_size} x {input_size}: it shows little")
    grey = rgb[..., 0]
    values = len(np.unique(grey[:: max(1, h // 256), :: max(1, w // 256)]))
    if values <= 2 and (rgb == grey[..., None]).all():
        out.append(
            "the image is one grey value: a blank frame, not a picture to predict?"
            if values == 1
            else "the image holds two grey values only: a mask, not a picture to predict?"
        )
    return out


def sniff(data: bytes) -> str | None:
    """The image kind from the first bytes ("png", "jpeg", "tiff", "bmp", "gif", "webp", "avif", "dicom"), or None:
    the images `medcad predict` reads."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if _is_avif(data):  # before videos: an AVIF file starts as an MP4 does
        return "avif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, kind in IMAGE_MAGIC:
        if data.startswith(magic):
            return kind
    return None


def _is_avif(data: bytes) -> bool:
    """An AVIF image by its file-type box: an AVIF brand as major brand or among the compatible ones."""
    if data[4:8] != b"ftyp":
        return False
    size = int.from_bytes(data[:4], "big")
    brands = data[8 : min(max(size, 16), 64)]
    return any(brands[k : k + 4] in AVIF_BRANDS for k in range(0, len(brands) - 3, 4))


def sniff_volume(data: bytes) -> tuple[str | None, str]:
    """A volume file the server reads from one upload, by its first bytes: ("nifti", ".nii" or ".nii.gz"), the suffix
    to decode it by. Only a one-file NIfTI (magic `n+1`; NIfTI-2 refused as it is read) is taken: its voxels are in
    the file and its header can name no other file, whereas a MetaImage or NRRD header can name any file on the
    server as its voxel data (ITK reads the first `ElementDataFile`, `DATA FILE:` in any case, past any comment),
    which the answer would send back as an image. (None, why) for another volume file, (None, "") for anything else."""
    import gzip
    import zlib

    head, suffix = data[:352], ".nii"
    if data[:2] == b"\x1f\x8b":  # gzip: a .nii.gz, by the NIfTI magic inside
        try:
            head, suffix = gzip.GzipFile(fileobj=io.BytesIO(data)).read(352), ".nii.gz"
        except (OSError, EOFError, zlib.error):
            return None, ""
    if head[344:348] == b"n+1\0" or head[4:8] == b"n+2\0":
        return "nifti", suffix
    send = "send it as one NIfTI file (.nii or .nii.gz), or `medcad predict` it"
    if head[344:348] == b"ni1\0" or head[4:8] == b"ni2\0" or head[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c"):
        return None, f"a NIfTI or Analyze header (.hdr) whose voxel data are another file: {send}"
    if data[:4096].lstrip().startswith((b"ObjectType", b"NDims", b"Comment", b"NRRD000")):
        return None, f"a MetaImage or NRRD volume, whose header may name any file as its voxel data: {send}"
    return None, ""


VOLUME_KINDS = ("nifti",)  # volume uploads (`sniff_volume`), read by SimpleITK as files


def _check_voxels(path: Path, limits: Limits) -> None:
    """Refuse a NIfTI upload whose header declares more voxels, all its pages together, than `limits.max_pixels`,
    before anything beyond its header is decompressed (a 97 kB .nii.gz declaring 900 billion voxels had been
    decompressed whole first): SimpleITK decodes a volume whole, so the limit that keeps one image within memory
    counts every page of it.

    Raises:
        UploadError: 413 for too many voxels, 422 for a header that cannot be read.
    """
    from medcad.data.volumes import header_voxels

    sizes = header_voxels(path)
    if not sizes:
        raise UploadError(422, "the upload's NIfTI header cannot be read")
    voxels = int(np.prod(sizes, dtype=np.float64))
    if voxels > limits.max_pixels:
        raise UploadError(
            413,
            f"the upload is a volume of {' x '.join(map(str, sizes))} voxels ({voxels / 1e6:.1f} million), more "
            f"than this server's limit of {limits.max_pixels / 1e6:.0f} million (medcad serve --max-pixels, which "
            "counts every page of a volume: it is decoded whole); send fewer pages, or `medcad predict` the file",
        )


def sniff_video(data: bytes) -> bool:
    """True for the video containers `medcad predict` reads: MP4/MOV/3GP (ftyp, an AVIF image excepted), AVI
    (RIFF...AVI), Matroska/WebM, MPEG transport streams (a sync byte every 188 bytes; .ts, .m2ts with 4 more), MPEG
    program streams (VOB, .mpg), Ogg, FLV."""
    if _is_avif(data):
        return False
    if data[4:8] == b"ftyp" or (data[:4] == b"RIFF" and data[8:11] == b"AVI") or data[:4] == b"\x1a\x45\xdf\xa3":
        return True
    if data[:4] in (b"\x00\x00\x01\xba", b"OggS") or data[:3] == b"FLV":
        return True
    return any(len(data) > k + 188 * 3 and all(data[k + 188 * j] == 0x47 for j in range(4)) for k in (0, 4))


def _dicom_header(data: bytes):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)  # the header; pixels decode later
    except Exception as e:  # pydicom raises many types for bad files
        raise UploadError(422, f"the upload is not a readable DICOM file ({type(e).__name__})") from e


def _too_many_pixels(megapixels: str, limits: Limits) -> str:
    return (
        f"the upload has {megapixels} megapixels, more than this server's limit of {limits.max_pixels / 1e6:.0f}"
        " (medcad serve --max-pixels); send a smaller image"
    )


def check_pixels(data: bytes, kind: str, limits: Limits, frame: int = 0):
    """Refuse an image whose header declares more than `limits.max_pixels` pixels (in `frame`, the page of a
    multi-page TIFF, whose pages each have their own size, or of a GIF, whose canvas grows with its frames), before
    decoding it.

    A DICOM without pixel data passes here and is refused by `read_image`, with its message.

    Returns:
        the DICOM header (pydicom Dataset without pixel data) for DICOM, else None.

    Raises:
        UploadError: 413 for too many pixels, 422 for a header that cannot be read.
    """
    header = None
    if kind == "dicom":
        header = _dicom_header(data)
        n = int(header.get("Columns", 0) or 0) * int(header.get("Rows", 0) or 0)  # one frame is decoded
    elif kind == "tiff" and (pixels := page_pixels(data, frame)) is not None:
        n = pixels  # the page's own header (tifffile: every TIFF medcad reads, big-endian BigTIFF included)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:  # reads the header only
                    if frame and frame < getattr(im, "n_frames", 1):
                        # a TIFF page has its own size (its header, IFD, is read); a GIF's canvas grows to hold a
                        # later frame placed beyond it (Pillow decodes the frames up to it, each within the limit)
                        im.seek(frame)
                    n = im.size[0] * im.size[1]
        except Image.DecompressionBombError as e:  # beyond twice Pillow's limit: the size is only in its message
            n = bomb_pixels(e)
            size = f"{n / 1e6:.1f}" if n is not None else f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}"
            raise UploadError(413, _too_many_pixels(size, limits)) from e
        except Exception as e:
            why = f"the upload's {kind.upper()} header cannot be read ({type(e).__name__})"
            why = unreadable_tiff() if kind == "tiff" else why
            raise UploadError(422, why) from e
    if n > limits.max_pixels:
        raise UploadError(413, _too_many_pixels(f"{n / 1e6:.1f}", limits))
    return header


def decode_upload(data: bytes, workdir: Path, limits: Limits, frame: int = 0) -> Upload:
    """Check and decode one uploaded image.

    Args:
        data: the uploaded bytes.
        workdir: the server's temporary folder; the file written there is deleted before this returns.
        limits: what the server accepts.
        frame: the frame of a multi-frame DICOM, the page of a multi-page TIFF or animated GIF / WebP.

    Returns:
        the decoded upload.

    Raises:
        UploadError: 400 empty, 413 too large, 415 not an image kind medcad reads, 422 corrupt or truncated.
    """
    if not data:
        raise UploadError(400, f"the upload is empty (0 bytes); send a {KINDS} image")
    if len(data) > limits.max_image_bytes:
        raise UploadError(
            413,
            f"the upload is {len(data)} bytes, larger than this server's image limit of {limits.max_image_bytes} bytes "
            "(medcad serve --max-upload-mb); send a smaller image",
        )
    kind, suffix = sniff(data), None
    if kind is None:
        kind, suffix = sniff_volume(data)
    if kind is None:
        hint = " (it looks like a video: POST it to /predict/video)" if sniff_video(data) else ""
        hint = hint or (f" (it is {suffix})" if suffix else "")
        raise UploadError(
            415,
            f"the upload is not a {KINDS} image by its content{hint}; medcad decides "
            "by the bytes, not the file name or content type",
        )
    paged = kind in ("dicom", "tiff", "gif", "webp", "png", *VOLUME_KINDS)  # a PNG may be animated (APNG)
    if frame and not paged:
        raise UploadError(
            422,
            f"the upload is a single {kind.upper()} image: frame {frame} does not exist (frame= picks a frame of a "
            "multi-frame DICOM or a page of a TIFF, GIF, WebP or animated PNG)",
        )
    header = None if kind in VOLUME_KINDS else check_pixels(data, kind, limits, frame)
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=suffix or SUFFIX[kind]) as f:
        f.write(data)
        f.flush()
        try:
            if kind in VOLUME_KINDS:
                _check_voxels(Path(f.name), limits)
            rgb = read_image(f.name, frame=frame if paged else None)
            if kind == "dicom":
                frames = int(header.get("NumberOfFrames", 1) or 1)
                pages = (list(range(frames)), [])
            else:
                pages = image_pages(Path(f.name)) if paged else ([0], [])
                frames = max(pages[0] + pages[1]) + 1  # frame= numbers the file's pages, thumbnails included
        except NoSuchFrame as e:  # the request's, not the file's, fault
            raise UploadError(422, f"frame={frame} is beyond the upload's frames: it {e.problem}") from e
        except DataError as e:  # the server's temporary path (ITK names it) is not the client's business
            raise UploadError(422, f"the upload cannot be decoded: {e.problem.replace(f.name, 'the upload')}") from e
        finally:
            if kind in VOLUME_KINDS:  # its voxels, kept for a file's next page, freed with the file
                forget(Path(f.name))
    return Upload(rgb, kind, header, frame, frames, pages[0])
