"""How a folders layout's folder names are read: a release's split folders, class folders, patient folders inside
them (and visit or series folders inside those), or classes inside site or modality folders; the same reading for
the sub-folders of paired image and mask folders. Each reading says why, and how to ask for the other one."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from medcad.data.media import pattern_regex
from medcad.data.splits import is_split_name

PATIENT_FOLDER = re.compile(r"^(?:patient|pat|pt|p|subject|subj|sub|case|participant)[ _\-]?\d+$", re.IGNORECASE)
MAX_SCALE = 10  # more id-named folders under several outer ones than a grading scale has (BI-RADS 0-6, DR 0-4)


def id_like(names) -> bool:
    """Whether every folder name holds a digit, as ids do (P007, b000, 001; not cecum, polyps)."""
    return all(any(c.isdigit() for c in name) for name in names)


def detect_pattern(root: Path, files: list[Path]) -> tuple[str, str]:
    """The folder pattern of a folders layout, and why when it is not the plain one (`folder_pattern`); none in a
    DICOM file set (a DICOMDIR beside PATIENT/STUDY/SERIES folders, whose names are ids)."""
    if (root / "DICOMDIR").is_file():
        return "", (
            ": a DICOM file set (DICOMDIR): its folders are patient / study / series ids, not labels; give --pattern "
            "or a manifest for labels"
        )
    return folder_pattern([f.relative_to(root).parts[:-1] for f in files])


def folder_pattern(folders: list[tuple[str, ...]]) -> tuple[str, str]:
    """The pattern of images in `folders` (each image's folder names, outermost first), and why when it is not the
    plain one: `{label}` for class folders (class indices 0, 1, ... N-1 among them: a MedMNIST or GTSRB export);
    `{patient}` for folders named as patients (`patient0001`, `P07`, `case_3`), numbered with leading zeros, or more
    folders named as ids than a grading scale has (other readings said); a release's split folders first (train /
    val / test) give the 'split' column, and the levels inside them are read so in turn; with every image two or
    more folders down, `{label}/{patient}` (and `/*` for each deeper level: visits, dates, series) when the second
    level's names are ids (`id_like`) that outnumber the two or more first-level folders (patients or cases within
    class folders; an id under several class folders is one patient, said, when the names outnumber a grading scale
    (`MAX_SCALE`) and the class folders are not named as ids); else `*/{label}` (the innermost folders are the
    classes: `site1/benign`, ...), said with the other reading."""
    depth = Counter(len(parts) for parts in folders)
    outers = {parts[0] for parts in folders if parts}
    if outers and not depth.get(0) and all(is_split_name(o) for o in outers):
        inner, why = folder_pattern([parts[1:] for parts in folders])
        said = (
            f": the outer folders ({', '.join(sorted(outers))}) are a release's split, kept in the 'split' column "
            "(`data split --split-column split` keeps it; medcad makes grouped folds otherwise)"
        )
        why = why.replace("--pattern '", "--pattern '{split}/")  # the other readings, as whole patterns
        return "/".join(["{split}", *([inner] if inner else [])]), said + (f"; inside them{why}" if why else "")
    if depth.get(1) and not depth.get(0) and id_like(outers):
        named = all(PATIENT_FOLDER.match(o) for o in outers)
        numbers = all(o.isdigit() for o in outers)
        indices = numbers and sorted(int(o) for o in outers) == list(range(len(outers)))  # 0, 1, ... N-1: classes
        padded = numbers and any(len(o) > 1 and o.startswith("0") for o in outers)  # 001, 002: ids
        if named or (not indices and (padded or len(outers) > MAX_SCALE)):
            why = (
                "named as patients"
                if named
                else "numbered with leading zeros, as ids are"
                if padded
                else "more than a grading scale has"
            )
            return "{patient}", (
                f": the {len(outers)} folders are named as ids (e.g. {min(outers)}), {why}, so they are patients "
                "(CAMUS's patient0001/), not classes; --pattern '{label}' reads them as classes"
            )
        if not indices or len(outers) > MAX_SCALE:  # grades 0..4 are classes, unsaid; 1..5, site1/ may be patients
            return "{label}", (
                f": the {len(outers)} folders, named as ids (e.g. {min(outers)}), are read as the classes; if they "
                "are patients, give --pattern '{patient}' (their images then stay together in every split)"
            )
    if depth.get(1) or depth.get(0):
        return ("{label}" if depth.get(1) else ""), ""
    deepest = "*/" * (max(depth) - 1) + "{label}"
    if len(depth) > 1:
        return (
            deepest,
            f": images lie {' or '.join(map(str, sorted(depth)))} folders down; the innermost are the classes",
        )
    parents: dict[str, set[str]] = defaultdict(set)
    for parts in folders:
        parents[parts[1]].add(parts[0])
    deeper = "/*" * (max(depth) - 2)
    shared = sorted(name for name, ps in parents.items() if len(ps) > 1)
    # names under several outer folders are patients only beyond what a grading scale holds (aptos/0..4 beside
    # messidor/0..4 are grades inside sites), and only inside folders not named as ids themselves
    many = len(parents) > MAX_SCALE and not id_like(outers)
    ids = id_like(parents) and (not shared or many)
    if len(outers) >= 2 and len(parents) > len(outers) and ids:
        why = (
            f": the {len(parents)} second-level folders are named as ids and outnumber the {len(outers)} first-level "
            "ones, so the first are the classes and the second patients"
        )
        if shared:
            why += (
                f"; {len(shared)} patient folder name(s) recur under several class folders (e.g. {shared[0]} under "
                f"{', '.join(sorted(parents[shared[0]]))}), each read as one patient, whose images stay together in "
                "every split (if each class folder numbers its own patients, give a manifest with patient ids)"
            )
        return "{label}/{patient}" + deeper, why + f"; --pattern '{deepest}' reads the innermost as classes"
    inner = sorted({parts[-1] for parts in folders})
    why = f": the {len(inner)} innermost folders are read as the classes (e.g. {inner[0]})"
    if shared and id_like(parents) and not deeper:
        why += (
            f"; their names recur under several outer folders (e.g. {shared[0]} under "
            f"{', '.join(sorted(parents[shared[0]]))}): classes (grades) within sites, or patients numbered within "
            "each class folder? The latter: --pattern '{label}/{patient}'"
        )
        return deepest, why
    if len(outers) == 1:  # a release's one top folder (Dataset_BUSI_with_GT/): no other reading to offer
        return deepest, why + f", inside {next(iter(outers))}/"
    return deepest, why + (
        "; if the classes are the outer folders with patients inside, give --pattern '{label}/{patient}" + deeper + "'"
    )


def subfolder_fields(rows: list[dict], image_dir: Path) -> tuple[list[dict], str]:
    """Rows of an image folder whose images all lie in sub-folders (`images/benign/1.png` beside
    `masks/benign/1.png`) with the fields the sub-folders give, read as a folders layout's are (`folder_pattern`),
    except that one level of six or more sub-folders named as ids is patients (`images/P001/`); and a note saying
    so ('' when the images lie in the folder itself). The sub-folders had been dropped unsaid."""
    folders = [Path(r["image"]).relative_to(image_dir).parts[:-1] for r in rows]
    if not rows or not all(folders):
        return rows, ""
    names = {f[0] for f in folders}
    if all(len(f) == 1 for f in folders) and id_like(names) and len(names) >= 6:
        pattern, why = "{patient}", f": the {len(names)} sub-folders are named as ids, so they are patients"
    else:
        pattern, why = folder_pattern(folders)
    if not pattern:
        return rows, ""
    regex = pattern_regex(pattern)
    out = []
    for row, parts in zip(rows, folders, strict=True):
        match = regex.match("/".join(parts))
        out.append({**row, **{k: v for k, v in match.groupdict().items() if v}} if match else row)
    why = why or (": their names are the images' labels" if pattern == "{label}" else "")
    return out, f"sub-folders of {image_dir.as_posix()}/ read with the folder pattern {pattern!r}{why}"
