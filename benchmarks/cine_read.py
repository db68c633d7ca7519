"""Reading every frame of a multi-frame DICOM (a cine loop) with medcad's reader: seconds and ms per frame for native
and RLE-compressed cines of 25 to 1,200 frames, the compressed ones with and without a Basic Offset Table (without
one, reading frame by frame finds each frame from the file's start again), beside reading each frame alone (how
the cine reader read them until 2026-12-04).

    PYTHONPATH=src .venv/bin/python benchmarks/cine_read.py

Writes benchmarks/results/cine_read.json. The frames are 256 x 256 8-bit grey noise of four levels (RLE compresses
them a little, as it does ultrasound speckle).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from common import write_result
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

from medcad.data.cine import DicomCine
from medcad.data.dicom import read_dicom_frame

HERE = Path(__file__).resolve().parent
SIZE = 256


def write_cine(path: Path, n: int, how: str) -> Path:
    """An n-frame cine: `how` "native", "rle" (with an offset table) or "rle-no-offset-table"."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime = n, 40
    frames = (np.random.default_rng(0).integers(0, 4, (n, SIZE, SIZE)) * 60).astype(np.uint8)
    ds.PixelData = frames.tobytes()
    if how != "native":
        ds.compress(RLELossless, frames, encoding_plugin="pydicom")
    if how == "rle-no-offset-table":
        parts = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=n)]
        ds.PixelData = encapsulate(parts, has_bot=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (25, 100, 400, 1200):
            for how in ("native", "rle", "rle-no-offset-table"):
                path = write_cine(Path(tmp) / f"{how}_{n}.dcm", n, how)
                t = time.perf_counter()
                with DicomCine(path) as cine:
                    decoded = sum(1 for _ in cine.frames())
                seconds = time.perf_counter() - t
                t = time.perf_counter()
                for i in range(n):  # how the cine was read before: each frame alone
                    read_dicom_frame(path, i)
                alone = time.perf_counter() - t
                rows.append(
                    {
                        "frames": n,
                        "storage": how,
                        "decoded": decoded,
                        "seconds": round(seconds, 3),
                        "ms_per_frame": round(seconds / n * 1000, 2),
                        "frame_by_frame_seconds": round(alone, 3),
                    }
                )
                print(rows[-1], flush=True)
    write_result(HERE / "results" / "cine_read.json", {"pydicom": pydicom.__version__, "rows": rows})


if __name__ == "__main__":
    main()
