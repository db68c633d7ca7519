"""The fifth task, added through the task table: multi-label findings, end to end on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import save
from medcad.cli import app
from medcad.config import TrainConfig
from medcad.engine.train import train_run
from medcad.metrics.multilabel import multilabel_metrics

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """40 px frames with a bright disc, a dark square, both or neither; manifest.csv lists the findings."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    lines = ["image,label,patient"]
    for k in range(32):
        small = rng.integers(60, 180, (5, 5, 3), dtype=np.uint8)  # a smooth background of its own per image
        img = np.kron(small, np.ones((8, 8, 1), np.uint8))
        present = [lab for lab, bit in (("disc", k % 2), ("square", (k // 2) % 2)) if bit]
        if "disc" in present:
            cy, cx = rng.integers(8, 32, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 40] = 250
        if "square" in present:
            y0, x0 = rng.integers(0, 30, 2)
            img[y0 : y0 + 10, x0 : x0 + 10] = 5
        save(tmp_path / "ml" / f"{k}.png", img)
        cell = "|".join(present) or ("No Finding" if k % 8 == 4 else "")  # as ChestX-ray14 writes none
        lines.append(f"{k}.png,{cell},P{k // 2}")
    (tmp_path / "ml" / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "ml"


def test_multilabel_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, hamming_loss, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random((60, 3)) < 0.4
    p = np.clip(y * 0.5 + rng.random((60, 3)) * 0.6, 0, 1)
    m = multilabel_metrics(y, p, ["a", "b", "c"], n_boot=50)
    assert m["per_label"]["b"]["auc"]["value"] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, p >= 0.5, average="macro"))
    assert m["micro_f1"]["value"] == pytest.approx(f1_score(y, p >= 0.5, average="micro"))
    assert m["hamming_loss"]["value"] == pytest.approx(hamming_loss(y, p >= 0.5))
    lo, hi = m["macro_auc"]["ci95"]
    assert lo <= m["macro_auc"]["value"] <= hi


def test_multilabel_run_end_to_end(findings: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        task="multilabel", image_size=32, epochs=1, head_epochs=20, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25
    )
    run = tmp_path / "run"
    m = train_run(findings, run, cfg, progress=False)
    assert m["labels"] == ["disc", "square"] and m["n"] == 32  # 'No Finding' is none, not a third label
    notes = json.loads((run / "config.json").read_text())["data_notes"]
    assert "multi-label cells 'No Finding' (4 images) read as no finding, not as a label" in notes
    assert any(n.startswith("4 image(s) with an empty label cell read as no finding") for n in notes)  # said too
    assert set(m["per_label"]) == {"disc", "square"} and m["per_label"]["disc"]["n_positive"] == 16
    assert m["macro_auc"]["value"] > 0.6  # learnable even in one epoch
    pred = (run / "predictions.csv").read_text().splitlines()
    assert pred[0].startswith("image,fold,labels,predicted,p_disc,p_square") and len(pred) == 33
    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["macro_auc"]["value"] == pytest.approx(m["macro_auc"]["value"])
    # the set as an external one: scored as findings ('disc|square' rows), not as 'disc|square' unknown labels
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(findings), "--json"])
    assert res.exit_code == 0, res.output
    ext = json.loads(res.stdout)
    assert set(ext["per_label"]) == {"disc", "square"} and ext["per_label"]["disc"]["n_positive"] == 16
    table = (run / "evaluations" / findings.name / "predictions.csv").read_text().splitlines()
    assert table[0].startswith("image,labels,predicted,p_disc,p_square") and len(table) == 33
    res = runner.invoke(app, ["predict", str(run), str(findings / "3.png"), "--json", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)[0]
    assert set(out["probabilities"]) == {"disc", "square"}
    # the labels joined as a manifest's cells are, so that predict's table reads back as labels ('disc+square' had
    # read back as one label of that name)
    from medcad.tasks import split_labels

    threshold = json.loads((run / "metrics.json").read_text())["threshold"]
    present = [lab for lab in ("disc", "square") if out["probabilities"][lab] >= threshold]
    assert out["label"] == ("|".join(present) or "none") and split_labels(out["label"]) == present
    res = runner.invoke(app, ["export", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["agreement"]["model.onnx"]["label_agreement"] == 1.0
    res = runner.invoke(app, ["explain", str(run), str(findings / "3.png"), "-o", str(tmp_path / "cam.png")])
    assert res.exit_code == 0 and "Grad-CAM" in res.output

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    assert "Findings (multi-label)" in html and "exact match" in html
    assert "images with each finding:\ndisc 16, square 16." in html  # beside the cells as written ('disc|square')


def test_data_split_for_multilabel_gives_the_folds_train_makes(findings: Path, tmp_path: Path) -> None:
    """`data split --task multilabel` stratifies as `train --task multilabel` does (each image's rarest finding), so
    the splits.json a user writes first is the one train would have made (it had stratified by the cells as written:
    'disc|square' and 'No Finding' strata of their own, other folds, a validation part of 24 % for 15 %)."""
    import json

    from medcad.config import TrainConfig
    from medcad.data.layouts import load_manifest
    from medcad.engine.train import splits_for

    out = tmp_path / "splits.json"
    res = runner.invoke(
        app,
        ["data", "split", str(findings / "manifest.csv"), "--folds", "2", "--task", "multilabel", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())["folds"]
    made = splits_for(load_manifest(findings / "manifest.csv"), TrainConfig(task="multilabel", folds=2), False)
    assert [(f["train"], f["val"], f["test"]) for f in written] == [
        (f["train"], f["val"], f["test"]) for f in made["folds"]
    ]


def test_a_finding_missing_from_a_folds_parts_is_said(findings: Path) -> None:
    """Given splits whose fold 0 tests every image with a square: its training part has none (its model never
    learns one, yet its square scores are pooled) and fold 1's test part has none; both are said as the run starts
    (nothing had been said); a class missing from a classifier's part alike; folds that hold every label: nothing."""
    from medcad.data.layouts import load_manifest
    from medcad.engine.train import fold_coverage
    from medcad.tasks import get_task

    m = load_manifest(findings / "manifest.csv")
    square = [k for k, v in zip(m.keys, m.table["label"], strict=True) if "square" in v]
    rest = [k for k in m.keys if k not in square]
    splits = {"folds": [{"fold": 0, "train": rest, "test": square}, {"fold": 1, "train": square, "test": rest}]}
    said = fold_coverage(m, splits, get_task("multilabel"))
    assert said[0].startswith("training parts without any image of a finding: fold 0 (square)") and len(said) == 2
    assert said[1].startswith("test parts without any image of a finding: fold 1 (square)")
    even = {"folds": [{"fold": 0, "train": m.keys[:16], "test": m.keys[16:]}]}
    assert fold_coverage(m, even, get_task("multilabel")) == []
    assert fold_coverage(m, splits, get_task("segment")) == []
    # a holdout: the class its test part lacks is not scored at all; a transfer run's training part is its domains'
    holdout = {"folds": [{"fold": 0, "train": square, "test": rest}]}
    assert fold_coverage(m, holdout, get_task("multilabel")) == [
        "the test part holds no image of a finding: fold 0 (square): not scored"
    ]
    m.table["domain"] = ["A" if k in rest else "B" for k in m.keys]
    whole = {"folds": [{"fold": 0, "train": m.keys[:16], "test": m.keys[16:]}]}
    said = fold_coverage(m, whole, get_task("multilabel"), train_domains=["A"])
    assert said[0].startswith("training parts without any image of a finding: fold 0 (square)")


def test_a_diverged_multilabel_epoch_scores_zero() -> None:
    """NaN probabilities (a diverged epoch) score 0 and are never selected, as for one-label classes; sklearn had
    stopped the fit with "Input contains NaN"."""
    from medcad.engine.modules import multilabel_val_score

    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert multilabel_val_score(y, np.full((4, 2), np.nan)) == 0.0
    assert multilabel_val_score(y, y * 0.8 + 0.1) == 1.0


def test_a_label_in_every_image_is_said(tmp_path: Path) -> None:
    """A finding present in every image has nothing to tell apart (no AUC): said when the labels are read, with
    where its figures go (it had been left out of the macro F1 without a word); so is a cell naming findings beside
    'No Finding' (read as its findings, without a word)."""
    from medcad.data.layouts import load_manifest
    from medcad.targets import run_labels

    lines = ["image,label"]
    for k in range(6):
        save(tmp_path / "ds" / f"{k}.png", np.full((8, 8, 3), 40 * k, np.uint8))
        lines.append(f"{k}.png,polyp{'|ink' * (k % 2)}{'|No Finding' * (k == 2)}")
    (tmp_path / "ds" / "manifest.csv").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path / "ds")
    assert run_labels(m, "multilabel", tmp_path) == ["ink", "polyp"]
    assert any(n.startswith("label(s) polyp in every image: nothing to tell apart") for n in m.notes)
    assert "1 cell(s) name findings beside no finding (e.g. 'polyp|No Finding'): read as their findings" in m.notes


def test_data_inspect_counts_images_per_finding(findings: Path) -> None:
    """`data inspect` on multi-label cells counts the images of each finding (8 each of 'disc|square', 'disc' and
    'square': 16 with each; 'No Finding' is none), as a multilabel run reads them, beside the cells as written."""
    res = CliRunner().invoke(app, ["data", "inspect", str(findings), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["findings"] == {"disc": 16, "square": 16}
    assert s["labels"]["disc|square"] == 8
    text = CliRunner().invoke(app, ["data", "inspect", str(findings)], env={"COLUMNS": "200"}).stdout
    assert "images per finding  disc 16, square 16" in text
