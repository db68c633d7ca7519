"""Volume files (NIfTI, MetaImage, NRRD, MINC, Analyze / NIfTI pairs) read as 2-D images and stacks of them, as
SimpleITK writes them: nnU-Net's converted slices, CAMUS-style frames and label maps, 2-D+t sequences whose pages
each get their mask; every file of such a set used or named (the voxel data files with their headers)."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import noise_image
from medcad.data.filekinds import VOLUME_SUFFIXES, file_stem, volume_data, volume_format, volume_header
from medcad.data.io import describe_image, image_pages, image_size, read_image
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask, sample_mask_pages
from medcad.data.volumes import read_volume_page
from medcad.errors import DataError

EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WRITTEN = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hdr", ".mnc")  # each format SimpleITK writes


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))


def write(path: Path, arr: np.ndarray, vector: bool = False) -> Path:
    """`arr` written by SimpleITK as nnU-Net and CAMUS write them: (H, W) or (pages, H, W) from a numpy array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), str(path))
    return path


@EXAMPLES
@given(
    end=st.sampled_from(WRITTEN),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]),
    shape=st.tuples(st.integers(3, 40), st.integers(3, 40)),
    depth_one=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_slice_reads_back_as_written_and_decodes_as_the_same_values_in_a_tiff(end, dtype, shape, depth_one, seed):
    """Any 2-D array, written in any of the formats (as a plain 2-D image or nnU-Net's slice of depth one), reads
    back value for value and not transposed; its width and height are the array's; as an image it decodes as the same
    array kept in a TIFF does (one decoding policy); its notes say how it was read."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        arr = rng.normal(0, 3, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -3000), min(info.max, 3000) + 1, shape).astype(dtype)
    if end == ".mnc" and dtype != np.uint8:
        arr = arr.astype(np.float32)  # SimpleITK's MINC writer keeps the type only so far
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / f"case_0000{end}", arr[None] if depth_one else arr)
        assert volume_format(path) == VOLUME_SUFFIXES[end] and file_stem(path) == "case_0000"
        got = read_volume_page(path)
        assert got.shape == arr.shape and np.array_equal(got, arr.astype(got.dtype)), (got, arr)
        assert image_size(path) == (shape[1], shape[0]) and image_pages(path) == ([0], [])
        tiff = Path(tmp) / "same.tif"
        tifffile.imwrite(tiff, got)
        assert np.array_equal(read_image(path), read_image(tiff))
        assert any("stored order (x across, y down)" in note for note in describe_image(path))


def test_a_sequence_is_a_page_per_frame_each_with_its_own_page_of_the_label_map(tmp_path: Path) -> None:
    """A CAMUS-style 2-D+t sequence (frames, H, W) beside its label map of as many frames: one row per frame, each
    frame's mask the label map's same frame (not frame 0's); the frames of one file stay in one group."""
    root = tmp_path / "camus" / "patient0001"
    frames = np.stack([noise_image(k, 24, gray=True) for k in range(4)])
    labels = np.zeros((4, 24, 24), np.uint8)
    for k in range(4):
        labels[k, 2 + 3 * k : 8 + 3 * k, 4:12] = 1 + k % 3  # CAMUS's classes 1..3, in another place per frame
    write(root / "patient0001_2CH_half_sequence.nii.gz", frames)
    write(root / "patient0001_2CH_half_sequence_gt.nii.gz", labels)
    m = load_manifest(tmp_path / "camus")
    assert len(m) == 4 and [m.frame(i) for i in range(4)] == [0, 1, 2, 3], m.table
    for i in range(4):
        image = read_image(m.image_path(i), m.frame(i))
        assert np.array_equal(image[..., 0], frames[i])
        pages = sample_mask_pages(m, i)
        assert pages == [i] and np.array_equal(read_mask(m.mask_paths(i), pages), labels[i] > 0)
    assert not m.ledger.left_out and not m.ledger.unread, m.ledger


def test_an_nnunet_v1_set_in_nifti_is_paired_and_every_file_is_used_or_named(tmp_path: Path) -> None:
    """nnU-Net v1's imagesTr/<case>_0000.nii.gz beside labelsTr/<case>.nii.gz (its dataset.json's labels): paired by
    the name without `.nii.gz`; a second channel and imagesTs/ are named as what they are; a label map's classes
    are read."""
    root = tmp_path / "Task501_Kidney"
    for k in range(3):
        write(root / "imagesTr" / f"kid_{k:03d}_0000.nii.gz", noise_image(k, 32, gray=True)[None])
        label = np.zeros((1, 32, 32), np.uint8)
        label[0, 4 + k : 12 + k, 6:20] = 1
        label[0, 20:26, 6 + k : 12 + k] = 2
        write(root / "labelsTr" / f"kid_{k:03d}.nii.gz", label)
    write(root / "imagesTr" / "kid_000_0001.nii.gz", noise_image(9, 32, gray=True)[None])
    write(root / "imagesTs" / "kid_900_0000.nii.gz", noise_image(10, 32, gray=True)[None])
    labels = {"background": 0, "cortex": 1, "cyst": 2}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", "numTraining": 3}))
    m = load_manifest(root)
    assert list(m.table["image"]) == [f"imagesTr/kid_{k:03d}_0000.nii.gz" for k in range(3)]
    assert list(m.table["mask"]) == [f"labelsTr/kid_{k:03d}.nii.gz" for k in range(3)]
    unread = dict(m.ledger.unread)
    assert "(channel 0001 of case 'kid_000')" in unread["imagesTr/kid_000_0001.nii.gz"]
    assert "nnU-Net test image" in unread["imagesTs/kid_900_0000.nii.gz"]
    assert np.array_equal(
        read_mask(m.mask_paths(1)),
        np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr/kid_001.nii.gz"))))[0] > 0,
    )


def test_voxel_data_files_are_used_with_their_headers_and_named_without_them(tmp_path: Path) -> None:
    """A MetaImage `.mhd`, a detached NRRD `.nhdr` and an Analyze / NIfTI pair `.hdr` each keep their voxels in a file
    beside them: used with the header it belongs to, named as its voxel data where that header is not read; the data
    file is not an image of its own."""
    root = tmp_path / "set"
    for k, end in enumerate((".mhd", ".nhdr", ".hdr")):
        write(root / "images" / f"c{k}{end}", noise_image(k, 24, gray=True))
        mask = np.zeros((24, 24), np.uint8)
        mask[3:9, 3 + k : 9 + k] = 1
        write(root / "masks" / f"c{k}{end}", mask)
    datas = {h: volume_data(h) for h in sorted((root / "images").iterdir()) if volume_format(h)}
    assert {h.name: d.name for h, d in datas.items()} == {"c0.mhd": "c0.raw", "c1.nhdr": "c1.raw", "c2.hdr": "c2.img"}
    assert all(volume_header(d) == h and volume_format(d) is None for h, d in datas.items())
    (root / "notes").mkdir()
    write(root / "notes" / "stray.mhd", noise_image(5, 24, gray=True))
    (root / "notes" / "stray.mhd").unlink()  # its data file stays, with no header: nothing names it as data
    write(root / "unused" / "u.mhd", noise_image(6, 24, gray=True))
    m = load_manifest(root, images="images", masks="masks")
    assert len(m) == 3 and all(m.mask_paths(i) for i in range(3))
    used, unread = m.used_files(), dict(m.ledger.unread)
    assert {"images/c0.raw", "images/c1.raw", "images/c2.img", "masks/c0.raw"} <= used
    assert "the voxel data of 'u.mhd'" in unread["unused/u.raw"], unread
    assert "voxel data" not in unread["notes/stray.raw"], unread


def test_volumes_medcad_cannot_take_apart_are_refused_naming_the_file_and_what_it_holds(tmp_path: Path) -> None:
    """A 3-D volume over time (two axes beyond the image's longer than one), vector voxels of two components, a
    truncated NIfTI (compressed, not, a pair's voxel file) and a MetaImage without its data file: each a DataError
    naming the file and what is wrong."""
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8))] * 2)
    sitk.WriteImage(four_d, str(tmp_path / "volume_t.nii.gz"))
    write(tmp_path / "flow.nii.gz", np.zeros((8, 8, 2), np.float32), vector=True)
    for name in ("cut.nii.gz", "cut.nii", "cut.img"):  # ITK reads truncated NIfTI voxels without a word
        whole = write(tmp_path / name.replace(".img", ".hdr"), noise_image(1, 64, gray=True)).with_name(name)
        whole.write_bytes(whole.read_bytes()[:-500])
    write(tmp_path / "lost.mhd", noise_image(2, 16, gray=True))
    (tmp_path / "lost.raw").unlink()
    # float64 voxels whose header's bitpix says 8, cut to an eighth of them: ITK reads by the datatype, zeros the rest
    lying = bytearray(write(tmp_path / "bitpix.nii", noise_image(3, 64, gray=True).astype(np.float64)).read_bytes())
    lying[72:74] = (8).to_bytes(2, "little")
    (tmp_path / "bitpix.nii").write_bytes(bytes(lying[: 352 + 64 * 64]))
    said = {
        "volume_t.nii.gz": "8 x 8 x 3 x 2 voxels, of more than one axis beyond",
        "flow.nii.gz": "2-component voxels",
        "cut.nii.gz": "truncated or corrupt gzip data",
        "cut.nii": "truncated: its header's voxels end at byte 4448, the file holds 3948 bytes",
        "cut.hdr": "its voxel data file cut.img holds 3596 bytes",
        "lost.mhd": "its voxel data file lost.raw, which its header names, is not there",
        "bitpix.nii": "truncated: its header's voxels end at byte 33120, the file holds 4448 bytes",
    }
    for name, text in said.items():
        with pytest.raises(DataError) as e:
            read_image(tmp_path / name)
        assert name in str(e.value) and text in str(e.value), str(e.value)


def test_a_monai_datalist_of_nifti_items_is_read(tmp_path: Path) -> None:
    """A MONAI datalist whose items are NIfTI images and label maps (relative paths, as MONAI writes them)."""
    root = tmp_path / "monai"
    items = []
    for k in range(3):
        write(root / "images" / f"v{k}.nii.gz", noise_image(k, 24, gray=True))
        mask = np.zeros((24, 24), np.uint8)
        mask[2:10, 2 + k : 10 + k] = 1
        write(root / "labels" / f"v{k}.nii.gz", mask)
        items.append({"image": f"images/v{k}.nii.gz", "label": f"labels/v{k}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": items}))
    m = load_manifest(root)
    assert list(m.table["image"]) == [it["image"] for it in items] and not m.ledger.unread
    assert read_mask(m.mask_paths(2))[5, 2 + 2] and not read_mask(m.mask_paths(2))[5, 1]


def test_names_alone_do_not_make_a_volume(tmp_path: Path) -> None:
    """A `.hdr` without Analyze's header (ENVI's, a hyperspectral endoscope's) and a DICOM file named `.img` are not
    volumes, nor is a pair's `.img` (its voxel data, read with its `.hdr`)."""
    (tmp_path / "envi.hdr").write_text("ENVI\nsamples = 640\n")
    (tmp_path / "pair.hdr").write_bytes(b"\x5c\x01\x00\x00" + bytes(344))
    (tmp_path / "pair.img").write_bytes(bytes(64))
    (tmp_path / "scan.img").write_bytes(bytes(128) + b"DICM" + bytes(64))
    (tmp_path / "scan.hdr").write_bytes(b"\x5c\x01\x00\x00" + bytes(344))  # its header does not make DICOM a volume
    got = {name: volume_format(tmp_path / name) for name in ("envi.hdr", "pair.hdr", "pair.img", "scan.img")}
    assert got == {"envi.hdr": None, "pair.hdr": "Analyze / NIfTI pair", "pair.img": None, "scan.img": None}
    assert volume_header(tmp_path / "pair.img") == tmp_path / "pair.hdr"


@pytest.mark.parametrize("key", ["modality", "channel_names"])
def test_an_rgb_image_nnunet_split_in_three_files_is_read_as_one_colour_image(tmp_path: Path, key: str) -> None:
    """nnU-Net v1's `convert_2d_image_to_nifti` keeps an RGB image (an endoscopy frame) as `<case>_0000`, `_0001`,
    `_0002` (red, green, blue), its dataset.json naming the channels: read as one RGB image equal to the source (the
    red file alone had been read, grey), every file used; a green file of another size, or a blue file missing, is
    refused naming it (the missing one had been read grey)."""
    root = tmp_path / "Task502_Kvasir"
    names = {"0": "Red", "1": "Green", "2": "Blue"} if key == "modality" else {"0": "R", "1": "G", "2": "B"}
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({key: names, "labels": {"0": "background", "1": "polyp"}}))
    sources = {}
    for k in range(3):
        rgb = noise_image(k, 24)
        sources[k] = rgb
        for c in range(3):
            write(root / "imagesTr" / f"kv_{k}_{c:04d}.nii.gz", rgb[..., c][None])
        mask = np.zeros((1, 24, 24), np.uint8)
        mask[0, 3:9, 2 + k : 9 + k] = 1
        write(root / "labelsTr" / f"kv_{k}.nii.gz", mask)
    m = load_manifest(root)
    assert list(m.table["image"]) == [f"imagesTr/kv_{k}_0000.nii.gz" for k in range(3)]
    assert not m.ledger.unread and not m.ledger.left_out, m.ledger
    for k in range(3):
        assert np.array_equal(read_image(m.image_path(k)), sources[k])
    notes = describe_image(m.image_path(0))
    assert any("red, green and blue from its _0000, _0001 and _0002 files" in n for n in notes), notes
    write(root / "imagesTr" / "kv_1_0001.nii.gz", noise_image(7, 20, gray=True)[None])
    with pytest.raises(DataError, match=r"kv_1_0001.nii.gz: a colour channel of kv_1_0000.nii.gz .* of 20x20 pixels"):
        read_image(m.image_path(1))
    (root / "imagesTr" / "kv_2_0002.nii.gz").unlink()  # a case without its blue file: refused, not read grey
    with pytest.raises(DataError, match=r"kv_2_0000.nii.gz: its blue channel file kv_2_0002.nii.gz is missing"):
        read_image(m.image_path(2))


def test_an_nnunet_v1_dataset_json_naming_cases_reads_their_channel_files(tmp_path: Path) -> None:
    """nnU-Net v1's dataset.json lists `./imagesTr/<case>.nii.gz` where the files are `<case>_0000.nii.gz` (its
    channels): each item is read from its case's channel 0000, said (the set had been refused, every file "not
    found"); a missing case is named by its item (`training[1]`, not "line 1"); `predict` of its imagesTs/ folder
    predicts a case per RGB image split in three, not each file."""
    from medcad.inference.predictor import expand_inputs

    root = tmp_path / "Task503_X"
    items = []
    for k in range(3):
        for c in range(3):
            write(root / "imagesTr" / f"c{k}_{c:04d}.nii.gz", noise_image(k, 24)[..., c][None])
            write(root / "imagesTs" / f"t{k}_{c:04d}.nii.gz", noise_image(k + 5, 24)[..., c][None])
        mask = np.zeros((1, 24, 24), np.uint8)
        mask[0, 4:12, 3 + k : 12 + k] = 1
        write(root / "labelsTr" / f"c{k}.nii.gz", mask)
        items.append({"image": f"./imagesTr/c{k}.nii.gz", "label": f"./labelsTr/c{k}.nii.gz"})
    items.append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    modality = {"0": "Red", "1": "Green", "2": "Blue"}
    (root / "dataset.json").write_text(json.dumps({"modality": modality, "training": items, "test": []}))
    m = load_manifest(root, allow_missing=True)
    assert list(m.table["image"]) == [f"imagesTr/c{k}_0000.nii.gz" for k in range(3)]
    assert np.array_equal(read_image(m.image_path(2)), noise_image(2, 24))
    assert any("3 item(s) name an nnU-Net case whose image files carry a channel number" in n for n in m.notes)
    assert dict(m.ledger.left_out)["./imagesTr/gone.nii.gz"] == "file not found (dataset.json training[3])"
    predicted = [Path(p).name for p in expand_inputs([root / "imagesTs"])]
    assert predicted == [f"t{k}_0000.nii.gz" for k in range(3)], predicted
    elsewhere = tmp_path / "copied"  # imagesTs/ copied without its dataset.json: each file an image, said
    (root / "imagesTs").rename(elsewhere)
    m = load_manifest(elsewhere)
    assert len(m) == 9 and any("3 case(s) have volume files numbered as nnU-Net numbers channels" in n for n in m.notes)


def test_a_header_that_claims_more_than_its_file_holds_is_one_unreadable_file(tmp_path: Path) -> None:
    """A NIfTI header claiming 20000 slices of a 452-byte file is one unreadable file, not 20000 rows (its size from
    the header alone; a .nii.gz by its gzip trailer), and so is a MetaImage's; a NaN vox_offset is a DataError; a
    NIfTI-2 file, which ITK does not read, says so; a MetaImage
    whose data file ends early says so (ITK: "Reason: Success"); a voxel data file given alone names its header."""
    import struct

    for name in ("huge.nii", "huge.nii.gz"):
        raw = bytearray(write(tmp_path / "plain.nii", np.zeros((10, 10), np.uint8)).read_bytes())
        raw[40:56] = struct.pack("<8h", 3, 1000, 1000, 20000, 1, 1, 1, 1)
        path = tmp_path / name
        path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
        assert image_pages(path) == ([0], [])
        with pytest.raises(DataError, match=r"truncated|corrupt gzip"):
            image_size(path)
    whole = write(tmp_path / "ok.mha", np.zeros((3, 8, 8), np.uint8)).read_bytes()
    start = whole.index(b"DimSize")
    (tmp_path / "big.mha").write_bytes(whole[:start] + b"DimSize = 64 64 20000" + whole[whole.index(b"\n", start) :])
    assert image_pages(tmp_path / "big.mha") == ([0], [])  # one unreadable file, not 20000 rows
    with pytest.raises(DataError, match=r"64 x 64 x 20000 voxels \(81920000 bytes\), more than its \d+ bytes"):
        image_size(tmp_path / "big.mha")
    nan = bytearray(write(tmp_path / "n.nii", np.zeros((4, 4), np.uint8)).read_bytes())
    nan[108:112] = struct.pack("<f", float("nan"))  # vox_offset NaN: a DataError, never a ValueError
    (tmp_path / "nan.nii").write_bytes(bytes(nan))
    assert image_pages(tmp_path / "nan.nii") == ([0], [])  # ITK decides: it reads this one
    assert read_image(tmp_path / "nan.nii").shape == (4, 4, 3)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 6), np.complex64)), str(tmp_path / "complex.nii.gz"))
    assert image_pages(tmp_path / "complex.nii.gz") == ([0], [])
    with pytest.raises(DataError, match="complex.nii.gz: a NIfTI file of 2-component voxels"):
        image_size(tmp_path / "complex.nii.gz")  # a traceback of SimpleITK's had escaped, naming no file
    v2 = bytearray(540)
    v2[:4] = struct.pack("<i", 540)
    (tmp_path / "n2.nii").write_bytes(bytes(v2) + bytes(16))
    with pytest.raises(DataError, match="a NIfTI-2 file, which SimpleITK .* does not read: save it as NIfTI-1"):
        read_image(tmp_path / "n2.nii")
    short = write(tmp_path / "short.mhd", noise_image(1, 16, gray=True)).with_suffix(".raw")
    short.write_bytes(short.read_bytes()[:100])  # ITK's reason: "Success"
    with pytest.raises(DataError, match="its voxel data ends before the header's size, or cannot be decoded"):
        read_image(tmp_path / "short.mhd")
    with pytest.raises(DataError, match=r"the voxel data of x.hdr, read with it: give x.hdr itself"):
        read_image(write(tmp_path / "x.hdr", noise_image(2, 16, gray=True)).with_suffix(".img"))


def test_a_stacks_pages_that_cannot_be_read_are_named_once_with_their_count(tmp_path: Path) -> None:
    """A sequence of four frames beside a label map of two: every frame's mask is refused naming both files, and the
    list of the others names the file once with its count (it had repeated `seq.nii.gz` for each page)."""
    from medcad.data.datasets import cached_masks
    from medcad.errors import UnreadableSamples

    write(tmp_path / "set" / "seq.nii.gz", np.stack([noise_image(k, 16, gray=True) for k in range(4)]))
    write(tmp_path / "set" / "seq_gt.nii.gz", np.ones((2, 16, 16), np.uint8))
    m = load_manifest(tmp_path / "set", allow_missing=True)
    assert len(m) == 4
    with pytest.raises(UnreadableSamples, match=r"has 2 mask pages for the 4 pages") as e:
        cached_masks(m, 16, progress=False)
    assert "(and 3 more: seq_gt.nii.gz (3 pages or frames);" in str(e.value), str(e.value)


def test_voxel_data_kept_elsewhere_or_compressed_is_read_and_named(tmp_path: Path) -> None:
    """A MetaImage whose header names its data in a sub-folder (`ElementDataFile = raw/a.bin`) is read, that file used
    and part of its version; a compressed Analyze / NIfTI pair (`.hdr` + `.img.gz`, as ITK reads it) is read; an
    unread data file named otherwise than its header is named as that header's voxel data."""
    root = tmp_path / "set"
    header = write(root / "a.mhd", noise_image(1, 16, gray=True))
    (root / "raw").mkdir()
    (root / "a.raw").rename(root / "raw" / "a.bin")
    header.write_text(header.read_text().replace("ElementDataFile = a.raw", "ElementDataFile = raw/a.bin"))
    assert np.array_equal(read_image(header)[..., 0], noise_image(1, 16, gray=True))
    m = load_manifest(root)
    assert "raw/a.bin" in m.used_files() and not m.ledger.unread, m.ledger
    pair = write(tmp_path / "p.hdr", noise_image(2, 16, gray=True))
    img = pair.with_suffix(".img")
    img.with_suffix(".img.gz").write_bytes(gzip.compress(img.read_bytes()))
    img.unlink()
    assert np.array_equal(read_image(pair)[..., 0], noise_image(2, 16, gray=True))
    other = tmp_path / "other"
    blob = write(other / "b.mhd", noise_image(3, 16, gray=True))
    (other / "b.raw").rename(other / "scan_0001.raw")
    blob.write_text(blob.read_text().replace("ElementDataFile = b.raw", "ElementDataFile = scan_0001.raw"))
    (other / "b.mhd").rename(other / "b.txt")  # its header no longer a volume: the data file is nobody's
    assert volume_header(other / "scan_0001.raw") is None
    (other / "b.txt").rename(other / "b.mhd")
    assert volume_header(other / "scan_0001.raw") == other / "b.mhd"


def test_a_one_page_image_beside_a_stack_of_masks_is_refused_naming_both(tmp_path: Path) -> None:
    """A one-page image whose mask file holds several pages (a CAMUS ED frame paired with its sequence's label map)
    is refused naming both (page 0 had been its mask, unsaid), as a stack and a mask stack of other lengths are."""
    from medcad.data.masks import sample_mask_pages

    write(tmp_path / "set" / "ed.nii.gz", noise_image(1, 16, gray=True))
    write(tmp_path / "set" / "ed_gt.nii.gz", np.ones((3, 16, 16), np.uint8))
    m = load_manifest(tmp_path / "set")
    assert len(m) == 1 and m.mask_paths(0)
    with pytest.raises(DataError, match=r"ed_gt.nii.gz: has 3 mask pages for the one page of its image .*ed.nii.gz"):
        sample_mask_pages(m, 0)


def test_data_frames_of_a_volume_says_what_it_is_and_leaves_no_folder(tmp_path: Path) -> None:
    """`data frames` of a 2-D+t NIfTI sequence says it is one (its frames are pages every command reads), where it
    had said "cannot decode this video" and left an empty frames/ folder behind."""
    from medcad.data.frame_extraction import extract_frames

    seq = write(tmp_path / "seq.nii.gz", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"seq.nii.gz: a NIfTI file: every command reads its slices or frames as pages"):
        extract_frames(seq, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_mask_written_in_the_other_axis_order_is_named_so(tmp_path: Path) -> None:
    """A label map written as nibabel lays out an (H, W) array (x = rows) beside an image SimpleITK wrote: its size is
    the image's swapped, and the refusal says what that means (it had said only that the sizes differ)."""
    from medcad.data.datasets import read_sample_mask

    image = noise_image(1, 24, gray=True)[:, :20]  # 20 wide, 24 high
    write(tmp_path / "set" / "c.nii.gz", image)
    write(tmp_path / "set" / "c_gt.nii.gz", np.ones((20, 24), np.uint8))  # (H, W) swapped, as x = rows
    m = load_manifest(tmp_path / "set")
    with pytest.raises(DataError, match=r"mask 24x20 but image 20x24 .*\(its width and height swapped: written in"):
        read_sample_mask(m, 0)


def test_a_label_map_on_another_voxel_grid_is_named_by_the_audit(tmp_path: Path) -> None:
    """A label map whose spacing or origin is not its image's (drawn on another grid, or resampled: nnU-Net refuses
    such a pair) is named by `data audit` with both grids; one on the image's grid is not."""
    from medcad.data.audit import audit

    grids = [((1.0, 1.0), (0.0, 0.0)), ((0.5, 0.5), (0.0, 0.0)), ((1.0, 1.0), (4.0, 0.0))]
    (tmp_path / "set" / "masks").mkdir(parents=True)
    for k, (spacing, origin) in enumerate(grids):
        write(tmp_path / "set" / "images" / f"c{k}.nii.gz", noise_image(k, 16, gray=True))  # spacing 1, origin 0
        mask = sitk.GetImageFromArray(np.pad(np.ones((6, 6), np.uint8), 5))
        mask.SetSpacing(spacing)
        mask.SetOrigin(origin)
        sitk.WriteImage(mask, str(tmp_path / "set" / "masks" / f"c{k}.nii.gz"))
    m = load_manifest(tmp_path / "set", images="images", masks="masks")
    found = {row[0]: row[2] for row in audit(m, interface="none")["mask_grid_mismatch"]}
    assert sorted(found) == ["images/c1.nii.gz", "images/c2.nii.gz"], found
    assert "spacing 0.5 x 0.5 against 1 x 1" in found["images/c1.nii.gz"]
    assert "origin (4, 0) against (0, 0)" in found["images/c2.nii.gz"]


def test_a_short_mask_write_fails_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ITK's NIfTI writer reports a short write (a full disk) on stderr alone: `write_like` checks what it wrote, fails
    naming the mask, and leaves no file, whole or temporary (a cut-off mask had been listed as written)."""
    from medcad.data import volumes

    source = write(tmp_path / "case_0000.nii.gz", noise_image(1, 64, gray=True)[None])
    real = sitk.WriteImage

    def short(image, name, *args, **kwargs):  # as a full disk leaves it: ITK says so on stderr, raises nothing
        real(image, name, *args, **kwargs)
        whole = Path(name).read_bytes()
        Path(name).write_bytes(whole[: len(whole) // 2])

    monkeypatch.setattr(sitk, "WriteImage", short)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"case_0000_mask.nii.gz: cannot write the mask \((truncated|its header)"):
        labels = (np.random.default_rng(0).random((64, 64)) > 0.5).astype(np.uint8)
        volumes.write_like(source, labels, out / "case_0000_mask.nii.gz")
    assert list(out.iterdir()) == []


def test_voxel_data_kept_by_absolute_path_is_not_called_cut_off(tmp_path: Path) -> None:
    """A MetaImage whose header names its voxel data by an absolute path (or a list of files) holds few bytes itself:
    its pages are counted from its header, not refused as cut off."""
    header = write(tmp_path / "a" / "v.mhd", np.stack([noise_image(k, 16, gray=True) for k in range(40)]))
    (tmp_path / "elsewhere").mkdir()
    data = (tmp_path / "a" / "v.raw").rename(tmp_path / "elsewhere" / "v.raw")
    header.write_text(header.read_text().replace("ElementDataFile = v.raw", f"ElementDataFile = {data}"))
    assert image_pages(header) == (list(range(40)), [])
    assert np.array_equal(read_image(header, 39)[..., 0], noise_image(39, 16, gray=True))


def test_a_stacks_pages_are_scaled_alike(tmp_path: Path) -> None:
    """A 16-bit stack whose first page fits 8 bits and whose second reaches 3000, and a float 8-bit sequence with a
    near-black page of 0 / 1: each page decodes with the stack's one scale (page by page, the first had kept its
    values while the second was read as 12-bit; the 0 / 1 page had become 0 / 255)."""
    sixteen = np.zeros((2, 8, 8), np.uint16)
    sixteen[0, 0, :3] = (0, 100, 250)
    sixteen[1, 0, :3] = (0, 1000, 3000)
    path = write(tmp_path / "ct.nii.gz", sixteen)
    pages = [read_image(path, k)[0, :3, 0] for k in range(2)]
    full = 4095.0  # 12 bits hold every value of the stack
    expect = [[round(int(v) * 255 / full) for v in sixteen[k, 0, :3]] for k in range(2)]
    assert [list(p) for p in pages] == expect, pages
    assert any("over all 2 pages" in n for n in describe_image(path))
    dark = np.zeros((3, 8, 8), np.float32)
    dark[0, 0, :2] = (0, 1)  # a near-black frame
    dark[1, 0, :2] = (0, 200)
    dark[2, 0, :2] = (3, 250)
    seq = write(tmp_path / "seq.nii.gz", dark)
    assert list(read_image(seq, 0)[0, :2, 0]) == [0, 1] and list(read_image(seq, 2)[0, :2, 0]) == [3, 250]
