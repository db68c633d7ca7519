"""Reading the research volume formats (NIfTI, MetaImage, NRRD, MINC, Analyze / NIfTI pairs) as 2-D images and
stacks of them, by SimpleITK.

nnU-Net (v1, and v2 by default), MONAI and the Medical Segmentation Decathlon keep images and label maps so, 2-D
ones too: nnU-Net converts a PNG into a NIfTI slice of depth 1, CAMUS keeps its echocardiography frames and label
maps as NIfTI (earlier MetaImage), a 2-D+t sequence as one file of its frames.

How a file is read (said by `volume_notes`, and in `medcad.data.io.DECODING`):
- voxels in their stored order, as SimpleITK and nnU-Net lay them out: the first axis (x) across, the second (y)
  down; the orientation in the header (direction cosines, NIfTI's qform / sform) is not applied. A 2-D image
  converted by nnU-Net or SimpleITK reads back pixel for pixel; one written by nibabel from an (H, W) array reads
  transposed, as ITK-SNAP and 3D Slicer show it;
- a third axis of more than one (slices, or frames of a 2-D+t sequence) gives one page per position, as a
  multi-page TIFF's pages: each is an image of the set, and a label map of as many pages gives each its mask
  (`medcad.data.masks.sample_mask_pages`); a fourth axis too, where at most one of the two is longer than one;
- values as stored, after the header's rescale slope and intercept (NIfTI scl_slope / scl_inter, which ITK
  applies); the decoding policy for their bit depth is the one for TIFFs (`medcad.data.io`);
- grey, RGB or RGBA voxels; other vector or complex voxels are refused, naming the file;
- an RGB image nnU-Net v1 split into three files (`<case>_0000`, `_0001`, `_0002`, its dataset.json naming the
  channels red, green, blue: `filekinds.colour_channels`) is read as one RGB image, from its red file.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medcad.data.filekinds import colour_channels, file_suffix, named_volume_data, volume_format
from medcad.data.versions import per_file_version
from medcad.errors import DataError, NoSuchFrame

# the SimpleITK reader of each format `filekinds.volume_format` names: forced, so a file is read as what it is
# named (SimpleITK otherwise tries every reader it has, a PNG's among them)
_IMAGE_IO = {
    "NIfTI": "NiftiImageIO",
    "Analyze / NIfTI pair": "NiftiImageIO",
    "MetaImage": "MetaImageIO",
    "NRRD": "NrrdImageIO",
    "MINC": "MINCImageIO",
}
_NIFTI = ("NIfTI", "Analyze / NIfTI pair")  # read by ITK's NiftiImageIO, headers `_nifti_header` reads
ONE_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".mnc")  # volume formats that keep header and voxels in one
ORDER = "voxels in stored order (x across, y down); the header's orientation not applied"


def _reader(path: Path, header: bool = True):
    """A SimpleITK ImageFileReader for `path`, with its header read unless `header` is False (`Execute` reads it
    anew: reading it twice had made a 500 px compressed NIfTI slice 23 ms, not 16). Raises DataError naming the file."""
    import SimpleITK as sitk

    kind = volume_format(path) or "volume"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if kind in _IMAGE_IO:
        reader.SetImageIO(_IMAGE_IO[kind])
    try:
        if header:
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise DataError(path, f"cannot read it as a {kind} file ({_itk_reason(e)})") from e
    return reader, kind


def _itk_reason(error: RuntimeError) -> str:
    """The line of an ITK exception that says what went wrong (its message starts with source file and line); a
    reason of "Success" (what ITK's MetaImage reader says of data that ends early) in words."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception thrown", "sitk::ERROR"))]
    reason = (said or lines or ["SimpleITK gave no reason"])[-1][:300]
    if reason.rstrip(".").endswith(("Reason: Success", "Reason: ")):
        return "its voxel data ends before the header's size, or cannot be decoded; ITK gave no reason"
    return reason


def _layout(path: Path, size: tuple[int, ...], components: int, kind: str) -> int:
    """The number of pages of a volume of `size` (x, y[, z[, t]]) voxels: 1 for a 2-D image or a slice of depth 1.

    Raises:
        DataError: more than one axis beyond the second is longer than one (a 3-D volume over time), or the voxels
            are not grey, RGB or RGBA.
    """
    if components not in (1, 3, 4):
        raise DataError(path, f"a {kind} file of {components}-component voxels: medcad reads grey, RGB or RGBA")
    extra = [n for n in size[2:] if n > 1]
    if len(extra) > 1:
        shape = " x ".join(str(n) for n in size)
        raise DataError(
            path,
            f"a {kind} volume of {shape} voxels, of more than one axis beyond the image's two: medcad reads 2-D images "
            "and stacks of them (slices, or frames over time); write each stack as a file of its own",
        )
    return extra[0] if extra else 1


DEFLATE_MOST = 1100  # deflate (gzip, zlib) makes data at most ~1032 times smaller (its longest match for 2 bits)


def _claims_more(path: Path, reader, size: tuple[int, ...], components: int) -> str:
    """Why a MetaImage or NRRD header declares more voxel bytes than its file (and its named voxel data file) could
    hold even deflate-compressed (`DEFLATE_MOST` times smaller), "" otherwise: a 100-byte `.mha` claiming 20000
    slices had become 20000 rows. Left to their decoding: a bzip2 NRRD (which compresses runs further), MINC, and
    data kept elsewhere than one named file."""
    import SimpleITK as sitk

    if path.suffix.lower() == ".mnc":
        return ""  # HDF5 need not store chunks never written: a mostly empty MINC label map holds few bytes
    data = named_volume_data(path)
    if path.suffix.lower() in (".mhd", ".nhdr") and (data is None or not data.is_file()):
        return ""  # data elsewhere (an absolute path, a list or pattern of files): its decoding decides
    files = [path, *([data] if data is not None else [])]
    held = sum(f.stat().st_size for f in files)
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        with open(path, "rb") as f:
            if b"bz" in f.read(4096).lower().partition(b"encoding:")[2][:16]:
                return ""
    try:
        pixel = sitk.Image([1, 1], reader.GetPixelID(), *([components] if components > 1 else []))
    except RuntimeError:
        return ""  # a pixel type with no size to count by: its decoding decides
    each = pixel.GetSizeOfPixelComponent()
    declared = int(np.prod(size, dtype=np.int64)) * components * each
    if declared <= DEFLATE_MOST * held:
        return ""
    shape = " x ".join(str(n) for n in size)
    return (
        f"its header declares {shape} voxels ({declared} bytes), more than its {held} bytes of data could hold even "
        "compressed: a corrupt or cut-off file"
    )


@per_file_version(maxsize=1024)
def volume_info(path: Path) -> tuple[int, int, int]:
    """(width, height, pages) of a volume file, from its header (no voxel data read); kept per file version.

    Raises:
        DataError: an unreadable file, or one `_layout` refuses.
    """
    kind = volume_format(path) or "volume"
    header = _nifti_header(path) if kind in _NIFTI else None
    if header is not None and header.version == 2:
        raise DataError(
            path,
            "a NIfTI-2 file, which SimpleITK (ITK's NIfTI reader) does not read: save it as NIfTI-1 (nibabel: "
            "Nifti1Image(np.asarray(img.dataobj), img.affine))",
        )
    if header is not None and (short := _nifti_short(path, header, quick=True)):
        raise DataError(path, short)  # one unreadable file, not a row per slice its header claims
    if header is not None and header.plain:  # ITK decompresses a whole .nii.gz for its header: 4 ms a 500 px slice
        size, components = header.dims[1 : 1 + header.dims[0]], 1
        pages = _layout(path, size, components, kind)
    else:
        reader, kind = _reader(path)
        size, components = tuple(int(n) for n in reader.GetSize()), int(reader.GetNumberOfComponents())
        pages = _layout(path, size, components, kind)  # complex or vector voxels refused first, by name
        if len(size) > 2 and (short := _claims_more(path, reader, size, components)):
            raise DataError(path, short)  # one unreadable file, not a row per slice its header claims
    if len(size) < 2:
        raise DataError(path, f"a {kind} file of one dimension ({size[0]} values), not an image")
    info = size[0], size[1], pages
    for colour, other in zip(("green", "blue"), colour_channels(path) or (), strict=False):
        if not other.is_file():
            raise DataError(
                path,
                f"its {colour} channel file {other.name} is missing (an RGB image nnU-Net split in three, as its "
                "dataset.json names the channels)",
            )
        if (theirs := volume_info(other)) != info:
            raise DataError(
                other,
                f"a colour channel of {path.name} (nnU-Net's RGB split, by its dataset.json) of "
                f"{theirs[0]}x{theirs[1]} pixels in {theirs[2]} page(s), where {path.name} has {info[0]}x{info[1]} in "
                f"{info[2]}",
            )
    return info


@per_file_version(maxsize=4)
def _voxels(path: Path) -> np.ndarray | DataError:
    """Every voxel of a volume file, (pages, H, W[, C]), or why they cannot be read; the last four files read are kept,
    their failures too (the pages of a sequence are read one after another: the whole file had been decompressed for
    each, and a file that fails was tried again for each of its pages)."""
    import SimpleITK as sitk

    w, h, pages = volume_info(path)  # a NIfTI's bytes checked against its header there
    reader, kind = _reader(path, header=False)
    data = named_volume_data(path)
    if data is not None and not data.is_file():
        return DataError(path, f"its voxel data file {data.name}, which its header names, is not there")
    try:
        arr = sitk.GetArrayFromImage(reader.Execute())  # (t, z, y, x[, c]) as far as the file has them
    except (RuntimeError, MemoryError) as e:
        why = _itk_reason(e) if isinstance(e, RuntimeError) else f"{w}x{h}x{pages} voxels do not fit in memory"
        return DataError(path, f"cannot read the voxels of this {kind} file ({why})")
    components = arr.shape[-1] if arr.size and arr.size != w * h * pages else 0
    arr = arr.reshape((pages, h, w, components) if components else (pages, h, w))
    arr.flags.writeable = False  # shared by every read of the file
    return arr


# each NIfTI datatype's bytes a voxel (nifti1.h's DT_ codes), by which ITK's reader (nifti1_io) sizes the voxels
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16}
_NIFTI_BYTES |= {1792: 16, 2048: 32, 2304: 4}


class _NiftiHeader(NamedTuple):
    dims: tuple[int, ...]  # NIfTI's dim[0..dim[0]]: the number of dimensions, then each one's size
    datatype: int
    bitpix: int
    offset: int  # vox_offset: where the voxels start in a .nii (0 in a pair's .img)
    version: int  # 1 (NIfTI-1 or Analyze 7.5: a header of 348 bytes) or 2 (540)

    @property
    def plain(self) -> bool:
        """Scalar voxels in two to four dimensions, sized as ITK sizes them (RGB, complex and vector voxels, whose
        components ITK reads otherwise, are left to ITK)."""
        return 2 <= self.dims[0] <= 4 and self.datatype not in (32, 128, 1792, 2048, 2304)

    @property
    def end(self) -> int:
        """The byte the voxels end at: vox_offset + the product of the dims x the datatype's bytes a voxel, as ITK reads
        them (bitpix / 8 for a datatype NIfTI does not name: a header whose bitpix said 8 of float64 voxels had passed
        with an eighth of them, ITK filling the rest with zeros)."""
        voxels = int(np.prod(self.dims[1:], dtype=np.int64))
        per = _NIFTI_BYTES.get(self.datatype)
        return self.offset + (voxels * per if per else voxels * self.bitpix // 8)


def _nifti_header(path: Path) -> _NiftiHeader | None:
    """The NIfTI-1 or NIfTI-2 header of a `.nii`, `.nii.gz` or pair `.hdr` from its first 540 bytes (either byte
    order; the NIfTI-1 / -2 standards' field offsets), None for a file whose first bytes are no such header (an
    Analyze 7.5 header is one: NIfTI-1 kept its fields) or that cannot be read (ITK's reading names the problem)."""
    import gzip
    import zlib

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = struct.unpack(order + "f", head[108:112])[0]
        elif size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not math.isfinite(offset) or offset < 0:
            return None  # a corrupt header: ITK's own reading names the problem
        n = max(0, min(int(dims[0]), 7))
        pair = path.suffix.lower() == ".hdr"
        sizes = (n, *(max(1, int(d)) for d in dims[1 : 1 + n]))
        return _NiftiHeader(sizes, datatype, bitpix, 0 if pair else int(offset), 1 if size == 348 else 2)
    return None


def _nifti_short(path: Path, header: _NiftiHeader | None, quick: bool = False) -> str:
    """Why a NIfTI file (or an Analyze / NIfTI pair's `.img`) holds fewer voxel bytes than its `header` declares, ""
    when it holds them all (or the header is None: ITK's reading decides): ITK reads a truncated NIfTI without a
    word (the missing voxels zero, or what was left in memory), so the voxels' end (`_NiftiHeader.end`) is checked
    against the bytes there, a `.nii.gz` decompressed to its end (1.8 ms a 500 px slice). With `quick` (for its size
    alone), a `.nii.gz` whose gzip trailer gives the length the header declares (modulo 2^32, RFC 1952's ISIZE) is
    not decompressed: a header that claims 20000 slices of a 452-byte file had become 20000 rows."""
    import gzip
    import zlib

    if header is None:
        return ""
    data = (named_volume_data(path) or path.with_suffix(".img")) if path.suffix.lower() == ".hdr" else path
    try:
        if data.name.lower().endswith(".gz"):
            with open(data, "rb") as f:
                f.seek(-4, os.SEEK_END)
                trailer = struct.unpack("<I", f.read(4))[0]
            if quick and trailer == header.end % 2**32:
                return ""
            with gzip.open(data, "rb") as f:
                length = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
        else:
            length = data.stat().st_size
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        return f"truncated or corrupt gzip data: the compressed NIfTI ends before its voxels do ({e})"
    except (OSError, struct.error) as e:
        return f"cannot read it ({e})"
    if length >= header.end:
        return ""
    where = f"its voxel data file {data.name} holds" if data != path else "the file holds"
    return f"truncated: its header's voxels end at byte {header.end}, {where} {length} bytes"


def _stacks(path: Path) -> list[np.ndarray]:
    """The voxels of a volume file (`_voxels`), with those of its green and blue files for nnU-Net's RGB split.

    Raises:
        DataError: one of them cannot be read.
    """
    stacks = [_voxels(p) for p in (path, *(colour_channels(path) or ()))]
    if failed := next((s for s in stacks if isinstance(s, DataError)), None):
        raise DataError(failed.path, failed.problem)
    return stacks


def volume_size(path: Path, page: int | None = None) -> tuple[int, int]:
    """(width, height) of a volume file's page `page` (0 when None), from its header.

    Raises:
        NoSuchFrame: the file has no such page.
        DataError: as `volume_info`.
    """
    w, h, pages = volume_info(path)
    if not 0 <= (page or 0) < pages:
        raise NoSuchFrame(path, f"has {pages} page(s); page {page} does not exist")
    return w, h


def header_voxels(path: Path) -> tuple[int, ...] | None:
    """The sizes of every dimension a NIfTI file's header declares, from its first bytes (nothing decompressed beyond
    them: a server checks an upload's voxel count by it before reading the file); None for other files."""
    header = _nifti_header(path) if volume_format(path) in _NIFTI else None
    return None if header is None else tuple(int(n) for n in header.dims[1 : 1 + header.dims[0]])


def read_volume_page(path: Path, page: int | None = None) -> np.ndarray:
    """Page `page` (0 when None) of a volume file as stored: (H, W) or (H, W, 3|4), its own dtype (uint8, int16,
    float32...).

    Raises:
        NoSuchFrame: the file has no such page.
        DataError: an unreadable file, or one `_layout` refuses.
    """
    from medcad.data.pixel_limit import max_pixels, too_large

    w, h = volume_size(path, page)
    k = page or 0
    if w * h > (limit := max_pixels()):
        raise too_large(path, w * h, limit, f"{w}x{h} ")
    stacks = _stacks(path)
    if len(stacks) == 1:
        return np.array(stacks[0][k])
    planes = [stack[k] for stack in stacks]
    if any(plane.ndim != 2 for plane in planes):
        raise DataError(path, "nnU-Net's colour channels (red, green, blue files) must each hold grey voxels")
    return np.stack(planes, axis=-1)


@per_file_version(maxsize=1024)
def _geometry(path: Path) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    reader, _ = _reader(path)
    return tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection())


def geometry_mismatch(mask: Path, image: Path) -> str:
    """How a label map's voxel grid differs from its image's (spacing, origin, direction in the two image axes), ""
    when it does not or either is no volume file: nnU-Net refuses such a pair (a label map drawn on another grid,
    or resampled); medcad pairs them pixel for pixel and says so (`data audit`).

    Raises:
        DataError: a file whose header cannot be read.
    """
    if not (volume_format(mask) and volume_format(image)):
        return ""
    try:
        is_, io_, id_ = _geometry(image)
    except DataError:
        return ""  # the image's own problem, named as its own
    ms, mo, md = _geometry(mask)
    dm, di = round(len(md) ** 0.5), round(len(id_) ** 0.5)
    axes = lambda d, n: [d[r * n + c] for r in range(2) for c in range(2)]  # noqa: E731 - the 2 x 2 in-plane block
    said = []
    if not np.allclose(ms[:2], is_[:2], rtol=1e-4, atol=1e-6):
        said.append(f"spacing {ms[0]:g} x {ms[1]:g} against {is_[0]:g} x {is_[1]:g}")
    if not np.allclose(mo[:2], io_[:2], rtol=1e-4, atol=1e-3):
        said.append(f"origin ({mo[0]:g}, {mo[1]:g}) against ({io_[0]:g}, {io_[1]:g})")
    if not np.allclose(axes(md, dm), axes(id_, di), atol=1e-4):
        said.append("direction")
    if not said:
        return ""
    return (
        f"its voxel grid is not its image's ({'; '.join(said)}): drawn on another grid or resampled? nnU-Net refuses "
        "such a pair; medcad lays it over its image pixel for pixel"
    )


@per_file_version(maxsize=64)
def stack_scale(path: Path) -> tuple[float, float, str] | None:
    """How a volume stack's values scale to 8 bits, decided over all its pages (and colour files) at once
    (`pixels.stack_scale`): (low, full scale, in words), for every page alike; None for a file of one page, or of
    8-bit values.

    Raises:
        DataError: the file cannot be read.
    """
    from medcad.data.pixels import stack_scale as scale_of

    pages = volume_info(path)[2]
    if pages == 1:
        return None
    stacks = _stacks(path)  # one file's voxels read as kept, without a copy; nnU-Net's colour files concatenated
    values = stacks[0].reshape(-1) if len(stacks) == 1 else np.concatenate([s.ravel() for s in stacks])
    return scale_of(values, path, pages)


def volume_notes(path: Path) -> list[str]:
    """What reading a volume file decided, for `data inspect` and `data audit`: its format and voxel order, its
    pages, and a rescale its header applies."""
    reader, kind = _reader(path)
    w, h, pages = volume_info(path)
    notes = [f"{kind} read by SimpleITK: {ORDER}"]
    if colour_channels(path):
        notes.append("red, green and blue from its _0000, _0001 and _0002 files (nnU-Net's RGB split, dataset.json)")
    if pages > 1:
        notes.append(f"{pages} pages (slices or frames), each an image")
        if scale := stack_scale(path):
            notes.append(scale[2])
    keys = set(reader.GetMetaDataKeys())
    if {"scl_slope", "scl_inter"} <= keys:
        slope, inter = (float(reader.GetMetaData(k) or 0) for k in ("scl_slope", "scl_inter"))
        if slope not in (0.0, 1.0) or inter != 0.0:
            notes.append(f"values rescaled by the header: x {slope:g} + {inter:g}")
    return notes


def mask_suffix(source: Path) -> str:
    """The suffix of a predicted mask written like `source` (`write_like`): its own where it is one file (`.nii.gz`,
    `.nii`, `.mha`, `.nrrd`, `.mnc`), else `.nii.gz` (a header with its voxels in another file)."""
    suffix = file_suffix(source)
    return suffix if suffix in ONE_FILE_SUFFIXES else ".nii.gz"


def write_like(source: Path, labels: np.ndarray, out: Path) -> None:
    """Write `labels`, predicted masks' class values (0 background, 1 lesion, or a label map's values), (H, W) for a
    one-page volume file or (pages, H, W) for every page of a stack, as a volume file like `source`: its dimensions
    (nnU-Net's slice of depth one stays one; a 2-D+t sequence's frames stay frames), voxel spacing, origin and
    direction copied, so that nnU-Net's and ITK's tools overlay it on `source`; atomically, in the format `out`'s
    name says (`x_mask.nii.gz`: `mask_suffix`).

    Raises:
        DataError: `source` cannot be read, or `out` cannot be written.
        ValueError: `labels` do not hold `source`'s pages of its width and height.
    """
    import SimpleITK as sitk

    from medcad.atomic import atomic_path

    reader, _ = _reader(source)
    voxels = tuple(reversed(reader.GetSize()))  # SimpleITK's array order: (..., pages, H, W)
    if labels.size != int(np.prod(voxels)) or labels.shape[-2:] != voxels[-2:]:
        raise ValueError(f"labels {labels.shape} do not fill {source.name}'s voxels {voxels}")
    try:  # one value a voxel: a 4-D array's last axis is not colour (a NIfTI cine (x, y, 1, t) had crashed predict)
        image = sitk.GetImageFromArray(np.ascontiguousarray(labels.reshape(voxels)), isVector=False)
        image.SetSpacing(reader.GetSpacing())
        image.SetOrigin(reader.GetOrigin())
        image.SetDirection(reader.GetDirection())
    except RuntimeError as e:  # ITK refuses the geometry: named, not a traceback after the stack was predicted
        raise DataError(out, f"cannot write the mask like {source.name} ({str(e).strip().splitlines()[-1]})") from e
    try:
        with atomic_path(out) as tmp:
            # a name ending in the whole suffix (`.nii.gz`: the temporary file ends in `.gz` alone), as ITK writes it
            written = tmp.with_name(tmp.name[: len(tmp.name) - len(tmp.suffix)] + file_suffix(out))
            try:
                sitk.WriteImage(image, str(written), useCompression=True)
                # ITK's NIfTI writer says a short write (a full disk) on stderr and raises nothing: checked here
                if volume_format(written) in _NIFTI:
                    header = _nifti_header(written)
                    if short := "its header cannot be read back" if header is None else _nifti_short(written, header):
                        raise OSError(short)
                if written != tmp:
                    os.replace(written, tmp)
            finally:
                if written != tmp:
                    written.unlink(missing_ok=True)
    except (OSError, RuntimeError) as e:
        raise DataError(out, f"cannot write the mask ({e})") from e
