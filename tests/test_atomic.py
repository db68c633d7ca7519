"""Atomic writes (medcad.atomic): a file is complete or as it was, and a rewrite is a new file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from medcad.atomic import atomic_path, atomic_write_text, leftovers


def test_a_rewrite_is_a_new_file_beside_the_old_one_and_a_hard_link_keeps_the_old_bytes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "best.npy"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npy" and tmp.name.startswith(".best.")
        np.save(tmp, np.arange(3))  # numpy keeps a name ending in .npy as it is
    os.link(path, tmp_path / "snapshot.npy")
    with atomic_path(path) as tmp:
        np.save(tmp, np.arange(5))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4]
    assert np.load(tmp_path / "snapshot.npy").tolist() == [0, 1, 2]  # not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.npy"]  # no temporary file left


def test_a_failed_write_leaves_the_file_as_it_was_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    atomic_write_text(path, "{}")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text('{"half')
        raise KeyboardInterrupt
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_written_file_has_the_permissions_open_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.csv", "x\n")
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("stem", ["a" * 241, "é" * 120, "ü" * 121])
def test_a_name_at_the_file_system_limit_is_written_and_its_leftovers_found(tmp_path: Path, stem: str) -> None:
    """A name that fits (255 bytes) gets a temporary name that fits too; a kill's leftover is found by `leftovers`."""
    path = tmp_path / f"{stem}_overlay.png"
    assert len(os.fsencode(path.name)) <= 255
    with atomic_path(path) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255 and tmp.suffix == ".png"
        tmp.write_bytes(b"png")
        kill_leftover = tmp.with_name(tmp.name.replace(tmp.name[-12:-4], "k1ll3d00"))
        kill_leftover.write_bytes(b"half")
    assert path.read_bytes() == b"png" and leftovers(path) == [kill_leftover]
