"""The model card serve shows and `medcad predict --json` carries: what data made the models, what they were
evaluated on, one fold's model beside the ensemble."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medcad.inference.card import model_card
from medcad.inference.registry import load_predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_model_card_counts_the_images_the_run_used(tiny_run: Path, tmp_path: Path) -> None:
    """`trained_on.images` is the run's data (its folds' training, validation and test parts), not the count its
    metrics were evaluated on: a holdout run's card had said 13 (its test part) of 33; beside it, how many images the
    models learned from, were tuned on and never saw (the card had counted a holdout's test part as trained on). A
    card of one fold's model says its headline metrics are the run's, beside the fold's own (they had read as its)."""
    run = tmp_path / "card_run"
    shutil.copytree(tiny_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"n": 3}))  # as a holdout run's test part
    card = model_card(load_predictor(run, backend="torch-fp32"))
    assert card["trained_on"]["images"] == len(pd.read_csv(run / "manifest.csv")) > 3
    assert card["evaluation"]["images"] == 3
    assert "fold_metrics" not in card  # the ensemble of the folds: the run's pooled figures are its own
    one = model_card(load_predictor(run, fold=1, backend="torch-fp32"))  # serve --fold 1: one fold's model
    assert "fold 1's model alone" in one["metrics_of"]
    own = {k: v for k, v in metrics["per_fold"][1].items() if k not in ("speed", "selected_stage")}
    assert one["fold_metrics"] == own
    points = metrics["validated_operating_points"]  # the thresholds to cut predict's p_<positive> at, in the card
    assert card["positive"] == one["positive"] == points["positive"] == "lesion"
    assert card["operating_points"]["youden"] == pytest.approx(points["youden"]["ensemble_threshold"], nan_ok=True)
    assert one["operating_points"]["youden"] == pytest.approx(points["youden"]["thresholds"]["1"], nan_ok=True)
    folds = json.loads((run / "splits.json").read_text())["folds"]
    assert card["trained_on"]["unseen_images"] == 0  # cross-validation: every image is in some fold's training part
    assert card["trained_on"]["training_images_each"] == [len(f["train"]) for f in folds]
    # one fold's model: its own training and validation parts (the card had given the folds' union)
    assert (one["trained_on"]["training_images"], one["trained_on"]["validation_images"]) == (
        len(folds[1]["train"]),
        len(set(folds[1]["val"]) - set(folds[1]["train"])),
    )
    # as a holdout run: one fold whose test part no model saw
    (run / "splits.json").write_text(json.dumps({"folds": folds[:1]}))
    trained = model_card(load_predictor(run, backend="torch-fp32"))["trained_on"]
    f = folds[0]
    assert trained["training_images"] == len(f["train"]) and trained["validation_images"] == len(f["val"])
    assert trained["unseen_images"] == len(f["test"]) > 0


def test_a_transfer_runs_card_counts_the_images_of_the_domains_it_trained_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run trained on one domain (`--train-domains`, a study's transfer step) learns from that domain's images of
    each training part only: its card had counted every domain's (the splits' training parts) as trained on, and
    the other domain as seen."""
    from medcad.config import TrainConfig
    from medcad.data.synthetic import generate_synthetic
    from medcad.engine.train import train_run

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data = generate_synthetic(tmp_path / "synth", n_patients=20, frames_per_patient=2, size=40, seed=3).parent
    table = pd.read_csv(data / "manifest.csv")
    domain = sorted(table["domain"].unique())[0]
    cfg = TrainConfig(image_size=32, epochs=0, head_epochs=1, batch_size=8, folds=2, val_fraction=0.25)
    run = tmp_path / "run"
    train_run(data, run, cfg, progress=False, train_domains=(domain,))
    results = [json.loads((run / f"fold_{k}" / "result.json").read_text()) for k in (0, 1)]
    of_domain = {str(p) for p in table.loc[table["domain"] == domain, "image"]}
    trained = [set(r["train_keys"]) for r in results]
    assert all(t and t <= of_domain for t in trained)  # the parts as trained: that domain's images only
    card = model_card(load_predictor(run, backend="torch-fp32"))["trained_on"]
    assert card["training_images_each"] == [len(t) for t in trained]
    assert card["training_images"] == len(set().union(*trained)) <= len(of_domain) < len(table)
    seen = card["training_images"] + card["validation_images"]
    assert card["unseen_images"] == len(table) - seen >= len(table) - len(of_domain)
