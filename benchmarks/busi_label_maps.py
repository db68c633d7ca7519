"""BUSI as a multi-class segmentation set: one label map per image (0 background, 1 benign lesion, 2 malignant
lesion; normal images all 0), written as nnU-Net keeps a dataset (images/, masks/, dataset.json) outside the repo.

    .venv/bin/python benchmarks/busi_label_maps.py ../shared/data/busi/Dataset_BUSI_with_GT /tmp/busi_label_maps

Images are symbolic links to the originals; each image's masks (BUSI gives some lesions in several files) are
joined. Then e.g. `medcad train /tmp/busi_label_maps --task segment-multiclass --image-size 128 --holdout 0.2`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

VALUES = {"normal": 0, "benign": 1, "malignant": 2}


def build(src: Path, out: Path) -> dict[str, int]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for cls, value in VALUES.items():
        for image in sorted((src / cls).iterdir()):
            if "_mask" in image.stem or image.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            masks = sorted(image.parent.glob(f"{image.stem}_mask*.png"))
            lesion = np.zeros(Image.open(image).size[::-1], bool)
            for m in masks:
                lesion |= np.asarray(Image.open(m).convert("L")) > 127
            stem = image.stem.replace(" ", "_").replace("(", "").replace(")", "")
            link = out / "images" / f"{stem}{image.suffix.lower()}"
            if not link.exists():
                link.symlink_to(image.resolve())
            Image.fromarray((lesion * value).astype(np.uint8)).save(out / "masks" / f"{stem}.png")
            counts[cls] = counts.get(cls, 0) + 1
    labels = {"background": 0, "benign": 1, "malignant": 2}
    (out / "dataset.json").write_text(json.dumps({"name": "BUSI label maps", "labels": labels}, indent=1))
    return counts


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), Path(sys.argv[2])))
