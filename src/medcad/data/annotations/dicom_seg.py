"""DICOM SEG beside its source images: each SEG object's segments (highdicom) become the mask of the source
instance or frame it references, found by SOPInstanceUID among the DICOM files of the dataset folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from medcad.config import DataOptions
from medcad.data.annotations.shapes import mask_folder, write_mask
from medcad.data.filekinds import is_dicom
from medcad.data.ledger import walk_files
from medcad.data.manifest import Manifest, make_table


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM after all, or unreadable: the folders reader reports such files
        return None


def find_dicom_seg(path: Path, limit: int = 200) -> Path | None:
    """The first DICOM SEG (Modality SEG) under a folder, looking at the headers of up to `limit` DICOM files; for
    `detect_layout`."""
    seen = 0
    for f in walk_files(path):
        if not is_dicom(f):
            continue
        seen += 1
        if seen > limit:
            break
        ds = _header(f)
        if ds is not None and getattr(ds, "Modality", "") == "SEG":
            return f
    return None


def _seg_masks(seg, uid: str, frames: int) -> dict[int | None, np.ndarray]:
    """{frame (None for a single-frame source): (Rows, Columns) bool union of the SEG's segments} for one source."""
    if frames <= 1:
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], combine_segments=True)
        return {None: np.asarray(px)[0] > 0}
    out = {}
    for k in range(frames):
        try:
            px = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=uid, source_frame_numbers=[k + 1], combine_segments=True
            )
        except (KeyError, ValueError, IndexError):  # the SEG has no frame for it: that frame has no mask
            continue
        out[k] = np.asarray(px)[0] > 0
    return out


def read_dicom_seg(path: Path, options: DataOptions) -> Manifest:
    """DICOM images and DICOM SEG objects in one folder tree: one row per source image (per frame of a multi-frame
    one), its mask the union of the segments a SEG gives it, its label the segments' label when one SEG names one
    label. A SEG that references no instance of the folder, or cannot be read, is left out with the reason;
    sources without a SEG are rows without a mask (a note counts them)."""
    import highdicom as hd

    root = path
    sources: dict[str, tuple[str, int]] = {}  # SOPInstanceUID -> (relative path, frames)
    segs: list[Path] = []
    for f in walk_files(root):
        if not is_dicom(f):
            continue
        ds = _header(f)
        if ds is None:
            continue
        if getattr(ds, "Modality", "") == "SEG":
            segs.append(f)
        elif "SOPInstanceUID" in ds and "Rows" in ds:
            sources[str(ds.SOPInstanceUID)] = (f.relative_to(root).as_posix(), int(getattr(ds, "NumberOfFrames", 1)))
    problems: list[tuple[str, str]] = []
    masks: dict[tuple[str, int | None], list[np.ndarray]] = {}
    labels: dict[str, Counter] = {}
    for f in segs:
        rel = f.relative_to(root).as_posix()
        try:
            seg = hd.seg.segread(f)
            refs = [uid for _, _, uid in seg.get_source_image_uids()]
            names = {seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()}
        except Exception as e:  # highdicom raises many types on malformed objects
            problems.append((rel, f"unreadable DICOM SEG ({type(e).__name__}: {str(e)[:120]})"))
            continue
        known = [uid for uid in refs if uid in sources]
        if not known:
            problems.append((rel, f"references {len(refs)} instance(s), none of them in this folder"))
            continue
        for uid in known:
            image, frames = sources[uid]
            try:
                for frame, m in _seg_masks(seg, uid, frames).items():
                    masks.setdefault((uid, frame), []).append(m)
            except (KeyError, ValueError, IndexError) as e:
                problems.append((rel, f"no mask for {image} ({type(e).__name__}: {e})"))
                continue
            labels.setdefault(uid, Counter()).update(names)
    rows = []
    for uid, (image, frames) in sources.items():
        label = labels.get(uid)
        base = {"image": image, "label": next(iter(label)) if label and len(label) == 1 else ""}
        for frame in [None] if frames <= 1 else list(range(frames)):
            row = dict(base, **({} if frame is None else {"frame": frame}))
            found = masks.get((uid, frame))
            if found:
                folder = mask_folder(root / image)
                name = f"{uid}" + ("" if frame is None else f"_{frame}") + ".png"
                row["mask"] = write_mask(folder / name, np.logical_or.reduce(found), root)
            rows.append(row)
    n_masked = sum(1 for r in rows if r.get("mask"))
    notes = [f"{len(segs)} DICOM SEG object(s) give masks to {n_masked} of {len(rows)} images/frames"]
    seg_files = [f.relative_to(root).as_posix() for f in segs]
    return Manifest(root, make_table(rows), "dicom-seg", problems, notes, sources=seg_files)
