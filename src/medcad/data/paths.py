"""Image paths as annotation files and manifests write them, found under the dataset's folder: Windows separators,
`./` and `..` steps, absolute paths of this machine or of another (resolved by their tail), names spelled in
another letter case, Unicode form, or without their extension."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from pathlib import Path

from medcad.data.filekinds import VOLUME_SUFFIXES, file_stem, file_suffix
from medcad.data.manifest import nfc
from medcad.data.media import MEDIA_SUFFIXES


def existing_tail(root: Path, path: str) -> tuple[str, str] | None:
    """(the longest proper tail of `path` that is a file under `root`, the prefix dropped), or None: another
    machine's absolute path (`C:/Users/ann/label-studio/media/upload/3/x.jpg`, `/home/ann/polyps/images/x.jpg`) or
    a release prefix that is not there (`release/benign/b1.png`) read by what remains. '/' separators."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for k in range(1, len(parts)):
        tail = "/".join(parts[k:])
        if (root / tail).is_file():
            return posixpath.normpath(tail), "/".join(parts[:k])
    return None


class PathResolver:
    """Image paths of a manifest as people write them, resolved under its folder to one spelling per file (its
    identity in splits, duplicates and the ledger): Windows separators (`a\\b.png`), `./` and `..` steps, this
    machine's absolute paths under the folder (also through a symbolic link), and paths that exist only as a tail
    under the folder (another machine's absolute path, a prefix folder that is not there:
    `C:/data/release/benign/b1.png` -> `benign/b1.png`). Each kind of rewrite is counted for a note."""

    def __init__(self, root: Path) -> None:
        self.root, self.windows, self.tails = root, 0, Counter()
        self.absolute = 0
        self.respelled: Counter = Counter()  # paths matched to a file spelled otherwise, by kind
        self.listings: dict[Path, tuple[dict[str, list[str]], dict[str, list[str]]]] = {}

    def _under_root(self, path: Path) -> str | None:
        """`path` (absolute) relative to the folder, by its spelling or else by where both lead; None outside."""
        for a, b in ((path, self.root.absolute()), (path.resolve(), self.root.resolve())):
            try:
                rel = Path(os.path.relpath(os.path.normpath(a), os.path.normpath(b))).as_posix()
            except ValueError:  # another drive (Windows)
                continue
            if rel != ".." and not rel.startswith("../"):
                return rel
        return None

    def resolve(self, raw: str) -> str:
        text = raw.strip()
        if "\\" in text:
            text, self.windows = text.replace("\\", "/"), self.windows + 1
        if Path(text).is_absolute() and Path(text).is_file():  # this machine's own absolute path
            rel = self._under_root(Path(text))
            if rel is None:
                return os.path.normpath(text)  # outside the manifest's folder: kept, one spelling
            self.absolute += 1
            return rel
        if not text:
            return text
        if (self.root / text).is_file():
            norm = posixpath.normpath(text)  # ./a.png, a/../b.png: one spelling per file
            return norm if norm == text or (self.root / norm).is_file() else text
        found = existing_tail(self.root, text)
        if found is not None:
            tail, prefix = found
            self.tails[prefix] += 1
            return tail
        return self._spelled_otherwise(posixpath.normpath(text)) or text

    def _spelled_otherwise(self, text: str) -> str | None:
        """The one file under the folder that `text` names in another spelling, each rewrite counted: letter case
        (`IMG.JPG` for `img.jpg`, as Windows and macOS do not tell them apart), Unicode form (macOS keeps é as
        e + accent), or no extension (ISIC's `ISIC_0024306` for `ISIC_0024306.jpg`); None when no file or several
        match."""
        here, kinds = self.root, []
        parts = text.split("/")
        for i, part in enumerate(parts):
            if part == "..":
                here = here / part
                continue
            if (here / part).exists():
                here = here / part
                continue
            if not here.is_dir():
                return None
            key = _spelling_key(part)
            by_name, by_stem = self._listing(here)
            found = by_name.get(key, [])
            kind = "differs in letter case or Unicode form"
            if not found and i == len(parts) - 1 and not Path(part).suffix:
                found = by_stem.get(key, [])
                kind = "is written without its extension"
            if len(found) != 1:
                return None
            kinds.append(kind)
            here = here / found[0]
        if not here.is_file():
            return None
        for kind in set(kinds):  # once per path, however many of its folders were spelled otherwise
            self.respelled[kind] += 1
        return Path(os.path.relpath(here, self.root)).as_posix()

    def _listing(self, folder: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """A folder's entries by `_spelling_key` of their name, and its media files by that of their stem (built
        once per folder: a table of thousands of paths looks each up in a dict)."""
        if folder not in self.listings:
            by_name: dict[str, list[str]] = {}
            by_stem: dict[str, list[str]] = {}
            for e in sorted(os.listdir(folder)):
                by_name.setdefault(_spelling_key(e), []).append(e)
                if (suffix := file_suffix(e)) in MEDIA_SUFFIXES or suffix in VOLUME_SUFFIXES:
                    by_stem.setdefault(_spelling_key(file_stem(e)), []).append(e)
            self.listings[folder] = by_name, by_stem
        return self.listings[folder]

    def notes(self, name: str) -> list[str]:
        out = [f"{self.windows} path(s) in {name} use Windows separators '\\': read with '/'"] if self.windows else []
        if self.absolute:
            out.append(f"{self.absolute} absolute path(s) in {name} under its folder: read as paths relative to it")
        for kind, n in self.respelled.most_common():
            out.append(f"{n} path(s) in {name} name a file that {kind}: read as that file")
        for prefix, n in self.tails.most_common():
            out.append(
                f"{n} path(s) in {name} start with {prefix!r}, which is not under {self.root.name}/: "
                "resolved by their remaining path under the manifest's folder"
            )
        return out


def _spelling_key(name: str) -> str:
    """A file name compared as Windows and macOS compare them: Unicode NFC form, case folded."""
    return nfc(name).casefold()
