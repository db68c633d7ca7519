"""The real datasets read with today's decoding policy, against the fixed-threshold reader it replaced.

For BUSI and Kvasir-SEG: images, masks and boxes found; for every mask file, pixels whose lesion/background
decision differs from the old rule (channel max > 127); how each mask was decoded; exact and near-duplicate
groups (docs/results.md lists the figures before the change: BUSI 1 exact and 144 near groups holding 324 images,
Kvasir-SEG 0 and 14 holding 31).

    .venv/bin/python benchmarks/reading_check.py

Writes benchmarks/results/reading_check.json.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
from common import write_result
from PIL import Image

from medcad.data.audit import audit
from medcad.data.layouts import load_manifest
from medcad.data.masks import decode_mask

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
SETS = {"busi": DATA / "busi" / "Dataset_BUSI_with_GT", "kvasir-seg": DATA / "kvasir-seg"}


def old_mask(path: Path) -> np.ndarray:
    """The reader before this change: RGB (or L), channel max, > 127."""
    with Image.open(path) as im:
        arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    return (arr.max(axis=2) if arr.ndim == 3 else arr) > 127


def check(root: Path) -> dict:
    t0 = time.perf_counter()
    m = load_manifest(root)
    files = [p for i in range(len(m)) for p in m.mask_paths(i)]
    rules, changed_files, changed_pixels, total = Counter(), [], 0, 0
    for p in files:
        new, how = decode_mask(p)
        old = old_mask(p)
        rules[how.rule.split(" threshold")[0]] += 1
        diff = int((new != old).sum())
        total += new.size
        if diff:
            changed_files.append([str(p.relative_to(m.root)), diff])
            changed_pixels += diff
    a = audit(m)
    return {
        "layout": m.layout,
        "notes": m.notes,
        "n_images": len(m),
        "labels": dict(Counter(m.table["label"])),
        "n_mask_files": len(files),
        "n_boxes": int(sum(len(json.loads(b)) for b in m.table["boxes"] if b)),
        "mask_rules": dict(rules),
        "mask_files_changed": len(changed_files),
        "mask_pixels_changed": changed_pixels,
        "mask_pixels_total": total,
        "changed_examples": changed_files[:10],
        "exact_duplicate_groups": len(a["exact_duplicates"]),
        "near_duplicate_groups": len(a["near_duplicates"]),
        "images_in_duplicate_groups": a["n_images_in_duplicate_groups"],
        "low_content_images": len(a["low_content_images"]),
        "empty_masks": len(a["empty_masks"]),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    for name, root in SETS.items():
        out[name] = check(root)
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "changed_examples"}))
    (HERE / "results").mkdir(exist_ok=True)
    write_result((HERE / "results" / "reading_check.json"), out)


if __name__ == "__main__":
    main()
