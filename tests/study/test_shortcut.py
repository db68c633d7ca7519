"""Shortcut check, validation-chosen operating points, calibration, full-resolution masks and the checklist on a
tiny multitask run (synthetic frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medcad.cli import app
from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.engine.train import train_run
from medcad.study.shortcut import remove_lesion

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def test_remove_lesion_blanks_inside_and_keeps_outside():
    img = np.full((1, 32, 32, 3), 100, np.uint8)
    img[0, 10:20, 10:20] = 250  # a bright lesion
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 10:20, 10:20] = 1
    blanked, only = remove_lesion(img, mask, margin=0.05)
    assert blanked[0, 15, 15].max() < 150 and (blanked[0, 0, 0] == 100).all()  # inpainted from the surroundings
    assert (only[0, 15, 15] == 250).all() and (only[0, 0, 0] == 0).all()


@pytest.mark.heavy
def test_multitask_run_statistics_and_shortcut_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data = generate_synthetic(tmp_path / "synth", n_patients=8, frames_per_patient=3, size=64, seed=1).parent
    cfg = TrainConfig(
        task="multitask", arch="unet", image_size=64, epochs=1, batch_size=8, folds=2, val_fraction=0.25
    ).replace(missing_masks="empty")
    run = tmp_path / "mt"
    m = train_run(data, run, cfg, progress=False)
    fold = json.loads((run / "fold_0" / "result.json").read_text())
    assert len(fold["val_probs"]) == len(fold["val_rows"]) > 0 and fold["temperature"] > 0
    cal = m["calibration"]
    assert set(cal["temperatures"]) == {"0", "1"} and {"ece", "brier", "reliability"} <= set(cal["after"])
    seg = m["segmentation"]
    assert "own size" in seg["resolution"] and seg["training_size"]["resolution"] == "64x64 px"
    assert seg["hd95"]["n_defined"] + seg["hd95"]["n_undefined"] + seg["hd95"]["n_both_empty"] == seg["n_images"]
    for lab, pc in m["per_class"].items():
        assert len(pc["auc_ci95"]) == 2, lab

    res = runner.invoke(app, ["evaluate", str(run), "--shortcut-check", "--json"])
    assert res.exit_code == 0, res.output
    sc = json.loads(res.stdout)["shortcut_check"]
    assert set(sc["variants"]) == {"original", "lesion_blanked", "lesion_only"} and sc["n_images"] > 0
    assert (run / "shortcut_check.json").is_file()
    # 'original' is the run's own out-of-fold AUC on those images (predictions.csv's probabilities)
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(run / "predictions.csv")
    from PIL import Image

    def has_lesion(key: str) -> bool:
        mask = data / "masks" / Path(key).name
        return mask.is_file() and bool((np.asarray(Image.open(mask)) > 0).any())

    rows = table[[has_lesion(k) for k in table["image"]]]
    want = roc_auc_score(rows["label"] == sc["positive"], rows[f"p_{sc['positive']}"])
    assert sc["auc_positive"]["original"] == pytest.approx(want, abs=1e-3)

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    for needle in ("Shortcut check", "Reporting checklist", "temperature-scaled", "at training size"):
        assert needle in html, needle
    kinds = json.loads((run / "metrics.json").read_text())["segmentation"]["frame_decision"]["frame_score"]
    if "p_lesion" in kinds:  # its thresholds are on the scaled probability, as predictions.csv's columns are now
        assert "p_lesion, on the temperature-scaled probability, as predictions.csv&#39;s p_ columns" in html
    assert "Made on the probabilities as trained" not in html
    made_before = json.loads((run / "shortcut_check.json").read_text())
    del made_before["probabilities"]  # a check made before 2026-12-06, on the probabilities as trained
    (run / "shortcut_check.json").write_text(json.dumps(made_before))
    assert (
        "Made on the probabilities as trained; the run&#39;s figures are now"
        in write_report(run, gallery=False).read_text()
    )
