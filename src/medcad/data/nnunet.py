"""nnU-Net's file naming: which files of its image folders are read (a case's channel 0000, or the three files of
an RGB image it split: `filekinds.colour_channels`), and what is said of the others (further channels, channel files
outside its folders)."""

from __future__ import annotations

import glob
from collections import defaultdict
from pathlib import Path

from medcad.data.filekinds import (
    NNUNET_CHANNEL,
    NNUNET_IMAGE_FOLDERS,
    colour_channels,
    file_stem,
    file_suffix,
    volume_format,
)


def further_channel(path: Path, firsts: set[tuple[Path, str]] | None = None) -> str | None:
    """For nnU-Net's `<case>_0001`, `_0002`... beside `<case>_0000` in one of its image folders
    (`NNUNET_IMAGE_FOLDERS`): why the file is not read (medcad reads one image per case, channel 0000); else None
    (frames numbered `clip_0000`, `clip_0001` elsewhere are frames). `firsts`: the (folder, case) pairs that have a
    channel 0000, when the caller has listed them (else the folder is looked in)."""
    m = NNUNET_CHANNEL.match(file_stem(path))
    if not m or m["channel"] == "0000" or path.parent.name not in NNUNET_IMAGE_FOLDERS:
        return None
    if firsts is None:
        has_first = any(path.parent.glob(f"{glob.escape(m['case'])}_0000{glob.escape(file_suffix(path))}"))
    else:
        has_first = (path.parent, m["case"]) in firsts
    if not has_first:
        return None
    return (
        f"a further nnU-Net channel (channel {m['channel']} of case {m['case']!r}): only channel 0000 is read (one "
        "image per case; red, green and blue files are read together where dataset.json names them so)"
    )


def first_channels(images: list[Path]) -> list[Path]:
    """Images without nnU-Net's further channel files (`<case>_0001`, `_0002`... beside `<case>_0000`: another
    modality or colour plane of the case; a PNG's colour is in its one file). The ledger names them as not read."""
    matched = ((f, NNUNET_CHANNEL.match(file_stem(f))) for f in images)
    firsts = {(f.parent, m["case"]) for f, m in matched if m and m["channel"] == "0000"}
    return [f for f in images if not further_channel(f, firsts)]


def unnamed_channels_note(files: list[Path]) -> list[str]:
    """A note where volume files are numbered as nnU-Net numbers a case's channels (`c_0000`, `c_0001`, `c_0002`)
    and no dataset.json beside an nnU-Net image folder names them (`filekinds.colour_channels`): each file is then
    read as an image of its own, grey, which for an RGB image nnU-Net split is each colour as an image (an imagesTs/
    folder copied elsewhere had been predicted so, unsaid)."""
    cases: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for f in files:
        if (m := NNUNET_CHANNEL.match(file_stem(f))) and volume_format(f):
            cases[(f.parent, m["case"])].append(f)
    split = [fs for fs in cases.values() if len(fs) > 1 and not any(colour_channels(f) for f in fs)]
    if not split:
        return []
    names = ", ".join(f.name for f in sorted(split[0])[:3])
    return [
        f"{len(split)} case(s) have volume files numbered as nnU-Net numbers channels (e.g. {names}) that no "
        "dataset.json names: each file is read as an image of its own; for an RGB image nnU-Net split in three, keep "
        "them in imagesTr/ or imagesTs/ with the dataset.json naming the channels Red, Green, Blue beside that folder"
    ]
