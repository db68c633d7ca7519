"""DICOM SEG as input masks: each SEG's segments become the mask of the source instance it references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from conftest import write_dicom
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask
from medcad.inference.responses import segmentation_dicom


def _source_with_study(path: Path, seed: int) -> pydicom.Dataset:
    rng = np.random.default_rng(seed)
    write_dicom(path, rng.integers(0, 4000, (1, 48, 64), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UltrasoundImageStorage  # single frame
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.PatientName, ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "A^B", "20260101", "1200", "1", "1"
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_seg_objects_give_their_sources_masks(tmp_path: Path) -> None:
    root = tmp_path / "us"
    lesion = np.zeros((48, 64), bool)
    lesion[10:20, 30:50] = True  # 200 pixels
    sources = [_source_with_study(root / "images" / f"IM{k}.dcm", k) for k in range(3)]
    (root / "seg").mkdir()
    (root / "seg" / "SEG0.dcm").write_bytes(segmentation_dicom(sources[0], lesion, label="stone"))
    (root / "seg" / "SEG1.dcm").write_bytes(segmentation_dicom(sources[1], lesion[::-1], label="stone"))
    orphan = _source_with_study(tmp_path / "elsewhere.dcm", 9)  # a SEG whose source is not in the folder
    (root / "seg" / "SEG9.dcm").write_bytes(segmentation_dicom(orphan, lesion))

    m = load_manifest(root)
    assert m.layout == "dicom-seg" and len(m) == 3
    by_image = {img: i for i, img in enumerate(m.table["image"])}
    for k, expected in ((0, lesion), (1, lesion[::-1])):
        i = by_image[f"images/IM{k}.dcm"]
        assert m.table["label"].iat[i] == "stone"
        got = read_mask(m.mask_paths(i)[0])
        assert got.shape == (48, 64) and (got > 0).sum() == 200 and ((got > 0) == expected).all()
    assert m.table["mask"].iat[by_image["images/IM2.dcm"]] == ""  # no SEG for it: no mask
    assert [p for p, _ in m.problems] == ["seg/SEG9.dcm"] and "none of them in this folder" in m.problems[0][1]
    assert m.ledger.line().startswith("used 3 of 4; 1 left out") and not m.ledger.unread
