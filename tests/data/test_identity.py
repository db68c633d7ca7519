"""Identity, not position: a run's predictions stay with their images when the dataset folder changes, and every
command says what changed instead of re-pairing rows."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import noise_image, save
from medcad.cli import app
from medcad.config import TrainConfig
from medcad.engine.evaluate import evaluate_run
from medcad.engine.train import train_run
from medcad.errors import DataError

runner = CliRunner()
TINY = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)


def _predictions(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "predictions.csv").set_index("image").sort_index()


def test_added_images_are_named_not_paired(tiny_run: Path, easy_set: Path) -> None:
    before = json.loads((tiny_run / "metrics.json").read_text())
    pred_before = _predictions(tiny_run)
    samples = json.loads((tiny_run / "samples.json").read_text())["samples"]
    assert set(samples) == set(pred_before.index) and all(":" in fp for fp in samples.values())
    result = json.loads((tiny_run / "fold_0" / "result.json").read_text())
    assert len(result["test_keys"]) == len(result["test_rows"]) and result["test_keys"][0] in samples

    # new files sort before the old ones: row positions of every old image shift
    for k in range(4):
        save(easy_set / "lesion" / f"0{k}_new.png", noise_image(500 + k))
        save(easy_set / "aaa_normal" / f"{k}.png", noise_image(600 + k))  # and a new class folder
    metrics, _ = evaluate_run(tiny_run)
    assert metrics["accuracy"]["value"] == before["accuracy"]["value"]
    pd.testing.assert_frame_equal(_predictions(tiny_run), pred_before)  # same probabilities for the same images

    # resuming with new images stops and offers the choices; --new-images ignore goes on
    with pytest.raises(DataError, match=r"in no fold of this run: 8 added .*--new-images ignore"):
        train_run(easy_set, tiny_run, TINY, progress=False)
    res = runner.invoke(
        app,
        [
            "train",
            str(easy_set),
            "--out",
            str(tiny_run),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--head-epochs",
            "3",
            "--batch-size",
            "8",
            "--unfreeze",
            "1",
            "--folds",
            "2",
            "--val-fraction",
            "0.25",
            "--new-images",
            "ignore",
            "--no-report",
        ],
    )
    assert res.exit_code == 0, res.output
    notes = json.loads((tiny_run / "config.json").read_text())["data_notes"]
    assert "used 24 of 32; 8 left out (8 added since the run was made)" in notes


def test_removed_or_changed_images_stop(tiny_run: Path, easy_set: Path) -> None:
    (easy_set / "normal" / "3.png").unlink()
    with pytest.raises(DataError, match=r"changed since this run was made: 1 removed \(normal/3.png\)"):
        evaluate_run(tiny_run)
    save(easy_set / "normal" / "3.png", noise_image(999))  # same name, other content
    with pytest.raises(DataError, match=r"1 changed \(normal/3.png\)"):
        evaluate_run(tiny_run)


def test_splits_of_another_dataset_state(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """--splits from a run: images that are in no fold of those splits stop the new run (they joined none)."""
    other = tmp_path / "other"
    shutil.copytree(easy_set, other)
    save(other / "normal" / "new.png", noise_image(77))
    with pytest.raises(DataError, match=r"in no fold.*1 added \(normal/new.png\)"):
        train_run(other, tmp_path / "r2", TINY, splits_path=tiny_run / "splits.json", progress=False)


def test_ledger_and_allow_missing(tmp_path: Path) -> None:
    """A manifest with rows whose files are missing: the ledger counts them, train stops unless allowed."""
    root = tmp_path / "csvset"
    rows = []
    for i in range(12):
        label = ("benign", "malignant")[i % 2]
        rel = f"images/{label}/{i}.png"
        if i < 10:
            save(root / rel, noise_image(i))
        rows.append({"image": rel, "label": label})
    save(root / "extra" / "stray.png", noise_image(50))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    res = runner.invoke(app, ["data", "inspect", str(root), "--json"])
    assert res.exit_code == 0, res.output
    ledger = json.loads(res.stdout)["ledger"]
    assert ledger["summary"] == (
        "used 10 of 12; 2 left out (2 file not found); 1 file(s) under csvset/ not read (1 an image the 'csv' layout "
        "did not read)"
    )
    assert ledger["not_read"] == [{"path": "extra/stray.png", "reason": "an image the 'csv' layout did not read"}]
    with pytest.raises(DataError, match=r"used 10 of 12; 2 left out.*--allow-missing"):
        train_run(root, tmp_path / "run", TINY, progress=False)
    train_run(root, tmp_path / "run", TINY.replace(allow_missing=True), progress=False)
    ledger = pd.read_csv(tmp_path / "run" / "data_ledger.csv")
    assert sorted(ledger["status"]) == ["left out", "left out", "not read"]
    assert set(ledger["path"]) >= {"images/benign/10.png", "extra/stray.png"}
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"]["value"])


def test_folders_medcad_wrote_are_one_entry_of_the_ledger(tmp_path: Path, monkeypatch) -> None:
    """A run folder (and medcad's cache) inside the folder of a manifest: named once each, not file by file (a new
    user's working folder listed 572 files of runs and cache as not read); other stray files still file by file."""
    root = tmp_path / "work"
    rows = [{"image": f"images/{i}.png", "label": ("a", "b")[i % 2]} for i in range(4)]
    for r in rows:
        save(root / r["image"], noise_image(len(r["image"])))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    run = root / "runs" / "first"
    for name in ("config.json", "data_ledger.csv", "report.html", "fold_0/model.pt", "fold_0/overlay.png"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    other = root / "other_tool"  # config.json beside splits.json, as other tools leave a dataset: file by file
    for name in ("config.json", "splits.json"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text("{}")
    save(other / "scan.png", noise_image(3))
    (root / "cache" / "features").mkdir(parents=True)
    (root / "cache" / "features" / "x.npy").write_bytes(b"0")
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(root / "cache"))
    save(root / "notes" / "stray.png", noise_image(9))
    res = runner.invoke(app, ["data", "inspect", str(root / "manifest.csv"), "--json"])
    assert res.exit_code == 0, res.output
    ledger = json.loads(res.stdout)["ledger"]
    assert "4 file(s) and 2 folder(s) under work/ not read" in ledger["summary"]
    not_read = {x["path"]: x["reason"] for x in ledger["not_read"]}
    assert not_read == {
        "notes/stray.png": "an image the 'csv' layout did not read",
        "other_tool/scan.png": "an image the 'csv' layout did not read",
        "other_tool/config.json": "a JSON file no reader used",
        "other_tool/splits.json": "a JSON file no reader used",
        "runs/first/": "a medcad run folder (its outputs, not data)",
        "cache/": "medcad's cache folder",
    }


def test_an_unreadable_image_stops_before_anything_is_written_or_is_left_out_named(
    easy_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated JPEG had stopped training on the first decode, after the run folder was written, with no way on
    (--allow-missing gave the same error). It stops before anything is written and says how to go on; with
    --allow-missing it is left out and named, and every later read of the run's data (evaluate, report, a resume)
    leaves it out alike."""
    from PIL import Image

    from medcad.report.html import write_report

    Image.open(easy_set / "lesion" / "3.png").convert("RGB").save(easy_set / "lesion" / "3.jpg", quality=90)
    (easy_set / "lesion" / "3.png").unlink()
    jpeg = (easy_set / "lesion" / "3.jpg").read_bytes()
    (easy_set / "lesion" / "3.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # cut in the middle, as a copy cut short
    cfg = TrainConfig(image_size=32, epochs=0, head_epochs=1, batch_size=8, folds=2, val_fraction=0.25)
    run = tmp_path / "run"
    with pytest.raises(DataError, match="lesion/3.jpg: .*rerun with --allow-missing to leave them out") as e:
        train_run(easy_set, run, cfg, progress=False)
    assert "truncated" in str(e.value).lower() and not run.exists()
    train_run(easy_set, run, cfg.replace(allow_missing=True), progress=False)
    ledger = pd.read_csv(run / "data_ledger.csv")
    assert ledger.loc[ledger["status"] == "left out", "path"].tolist() == ["lesion/3.jpg"]
    assert ledger["reason"].str.startswith("unreadable: ").sum() == 1
    assert len(pd.read_csv(run / "predictions.csv")) == 23
    with caplog.at_level(logging.WARNING):
        m, _ = evaluate_run(run)  # read again as the run read it: no image "added since", none failing to decode
    assert m["n"] == 23 and "added since" not in caplog.text and "left out as the run left them" in caplog.text
    assert "1 left out by the run's read (1 unreadable)" in write_report(run).read_text()
    (run / "fold_1" / "result.json").unlink()  # resumed, even without the flag: the same samples, left out alike
    train_run(easy_set, run, cfg, progress=False)
    assert len(pd.read_csv(run / "predictions.csv")) == 23
    # given splits that name it (a study's, made without decoding): this run's are without it
    other = tmp_path / "other"
    train_run(easy_set, other, cfg.replace(allow_missing=True, seed=1), splits_path=run / "splits.json", progress=False)
    assert len(pd.read_csv(other / "predictions.csv")) == 23
    whole = json.loads((run / "splits.json").read_text())
    whole["folds"][0]["test"].append("lesion/3.jpg")  # as a study's splits hold it
    (tmp_path / "given.json").write_text(json.dumps(whole))
    third = tmp_path / "third"
    train_run(easy_set, third, cfg.replace(allow_missing=True), splits_path=tmp_path / "given.json", progress=False)
    assert "lesion/3.jpg" not in (third / "splits.json").read_text()


def test_a_mask_no_row_names_is_called_a_mask_in_the_ledger() -> None:
    """BUSI's second-lesion masks (`benign (4)_mask_1.png`) beside a manifest naming only `_mask.png` had been
    "an image the 'csv' layout did not read"."""
    from medcad.data.ledger import _unread_reason

    for name in ("benign (4)_mask_1.png", "case_seg.png", "x-MASK.tif", "y_labels.png"):
        assert _unread_reason(Path(name), "csv").startswith("a mask by its name that no row of the 'csv' layout"), name
    for name in ("masked_frame.png", "mask.png", "stray.png"):
        assert _unread_reason(Path(name), "csv") == "an image the 'csv' layout did not read", name
