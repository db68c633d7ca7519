"""The DICOM SEGs serve returns, checked by DICOM's own validator (dciodvfy, Debian's dicom3tools: `.ci/run`
installs it) and read back with highdicom, on source headers as scanners, PACS exports and de-identifiers write them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from conftest import write_dicom
from medcad.errors import MedcadError
from medcad.inference.responses import segmentation_dicom

SC, US, VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.77.1.1"
US_RETIRED, PRIVATE = "1.2.840.10008.5.1.4.1.1.6", "1.2.840.113619.4.26"  # older scanners; a vendor's own class
FRAME = {"FrameOfReferenceUID": generate_uid()}
SPACING, THICKNESS, NO_THICKNESS = {"PixelSpacing": [0.1, 0.1]}, {"SliceThickness": 1.0}, {"SliceThickness": ""}
PLANE = {"ImagePositionPatient": [0, 0, 0], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}


def _source(tmp_path: Path, **elements) -> pydicom.Dataset:
    path = write_dicom(tmp_path / f"{generate_uid()}.dcm", np.zeros((1, 40, 40)))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID = generate_uid(), generate_uid(), SC
    for name, value in elements.items():
        setattr(ds, name, value)
    return ds


def _errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sop=st.sampled_from([SC, US, VL_ENDOSCOPIC, US_RETIRED, PRIVATE]),
    spatial=st.sampled_from(
        [{}, SPACING, SPACING | THICKNESS, SPACING | NO_THICKNESS, FRAME, FRAME | SPACING, FRAME | SPACING | THICKNESS]
    ),
    plane=st.sampled_from(["none", "placed", "without a frame of reference"]),
    orientation=st.sampled_from([None, ["A", "F"]]),
    label=st.sampled_from(["lesion", "cyst", "tumour", "Blood clot", "polyp"]),  # coded by CID 7159, else Lesion
)
def test_a_seg_on_any_single_frame_source_is_valid_dicom_and_reads_back(
    tmp_path: Path, sop, spatial, plane, orientation, label
) -> None:
    """Every SEG passes dciodvfy without an error, references its source's own SOP class, and highdicom reads its
    mask back: a 2-D source's SEG had missed Patient Orientation (dciodvfy: every one), one with Pixel Spacing but no
    Slice Thickness was written with pixel measures highdicom's own reader refuses, and a source of the retired US
    Image Storage class (older ultrasound scanners) or a private one had been a KeyError (serve: a 500)."""
    import highdicom as hd

    elements = {"SOPClassUID": sop, **spatial, **({"PatientOrientation": orientation} if orientation else {})}
    if plane == "placed":
        elements |= FRAME | SPACING | THICKNESS | PLANE
    elif plane == "without a frame of reference":  # orientation and position, no frame they are in
        elements = {k: v for k, v in elements.items() if k != "FrameOfReferenceUID"} | PLANE
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:30] = True
    source = _source(tmp_path, **elements)
    path = tmp_path / f"{generate_uid()}_seg.dcm"
    path.write_bytes(segmentation_dicom(source, mask, label, "1"))
    if not shutil.which("dciodvfy"):
        pytest.skip("DICOM's validator, dciodvfy (Debian's dicom3tools, installed by .ci/run), is not installed")
    assert _errors(path) == []
    seg = hd.seg.segread(path)
    named = set()
    seg.walk(lambda _, e: named.add(e.value) if e.keyword == "ReferencedSOPClassUID" else None)
    assert named == {sop}
    got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], ignore_spatial_locations=True)[0, ..., 0]
    assert np.array_equal(got > 0, mask)


@pytest.mark.parametrize(
    ("elements", "words"),
    [
        ({"StudyInstanceUID": ""}, "lacks StudyInstanceUID"),
        (FRAME | SPACING | PLANE, "Image Orientation (Patient) but no SliceThickness"),
        (FRAME | SPACING | NO_THICKNESS | PLANE, "but no SliceThickness"),
        (FRAME | PLANE, "but no PixelSpacing or SliceThickness"),
    ],
)
def test_a_source_a_seg_cannot_be_built_on_is_named(tmp_path: Path, elements: dict, words: str) -> None:
    """An empty Study Instance UID had given an invalid SEG, a plane without a slice thickness highdicom's raw
    error."""
    with pytest.raises(MedcadError, match=re.escape(words)):
        segmentation_dicom(_source(tmp_path, **elements), np.ones((40, 40), bool), "lesion", "1")
