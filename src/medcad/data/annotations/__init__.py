"""Readers for what annotation tools export: labelme JSON beside the images, COCO JSON (boxes, and polygon or RLE
segmentation through pycocotools), CVAT-for-images XML, VGG Image Annotator (VIA) JSON, YOLO label files, Pascal
VOC XML, and Excel .xlsx manifests.

Polygons, rectangles, circles/ellipses and bitmaps become mask files: each image's shapes are rasterised once, at
the image's own size, into a PNG under `cache_dir()/annotation_masks/<hash of the source file, its size and
mtime>/`, and the manifest's `mask` column names that PNG like any other mask file. Files rather than rasterising
on read, because every user of masks (training, the decoded-mask cache, audit, boxes from masks, evaluation) reads
mask files through one decoder (`medcad.data.masks.read_mask`): only the readers change, and an edited source gets a
new folder. The mask paths are written relative to the dataset root (with `..`), so that `root / path` and
`path.relative_to(root)` both hold.

Every reader names the file it read in `Manifest.sources`, leaves out with a reason (`Manifest.problems`) what it
cannot use, and says in a note what it decided: shapes clipped at the image border, shapes without area, labels
that disagree, images without annotations. Annotations that name a class the file does not declare are refused,
never given an invented class.
"""

from medcad.data.annotations.coco import read_coco
from medcad.data.annotations.cvat import find_cvat, read_cvat
from medcad.data.annotations.dicom_seg import find_dicom_seg, read_dicom_seg
from medcad.data.annotations.kvasir import add_box_json
from medcad.data.annotations.labelme import find_labelme, is_labelme, read_labelme
from medcad.data.annotations.via import find_via, read_via
from medcad.data.annotations.voc import find_voc, is_voc_xml, read_voc
from medcad.data.annotations.yolo import find_yolo, read_yolo

__all__ = [
    "add_box_json",
    "find_cvat",
    "find_dicom_seg",
    "find_labelme",
    "find_via",
    "find_voc",
    "find_yolo",
    "is_labelme",
    "is_voc_xml",
    "read_coco",
    "read_cvat",
    "read_dicom_seg",
    "read_labelme",
    "read_via",
    "read_voc",
    "read_yolo",
]
