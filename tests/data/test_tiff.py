"""TIFFs of every sample type and layout read to the samples written (tifffile writes them as scientific tools do),
or named; as Pillow alone read them, 188 of 252 kinds of this matrix were refused and 11 misread without a word."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medcad.data.io import decode_pil, describe_image, image_pages, image_size, read_image
from medcad.data.pixels import integer_scale, to_rgb
from medcad.errors import DataError

H, W = 12, 10
DTYPES = ["u1", "u2", "u4", "i1", "i2", "i4", "f2", "f4", "f8"]
ROTATIONS = {1: 0, 3: 2, 6: -1, 8: 1}  # TIFF orientation -> np.rot90's k that displays it


def _samples(rng: np.random.Generator, dtype: np.dtype, channels: int) -> np.ndarray:
    if dtype.kind == "f":
        return rng.random((H, W, channels)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (H, W, channels), endpoint=True).astype(dtype)


def _as_displayed(data: np.ndarray, path: Path) -> np.ndarray:
    """medcad's bit-depth policy (medcad.data.pixels) applied to the samples as written, alpha dropped."""
    colour = data[..., :3] if data.shape[2] >= 3 else data[..., :1]
    scale = integer_scale(colour, path, "TIFF")
    return to_rgb(colour) if scale is None else to_rgb(colour, scale[1], scale[0])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([1, 2, 3, 4]),
    planar=st.booleans(),
    big_endian=st.booleans(),
    compression=st.sampled_from([None, "zlib", "lzma"]),
    bigtiff=st.booleans(),
    tiled=st.booleans(),
    orientation=st.sampled_from(sorted(ROTATIONS)),
    seed=st.integers(0, 2**16),
)
def test_every_sample_type_and_layout_reads_to_the_samples_written(
    tmp_path: Path, dtype, channels, planar, big_endian, compression, bigtiff, tiled, orientation, seed
) -> None:
    """16-bit planar RGB had come out as noise, big-endian Deflate 16/32-bit grey as other values, and float64,
    float16, float RGB, 32-bit RGB, grey + alpha beyond 8 bits and big-endian BigTIFF had been refused."""
    dt = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
    data = _samples(np.random.default_rng(seed), dt, channels)
    stored = np.ascontiguousarray(np.moveaxis(data, -1, 0)) if planar and channels > 1 else data
    kwargs = {
        "photometric": "rgb" if channels >= 3 else "minisblack",
        "compression": compression,
        "byteorder": ">" if big_endian else "<",
        "bigtiff": bigtiff,
        "extratags": [(274, "H", 1, orientation, True)],
    }
    if channels in (2, 4):
        kwargs["extrasamples"] = ["unassalpha"]
    if planar and channels > 1:
        kwargs["planarconfig"] = "separate"
    if tiled:
        kwargs["tile"] = (16, 16)
    path = tmp_path / f"{seed}.tif"
    tifffile.imwrite(path, stored if channels > 1 else stored[..., 0], **kwargs)
    expected = np.rot90(_as_displayed(data, path), ROTATIONS[orientation])
    got = read_image(path)
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert image_size(path) == (expected.shape[1], expected.shape[0])


def test_miniswhite_palette_and_alpha_as_viewers_show_them(tmp_path: Path) -> None:
    """MINISWHITE samples inverted (0 is white), 8- and 16-bit; a palette page's colours, or its indices for a label
    map; an alpha sample kept where asked for (masks) and dropped for images."""
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (H, W), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "white8.tif", grey8, photometric="miniswhite")
    assert np.array_equal(read_image(tmp_path / "white8.tif")[..., 0], 255 - grey8)
    grey16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "white16.tif", grey16, photometric="miniswhite", compression="zlib")
    expected = _as_displayed((65535 - grey16)[..., None], tmp_path / "white16.tif")
    assert np.array_equal(read_image(tmp_path / "white16.tif"), expected)
    assert "MINISWHITE: values inverted (0 is white)" in describe_image(tmp_path / "white16.tif")

    index = rng.integers(0, 4, (H, W), dtype=np.uint8)
    colours = np.zeros((3, 256), np.uint16)
    colours[:, :4] = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]).T * 257
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=colours, compression="zlib")
    rgb = colours[:, index].transpose(1, 2, 0) // 257
    assert np.array_equal(read_image(tmp_path / "palette.tif"), rgb)
    assert np.array_equal(decode_pil(tmp_path / "palette.tif", None, palette_indices=True)[0], index)

    grey_alpha = rng.integers(0, 65536, (H, W, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "la.tif", grey_alpha, photometric="minisblack", extrasamples=["assocalpha"])
    assert decode_pil(tmp_path / "la.tif", None, keep_alpha=True)[0].shape == (H, W, 2)
    assert decode_pil(tmp_path / "la.tif", None)[0].shape == (H, W)
    notes = describe_image(tmp_path / "la.tif")
    assert "alpha channel dropped" in notes and any("16-bit" in n for n in notes)


def test_compressions_only_pillow_decodes_here_stay_pillows(tmp_path: Path) -> None:
    """LZW and JPEG TIFFs (tifffile decodes them only with imagecodecs) are read by Pillow, as before; a TIFF that
    neither reader decodes (a compression only imagecodecs has) is named, not called unknown or corrupt."""
    rgb = (np.arange(H * W * 3) % 251).astype(np.uint8).reshape(H, W, 3)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "lzw.tif"), rgb)
    Image.fromarray(rgb).save(tmp_path / "jpeg.tif", compression="jpeg", quality=95)
    assert np.abs(read_image(tmp_path / "jpeg.tif").astype(int) - rgb).mean() < 8
    tifffile.imwrite(tmp_path / "zstd.tif", rgb, photometric="rgb")
    with tifffile.TiffFile(tmp_path / "zstd.tif") as tif:
        offset = tif.pages[0].tags[259].valueoffset  # Compression
    data = bytearray((tmp_path / "zstd.tif").read_bytes())
    data[offset : offset + 2] = struct.pack("<H", 50000)  # Zstandard: imagecodecs only
    (tmp_path / "zstd.tif").write_bytes(bytes(data))
    with pytest.raises(DataError, match="a TIFF that neither of medcad's TIFF readers decodes"):
        read_image(tmp_path / "zstd.tif")


def test_pages_of_a_tiff_pillow_cannot_open(tmp_path: Path) -> None:
    """A big-endian BigTIFF stack of float64 pages (no page of it readable by Pillow) is one image per page, its
    thumbnail page named as one, each page read and sized as written; a page past the last is named."""
    rng = np.random.default_rng(1)
    stack = rng.random((3, H, W))
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path, bigtiff=True, byteorder=">") as tif:
        for page in stack:
            tif.write(page)
        tif.write(stack[0, ::4, ::4], subfiletype=1)
    assert image_pages(path) == ([0, 1, 2], [3])
    for k, page in enumerate(stack):
        assert np.array_equal(read_image(path, k), _as_displayed(page[..., None], path))
    with pytest.raises(DataError, match="has 4 page\\(s\\); page 7 does not exist"):
        read_image(path, 7)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack[0])
    assert np.array_equal(read_image_bytes(tmp_path, buf.getvalue()), _as_displayed(stack[0][..., None], path))


def read_image_bytes(folder: Path, data: bytes) -> np.ndarray:
    """An upload's decode, as `medcad serve` does it."""
    from medcad.inference.uploads import Limits, decode_upload

    return decode_upload(data, folder, Limits()).rgb


def test_a_miniswhite_mask_is_read_by_its_stored_values(tmp_path: Path) -> None:
    """ImageJ writes a binary mask with its default inverting LUT as WhiteIsZero (the foreground 255, shown black),
    and tifffile a bool mask as bilevel WhiteIsZero: read as displayed, either mask's lesion was its background (a
    set of them refused as inverted). Masks and label maps are read by their stored values, said in the mask's rule,
    whichever reader decodes the file (Pillow for LZW); the same file as an image is shown as viewers show it."""
    from medcad.data.labelmaps import parse_mask_labels, read_label_map
    from medcad.data.masks import decode_mask

    lesion = np.zeros((H, W), bool)
    lesion[3:7, 2:6] = True
    tifffile.imwrite(tmp_path / "tifffile_bool.tif", lesion)  # bilevel, WhiteIsZero
    tifffile.imwrite(tmp_path / "imagej.tif", lesion.astype(np.uint8) * 255, photometric="miniswhite")
    Image.fromarray(lesion.astype(np.uint8) * 255).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    with tifffile.TiffFile(tmp_path / "lzw.tif") as tif:
        offset = tif.pages[0].tags[262].valueoffset  # PhotometricInterpretation: BlackIsZero -> WhiteIsZero
    data = bytearray((tmp_path / "lzw.tif").read_bytes())
    data[offset : offset + 2] = struct.pack("<H", 0)
    (tmp_path / "lzw.tif").write_bytes(bytes(data))
    for name in ("tifffile_bool.tif", "imagej.tif", "lzw.tif"):
        mask, how = decode_mask(tmp_path / name)
        assert np.array_equal(mask, lesion) and how.rule.startswith("MINISWHITE TIFF read by its stored values"), name
        assert (read_image(tmp_path / name)[lesion] == 0).all(), name  # shown black, as ImageJ shows it
    labels = np.zeros((H, W), np.uint8)
    labels[lesion], labels[8:10, 6:9] = 2, 1
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="miniswhite")
    assert np.array_equal(read_label_map([tmp_path / "labels.tif"], parse_mask_labels("1=cyst,2=stone")), labels)


def _set_tag(path: Path, tag: int, value: int) -> None:
    """Rewrite a short tag of page 0 in place (how a file another tool wrote is made here)."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags[tag].valueoffset
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = struct.pack("<H", value)
    path.write_bytes(bytes(data))


def test_either_reader_gives_the_same_pixels_and_notes(tmp_path: Path) -> None:
    """Files a reviewer found read differently by the two readers, or not as before: 16-bit MINISWHITE inverted
    whether LZW (Pillow, which does not invert 16-bit) or not; premultiplied alpha divided out, as Pillow did; a
    bilevel label map as 0 / 255 whatever its compression; the same notes (orientation, MINISWHITE) from either."""
    from medcad.data.labelmaps import _label_plane, parse_mask_labels

    grey = (np.arange(H * W) * 517 % 65536).astype(np.uint16).reshape(H, W)
    tifffile.imwrite(tmp_path / "white16.tif", grey, photometric="miniswhite", extratags=[(274, "H", 1, 6, True)])
    Image.fromarray(grey).save(tmp_path / "white16_lzw.tif", compression="tiff_lzw")
    _set_tag(tmp_path / "white16_lzw.tif", 262, 0)
    a, b = read_image(tmp_path / "white16.tif"), read_image(tmp_path / "white16_lzw.tif")
    assert np.array_equal(np.rot90(b, -1), a) and a.mean() > 0  # inverted both; the first turned by its tag
    assert "MINISWHITE: values inverted (0 is white)" in describe_image(tmp_path / "white16_lzw.tif")
    pages = tmp_path / "pages_lzw.tif"  # page 0 MINISWHITE, page 1 not: each page by its own interpretation
    Image.fromarray(grey).save(pages, compression="tiff_lzw", save_all=True, append_images=[Image.fromarray(grey)])
    _set_tag(pages, 262, 0)
    assert np.array_equal(read_image(pages, 0), b) and np.array_equal(read_image(pages, 1), 255 - b)
    assert describe_image(tmp_path / "white16.tif")[0] == "TIFF orientation 6 applied"

    rgb = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = np.full((H, W), 128, np.uint8)
    alpha[:, :3] = 255
    premultiplied = (rgb.astype(int) * alpha[..., None] // 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "assoc.tif", np.dstack([premultiplied, alpha]), extrasamples=["assocalpha"])
    got = read_image(tmp_path / "assoc.tif").astype(int)
    assert np.abs(got - rgb).max() <= 2 and "colours divided by their premultiplied alpha" in describe_image(
        tmp_path / "assoc.tif"
    )

    bilevel = np.zeros((H, W), bool)
    bilevel[2:6, 3:8] = True
    classes = parse_mask_labels("255=lesion")
    for compression in (None, "group4"):
        path = tmp_path / f"labels_{compression}.tif"
        Image.fromarray(bilevel).save(path, compression=compression)
        assert np.array_equal(np.unique(_label_plane(path, classes)), [0, 255]), compression


def test_a_tiff_without_a_page_or_with_its_data_cut_is_named(tmp_path: Path) -> None:
    """A write cut off before the first page (a TIFF header alone) is named as unreadable by every reader of the
    package, not a traceback nor 'page 0 does not exist'; a page whose data is cut still gets its header's notes
    (`describe_image` reads no pixels of an 8-bit page) and is named truncated when read."""
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"II*\x00\x00\x00\x00\x00")
    assert image_pages(empty) == ([0], [])
    for read in (read_image, image_size):
        with pytest.raises(DataError, match=r"neither of medcad's TIFF readers decodes \(tifffile: tifffile finds no"):
            read(empty)
    for compression in (None, "zlib"):
        cut = tmp_path / f"cut_{compression}.tif"
        turned = [(274, "H", 1, 3, True)]
        tifffile.imwrite(cut, np.full((200, 300), 7, np.uint8), compression=compression, extratags=turned)
        cut.write_bytes(cut.read_bytes()[: 20000 if compression is None else 300])
        assert describe_image(cut) == ["TIFF orientation 3 applied"]
        with pytest.raises(DataError, match="truncated TIFF"):
            read_image(cut)


def test_an_rgba_mask_without_its_extra_samples_tag_and_a_cmyk_tiff(tmp_path: Path) -> None:
    """An RGBA mask whose file lacks the ExtraSamples tag has its fourth sample as alpha, as Pillow reads it (one
    colour, the lesion in alpha: it had read as all lesion); a CMYK TIFF is described as Pillow converts it."""
    from medcad.data.masks import decode_mask

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[8:24, 8:24, 3] = 255, 255
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags[338].offset  # the ExtraSamples entry, renamed Software (305): the file has none
    data = bytearray(path.read_bytes())
    data[entry : entry + 2] = struct.pack("<H", 305)
    path.write_bytes(bytes(data))
    mask, how = decode_mask(path)
    assert mask.mean() == 0.25 and how.rule.startswith("alpha channel")
    Image.new("CMYK", (20, 20), (10, 20, 30, 40)).save(tmp_path / "cmyk.tif")
    assert describe_image(tmp_path / "cmyk.tif") == ["CMYK converted to RGB"]


def _stacks(tmp_path: Path, **written) -> tuple[Path, np.ndarray, np.ndarray]:
    """images/clip.tif, a stack of 5 RGB frames, and masks/clip.tif, its stack of 5 masks (each lesion lower than the
    last), written by tifffile with `written` (ImageJ's truncated form, ...): (the folder, frames, masks)."""
    frames = np.random.default_rng(3).integers(0, 200, (5, 48, 40, 3), dtype=np.uint8)
    masks = np.zeros((5, 48, 40), np.uint8)
    for k in range(5):
        masks[k, 2 + 9 * k : 8 + 9 * k, 5:20] = 255
    root = tmp_path / "seq"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "images" / "clip.tif", frames, photometric="rgb", **written)
    tifffile.imwrite(root / "masks" / "clip.tif", masks, photometric="minisblack", **written)
    return root, frames, masks


def test_a_stack_of_masks_beside_a_stack_of_frames_pairs_page_for_page(tmp_path: Path) -> None:
    """An ImageJ / tifffile stack of frames with its stack of masks (one mask page per frame page): each frame gets
    its own page's mask (every frame had been given page 0's: trained on the wrong masks without a word); a one-page
    mask is every page's, said; a stack of another length is named, as the audit does."""
    from medcad.data.audit import audit
    from medcad.data.datasets import read_sample_mask
    from medcad.data.layouts import load_manifest

    root, frames, masks = _stacks(tmp_path)
    manifest = load_manifest(root)
    assert [manifest.frame(i) for i in range(len(manifest))] == [0, 1, 2, 3, 4]
    for i in range(5):
        assert np.array_equal(read_sample_mask(manifest, i), masks[manifest.frame(i)] > 0), i
    tifffile.imwrite(root / "masks" / "clip.tif", masks[0])  # one page: every frame's mask, said
    manifest = load_manifest(root)
    assert all(np.array_equal(read_sample_mask(manifest, i), masks[0] > 0) for i in range(5))
    assert any("one mask page for 5 pages of clip.tif" in n for n in manifest.notes)
    tifffile.imwrite(root / "masks" / "clip.tif", masks[:3], photometric="minisblack")  # 3 pages for 5 frames
    manifest = load_manifest(root)
    with pytest.raises(DataError, match="has 3 mask pages for the 5 pages of its image"):
        read_sample_mask(manifest, 1)
    found = audit(manifest)
    assert "3 mask pages for the 5 pages" in json.dumps(found, default=str)


def test_a_refused_stack_of_masks_shows_each_pages_own_values(tmp_path: Path) -> None:
    """Masks painting the background as lesion, in a stack: the refusal's examples show each sample's own page (they
    had all shown page 0's values and rule)."""
    from medcad.data.datasets import check_mask_content, read_sample_mask
    from medcad.data.layouts import load_manifest

    root, _, _ = _stacks(tmp_path)
    inverted = np.zeros((5, 48, 40), np.uint8)
    for k in range(5):
        inverted[k] = 250 - 40 * k  # each page's background value its own
        inverted[k, 2:8, 5:20] = 0
    tifffile.imwrite(root / "masks" / "clip.tif", inverted, photometric="minisblack")
    manifest = load_manifest(root)
    masks = np.stack([read_sample_mask(manifest, i) for i in range(5)])
    with pytest.raises(DataError, match="paint the background as lesion") as refused:
        check_mask_content(manifest, masks)
    examples = str(refused.value).split("; ")
    assert [e.split(" values (")[1].split(")")[0] for e in examples[:3]] == ["0, 250", "0, 210", "0, 170"], examples


def test_a_page_with_its_own_mask_file_is_not_said_to_share_one(tmp_path: Path) -> None:
    """A table naming each page of a stack with its own one-page mask file: each page its file, and no note that
    one mask serves every page."""
    from medcad.data.datasets import read_sample_mask
    from medcad.data.layouts import load_manifest

    frames = np.random.default_rng(4).integers(0, 200, (3, 24, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "clip.tif", frames, photometric="rgb")
    rows = []
    for k in range(3):
        mask = np.zeros((24, 20), np.uint8)
        mask[k * 6 : k * 6 + 4, 2:9] = 255
        Image.fromarray(mask).save(tmp_path / f"mask_{k}.png")
        rows.append(f"clip.tif,{k},mask_{k}.png")
    (tmp_path / "frames.csv").write_text("image,frame,mask\n" + "\n".join(rows) + "\n")
    manifest = load_manifest(tmp_path / "frames.csv")
    for i in range(3):
        k = manifest.frame(i)
        assert np.flatnonzero(read_sample_mask(manifest, i).any(1)).min() == k * 6
    assert not any("one mask page" in n for n in manifest.notes)


def test_a_dicom_cine_with_a_stack_of_masks_or_one_mask_for_every_frame(tmp_path: Path) -> None:
    """A multi-frame DICOM's frames pair with a mask stack frame for frame (it had been refused: a DICOM counted as
    one page), and one PNG mask named for every frame in a table is each frame's, said."""
    from conftest import write_dicom
    from medcad.data.datasets import read_sample_mask
    from medcad.data.layouts import load_manifest

    masks = np.zeros((4, 16, 16), np.uint8)
    for k in range(4):
        masks[k, 3 * k : 3 * k + 2, 2:9] = 255
    cine = write_dicom(tmp_path / "cine.dcm", np.zeros((4, 16, 16), np.uint16))
    tifffile.imwrite(tmp_path / "stack.tif", masks, photometric="minisblack")
    Image.fromarray(masks[0]).save(tmp_path / "one.png")
    for mask, expected in (("stack.tif", masks), ("one.png", [masks[0]] * 4)):
        rows = "\n".join(f"{cine.name},{k},{mask}" for k in range(4))
        (tmp_path / "t.csv").write_text(f"image,frame,mask\n{rows}\n")
        manifest = load_manifest(tmp_path / "t.csv")
        for i in range(4):
            assert np.array_equal(read_sample_mask(manifest, i), expected[manifest.frame(i)] > 0), (mask, i)
        shared = [n for n in manifest.notes if "one mask page for 4 pages of cine.dcm" in n]
        assert len(shared) == (mask == "one.png")


def test_an_imagej_truncated_stack_is_read_frame_by_frame(tmp_path: Path) -> None:
    """ImageJ writes a stack past 4 GiB with one IFD for every frame (tifffile with `truncate=True` too): read as
    one page, all frames but the first had been left out without a word; now every frame is a row, and a truncated
    mask stack beside it pairs frame for frame."""
    from medcad.data.datasets import read_sample_mask
    from medcad.data.layouts import load_manifest

    root, frames, masks = _stacks(tmp_path, imagej=True, truncate=True)
    assert image_pages(root / "images" / "clip.tif") == ([0, 1, 2, 3, 4], [])
    manifest = load_manifest(root)
    assert sorted(manifest.frame(i) for i in range(len(manifest))) == [0, 1, 2, 3, 4]
    for i in range(5):
        k = manifest.frame(i)
        assert np.array_equal(read_image(manifest.image_path(i), k), frames[k])
        assert np.array_equal(read_sample_mask(manifest, i), masks[k] > 0), k
    with pytest.raises(DataError, match="has 5 page\\(s\\); page 5 does not exist"):
        read_image(root / "images" / "clip.tif", 5)
    planes = np.random.default_rng(7).integers(0, 255, (4, 3, 16, 12), dtype=np.uint8)  # a truncated hyperstack
    tifffile.imwrite(tmp_path / "tz.tif", planes, imagej=True, truncate=True, metadata={"axes": "TZYX"})
    assert image_pages(tmp_path / "tz.tif") == (list(range(12)), [])
    flat = planes.reshape(12, 16, 12)
    assert all(np.array_equal(read_image(tmp_path / "tz.tif", k)[..., 0], flat[k]) for k in range(12))
    one = np.random.default_rng(8).integers(0, 255, (48, 40, 3), dtype=np.uint8)  # a copied stack description
    tifffile.imwrite(tmp_path / "one.tif", one, photometric="rgb", description="ImageJ=1.11a\nimages=48\n")
    assert image_pages(tmp_path / "one.tif") == ([0], []) and np.array_equal(read_image(tmp_path / "one.tif"), one)


def test_a_hyperstacks_channels_beside_a_mask_per_time_point_are_named(tmp_path: Path) -> None:
    """An ImageJ hyperstack of 5 time points x 2 channels (10 pages) beside 5 mask pages: refused (which channel
    the masks belong to cannot be told), the message naming the channels."""
    from medcad.data.datasets import read_sample_mask
    from medcad.data.layouts import load_manifest

    root = tmp_path / "hyper"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames = np.random.default_rng(6).integers(0, 255, (5, 2, 32, 24), dtype=np.uint8)
    tifffile.imwrite(root / "images" / "clip.tif", frames, imagej=True, metadata={"axes": "TCYX"})
    masks = np.zeros((5, 32, 24), np.uint8)
    tifffile.imwrite(root / "masks" / "clip.tif", masks, imagej=True, metadata={"axes": "TYX"})
    manifest = load_manifest(root)
    with pytest.raises(DataError, match="an ImageJ hyperstack's 2 channels x 5 frames"):
        read_sample_mask(manifest, 0)
