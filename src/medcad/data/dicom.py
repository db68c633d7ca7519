"""One DICOM frame as displayed: RGB uint8, through the grey-scale pipeline of PS3.3 C.11 for monochrome data.

Monochrome: stored values -> Modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence) -> VOI LUT (a VOI
LUT Sequence, else the first Window Center / Width, by its VOI LUT Function) -> MONOCHROME1 inverted, so that
bright means high signal -> the output range scaled to 0..255. The output range is the LUT's entry depth after a VOI
LUT, else the stored range through the Modality LUT (pydicom's `apply_windowing` maps a window onto that range too).
Colour (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT/RCT, PALETTE COLOR) is converted to RGB by pydicom. Only the asked frame
of a multi-frame file is read and decoded (`pydicom.pixels.pixel_array(index=...)`): a 300-frame cine is not
decoded 300 times to read each frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medcad.data.pixels import scale_to_uint8
from medcad.data.versions import per_file_version
from medcad.errors import DataError, NoSuchFrame

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as little-endian bytes
# pydicom's warning when a header's Photometric Interpretation contradicts a JPEG / JPEG-LS codestream, which it
# then follows: said once by `describe_dicom` (data inspect / audit), not on stderr for every frame decoded
warnings.filterwarnings("ignore", message=r".*'Photometric Interpretation' value is .* however the encoded image")


def read_header(path: Path):
    """The dataset of a DICOM file without its pixel data (not to be changed: the last few are kept, by file state,
    for the frames and steps that read one file again). DataError when pydicom cannot parse it."""
    try:
        Path(path).stat()
    except OSError as e:
        raise DataError(Path(path), f"cannot be read ({e.strerror})") from e
    return _header(path)


@per_file_version(maxsize=64)
def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for bad files
        raise DataError(Path(path), f"unreadable DICOM ({type(e).__name__}: {_without_api_hint(e)})") from e


def _without_api_hint(e: Exception) -> str:
    """pydicom's message without its advice to call it with force=True (a user of medcad cannot)."""
    return str(e).split(" Use force=True")[0].split(". Use force=True")[0]


def _decoded(path: Path, ds, index: int) -> np.ndarray:
    """Frame `index` of the file's pixel data as pydicom decodes it (colour converted to RGB)."""
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(path, index=index)
    except Exception as e:
        data = path.read_bytes()
        if PIXEL_DATA_TAG not in data:
            raise DataError(path, "DICOM file holds no pixel data (a DICOMDIR, report or structured document?)") from e
        short = _truncated(data, ds, index) if "Rows" in ds and "Columns" in ds else None
        if short:
            raise DataError(path, f"truncated DICOM: {short}") from e
        raise DataError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {_without_api_hint(e)})") from e


def _truncated(data: bytes, ds, index: int) -> str | None:
    """How the file ends before its pixel data does, or None: encapsulated (compressed) data without its closing
    sequence delimiter; native data shorter than rows x columns x samples x bytes per sample x frames."""
    start = data.rfind(PIXEL_DATA_TAG)
    if "TransferSyntaxUID" in ds.file_meta and ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ended = b"\xfe\xff\xdd\xe0" in data[start:]  # (FFFE,E0DD) sequence delimitation item
        return None if ended else "its compressed pixel data ends early (no closing delimiter)"
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    frame_bytes = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1))
    frame_bytes *= max(int(getattr(ds, "BitsAllocated", 8)) // 8, 1)
    held = len(data) - start - 12  # tag, VR, reserved bytes and length: 12 bytes before the values
    if held >= frame_bytes * frames:
        return None
    whole = max(held, 0) // frame_bytes
    return (
        f"its pixel data holds {held} of the {frame_bytes * frames} bytes of {frames} frame(s): frames 0-{whole - 1} "
        f"are whole, frame {index} is not"
        if whole
        else f"its pixel data holds {held} of the {frame_bytes * frames} bytes of {frames} frame(s), not one whole"
    )


def _stored_range(ds) -> tuple[float, float]:
    """The range of the Modality LUT's output for the stored range (as pydicom's `apply_windowing` takes it)."""
    bits = int(getattr(ds, "BitsStored", 8))
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0**bits - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _voi_lut(values: np.ndarray, ds) -> tuple[np.ndarray, float, float]:
    """The first VOI LUT of the VOI LUT Sequence applied (PS3.3 C.11.2.1.1: values below its first mapped value take
    its first entry, above its last its last), with the range of its entries. Written out: pydicom's apply_voi_lut
    indexes the LUT with an array of the entries' type, which wraps for 8-bit entries past 256 of them."""
    item = ds.VOILUTSequence[0]
    n, first, depth = (int(v) for v in item.LUTDescriptor)
    n = n or 65536
    if first >= 2**15 and int(getattr(ds, "PixelRepresentation", 0)) == 1:
        first -= 2**16  # a signed first value read as US
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the file's byte order
        little = ds.file_meta.TransferSyntaxUID.is_little_endian if "TransferSyntaxUID" in ds.file_meta else True
        lut = np.frombuffer(data, dtype="<u2" if little else ">u2")[:n]
    else:
        lut = np.atleast_1d(np.asarray(data, np.int64))[:n]
    index = np.clip(np.rint(np.asarray(values, np.float64)).astype(np.int64) - first, 0, len(lut) - 1)
    return lut[index], 0.0, float(2**depth - 1)


def _grey(arr: np.ndarray, ds) -> np.ndarray:
    """Monochrome stored values (H, W) -> displayed grey uint8 (H, W), by PS3.3 C.11 (module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    lo, hi = _stored_range(ds)
    if ds.get("VOILUTSequence"):
        values, lo, hi = _voi_lut(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, prefer_lut=False)
    values = np.asarray(values, np.float64)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        values = lo + hi - values
    scaled = (values - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def read_dicom_frame(path: str | Path, index: int = 0) -> np.ndarray:
    """Frame `index` of a DICOM file, RGB uint8 (H, W, 3), as the module docstring says.

    Raises:
        DataError: an unreadable file, no pixel data, truncated or undecodable pixel data, or no such frame.
    """
    p = Path(path)
    ds = read_header(p)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if not 0 <= index < frames:
        raise NoSuchFrame(p, f"has {frames} frame(s); frame {index} does not exist")
    return _displayed(_decoded(p, ds, index), ds)


def iter_dicom_frames(path: str | Path) -> Iterator[tuple[int, np.ndarray | DataError]]:
    """Every frame of a multi-frame DICOM file in order, as (index, RGB uint8 (H, W, 3)) or (index, the DataError
    that frame raises). The file is read in one pass (`pydicom.pixels.iter_pixels`): reading frame by frame finds
    each frame of compressed data without an offset table from the file's start again, which grows with the square
    of the frame count (1,200 RLE frames: 8.7 ms a frame against 4.9 ms for 100). A frame that fails is read alone
    for its own error, and the frames after it are read by index (pydicom then finds each one alone, as before),
    so that one bad frame costs only itself in frames lost (a truncated file's remaining frames all take the
    truncation's error).

    Raises:
        DataError: the file's header is unreadable.
    """
    from pydicom.pixels import iter_pixels

    p = Path(path)
    ds = read_header(p)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    done = 0  # the next frame to give
    while done < frames:
        try:
            # every frame: one pass; after a failure the rest by index (pydicom finds each of those alone again)
            for arr in iter_pixels(p) if done == 0 else iter_pixels(p, indices=range(done, frames)):
                yield done, _displayed(arr, ds)
                done += 1
            if done == frames:
                return
        except Exception:  # the frame `done` failed in this pass (or the pass ended early)
            pass
        try:  # its own error, from reading it alone; then one pass again over the rest
            alone: np.ndarray | DataError = read_dicom_frame(p, done)
        except DataError as e:
            alone = e
        yield done, alone
        done += 1
        if isinstance(alone, DataError) and "truncated" in alone.problem:  # every later frame is missing too
            for index in range(done, frames):
                yield index, alone
            return


def _displayed(arr: np.ndarray, ds) -> np.ndarray:
    """A decoded frame as displayed, RGB uint8 (H, W, 3): colour scaled from its stored bits, PALETTE COLOR through
    its palette, monochrome through the grey-scale pipeline (`_grey`)."""
    from pydicom.pixels import apply_color_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        return scale_to_uint8(np.asarray(arr), 65535.0 if arr.dtype != np.uint8 else None)
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return scale_to_uint8(np.asarray(arr), float(2 ** int(getattr(ds, "BitsStored", 8)) - 1))
    return np.repeat(_grey(arr, ds)[..., None], 3, axis=-1)


def pixel_aspect(ds) -> str | None:
    """A DICOM image's sample aspect ratio ("W:H", a pixel's width to its height) where its pixels are not square,
    else None: from Pixel Aspect Ratio (0028,0034; vertical \\ horizontal size), else Pixel Spacing (0028,0030; row
    spacing \\ column spacing; an enhanced multi-frame object's in its shared Pixel Measures), else the first
    ultrasound region in cm's Physical Delta X / Y (PS3.3 C.8.5.5); square within 1 %."""
    from fractions import Fraction

    def ratio(vertical, horizontal) -> Fraction | None:
        try:
            v, h = float(vertical), float(horizontal)
        except (TypeError, ValueError):
            return None
        return Fraction(h / v) if v > 0 and h > 0 else None

    found = None
    shared = ds.get("SharedFunctionalGroupsSequence") or [{}]  # enhanced multi-frame objects keep it there
    measures = (shared[0].get("PixelMeasuresSequence") or [{}])[0]
    if len(values := list(ds.get("PixelAspectRatio") or [])) == 2:
        found = ratio(*values)
    elif len(values := list(ds.get("PixelSpacing") or measures.get("PixelSpacing") or [])) == 2:
        found = ratio(*values)
    elif spatial := [r for r in ds.get("SequenceOfUltrasoundRegions") or [] if _in_cm(r)]:
        found = ratio(spatial[0].get("PhysicalDeltaY"), spatial[0].get("PhysicalDeltaX"))
    if found is None or abs(float(found) - 1) <= 0.01:
        return None
    found = found.limit_denominator(100)
    return f"{found.numerator}:{found.denominator}"


def _in_cm(region) -> bool:
    """An ultrasound region measured in cm both ways (Physical Units X / Y Direction 3): a picture of tissue, not a
    Doppler or M-mode trace (seconds against cm/s or cm), whose deltas are no aspect ratio."""
    return region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3


def describe_dicom(path: Path) -> list[str]:
    """The decoding decisions that apply to a DICOM file, from its header and from decoding its first frame (where
    pydicom finds that the compressed data contradict the header's Photometric Interpretation, and follows the
    data)."""
    ds = read_header(path)
    notes = []
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    followed = _photometric_of_data(Path(path))
    if followed:
        notes.append(f"DICOM {followed}")
    elif photometric not in ("MONOCHROME2", "RGB"):
        notes.append(f"DICOM {photometric} converted to {'grey' if 'MONO' in photometric else 'RGB'}")
    if int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        if ds.get("ModalityLUTSequence"):
            notes.append("DICOM Modality LUT applied")
        elif float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0:
            notes.append(f"DICOM rescale applied (slope {ds.RescaleSlope}, intercept {ds.RescaleIntercept})")
        if ds.get("VOILUTSequence"):
            notes.append("DICOM VOI LUT applied, scaled from its entries' range")
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            notes.append("DICOM window applied (the first Window Center / Width)")
    bits = int(getattr(ds, "BitsStored", 8))
    if bits != 8 and not any("window" in n or "VOI LUT" in n for n in notes):
        notes.append(f"DICOM {bits}-bit scaled from its stored range")
    if aspect := pixel_aspect(ds):
        notes.append(f"pixels not square (sample aspect ratio {aspect}): read at their stored size")
    return notes


def _photometric_of_data(path: Path) -> str | None:
    """What pydicom decides when a JPEG / JPEG-LS frame's codestream contradicts the header's Photometric
    Interpretation (`pydicom.pixels.decoders.base.DecodeRunner._conform_jpg_colorspace`: component ids 'R','G','B'
    make it RGB; a JFIF APP0 marker, YCbCr), in words; None when they agree or the data are not JPEG."""
    from pydicom.uid import JPEGBaseline8Bit, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    ds = read_header(path)
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 3 or syntax not in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes):
        return None
    header = str(getattr(ds, "PhotometricInterpretation", ""))
    try:
        ids, app = _jpeg_markers(_first_fragment(path))
    except Exception:  # unreadable data: the reader names it when it decodes
        return None
    if ids in ([82, 71, 66], [114, 103, 98]) and header != "RGB":
        data, why = "RGB", "its component ids are 'R', 'G', 'B'"
    elif any(a.startswith(b"JFIF") for a in app) and "YBR" not in header:
        data, why = ("YBR_FULL_422" if syntax == JPEGBaseline8Bit else "YBR_FULL"), "a JFIF marker: YCbCr"
    else:
        return None
    return f"Photometric Interpretation '{header}' contradicts its JPEG data ({why}): decoded as {data}, as they say"


def _first_fragment(path: Path) -> bytes:
    """The first fragment of a file's encapsulated Pixel Data (past its Basic Offset Table; pydicom.encaps), read
    without loading the rest of the pixel data (a long cine's)."""
    import pydicom
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    with open(path, "rb") as f:
        pydicom.dcmread(f, stop_before_pixels=True)  # leaves the file at the Pixel Data element
        f.seek(12, 1)  # its tag, VR, reserved bytes and undefined length
        parse_basic_offsets(f)
        return next(generate_fragments(f))


def _jpeg_markers(code: bytes) -> tuple[list[int], list[bytes]]:
    """A JPEG / JPEG-LS codestream's frame component ids and APPn payloads (ITU T.81 B.1.1), read up to its first
    scan."""
    ids: list[int] = []
    app: list[bytes] = []
    i = 2  # after SOI
    while i + 4 <= len(code) and code[i] == 0xFF:
        marker, length = code[i + 1], int.from_bytes(code[i + 2 : i + 4], "big")
        body = code[i + 4 : i + 2 + length]
        if 0xE0 <= marker <= 0xEF:
            app.append(bytes(body))
        elif (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:  # SOFn, JPEG-LS SOF55
            ids = [body[6 + 3 * k] for k in range(body[5])]
        elif marker == 0xDA:  # start of scan
            break
        i += 2 + length
    return ids, app
