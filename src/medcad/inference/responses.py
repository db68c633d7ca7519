"""What the server sends back for one image: the prediction's JSON record, its mask as PNG or run lengths at the
image's own size, pictures as PNG data URLs, and a DICOM SEG for a DICOM source."""

from __future__ import annotations

import base64
import copy
import functools
import io

import cv2
import numpy as np

from medcad.errors import MedcadError
from medcad.inference.prediction import Prediction

MASK_FORMATS = ("png", "rle", "none")
RESPONSE_FORMATS = ("json", "dicom")  # /predict's answer: JSON, or a DICOM SEG


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of an (H, W, 3) RGB uint8 array or an (H, W) grey one, uint8 or uint16 (a 16-bit PNG)."""
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:  # only for empty arrays
        raise ValueError(f"cannot encode an array of shape {arr.shape} as PNG")
    return buf.tobytes()


def data_url(arr: np.ndarray) -> str:
    """An RGB uint8 array as a `data:image/png;base64,...` URL (for the page's <img>)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode()


def rle_encode(lesion: np.ndarray) -> list[int]:
    """Run lengths of a bool (H, W) mask in row-major order, starting with a (possibly empty) run of background.

    E.g. [[0, 1, 1], [1, 0, 0]] -> [1, 3, 2]: one background pixel, three lesion pixels, two background pixels.
    """
    flat = np.asarray(lesion, bool).ravel()
    if not flat.size:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def rle_decode(counts: list[int], size: tuple[int, int]) -> np.ndarray:
    """The bool (H, W) mask of `rle_encode`'s run lengths."""
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(size)


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a bool (H, W) mask, as COCO results and pycocotools keep masks: {"size": [H, W],
    "counts": str}, the run lengths in column-major order, packed; `pycocotools.mask.decode` gives the (H, W) uint8
    0 / 1 mask back."""
    from pycocotools import mask as mu

    rle = mu.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_json(pred: Prediction, fmt: str) -> dict | None:
    """The thresholded lesion mask at the image's size, with "height", "width", "threshold":

    - `fmt` "png": {"format": "png", "data": base64 PNG}: 0 / 255 for lesion; label-map models: each pixel's class
      value in the run's values (0 none), a 16-bit PNG where a value exceeds 255, and "classes" maps the values to
      class names ({"1": "cyst", "2": "stone"}).
    - `fmt` "rle", one-lesion models: {"format": "rle", "counts": run lengths of the lesion (see `rle_encode`)}.
      Label-map models: "classes" as for PNG, "lesion_counts": run lengths (as `rle_encode`) of the lesion of any
      class, and "per_class": {class name: {"value": its mask value, "coco_rle": COCO's compressed RLE of its pixels
      (see `coco_rle`)}} for every lesion class, an empty one included. There is no "counts": the lesion is not one
      of the classes.
    - `fmt` "none": None (as for a model without a mask).

    Raises:
        MedcadError: a PNG of a label map whose values no PNG holds (see `LesionMask.mask_image`).
    """
    m = pred.mask
    if m is None or fmt == "none":
        return None
    lesion = m.lesion
    height, width = lesion.shape
    out = {"format": fmt, "height": int(height), "width": int(width), "threshold": m.threshold}
    if m.class_map is not None:
        out["classes"] = {str(v): lab for v, lab in zip(m.mask_values, m.labels, strict=True)}
    if fmt == "png":
        out["data"] = base64.b64encode(png_bytes(m.mask_image())).decode()
    elif m.class_map is None:
        out["counts"] = rle_encode(lesion)
    else:
        out["lesion_counts"] = rle_encode(lesion)
        out["per_class"] = {
            lab: {"value": v, "coco_rle": coco_rle(m.class_map == k)}
            for k, (v, lab) in enumerate(zip(m.mask_values, m.labels, strict=True), 1)
        }
    return out


def prediction_json(pred: Prediction, rgb: np.ndarray, task: str, mask_format: str = "png", overlay: bool = False):
    """The JSON record of one prediction: the decision (`label`, `score`), what the task has (`probabilities`,
    `lesion_fraction`, `boxes` [[x0, y0, x1, y1, score, label]] in the image's pixels, `mask`), the image's size,
    and with `overlay` the drawn overlay as a PNG data URL."""
    out = {"task": task, **pred.summary(), "threshold": pred.threshold, "width": rgb.shape[1], "height": rgb.shape[0]}
    mask = mask_json(pred, mask_format)
    if mask is not None:
        out["mask"] = mask
    if overlay:
        out["overlay"] = data_url(pred.draw(rgb))
    return out


# Type 2 attributes of the Patient and General Study modules that a SEG copies from its source: a source that lacks
# them (a de-identified file, a scanner's export) gets them empty in the SEG, as the standard allows for Type 2
TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def segmentation_dicom(source, lesion: np.ndarray, label: str | list[str] = "lesion", version: str = "0") -> bytes:
    """A DICOM SEG (binary; one segment, or one per lesion class) of a lesion mask, referencing its source instance,
    built with highdicom.

    Args:
        source: the source image's pydicom Dataset (header only is enough).
        lesion: bool (Rows, Columns) mask of the source frame, or a uint8 class map (0 none, c for segment c).
        label: the segment's label, or the labels of segments 1..K of a class map.
        version: medcad's version, recorded as the algorithm's.

    Returns:
        the SEG as a DICOM Part 10 file. It carries the source's patient and study modules, as a SEG must to be
        filed beside its source; nothing of them goes anywhere else.

    Raises:
        MedcadError: the source lacks what a SEG must reference (e.g. StudyInstanceUID), naming it.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    needed = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
    missing = [k for k in needed if not _has(source, k)]  # Type 1: present and not empty
    if missing:
        raise MedcadError(f"the DICOM upload lacks {', '.join(missing)}, which a DICOM SEG must reference")
    # highdicom places the SEG's planes in the patient's frame of reference when the source has one
    spatial = _has(source, "FrameOfReferenceUID") and _has(source, "ImageOrientationPatient")
    lacking = [k for k in ("PixelSpacing", "SliceThickness") if not _has(source, k)] if spatial else []
    if lacking:
        raise MedcadError(
            f"the DICOM upload has a Frame of Reference and Image Orientation (Patient) but no {' or '.join(lacking)}, "
            "which the pixel measures of a SEG placed in it must carry"
        )
    source = copy.deepcopy(source)  # the header alone (no pixel data)
    if not spatial and not _has(source, "SliceThickness") and "PixelSpacing" in source:
        # highdicom 0.28 writes pixel measures without a slice thickness then (absent or empty), which its own reader
        # refuses; a SEG of a 2-D image may go without them: viewers measure on the source it references
        del source.PixelSpacing
    for keyword in TYPE2_FROM_SOURCE:  # may be empty in a SEG, but present: a source without them is still filed
        if keyword not in source:
            setattr(source, keyword, None)
    labels = [label] if isinstance(label, str) else list(label)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=lesion_type(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="medcad", version=version, family=codes.cid7162.ArtificialIntelligence
            ),
        )
        for k, name in enumerate(labels, 1)
    ]
    pixels = np.asarray(lesion, bool if len(labels) == 1 else np.uint8)[None]

    def build(on):
        return hd.seg.Segmentation(
            source_images=[on],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9001,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medcad",
            manufacturer_model_name="medcad serve",
            software_versions=version,
            device_serial_number="none",
        )

    try:
        try:
            seg = build(source)
        except KeyError as e:  # a storage class highdicom has no IOD for: the retired US Image Storage, a private one
            if e.args != (source.SOPClassUID,):
                raise
            seg = _on_unlisted_class(build, source)
    except (AttributeError, ValueError, TypeError, KeyError) as e:
        raise MedcadError(f"a DICOM SEG cannot be built on this DICOM upload ({type(e).__name__}: {e})") from e
    shared = seg.get("SharedFunctionalGroupsSequence") or [{}]
    if "PlaneOrientationSequence" not in shared[0]:  # General Image: Type 2C where no plane orientation is given
        seg.PatientOrientation = source.get("PatientOrientation", "")
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def lesion_type(label: str):
    """The coded Segmented Property Type of a lesion class: the concept of DICOM's Lesion Segmentation Types
    (CID 7159: cyst, mass, nodule, neoplasm, abscess, ...) the class name is, in the singular or plural, ignoring
    case, spaces, hyphens and underscores, British spellings included ("tumor" and "tumour" are SNOMED CT's Neoplasm,
    108369006, the code that names both); any other name (polyp, stone, lesion, benign, ...) is coded SCT Lesion
    (52988006). The segment's label keeps the class name.

    Returns:
        a pydicom `Code` (its value, scheme and meaning).
    """
    from pydicom.sr.codedict import codes

    known = _lesion_types()
    key = "".join(ch for ch in label.casefold() if ch.isalnum())
    singular = [key, key[:-2] if key.endswith("es") else key, key[:-1] if key.endswith("s") else key]
    return getattr(codes.cid7159, next((known[k] for k in singular if k in known), "Lesion"))


@functools.cache
def _lesion_types() -> dict[str, str]:
    """CID 7159's concepts by their keyword in lower case, and the spellings that name them too."""
    from pydicom.sr.codedict import codes

    known = {k.casefold(): k for k in codes.cid7159.dir() if k not in ("Background", "Normal")}
    return known | {"tumor": "Neoplasm", "tumour": "Neoplasm", "haemorrhage": "Hemorrhage", "oedema": "Edema"}


def _has(ds, keyword: str) -> bool:
    """Whether a DICOM header has the attribute with a value (Type 2 attributes may be present and empty)."""
    return keyword in ds and ds[keyword].value not in (None, "", b"", [])


def _on_unlisted_class(build, source):
    """The SEG `build` makes on a source of a storage class highdicom lists no IOD for (US Image Storage, retired
    but still sent by older ultrasound scanners; a vendor's private class), which it needs only to know which
    attributes form the patient and study modules to copy: those are the same in every image IOD. So the SEG is
    built as on a Secondary Capture image, and its references then name the source's own class."""
    from pydicom.uid import SecondaryCaptureImageStorage

    own = source.SOPClassUID
    stand_in = copy.deepcopy(source)  # a Dataset's copy.copy shares its elements
    stand_in.SOPClassUID = SecondaryCaptureImageStorage
    seg = build(stand_in)

    def own_class(_, element) -> None:
        if element.keyword == "ReferencedSOPClassUID" and element.value == SecondaryCaptureImageStorage:
            element.value = own

    seg.walk(own_class)
    return seg
