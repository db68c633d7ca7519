"""The command line as a user meets it: help, messages for bad input, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import noise_image, save
from medcad.cli import app

runner = CliRunner()


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "dataset path not found" in res.output
    assert "Traceback" not in res.output


def test_dataset_with_problems_can_still_be_inspected_and_audited(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for k in range(4):
        save(root / "lesion" / f"{k}.png", noise_image(k))
    (root / "lesion" / "zero.png").write_bytes(b"")
    res = runner.invoke(app, ["data", "inspect", str(root), "--json", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["n_images"] == 5 and s["problems"] == [["lesion/zero.png", "file is empty (0 bytes)"]]
    assert s["n_unreadable"] == 1  # said beside the count (it had read "used 5 of 5" alone above the table)
    res = runner.invoke(app, ["data", "inspect", str(root)])
    assert "5 images, 1 of them unreadable" in " ".join(res.output.split())
    res = runner.invoke(app, ["data", "audit", str(root)])
    assert res.exit_code == 0, res.output
    assert "zero.png" in res.output and "empty" in res.output


def test_split_command_writes_splits(class_folders: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "splits.json"
    res = runner.invoke(app, ["data", "split", str(class_folders), "--folds", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())["folds"]) == 3
    monkeypatch.chdir(
        tmp_path
    )  # the default --out in the working folder: said by its whole path (it had read "splits.json:")
    res = runner.invoke(app, ["data", "split", str(class_folders), "--folds", "3"])
    assert res.exit_code == 0 and f"{(tmp_path / 'splits.json').resolve()}: kfold" in " ".join(res.output.split())
    res = runner.invoke(app, ["data", "split", str(class_folders), "--folds", "9", "--out", str(out)])
    assert res.exit_code == 2 and "9-fold cross-validation needs" in res.output and "--folds 6" in res.output


def test_csv_rows_with_missing_files_or_unknown_labels_are_named(tmp_path: Path) -> None:
    save(tmp_path / "a.png", noise_image(1))
    save(tmp_path / "b.png", noise_image(2))
    (tmp_path / "manifest.csv").write_text("image,label\na.png,lesion\nb.png,lesoin\ngone.png,normal\n")
    res = runner.invoke(
        app,
        ["data", "inspect", str(tmp_path), "--labels", "lesion,normal", "--json", "--out", str(tmp_path / "out.csv")],
    )
    assert res.exit_code == 0, res.output
    problems = dict(map(tuple, json.loads(res.stdout)["problems"]))
    assert "lesoin" in problems["b.png"] and "file not found (manifest.csv line 4)" == problems["gone.png"]


def test_warnings_print_as_one_line_like_notes() -> None:
    """A newcomer reads `warning: ...`, not medcad's source path and line echoed under it."""
    import warnings

    from medcad.cli.common import _main

    before = warnings.formatwarning
    try:
        _main()
        line = warnings.formatwarning("kept T = 1", UserWarning, "/src/medcad/metrics/calibration.py", 137)
        assert line == "warning: kept T = 1\n"
        assert warnings.formatwarning("old API", DeprecationWarning, "x.py", 1) == "DeprecationWarning: old API\n"
    finally:
        warnings.formatwarning = before


def test_a_full_disk_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    import errno

    import pytest

    import medcad.cli as cli

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/fold_1/checkpoints/stage2/last.ckpt")

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device writing /runs/x/fold_1/") and "rerun the same command" in err


def test_train_options_set_their_config_fields(monkeypatch) -> None:
    """`medcad train`'s options come from one table of TrainConfig fields; a given one reaches the config (`--group`
    sets group_by), one not given keeps the config's default."""
    from medcad.cli.runs import TRAIN_SETTINGS
    from medcad.config import TrainConfig

    assert set(TRAIN_SETTINGS) <= set(TrainConfig.__dataclass_fields__)
    seen = []
    monkeypatch.setattr("medcad.engine.train.train_run", lambda path, out, cfg, splits_path=None: seen.append(cfg))
    res = runner.invoke(
        app, ["train", "x", "--group", "patient", "--lr", "0.001", "--no-class-weights", "--holdout", "0.2"]
    )
    assert res.exit_code == 0, res.output
    cfg = seen[0]
    assert (cfg.group_by, cfg.lr, cfg.class_weights, cfg.holdout) == ("patient", 0.001, False, 0.2)
    assert (cfg.epochs, cfg.task) == (TrainConfig().epochs, "classify")
    # a holdout run has no folds (config.json said "folds: 5", which the split ignored); runs saved so resume alike
    assert cfg.folds is None and TrainConfig.from_saved({"folds": 5, "holdout": 0.2}).folds is None


@given(
    st.lists(
        st.lists(st.sampled_from(["PAT1", "PAT2", "ST1", "IM000000", "IM000001", "a.png"]), min_size=1, max_size=4),
        unique_by=tuple,
        max_size=12,
    )
)
def test_the_console_names_images_apart(paths) -> None:
    """The predictions table shows each image by its shortest tail of folders that no other image shares (a DICOMDIR
    tree's files, all named IM000000, had been shown alike)."""
    from medcad.cli.common import _distinct_tails

    full = ["/".join(p) for p in paths]
    shown = _distinct_tails(full)
    assert len(set(shown)) == len(shown) and all(
        f == s or f.endswith("/" + s) for f, s in zip(full, shown, strict=True)
    )


def test_data_inspect_writes_no_file_unless_asked(class_folders: Path, tmp_path: Path, monkeypatch) -> None:
    """It had written manifest.csv into the current folder: run inside the dataset, that file then decided how the
    dataset was read (an explicit manifest wins over the folders)."""
    monkeypatch.chdir(class_folders)
    before = sorted(p.name for p in class_folders.iterdir())
    res = runner.invoke(app, ["data", "inspect", "."])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in class_folders.iterdir()) == before and "not written" in res.output
    res = runner.invoke(app, ["data", "inspect", ".", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0 and (tmp_path / "m.csv").is_file()


def test_folds_and_holdout_together_are_refused_before_anything_is_written(class_folders: Path, tmp_path: Path) -> None:
    """--folds 2 --holdout 0.2 had trained a holdout split with --folds unsaid (config.json: folds None)."""
    res = runner.invoke(
        app, ["train", str(class_folders), "--folds", "2", "--holdout", "0.2", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code != 0 and "--folds 2 and --holdout 0.2 ask for two kinds of split" in res.output
    assert not (tmp_path / "r").exists()
