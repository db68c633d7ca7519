"""Identity, not position: a run names each sample by its key (path under the dataset root, `#frame` for a DICOM
frame) and a content fingerprint, kept in RUN/samples.json; later commands compare today's dataset with it and say
what changed (added, removed, changed files) instead of re-pairing rows by position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from medcad.atomic import atomic_write_text
from medcad.data.manifest import Manifest
from medcad.errors import DataError
from medcad.runfolder import RunFolder

NEW_IMAGES = ("stop", "ignore")


def file_fingerprint(path: Path) -> str:
    """`<bytes>:<BLAKE2b-128 of the content>`: equal for a file copied or moved elsewhere, different for any edit."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{path.stat().st_size}:{h.hexdigest()}"


def sample_fingerprints(manifest: Manifest) -> dict[str, str]:
    """{key: fingerprint of its image file} for every sample (frames of one file share its fingerprint)."""
    by_file: dict[str, str] = {}
    out = {}
    for key, image in zip(manifest.keys, manifest.table["image"], strict=True):
        if image not in by_file:
            by_file[image] = file_fingerprint(manifest.root / image)
        out[key] = by_file[image]
    return out


def save_samples(manifest: Manifest, path: Path) -> dict[str, str]:
    """Write RUN/samples.json: the run's samples by key, in the manifest's order, with their fingerprints."""
    prints = sample_fingerprints(manifest)
    atomic_write_text(path, json.dumps({"root": str(manifest.root.resolve()), "samples": prints}, indent=0))
    return prints


@dataclass(frozen=True)
class DatasetChange:
    """How today's dataset differs from the one a run was made on (keys, sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = []
        for what, keys in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                parts.append(f"{len(keys)} {what} ({shown})")
        return "; ".join(parts) or "unchanged"


def compare_dataset(run_samples: dict[str, str | None], manifest: Manifest) -> DatasetChange:
    """Today's `manifest` against a run's samples ({key: fingerprint}; None where the run kept no fingerprint,
    then only presence is compared)."""
    keys = manifest.keys
    today = set(keys)
    added = sorted(today - set(run_samples))
    removed = sorted(set(run_samples) - today)
    changed = []
    check = {k for k, fp in run_samples.items() if fp is not None and k in today}
    if check:
        prints = sample_fingerprints(manifest.subset([i for i, k in enumerate(keys) if k in check]))
        changed = sorted(k for k in check if prints[k] != run_samples[k])
    return DatasetChange(tuple(added), tuple(removed), tuple(changed))


def run_samples(run: Path) -> dict[str, str | None] | None:
    """The samples a run was made on: RUN/samples.json, else (runs made before it existed) the keys of
    RUN/splits.json without fingerprints; None when neither is there."""
    path = RunFolder(run).samples
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["samples"]
    splits = RunFolder(run).splits
    if splits.is_file():
        folds = json.loads(splits.read_text(encoding="utf-8"))["folds"]
        return {k: None for f in folds for part in ("train", "val", "test") for k in f.get(part, [])}
    return None


def reconcile(
    manifest: Manifest,
    samples: dict[str, str | None],
    where: Path,
    new_images: str = "stop",
    why: str = "--new-images ignore",
) -> Manifest:
    """Today's dataset restricted to a run's samples, or a DataError saying what changed and what to do.

    Removed or changed files stop (the run's predictions would be paired with other images). Added images join no
    fold: with `new_images="stop"` (the default) they stop with the choices; with "ignore" they are left out and a
    note says how many and `why`.

    Raises:
        DataError: naming the run folder and the change.
    """
    if new_images not in NEW_IMAGES:
        raise DataError(where, f"--new-images {new_images!r}: choose one of {', '.join(NEW_IMAGES)}")
    change = compare_dataset(samples, manifest)
    if change.removed or change.changed:
        raise DataError(
            where,
            f"the dataset changed since this run was made: {change.describe()}. Its results would be paired with "
            "other images: restore the files, or train a new run (another --out) on today's data",
        )
    if not change.added:
        return manifest
    if new_images == "stop":
        raise DataError(
            where,
            f"the dataset has images that are in no fold of this run: {change.describe()}. Choose: "
            "--new-images ignore (go on with the run's images only); score the new images as an external set "
            "(`medcad evaluate RUN --data FOLDER_OF_NEW_IMAGES`); or re-split by training a new run (another --out)",
        )
    added = set(change.added)
    kept = manifest.subset([i for i, k in enumerate(manifest.keys) if k not in added])
    why = f"added since the run was made: in no fold ({why})"
    kept.notes = [*manifest.notes, f"{len(added)} image(s) {why}"]
    kept.sources = manifest.sources
    if manifest.ledger is not None:
        left_out = manifest.ledger.left_out + tuple((k, why) for k in change.added)
        kept.ledger = dataclasses.replace(manifest.ledger, used=len(kept), left_out=left_out)
        kept.notes = [kept.ledger.line() if n == manifest.ledger.line() else n for n in kept.notes]
    return kept
