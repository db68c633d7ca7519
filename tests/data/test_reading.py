"""Each kind of input that was once read wrong without a word, with the value it must decode to."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import noise_image, save, write_dicom
from medcad.data.io import describe_image, image_size, read_image
from medcad.data.layouts import load_manifest
from medcad.data.masks import decode_mask, read_mask
from medcad.errors import DataError

H, W = 48, 64
LESION = (slice(10, 30), slice(20, 50))  # 20 x 30 = 600 of 3072 pixels
FRACTION = 600 / (H * W)


def lesion(value, dtype=np.uint8, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype)
    m[LESION] = value
    return m


# 1. masks however a labelling or export tool writes them --------------------------------------------------------
def _write(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _palette_mask(path: Path) -> Path:
    im = Image.fromarray(lesion(1)).convert("P")
    im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1 = dark red, as VOC-style tools write
    im.save(path)
    return path


MASKS = {
    "0/1 8-bit PNG": lambda p: _write(p / "a.png", lesion(1)),
    "0/255 PNG": lambda p: _write(p / "b.png", lesion(255)),
    "16-bit 0/65535 PNG": lambda p: _write(p / "c.png", lesion(65535, np.uint16)),
    "16-bit 0/1 TIFF": lambda p: _write(p / "d.tif", lesion(1, np.uint16)),
    "palette PNG": lambda p: _palette_mask(p / "e.png"),
    "RGB red on black": lambda p: _write(p / "f.png", np.stack([lesion(200), lesion(0), lesion(0)], -1)),
    "RGBA alpha only": lambda p: _write(p / "g.png", np.dstack([np.zeros((H, W, 3), np.uint8), lesion(255)])),
    "RGBA one colour (an editor's red layer), lesion in alpha": lambda p: _write(
        p / "j.png", np.dstack([np.full((H, W), 255, np.uint8), np.zeros((H, W, 2), np.uint8), lesion(255)])
    ),
    "lossy JPEG 0/255": lambda p: _write(p / "h.jpg", lesion(255), quality=75),
    "label map 0/1/2 (two lesion classes)": lambda p: _write(
        p / "i.png", (lesion(1) + (np.arange(W) > 55) * 2).astype(np.uint8)
    ),
}


@pytest.mark.parametrize("kind", list(MASKS))
def test_mask_encodings_decode_to_the_drawn_lesion(tmp_path: Path, kind: str) -> None:
    path = MASKS[kind](tmp_path)
    mask, how = decode_mask(path)
    expected = lesion(True, bool)
    if kind.startswith("label map"):
        expected = expected | (np.arange(W) > 55)[None, :]
    assert mask.shape == (H, W)
    assert (mask != expected).mean() < 0.002, (kind, how)  # JPEG: a few edge pixels at most
    assert how.lesion_fraction == pytest.approx(expected.mean(), abs=0.002)


def test_empty_jpeg_mask_with_compression_noise_stays_empty(tmp_path: Path) -> None:
    noisy = np.zeros((H, W), np.uint8)
    noisy[::7, ::5] = 3  # what JPEG ringing leaves around nothing
    mask, how = decode_mask(_write(tmp_path / "n.jpg", noisy, quality=60))
    assert not mask.any() and "constant" in how.rule


def test_zero_one_mask_saved_as_jpeg_keeps_its_lesion(tmp_path: Path) -> None:
    """A 0/1 mask re-saved as JPEG (values 0..2 after compression) was read as constant, i.e. empty."""
    truth = np.zeros((256, 256), np.uint8)
    truth[60:170, 40:200] = 1
    mask, how = decode_mask(_write(tmp_path / "m.jpg", truth, quality=75))
    assert "0/1 values saved lossy" in how.rule
    assert 2 * (mask & (truth > 0)).sum() / (mask.sum() + truth.sum()) > 0.95


def test_pascal_vocs_void_border_is_background_not_lesion(tmp_path: Path) -> None:
    """A VOC class mask (palette PNG: 1 the object, 255 the void band around it, VOC's palette) reads the object
    alone, said in its rule (the band had been lesion: +23 % area on a VOC-style set); a palette mask of 0 and 255
    alone keeps 255 as its lesion."""
    palette = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192]
    index = np.zeros((20, 30), np.uint8)
    index[5:15, 8:20] = 1
    index[4, 8:20] = index[15, 8:20] = 255
    for name, arr in (("voc", index), ("binary", np.where(index == 1, 255, 0).astype(np.uint8))):
        im = Image.fromarray(arr, "P")
        im.putpalette(palette)
        im.save(tmp_path / f"{name}.png")
    mask, how = decode_mask(tmp_path / "voc.png")
    assert mask.sum() == 120 and "void" in how.rule and how.lesion_fraction == pytest.approx(120 / 600)
    mask, how = decode_mask(tmp_path / "binary.png")
    assert mask.sum() == 120 and "void" not in how.rule
    # a grey (or 16-bit) mask's 255 is its lesion, and so is a palette's own colour 255: only VOC's void is void
    grey = np.where(index == 1, 128, index).astype(np.uint8)  # 0, 128 and 255 as grey values
    save(tmp_path / "grey.png", grey)
    other = Image.fromarray(index, "P")
    other.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [255, 0, 0])
    other.save(tmp_path / "own.png")
    for name in ("grey", "own"):
        mask, how = decode_mask(tmp_path / f"{name}.png")
        assert mask.sum() == 120 + 24 and "void" not in how.rule, name


def test_masks_of_one_image_are_unioned_whatever_their_encoding(tmp_path: Path) -> None:
    a = _write(tmp_path / "x_mask.png", lesion(1))
    b = np.zeros((H, W), np.uint8)
    b[40:44, 0:4] = 255
    u = read_mask([a, _write(tmp_path / "x_mask_1.png", b)])
    assert u.sum() == 600 + 16


def test_all_empty_masks_stop_a_segmentation_run_naming_files_and_values(tmp_path, monkeypatch) -> None:
    from medcad.data.audit import audit
    from medcad.data.datasets import cached_masks, check_mask_content

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for k in range(4):
        save(root / "lesion" / f"{k}.png", noise_image(k))
        save(root / "lesion" / f"{k}_mask.png", np.zeros((32, 32), np.uint8))  # a broken export: all zero
    m = load_manifest(root)
    with pytest.raises(DataError, match=r"every mask decodes as empty.*0_mask.png: 1 values \(0\)"):
        check_mask_content(m, cached_masks(m, 16, progress=False))
    r = audit(m)
    assert r["all_masks_empty"] and len(r["empty_masks"]) == 4


def test_full_frame_masks_are_refused_too(tmp_path, monkeypatch) -> None:
    from medcad.data.datasets import cached_masks, check_mask_content

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for k in range(3):
        save(root / "x" / f"{k}.png", noise_image(k))
        save(root / "x" / f"{k}_mask.png", np.full((32, 32), 255, np.uint8))  # inverted: background painted
    m = load_manifest(root)
    with pytest.raises(DataError, match=r"100% of the masks paint the background as lesion \(100% cover the whole"):
        check_mask_content(m, cached_masks(m, 16, progress=False))


def test_inverted_masks_are_named_by_the_audit_and_refused_when_they_are_most(tmp_path, monkeypatch) -> None:
    """A black lesion on white (an export that inverts its masks) reads as a lesion over most of the frame and its
    whole border: the audit names such masks (it had flagged only masks over 95 % of the frame), and a set of them
    is refused before training, as a set of full-frame masks is. Real masks with big lesions are not named."""
    from medcad.data.audit import audit
    from medcad.data.datasets import cached_masks, check_mask_content

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for k in range(3):
        save(root / "x" / f"{k}.png", noise_image(k))
        inverted = np.full((32, 32), 255, np.uint8)
        inverted[8 : 20 + k, 6:20] = 0  # the lesion, black
        save(root / "x" / f"{k}_mask.png", inverted)
    big = np.zeros((32, 32), np.uint8)
    big[:, 2:30] = 255  # a close-up lesion over 7/8 of the frame, touching two sides
    save(root / "x" / "3.png", noise_image(3))
    save(root / "x" / "3_mask.png", big)
    m = load_manifest(root)
    named = [found[1] for found in audit(m, interface="none")["inverted_masks"]]
    assert sorted(named) == [f"x/{k}_mask.png" for k in range(3)]
    check_mask_content(m, cached_masks(m, 16, progress=False))  # 3 of 4: not most
    (root / "x" / "3_mask.png").unlink()
    (root / "x" / "3.png").unlink()
    m = load_manifest(root)
    with pytest.raises(DataError, match=r"100% of the masks paint the background as lesion \(most of the frame and"):
        check_mask_content(m, cached_masks(m, 16, progress=False))


def test_the_audit_names_masks_of_specks_alone_and_specks_beside_a_lesion(tmp_path, monkeypatch) -> None:
    """A mask whose only lesion is a stray pixel (a detection run draws no box from it) and one with a stray pixel
    beside its lesion (it raises HD95) are named apart; a mask of one clean lesion is not named."""
    from medcad.data.audit import audit

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    clean = np.zeros((32, 32), np.uint8)
    clean[8:20, 6:20] = 255
    stray = clean.copy()
    stray[28, 28] = 255
    alone = np.zeros((32, 32), np.uint8)
    alone[3, 4] = alone[20, 25:27] = 255
    for k, mask in enumerate((clean, stray, alone)):
        save(root / "x" / f"{k}.png", noise_image(k))
        save(root / "x" / f"{k}_mask.png", mask)
    save(root / "x" / "3.png", noise_image(3))  # a lesion in one file, a speck in its second: specks beside it
    save(root / "x" / "3_mask.png", clean)
    save(root / "x" / "3_mask_1.png", alone)
    r = audit(load_manifest(root), interface="none")
    assert r["speck_only_masks"] == [
        ["x/2.png", "x/2_mask.png", "its whole lesion is 2 region(s) of under 16 px (3 px; the first at x 4, y 3)"]
    ]
    assert r["speck_masks"] == [
        ["x/1.png", "x/1_mask.png", "1 of its 2 lesion regions is under 16 px (1 px; the first at x 28, y 28)"],
        [
            "x/3.png",
            "x/3_mask.png + x/3_mask_1.png",
            "2 of its 3 lesion regions are under 16 px (3 px; the first at x 4, y 3)",
        ],
    ]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(0.01, 0.6))
def test_lesion_components_are_scipys_eight_connected_components(seed: int, p: float) -> None:
    from scipy import ndimage

    from medcad.data.masks import lesion_components

    mask = np.random.default_rng(seed).random((24, 30)) < p
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = ndimage.find_objects(labelled)
    want = sorted(
        (b[1].start, b[0].start, b[1].stop - b[1].start, b[0].stop - b[0].start, int((labelled == k + 1).sum()))
        for k, b in enumerate(boxes)
    )
    assert sorted(map(tuple, lesion_components(mask).tolist())) == want


# 2. orientation tags -----------------------------------------------------------------------------------------------
def _exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_everywhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    upright = np.zeros((H, W, 3), np.uint8)  # what the annotator saw: a bright block top-left
    upright[:10, :20] = 250
    stored = np.rot90(upright, 1).copy()  # a camera stores the pixels rotated and tags orientation 6
    path = _exif_jpeg(tmp_path / "ds" / "img" / "a.jpg", stored, 6)
    assert image_size(path) == (W, H)
    out = read_image(path)
    assert out.shape == (H, W, 3)
    assert out[:10, :20].mean() > 230 and out[15:, 25:].mean() < 20
    assert describe_image(path) == ["EXIF orientation 6 applied"]
    # the mask was drawn upright: it matches the image, no size error
    _write(tmp_path / "ds" / "img" / "a_mask.png", upright[..., 0])
    from medcad.data.datasets import read_sample_mask

    m = load_manifest(tmp_path / "ds")
    assert read_sample_mask(m, 0).shape == (H, W)
    from medcad.data.io import decode_pil  # a reduced-scale JPEG decode (pairing's thumbnails) is oriented too

    assert decode_pil(path, 16)[0].shape[:2] in ((H, W), (H // 2, W // 2), (H // 4, W // 4))


def _exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # with the "Exif\0\0" header


def _raw_profile(orientation: int) -> str:
    """ImageMagick's way of keeping EXIF in a PNG: hex text in a "Raw profile type exif" text chunk."""
    data = _exif_bytes(orientation)
    return f"\nexif\n{len(data)}\n{data.hex()}\n"


def _xmp(orientation: int) -> str:
    return f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="{orientation}"/></x:xmpmeta>'


def _png_chunk_after_the_pixels(path: Path, kind: bytes, data: bytes) -> Path:
    """Insert a chunk after a PNG's image data, where some writers put metadata (Pillow writes it before)."""
    import struct
    import zlib

    raw = path.read_bytes()
    end = raw.rindex(b"IEND") - 4
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(raw[:end] + chunk + raw[end:])
    return path


def test_png_orientation_wherever_it_is_kept_without_decoding_untagged_files(tmp_path: Path) -> None:
    """A PNG's orientation applies as Pillow reads it (an eXIf chunk, ImageMagick's raw EXIF profile, XMP), before or
    after the pixels; an untagged PNG's header read decodes no pixels (Pillow's PNG getexif decodes the whole image
    to look for late metadata); a corrupt PNG with late metadata is an error, not half-decoded pixels."""
    from PIL.PngImagePlugin import PngInfo

    upright = np.zeros((H, W, 3), np.uint8)
    upright[:10, :20] = 250
    stored = np.rot90(upright, 1).copy()
    texts = {"raw": ("Raw profile type exif", _raw_profile(6)), "xmp": ("XML:com.adobe.xmp", _xmp(6))}
    files = []
    for name, (key, text) in texts.items():
        early, late = PngInfo(), tmp_path / f"{name}_late.png"
        early.add_itxt(key, text) if name == "xmp" else early.add_text(key, text)
        Image.fromarray(stored).save(tmp_path / f"{name}_early.png", pnginfo=early)
        Image.fromarray(stored).save(late)
        data = key.encode() + (b"\0\0\0\0\0" if name == "xmp" else b"\0") + text.encode()
        files += [
            tmp_path / f"{name}_early.png",
            _png_chunk_after_the_pixels(late, b"iTXt" if name == "xmp" else b"tEXt", data),
        ]
    Image.fromarray(stored).save(tmp_path / "exif_early.png", exif=_exif_bytes(6))
    Image.fromarray(stored).save(tmp_path / "exif_late.png")
    files += [
        tmp_path / "exif_early.png",
        _png_chunk_after_the_pixels(tmp_path / "exif_late.png", b"eXIf", _exif_bytes(6)[6:]),
    ]
    for path in files:
        assert image_size(path) == (W, H) and describe_image(path) == ["EXIF orientation 6 applied"], path.name
        assert read_image(path)[:10, :20].mean() > 230, path.name
    plain = _write(tmp_path / "plain.png", stored)
    decoded = set()  # the files whose pixels were decoded (a spy on Pillow's real load)
    real_load = Image.Image.load
    import unittest.mock as um

    with um.patch.object(Image.Image, "load", lambda im: decoded.add(Path(im.filename).name) or real_load(im)):
        for path in [plain, *files]:
            image_size(path)
    assert decoded == {p.name for p in files if "late" in p.name}
    noisy = tmp_path / "corrupt_late.png"
    Image.fromarray(noise_image(1, 64)).save(noisy, compress_level=0)
    raw = bytearray(noisy.read_bytes())
    start = raw.index(b"IDAT") + 4
    raw[start + 2000 : start + 2400] = bytes(400)  # a stretch of the image data overwritten
    noisy.write_bytes(bytes(raw))
    _png_chunk_after_the_pixels(noisy, b"eXIf", _exif_bytes(6)[6:])
    with pytest.raises(DataError, match="corrupt_late.png"):
        read_image(noisy)


def test_same_content_same_pixels_across_formats_and_bit_depths(tmp_path: Path) -> None:
    ref = noise_image(3, 40)
    grey = ref[..., 0]
    files = {
        "png": _write(tmp_path / "a.png", ref),
        "bmp": _write(tmp_path / "a.bmp", ref),
        "tif": _write(tmp_path / "a.tif", ref),
        "rgba": _write(tmp_path / "b.png", np.dstack([ref, np.full(grey.shape, 255, np.uint8)])),
    }
    for name, p in files.items():
        np.testing.assert_array_equal(read_image(p), ref, err_msg=name)
    g16 = _write(tmp_path / "g16.png", grey.astype(np.uint16) * 257)  # 8-bit content saved as 16 bit
    np.testing.assert_array_equal(read_image(g16)[..., 0], grey)
    dcm = write_dicom(tmp_path / "g.dcm", (grey.astype(np.uint16) * 257)[None])
    np.testing.assert_array_equal(read_image(dcm)[..., 0], grey)


# 3. colour ultrasound DICOM ------------------------------------------------------------------------------------------
def _colour_dicom(path: Path, rgb: np.ndarray, photometric: str) -> Path:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 3, 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    if photometric == "YBR_FULL":
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    else:  # YBR_FULL_422 is what JPEG baseline ultrasound carries
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_colour_doppler_dicom_keeps_its_colours(tmp_path: Path, photometric: str) -> None:
    rgb = np.full((32, 48, 3), 40, np.uint8)  # grey B-mode background
    rgb[8:24, 16:40] = (220, 30, 30)  # a red Doppler patch
    out = read_image(_colour_dicom(tmp_path / "us.dcm", rgb, photometric))
    patch = out[12:20, 20:36].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(patch, (220, 30, 30), atol=6)
    assert abs(float(out[:4, :4].mean()) - 40) < 4


# 4. DICOM files named as scanners name them -----------------------------------------------------------------------
def test_suffixless_dicom_files_are_found(tmp_path: Path) -> None:
    frames = (np.arange(2 * 16 * 20).reshape(2, 16, 20) * 20).astype(np.uint16)
    write_dicom(tmp_path / "exam" / "IM00001", frames)
    write_dicom(tmp_path / "exam" / "1.2.840.113619.2.5", frames[:1])
    (tmp_path / "exam" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"index")
    (tmp_path / "exam" / "notes.txt").write_text("not an image")
    m = load_manifest(tmp_path)
    assert sorted(m.keys) == ["exam/1.2.840.113619.2.5", "exam/IM00001#0", "exam/IM00001#1"]
    assert not m.problems
    assert read_image(m.image_path(m.keys.index("exam/IM00001#1")), frame=1).shape == (16, 20, 3)


# 5. manifests as spreadsheets save them ------------------------------------------------------------------------------
def test_spreadsheet_manifest_with_bom_semicolons_and_spaced_headers(tmp_path: Path) -> None:
    for k in range(4):
        save(tmp_path / "img" / f"{k}.png", noise_image(k))
    text = "Image Path;Diagnosis;Patient ID;Study UID\n" + "".join(
        f'"img/{k}.png";{"benign" if k % 2 else "malignant"};P{k // 2};1.2.{k}\n' for k in range(4)
    )
    (tmp_path / "list.csv").write_bytes("\ufeff".encode() + text.encode("utf-8"))
    m = load_manifest(tmp_path / "list.csv")
    assert len(m) == 4 and not m.problems
    assert m.table["patient"].tolist() == ["P0", "P0", "P1", "P1"]
    assert m.table["label"].tolist() == ["malignant", "benign", "malignant", "benign"]
    notes = " ".join(m.notes)
    assert "'Patient ID' read as 'patient'" in notes and "'Study UID' looks like a patient, lesion or study id" in notes


def test_patient_like_column_not_used_is_named(tmp_path: Path) -> None:
    save(tmp_path / "a.png", noise_image(0))
    (tmp_path / "m.csv").write_text("file,label,MRN\na.png,x,123\n", encoding="cp1252")
    m = load_manifest(tmp_path / "m.csv")
    assert any("'MRN' looks like a patient, lesion or study id" in n and "do NOT group" in n for n in m.notes)


def test_manifest_without_image_column_says_which_headers_it_accepts(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("picture,label\na.png,x\n")
    with pytest.raises(DataError, match="no image column.*case, spaces and '_' ignored.*found 'picture', 'label'"):
        load_manifest(tmp_path / "m.csv")


# 6. segmentation sets in two sibling folders under any names ---------------------------------------------------
def _paired(root: Path, images: str, masks: str, mask_name=lambda s: s, ext=".png") -> Path:
    for k in range(6):
        save(root / images / f"{k:03d}.png", noise_image(k))
        save(
            root / masks / f"{mask_name(f'{k:03d}')}{ext}",
            lesion(255, shape=(32, 32)) if k % 2 else lesion(0, shape=(32, 32)),
        )
    return root


@pytest.mark.parametrize(
    ("images", "masks", "mask_name"),
    [
        ("Original", "Ground Truth", lambda s: s),  # CVC-ClinicDB
        ("frames", "labels", lambda s: f"{s}_seg"),
        ("PNG", "annotations", lambda s: f"{s}_mask"),
    ],
)
def test_paired_folders_under_any_names(tmp_path: Path, images: str, masks: str, mask_name) -> None:
    m = load_manifest(_paired(tmp_path, images, masks, mask_name))
    assert m.layout == "images-masks" and len(m) == 6
    assert all(p.startswith(f"{images}/") for p in m.table["image"])
    assert all(p.startswith(f"{masks}/") for p in m.table["mask"])
    assert f"images in '{images}/', masks in '{masks}/'" in m.notes[0]


def test_paired_folders_can_be_named(tmp_path: Path) -> None:
    root = _paired(tmp_path, "a", "b")
    m = load_manifest(root, images="a", masks="b")
    assert m.layout == "images-masks" and m.table["mask"].str.startswith("b/").all()
    with pytest.raises(DataError, match="folder not found"):
        load_manifest(root, images="a", masks="nope")


def test_class_folders_with_shared_numbering_stay_classes(tmp_path: Path) -> None:
    for label in ("benign", "malignant"):
        for k in range(5):
            save(tmp_path / label / f"{k}.png", noise_image(k + (10 if label == "benign" else 30)))
    m = load_manifest(tmp_path)
    assert m.layout == "folders" and m.labels == ["benign", "malignant"]
    assert not any("share" in n for n in m.notes)


def test_mask_folder_beside_class_folders_gets_a_note(tmp_path: Path) -> None:
    """Three folders (so no single pair is certain): frames, masks and an unrelated class folder."""
    _paired(tmp_path, "frames", "lesions")
    for k in range(3):
        save(tmp_path / "frames2" / f"x{k}.png", noise_image(50 + k))
    save(tmp_path / "frames2" / "000.png", noise_image(60))
    m = load_manifest(tmp_path, layout="folders")
    assert any("share 6 file names" in n and "--images frames --masks lesions" in n for n in m.notes)


def test_results_are_written_readable_as_other_files(tmp_path: Path) -> None:
    """CSV and JSON results had mkstemp's owner-only 0600 while the images beside them were 0644."""
    import os

    from medcad.atomic import atomic_write_text

    atomic_write_text(tmp_path / "predictions.csv", "image\n")
    (tmp_path / "plain.csv").write_text("image\n")
    assert os.stat(tmp_path / "predictions.csv").st_mode == os.stat(tmp_path / "plain.csv").st_mode


# animations read frame by frame ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animation_frames_in_any_order_match_a_fresh_decode(tmp_path: Path, suffix: str) -> None:
    """Frames of an animated GIF / WebP / PNG (APNG; its frames beyond the first had been dropped without a word)
    read in any order (the open file is kept between reads, so that reading every
    frame is linear, not quadratic) decode as a file opened for that frame alone does; a file rewritten between
    reads is read anew."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = tmp_path / f"clip{suffix}"

    def write(seed: int) -> list[np.ndarray]:
        frames = [Image.fromarray(noise_image(seed + k, 40)) for k in range(8)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, lossless=True)
        out = []
        for k in range(8):  # the reference: the file opened anew for each frame
            with Image.open(path) as im:
                im.seek(k)
                out.append(np.asarray(im.convert("RGB")))
        return out

    ref = write(0)

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(0, 7), min_size=1, max_size=20))
    def check(order: list[int]) -> None:
        for k in order:
            np.testing.assert_array_equal(read_image(path, frame=k), ref[k])
            assert image_size(path, k) == (40, 40)  # the canvas, without decoding up to the frame

    check()
    assert len(load_manifest(tmp_path).keys) == 8  # one row per frame
    ref = write(100)  # rewritten (its time set apart from the first's, whatever the clock's resolution)
    os.utime(path, ns=(10**9, 10**9))
    np.testing.assert_array_equal(read_image(path, frame=5), ref[5])


def test_isic_ground_truth_one_hot_columns_and_names_without_extension(tmp_path: Path) -> None:
    """ISIC's GroundTruth.csv: `image` names without their extension and one-hot diagnosis columns of 0.0/1.0. It
    had read no label ('other columns kept as metadata') and found no file."""
    rows = ["image,MEL,NV,BCC"]
    onehots = ["1.0,0.0,0.0", "0.0,1.0,0.0", "0.0,1.0,0.0", "0.0,0.0,1.0", "1.0,1.0,0.0", "0.0,0.0,0.0"]
    for k, cells in enumerate(onehots):
        save(tmp_path / f"ISIC_00{k}.jpg", noise_image(k))
        rows.append(f"ISIC_00{k},{cells}")
    (tmp_path / "GroundTruth.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path / "GroundTruth.csv")
    assert m.table["image"].tolist() == [f"ISIC_00{k}.jpg" for k in range(6)] and not m.problems
    assert m.table["label"].tolist() == ["MEL", "NV", "NV", "BCC", "MEL|NV", ""]
    notes = " ".join(m.notes)
    assert "one-hot columns MEL, NV, BCC" in notes and "4 image(s) with one, 1 with several" in notes
    assert "6 path(s) in GroundTruth.csv name a file that is written without its extension" in notes


@pytest.mark.parametrize(
    "yes,no", [("TRUE", "FALSE"), ("True", "False"), ("yes", "no"), ("Y", "N"), ("x", ""), ("1", ""), ("1", "0")]
)
def test_one_hot_findings_as_spreadsheets_write_them(tmp_path: Path, yes: str, no: str) -> None:
    """One column per finding with Excel's booleans (TRUE/FALSE), yes/no, or a mark beside empty cells reads the
    same findings as 0/1 (they had read no label at all, and multilabel training stopped: "found none"); an .xlsx of
    real boolean cells too."""
    import openpyxl

    flags = [(1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (0, 0, 0), (1, 0, 1)]
    expected = ["mass", "malignant", "mass|malignant", "large", "", "mass|large"]
    rows = ["image,patient,mass,malignant,large"]
    for k, f in enumerate(flags):
        save(tmp_path / f"{k}.png", noise_image(k))
        rows.append(f"{k}.png,P{k}," + ",".join(yes if v else no for v in f))
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path / "m.csv")
    assert m.table["label"].tolist() == expected and "one-hot columns mass, malignant, large" in " ".join(m.notes)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["image", "patient", "mass", "malignant", "large"])
    for k, f in enumerate(flags):
        sheet.append([f"{k}.png", f"P{k}", *(bool(v) for v in f)])
    book.save(tmp_path / "m.xlsx")
    assert load_manifest(tmp_path / "m.xlsx").table["label"].tolist() == expected
    # a column of another vocabulary beside the findings is metadata (a yes/no 'reviewed' beside 0/1 findings)
    other = "yes" if yes == "1" else "1"  # a true word of another vocabulary than the findings
    rows = ["image,mass,malignant,reviewed"] + [
        f"{k}.png,{yes if f[0] else no},{yes if f[1] else no},{other if k % 2 else ''}" for k, f in enumerate(flags)
    ]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest(tmp_path / "r.csv")
    assert m.table["label"].tolist() == ["mass", "malignant", "mass|malignant", "", "", "mass"]


@settings(max_examples=25, deadline=None)
@given(
    name=st.text(alphabet="abcéèüñ ØK_-", min_size=1, max_size=10).filter(lambda t: t.strip(" ") == t),
    upper=st.booleans(),
    form=st.sampled_from(["NFC", "NFD"]),
    ext=st.sampled_from([".png", ".PNG", ".jpg"]),
)
def test_a_path_spelled_in_another_case_or_unicode_form_finds_its_file(name, upper, form, ext) -> None:
    """Manifests made on Windows or macOS name files in another letter case or Unicode form than the disk holds
    (`IMG.JPG`, é as e + accent): read as that file with a note; 'file not found' had shown two names that look the
    same."""
    import tempfile
    import unicodedata

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        on_disk = unicodedata.normalize("NFC", f"{name}{ext}")
        save(root / "imgs" / on_disk, noise_image(0))
        written = unicodedata.normalize(form, f"IMGS/{name.upper()}{ext}" if upper else f"imgs/{name}{ext}")
        (root / "m.csv").write_text(f"image,label\n{written},a\n", encoding="utf-8")
        m = load_manifest(root / "m.csv")
        assert not m.problems, m.problems
        assert m.table["image"].tolist() == [f"imgs/{on_disk}"]
        respelled = written != f"imgs/{on_disk}"
        said = [n for n in m.notes if "differs in letter case or Unicode form" in n]
        assert bool(said) == respelled and (not said or said[0].startswith("1 path(s)"))  # once per path
