"""Near-duplicate grouping before and now, on BUSI, Kvasir-SEG and a synthetic ultrasound video set.

Before (medcad until 2026-12-02): whole-frame perceptual hashes, groups = connected components of the links
(single linkage). Now: static regions of each kind of frame masked before hashing, groups cut by average linkage.
Two intermediate rows show what each half of the change does alone. The synthetic set is
`generate_ultrasound_sweeps` at the size of the public kidney ultrasound set that collapsed (10 patients,
5,090 frames). Seconds: features + links + groups, from cached fingerprints; fingerprinting (decoding) is
timed once per set, cold.

    .venv/bin/python benchmarks/grouping.py [--frames-per-patient 509]

Writes benchmarks/results/grouping.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import write_result

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
METHODS = {  # name: (region, linkage)
    "before: frame hashes, single linkage": ("frame", "single"),
    "content hashes, single linkage": ("content", "single"),
    "frame hashes, average linkage": ("frame", "average"),
    "content hashes, complete linkage": ("content", "complete"),
    "now: content hashes, average linkage": ("content", "average"),
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(manifest, fps, region: str, linkage: str) -> tuple[dict, list[list[int]], list]:
    from medcad.data.audit import cross_label
    from medcad.data.duplicates import content_features, duplicate_links, link_groups
    from medcad.data.fingerprints import ImageFingerprint

    t0 = time.perf_counter()
    feats = content_features([f if isinstance(f, ImageFingerprint) else None for f in fps], region)
    links = duplicate_links(fps, near=True, feats=feats)
    groups = link_groups(len(fps), links, linkage, feats)
    seconds = time.perf_counter() - t0
    labels = manifest.table["label"].tolist()
    owner = (
        manifest.table["patient"].tolist()
        if manifest.has("patient")
        else [k.split("/")[0] if "/" in k else "." for k in manifest.keys]
    )
    gid = {i: k for k, g in enumerate(groups) for i in g}
    biggest = max(groups, key=len, default=[])
    reported = {
        (min(a, b), max(a, b))
        for g in cross_label(groups, links, labels)
        for a in g
        for b in g
        if a != b and labels[a] != labels[b]
    }
    out = {
        "n_groups": len(groups),
        "images_in_groups": sum(map(len, groups)),
        "largest_group": len(biggest),
        "largest_group_spans": len({owner[i] for i in biggest}),
        "groups_spanning_owners": sum(len({owner[i] for i in g}) > 1 for g in groups),
        "cross_label_groups": sum(len({labels[i] for i in g}) > 1 for g in groups),
        "cross_label_pairs_grouped": sum(
            labels[a] != labels[b] for g in groups for k, a in enumerate(g) for b in g[k + 1 :]
        ),
        "cross_label_pairs_reported": len(reported),
        "links": len(links),
        "links_between_groups": sum(gid.get(x.i, -1) != gid.get(x.j, -2) for x in links),
        "blank_images": int(feats.blank.sum()),
        "masked_kinds": feats.kinds,
        "seconds": round(seconds, 3),
    }
    if manifest.has("patient"):
        pairs = [(i, i + 1) for i in range(len(owner) - 1) if owner[i] == owner[i + 1]]
        pairs = [(i, j) for i, j in pairs if not feats.blank[i] and not feats.blank[j]]
        together = [gid.get(i, -1) == gid.get(j, -2) for i, j in pairs]
        out["consecutive_frames_grouped"] = round(float(np.mean(together)), 3)
    return out, groups, sorted(reported)


def run_set(name: str, path: Path, owner_unit: str) -> dict:
    from medcad.data.fingerprints import fingerprints
    from medcad.data.layouts import load_manifest

    m = load_manifest(path)
    t0 = time.perf_counter()
    fps = fingerprints(m)
    row = {"n_images": len(m), "owners": owner_unit, "fingerprint_seconds_cold": round(time.perf_counter() - t0, 2)}
    reference = None
    for method, (region, linkage) in METHODS.items():
        stats, _, reported = measure(m, fps, region, linkage)
        if reference is None:
            reference = set(reported)  # the cross-label pairs the old grouping reported
        stats["before_cross_label_pairs_still_reported"] = f"{len(reference & set(reported))} of {len(reference)}"
        row[method] = stats
        print(f"{name:12s} {method:40s} " + ", ".join(f"{k} {v}" for k, v in stats.items() if k != "masked_kinds"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames-per-patient", type=int, default=509)
    ap.add_argument("--patients", type=int, default=10)
    args = ap.parse_args()
    import scipy.cluster.hierarchy  # noqa: F401  (imported here: import time is not grouping time)
    import scipy.fft  # noqa: F401

    from medcad.data.synthetic import generate_ultrasound_sweeps

    result = {"date": date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDCAD_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold fingerprints, no stale cache
        t0 = time.perf_counter()
        csv = generate_ultrasound_sweeps(
            Path(tmp) / "us", n_patients=args.patients, frames_per_patient=args.frames_per_patient
        )
        gen = round(time.perf_counter() - t0, 1)
        sets = {
            "busi": (DATA / "busi" / "Dataset_BUSI_with_GT", "top folders (= labels)"),
            "kvasir-seg": (DATA / "kvasir-seg", "top folders (one)"),
            "synthetic-ultrasound": (csv, "patients"),
        }
        for name, (path, unit) in sets.items():
            if not Path(path).exists():
                print(f"{name}: {path} not found, skipped")
                continue
            result["sets"][name] = run_set(name, Path(path), unit)
        result["sets"]["synthetic-ultrasound"]["generated"] = {
            "patients": args.patients,
            "frames_per_patient": args.frames_per_patient,
            "seconds": gen,
        }
    out = HERE / "results" / "grouping.json"
    out.parent.mkdir(exist_ok=True)
    write_result(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
