"""A three-class colonoscopy frame set (normal / unclear / tumour) built from Kvasir-SEG, for the colonoscopy
design's frame table, written outside the repo:

    .venv/bin/python benchmarks/colonoscopy_three_class.py ../shared/data/kvasir-seg /tmp/colon3 [--per-class 300]

- tumour: Kvasir-SEG frames as they are, with their polyp masks (boxes come from the masks);
- normal: from other frames, the largest polyp-free rectangle (at least 35 % of each side), cropped: mucosa with
  no polyp in view;
- unclear: polyp-free crops of yet other frames, defocused (Gaussian blur, sigma 6-12 px) and over- or
  under-exposed, as frames with poor visibility look.
Each source frame gives one image only, and its name is the `patient` column, so no frame is in two parts.
Then: `medcad train /tmp/colon3 --task detect --frame-classes normal,unclear ...` (manifest.csv is read).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def polyp_free_box(mask: np.ndarray, min_side: float = 0.35) -> tuple[int, int, int, int] | None:
    """The largest rectangle (x0, y0, x1, y1) left, right, above or below the polyp's bounding box, or None."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, 0, w, h
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    options = [(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)]
    ok = [b for b in options if b[2] - b[0] >= min_side * w and b[3] - b[1] >= min_side * h]
    return max(ok, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if ok else None


def build(src: Path, out: Path, per_class: int, seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    images = sorted((src / "images").glob("*.jpg"))
    order = rng.permutation(len(images))
    (out / "frames").mkdir(parents=True, exist_ok=True)
    rows, counts = [], {"tumour": 0, "normal": 0, "unclear": 0}
    for i in order:
        path = images[i]
        mask_path = src / "masks" / path.name
        want = next((c for c in ("tumour", "normal", "unclear") if counts[c] < per_class), None)
        if want is None:
            break
        if want == "tumour":
            link = out / "frames" / f"tumour_{path.stem}.jpg"
            if not link.exists():
                link.symlink_to(path.resolve())
            rows.append(
                {
                    "image": f"frames/{link.name}",
                    "label": "tumour",
                    "mask": str(mask_path.resolve()),
                    "patient": path.stem,
                }
            )
        else:
            mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            box = polyp_free_box(mask)
            if box is None:
                continue
            rgb = np.asarray(Image.open(path).convert("RGB"))[box[1] : box[3], box[0] : box[2]]
            if want == "unclear":
                sigma = float(rng.uniform(6, 12))
                rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
                gain = float(rng.choice([rng.uniform(0.25, 0.5), rng.uniform(1.6, 2.4)]))
                rgb = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            name = f"frames/{want}_{path.stem}.png"
            Image.fromarray(rgb).save(out / name)
            rows.append({"image": name, "label": want, "mask": "", "patient": path.stem})
        counts[want] += 1
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "label", "mask", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return counts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=300)
    a = ap.parse_args()
    print(build(a.src, a.out, a.per_class))
