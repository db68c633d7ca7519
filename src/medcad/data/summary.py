"""Summary of a manifest for `medcad data inspect`: counts, groups, sizes, mask and box coverage."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medcad.data.io import describe_image, image_size
from medcad.data.manifest import Manifest
from medcad.errors import DataError


def summarize(manifest: Manifest) -> dict:
    """Counts per label x domain x subgroup, groups, image sizes (from headers), mask and box coverage."""
    t = manifest.table

    def size(i: int) -> tuple[tuple[int, int] | str, list[str]]:
        path = manifest.image_path(i)
        try:
            return image_size(path, manifest.frame(i)), describe_image(path)
        except DataError as e:
            return e.problem, []

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(size, range(len(manifest))))
    sizes = [s for s, _ in found]
    decoding = Counter(note for _, notes in found for note in notes)
    keys = manifest.keys
    bad = [[keys[i], s] for i, s in enumerate(sizes) if isinstance(s, str)]
    wh = np.array([s for s in sizes if not isinstance(s, str)], dtype=int).reshape(-1, 2)
    boxes = [json.loads(b) if b else [] for b in t["boxes"]]
    n_boxes = [len(b) for b in boxes]
    box_classes = Counter(str(x[4]) for b in boxes for x in b)  # what a detector would learn, per class
    combos = t.groupby(["label", "domain", "subgroup"], dropna=False).size().reset_index(name="n")
    patients = [p for p in t["patient"].unique() if p]

    def stats(a: np.ndarray) -> dict:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())} if len(a) else {}

    return {
        "root": str(manifest.root),
        "layout": manifest.layout,
        "n_images": len(t),
        "n_unreadable": len(bad),  # of those, images whose header cannot be read (named among "problems")
        "labels": {k: int(v) for k, v in t["label"].replace("", "(none)").value_counts().sort_index().items()},
        "domains": {k: int(v) for k, v in t["domain"].value_counts().sort_index().items() if k} or None,
        "subgroups": {k: int(v) for k, v in t["subgroup"].value_counts().sort_index().items() if k} or None,
        "by_label_domain_subgroup": combos.to_dict("records"),
        "n_groups": len(patients) or None,
        "n_masks": int((t["mask"] != "").sum()),
        "n_multi_masks": int(t["mask"].str.contains("|", regex=False).sum()),
        "n_images_with_boxes": int(sum(1 for b in n_boxes if b)),
        "n_boxes": int(sum(n_boxes)),
        "box_classes": dict(sorted(box_classes.items())),
        "n_dicom_frames": int(t["frame"].notna().sum()),
        "width": stats(wh[:, 0]),
        "height": stats(wh[:, 1]),
        "n_distinct_sizes": len({tuple(x) for x in wh.tolist()}),
        "extra_columns": [
            c
            for c in t.columns
            if c not in ("image", "frame", "label", "patient", "domain", "subgroup", "mask", "boxes")
        ],
        "problems": [list(p) for p in manifest.problems] + bad,
        "notes": manifest.notes,
        "ledger": manifest.ledger.to_dict() if manifest.ledger else None,
        "decoding": dict(decoding.most_common()),
    }
