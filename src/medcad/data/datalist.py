"""MONAI / Medical Segmentation Decathlon datalists: a `dataset.json` (any JSON at the dataset's top) whose
"training" (and "validation", "test") lists name each image with its mask or class, as MONAI's
`load_decathlon_datalist` reads them: {"image": path, "label": path of a mask, or a class}. Paths are relative to the
JSON's folder. The list a row comes from is its `split` (train / val / test: `--split-column split` keeps the
dataset's own split). Read through the CSV reader's table rules (`tables.table_manifest`), so a missing file is
named as in a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medcad.config import DataOptions
from medcad.data.filekinds import NNUNET_IMAGE_FOLDERS, VOLUME_SUFFIXES, file_stem, file_suffix
from medcad.data.manifest import Manifest
from medcad.data.media import MEDIA_SUFFIXES
from medcad.data.tables import table_manifest
from medcad.data.versions import per_file_version
from medcad.errors import DataError

LISTS = {"training": "train", "validation": "val", "test": "test"}  # a datalist's lists, and the split each is


def datalist_entries(data: object) -> dict[str, list] | None:
    """The lists of a datalist ({"training": [...], ...}) whose items name an image (a dict with "image", or a path
    as the Decathlon's "test" list has them), or None: not a datalist."""
    if not isinstance(data, dict) or not isinstance(data.get("training"), list) or not data["training"]:
        return None
    lists = {k: data[k] for k in LISTS if isinstance(data.get(k), list)}
    ok = all(isinstance(x, str) or (isinstance(x, dict) and "image" in x) for items in lists.values() for x in items)
    return lists if ok and all(isinstance(x, dict) for x in lists["training"]) else None


@per_file_version(maxsize=8)  # parsed once: layout detection finds it, the reader reads it
def _entries(path: Path) -> dict[str, list] | None:
    """`datalist_entries` of a JSON file. Raises OSError, UnicodeDecodeError, json.JSONDecodeError."""
    return datalist_entries(json.loads(path.read_text(encoding="utf-8-sig")))


def find_datalist(path: Path) -> Path | None:
    """`dataset.json`, else the one JSON at the top of `path` that is a datalist; for `detect_layout`. A JSON without
    the text "training" is not parsed (a COCO file beside it: 2 s for 62 MB, at every read)."""
    if not path.is_dir():
        return None
    candidates = sorted(path.glob("*.json"), key=lambda f: f.name != "dataset.json")
    for f in candidates[:10]:
        try:
            if '"training"' in f.read_text(encoding="utf-8-sig") and _entries(f) is not None:
                return f
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return None


def _is_path(value: object) -> bool:
    return isinstance(value, str) and (
        (suffix := file_suffix(value.replace("\\", "/"))) in MEDIA_SUFFIXES or suffix in VOLUME_SUFFIXES
    )


def _nnunet_case_file(root: Path, image: str) -> str | None:
    """For an item naming an nnU-Net case (`./imagesTr/la_003.nii.gz`, as nnU-Net v1's `generate_dataset_json` lists
    it) where no such file is but the case's channel 0000 is (`imagesTr/la_003_0000.nii.gz`): that file's path as the
    item writes it; else None (the item is read as written)."""
    written = Path(image.replace("\\", "/"))
    if written.parent.name not in NNUNET_IMAGE_FOLDERS or (root / written).exists():
        return None
    channel = written.with_name(f"{file_stem(written)}_0000{file_suffix(written)}")
    return channel.as_posix() if (root / channel).is_file() else None


def read_datalist(path: Path, options: DataOptions) -> Manifest:
    """A datalist (see the module docstring): one row per item, its mask (a path) or its label (a class: an index
    as written, e.g. '0'), its split. An item with several images (MONAI's channels) is left out by name, and so
    are the 'test' list's items without a label (the Decathlon's)."""
    source = path if path.is_file() else find_datalist(path)
    if source is None:
        raise DataError(path, "no datalist JSON (a 'training' list of {'image', 'label'} items) found")
    try:
        lists = _entries(source)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(source, f"cannot parse as JSON ({e})") from e
    if lists is None:
        raise DataError(source, "not a datalist: no 'training' list of items with an 'image'")
    rows, several, unlabelled, cases, items_of = [], [], [], [], []
    for key, items in lists.items():
        for k, item in enumerate(items):
            item = item if isinstance(item, dict) else {"image": item}
            image, label = item["image"], item.get("label")
            if not isinstance(image, str):
                several.append(f"{key}[{k}]")
                continue
            if (channel := _nnunet_case_file(source.parent, image)) is not None:
                cases.append(image)
                image = channel
            if label is None and key == "test":  # the Decathlon's test images: no label to score them against
                unlabelled.append(image)
                continue
            row = {"image": image, "split": LISTS[key]}
            if _is_path(label):
                row["mask"] = label
            elif label is not None and not isinstance(label, list | dict):
                row["label"] = str(label)
            rows.append(row)
            items_of.append(f"{key}[{k}]")
    if not rows:
        raise DataError(source, "its lists name no image with a single file")
    df = pd.DataFrame(rows, index=items_of, dtype=str).fillna("")  # where a row is wrong: its item, training[3]
    counts = ", ".join(f"{key} {len(items)}" for key, items in lists.items())
    notes = [
        f"datalist {source.name}: {counts} item(s); a label that is a file is the image's mask, else its class; the "
        "list each came from is column 'split' (--split-column split keeps it)"
    ]
    if unlabelled:
        notes.append(
            f"{len(unlabelled)} item(s) of its 'test' list have no label (e.g. {unlabelled[0]}): not read, as they "
            "could only be scored as lesion-free; `medcad predict` predicts them"
        )
    if cases:
        notes.append(
            f"{len(cases)} item(s) name an nnU-Net case whose image files carry a channel number, as nnU-Net v1's "
            f"dataset.json does (e.g. {cases[0]}): read from its channel 0000"
        )
    if several:
        notes.append(f"{len(several)} item(s) name several images (channels), which medcad does not read: left out, "
                     f"e.g. {several[0]}")  # fmt: skip
    return table_manifest(df, source, notes, "datalist")
