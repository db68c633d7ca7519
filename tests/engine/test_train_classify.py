"""A real (tiny) classification run end to end: train, resume, metrics.json, predict, evaluate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from conftest import assert_predict_reproduces_fold, float32_softmax
from medcad.cli import app
from medcad.config import TrainConfig
from medcad.engine.modules import val_score
from medcad.engine.train import _check_resume, train_run
from medcad.errors import ConfigError
from medcad.metrics.calibration import apply_temperature
from medcad.metrics.classification import classification_metrics
from medcad.metrics.operating import choose_threshold
from medcad.run import Run, settled_settings
from medcad.tasks import freeze_stride

runner = CliRunner()
FAST = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)


@pytest.mark.heavy
def test_train_resume_predict_evaluate(easy_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = train_run(easy_set, run, FAST, progress=False)
    for name in ("accuracy", "macro_f1", "macro_auc"):
        assert set(m[name]) - {"ci95_method"} == {"value", "ci95"}  # the method where exact (accuracy 1 here)
    assert set(m["per_class"]["lesion"]) >= {"precision", "recall", "specificity", "f1", "support", "auc"}
    assert m["confusion_matrix"]["labels"] == ["lesion", "normal"]
    assert len(m["per_fold"]) == 2 and m["evaluation"] == "out-of-fold"
    assert m["accuracy"]["value"] > 0.6  # the task is easy
    assert "chosen on these same rows" in m["binary"]["chosen_on"]  # metrics.json says it, as the report does
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["confusion_matrix"]["matrix"] == m["confusion_matrix"]["matrix"]
    pred = (run / "predictions.csv").read_text().splitlines()
    assert len(pred) == 25 and pred[0].startswith("image,fold,label,predicted,p_lesion,p_normal")
    # predictions.csv and the pooled AUC on each fold's probabilities as its model file predicts them (temperature-
    # scaled): pooled as trained, folds of other temperatures had ranked against each other on other scales
    table = pd.read_csv(run / "predictions.csv")
    for k in (0, 1):
        r = json.loads((run / f"fold_{k}" / "result.json").read_text())
        want = apply_temperature(np.array(r["test_probs"]), r["temperature"])
        got = table.set_index("image").loc[r["test_keys"], ["p_lesion", "p_normal"]].to_numpy()
        assert np.allclose(got, want, atol=1e-6)
    auc = roc_auc_score(table["label"] == "lesion", table["p_lesion"])
    assert m["binary"]["auc"]["value"] == pytest.approx(auc) and m["probabilities"] == "temperature-scaled"
    for k in (0, 1):
        assert (run / f"fold_{k}" / "model.pt").is_file()
        assert list((run / f"fold_{k}" / "logs" / "tensorboard").rglob("events.out.tfevents*"))
        assert not (run / f"fold_{k}" / "checkpoints").exists()  # finished: model.pt holds the kept weights

    # an interrupted run resumes: finished folds are not trained again
    fold0 = (run / "fold_0" / "model.pt").stat().st_mtime_ns
    (run / "fold_1" / "result.json").unlink()
    train_run(easy_set, run, FAST, progress=False)
    assert (run / "fold_0" / "model.pt").stat().st_mtime_ns == fold0
    assert (run / "fold_1" / "result.json").is_file()
    with pytest.raises(ConfigError, match="other settings .*image_size"):
        train_run(easy_set, run, FAST.replace(image_size=48), progress=False)

    res = runner.invoke(app, ["predict", str(run), str(easy_set / "lesion" / "0.png"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out[0]["label"] in ("lesion", "normal")
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-4

    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert "results_note" not in json.loads(res.stdout)
    assert "timing" in json.loads((run / "metrics.json").read_text())  # recomputed, the training's time kept
    # fold results of an older medcad (bf16 predictions on CPUs with native bf16) are said to be so
    older = json.loads((run / "fold_1" / "result.json").read_text())
    assert older.pop("version") == 2
    (run / "fold_1" / "result.json").write_text(json.dumps(older))
    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert "fold(s) 1 were scored by an older medcad" in json.loads(res.stdout)["results_note"]
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(easy_set), "--json"])
    assert res.exit_code == 0, res.output
    ext = json.loads(res.stdout)
    assert ext["n"] == 24
    # the run's validated operating points carried to the set: each fold's threshold chosen on its validation part
    # (temperature-scaled, as the ensemble predicts), the ensemble at their mean, the set's scores cut there
    youden, fold_t = ext["validated_operating_points"]["youden"], []
    for k in (0, 1):
        r = json.loads((run / f"fold_{k}" / "result.json").read_text())
        p = apply_temperature(np.array(r["val_probs"]), r["temperature"])[:, 0]  # the positive class: lesion
        y = np.array([key.startswith("lesion") for key in r["val_keys"]])
        fold_t.append(choose_threshold(y, p, "youden"))
    assert youden["threshold"] == pytest.approx(np.mean(fold_t))
    pred = pd.read_csv(run / "evaluations" / "ds" / "predictions.csv")
    lesion = pred["label"] == "lesion"
    assert youden["sensitivity"]["value"] == pytest.approx((pred["p_lesion"][lesion] >= np.mean(fold_t)).mean())
    # RUN/manifest.csv rewritten in another order (a resumed run's dataset changed): the labels follow the images'
    # keys, not the results' row positions (which would pair them with other images' scores)
    table = pd.read_csv(run / "manifest.csv", dtype=str, keep_default_na=False)
    table.iloc[::-1].to_csv(run / "manifest.csv", index=False)
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(easy_set), "--json"])
    assert json.loads(res.stdout)["validated_operating_points"]["youden"]["threshold"] == youden["threshold"]
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(easy_set)])
    said = " ".join(res.output.split())
    assert "applied to this set" in said and "before this set was seen" in said, said
    res = runner.invoke(app, ["report", str(run)])  # the report shows the set beside the run's own figures
    assert res.exit_code == 0, res.output
    html = (run / "report.html").read_text()
    assert 'id="external"' in html and "Thresholds fixed before this set was seen" in html
    cal = json.loads((run / "metrics.json").read_text())["calibration"]  # ECE's interval can exclude its estimate
    above = any(cal[k]["ece"]["ci95"][0] > cal[k]["ece"]["value"] for k in ("before", "after"))
    assert "plug-in ECE is biased upward" in html and ("lie above the estimate, as here" in html) == above
    # two classes: the positive class's calibration line, and what class weights (the default) do to its intercept
    metrics = json.loads((run / "metrics.json").read_text())
    positive = metrics["binary"]["positive"]
    (line,) = cal["before"]["lines"]
    assert metrics["labels"][line["class"]] == positive
    said = " ".join(html.split())
    assert f"<td>p_{positive}</td><td>{line['prevalence']:.3f}</td>" in said
    assert "This run trained with class weights" in said and "intercept from class balancing alone" in said
    worse = cal["after"]["brier"]["value"] > cal["before"]["brier"]["value"]  # said where scaling made it worse
    scaled = any(t != 1 for t in cal["temperatures"].values())  # every T = 1: the figures once, said unscaled
    assert ("<td>temperature-scaled</td>" in said) == scaled and ("no temperature scaling)</h3>" in said) != scaled
    assert ('alt="reliability after temperature scaling"' in said) == scaled
    assert ("Here temperature scaling made the pooled test Brier score worse" in said) == worse
    config = json.loads((run / "config.json").read_text())  # with --oversample too: twice the offset, said so
    (run / "config.json").write_text(json.dumps({**config, "oversample": True}))
    res = runner.invoke(app, ["report", str(run)])
    said = " ".join((run / "report.html").read_text().split())
    assert res.exit_code == 0 and "sits near 2 × (logit(share) − logit(1/2))" in said, res.output
    assert f"<td>{2 * line['balanced_training_intercept']:.2f}</td></tr>" in said
    (run / "config.json").write_text(json.dumps(config))
    assert f"{youden['threshold']:.3f}" in html
    groups = json.loads((run / "splits.json").read_text()).get("n_groups") or len(set(table["image"]))
    assert ("Only " in html and "widened for so few" in html) == (groups < 30)  # 24 images: few groups, said
    assert "here no patient ids were given" in html  # folders of images: grouped by near duplicates alone, said


@pytest.mark.heavy
def test_train_jobs_trains_the_folds_in_workers_as_one_process_does(easy_set: Path, tmp_path: Path, one_thread) -> None:
    one = tmp_path / "one"
    train_run(easy_set, one, FAST.replace(threads=1), progress=False)
    args = ["--image-size", "32", "--epochs", "1", "--head-epochs", "3", "--batch-size", "8", "--unfreeze", "1"]
    args += ["--folds", "2", "--val-fraction", "0.25", "--threads", "1", "--no-report"]
    res = runner.invoke(app, ["train", str(easy_set), "--out", str(tmp_path / "two"), "--jobs", "2", *args])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "two" / "predictions.csv").read_text() == (one / "predictions.csv").read_text()
    assert sorted(p.parent.name for p in (tmp_path / "two").glob("fold_*/model.pt")) == ["fold_0", "fold_1"]
    res = runner.invoke(app, ["train", str(easy_set), "--out", str(tmp_path / "r"), "--jobs", "2", "--repeats", "2"])
    assert res.exit_code == 2 and "leave it out with --repeats" in res.output
    res = runner.invoke(app, ["train", str(easy_set), "--out", str(tmp_path / "d"), "--jobs", "2", "--devices", "2"])
    assert res.exit_code == 2 and "devices 1 and num_nodes 1" in res.output
    assert not (tmp_path / "d").exists()
    res = runner.invoke(app, ["train", str(easy_set), "--out", str(tmp_path / "a"), "--augment", "heavy"])
    assert res.exit_code == 2 and "unknown augmentation preset 'heavy'" in res.output
    assert not (tmp_path / "a").exists()  # refused before anything is written


def test_cli_train_errors(easy_set: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(easy_set), "--model", "efficientnet_b00", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "nothing"), str(easy_set / "lesion" / "0.png")])
    assert res.exit_code == 2 and "not a run folder" in res.output


def test_positive_label_is_the_finding() -> None:
    from medcad.tasks import positive_label

    assert positive_label(["lesion", "normal"]) == "lesion"
    assert positive_label(["abnormal", "normal"]) == "abnormal"
    assert positive_label(["benign", "malignant"]) == "malignant"


def test_runs_made_before_freeze_stride_resume_as_they_started(tmp_path: Path) -> None:
    """A config.json written before `freeze_stride` existed trained every encoder stage: it loads as 0, not as
    today's default, so resuming such a run does not mix recipes between its folds. A new run saves the stride it
    uses; a resumed run whose stride is unset keeps its own, and one saved as None (before strides were written out)
    the default of then, 4, not today's 8."""
    new = TrainConfig()
    assert new.freeze_stride is None  # the task's default: 8 for classifiers and detectors, 0 for masks and stages
    assert freeze_stride(new) == 8 and freeze_stride(new.replace(stages="1:head:1e-3,2:all:1e-4")) == 0
    assert freeze_stride(new.replace(task="segment")) == 0 and freeze_stride(new.replace(task="detect")) == 8
    with pytest.raises(ConfigError, match="freeze_stride"):
        freeze_stride(new.replace(freeze_stride=-1))
    assert [Run.resolve(new.replace(task=t), tmp_path / "new").cfg.freeze_stride for t in ("classify", "segment")] == [
        8,
        0,
    ]
    d = new.to_dict()
    del d["freeze_stride"], d["tta"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    old = TrainConfig.load(tmp_path / "config.json")
    assert old.freeze_stride == 0 and old.tta == "none"  # ... and was predicted without test-time augmentation
    assert Run.resolve(new, tmp_path).cfg.freeze_stride == 0  # resumed as it started, not at today's 8
    (tmp_path / "splits.json").write_text("{}")  # a run that split its data: resumed, its settings checked
    for saved, trained in ((2, 2), (None, 4)):
        (tmp_path / "config.json").write_text(json.dumps(settled_settings(new).replace(freeze_stride=saved).to_dict()))
        assert TrainConfig.load(tmp_path / "config.json").freeze_stride == saved
        resumed = Run.resolve(new, tmp_path)
        assert resumed.cfg.freeze_stride == trained
        _check_resume(resumed)  # the saved None is the stride it trained with, not a changed setting
        with pytest.raises(ConfigError, match=f"freeze_stride: {trained} -> 16"):
            _check_resume(Run.resolve(new.replace(freeze_stride=16), tmp_path))
        assert Run.resolve(new, tmp_path / "new", init_run=tmp_path).cfg.freeze_stride == 8  # a recipe, not a model
    detector = settled_settings(new.replace(task="detect")).replace(freeze_stride=None)
    (tmp_path / "config.json").write_text(json.dumps(detector.to_dict()))  # a detector saved so trained every layer
    assert Run.resolve(new.replace(task="detect"), tmp_path).cfg.freeze_stride == 0


class _Tiny(L.LightningModule):
    """A linear model whose validation score peaks at epoch `best` (and falls after it)."""

    def __init__(self, best: int = 1) -> None:
        super().__init__()
        self.net, self.best = torch.nn.Linear(4, 1), best

    def training_step(self, batch, _):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val_score", -abs(float(self.current_epoch - self.best)))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), 1e-3)


def _fit_tiny(tmp_path: Path, epochs: int, patience: int, probe=None):
    from medcad.engine.common import make_trainer
    from medcad.engine.resume import ResumePoint
    from medcad.run import Run
    from medcad.runfolder import FoldFolder

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    run = Run.resolve(FAST.replace(logger="none"), tmp_path)
    trainer, best = make_trainer(run, FoldFolder(tmp_path), "train", epochs, "val_score", "max", patience, False)
    trainer.callbacks.extend([probe] if probe else [])
    last = tmp_path / "checkpoints" / "train" / "last.ckpt"
    trainer.fit(_Tiny(), data, data, ckpt_path=last if last.is_file() else None)
    (resume,) = [c for c in trainer.callbacks if isinstance(c, ResumePoint)]
    return best, resume.epochs


def test_every_epoch_leaves_a_full_resume_point_and_the_best_weights(tmp_path: Path) -> None:
    """last.ckpt (optimizer and scheduler included) is rewritten after every epoch when it is quick to write, so a
    fit killed mid-way resumes where it stopped; best.ckpt holds the best epoch's weights only."""
    seen: list[int] = []

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            last = tmp_path / "checkpoints" / "train" / "last.ckpt"
            if trainer.current_epoch > 0:
                assert last.is_file(), f"no resume point before epoch {trainer.current_epoch}"
                seen.append(torch.load(last, weights_only=False)["epoch"])

    best, written = _fit_tiny(tmp_path, 3, 5, Probe())
    assert seen == [0, 1] and written == [0, 1, 2]
    last = torch.load(tmp_path / "checkpoints" / "train" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["optimizer_states"]
    kept = torch.load(best.best_model_path, weights_only=False)
    assert kept["epoch"] == 1 and "optimizer_states" not in kept


@pytest.mark.parametrize(("epochs", "patience", "written"), [(5, 10, [0, 4]), (6, 1, [0, 2])])
def test_a_costly_resume_point_is_written_first_and_after_the_final_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int, patience: int, written: list[int]
) -> None:
    """Where writing a resume point is costly against the fit's epochs, it is written after the first epoch (its cost
    is not known before) and after the last one: max_epochs reached, or the epoch early stopping ends the fit on
    (epoch 2 here: the score peaks at epoch 1, patience 1). The last one holds the best checkpoint's record."""
    from medcad.engine import resume

    monkeypatch.setattr(resume, "CHEAP_WRITE_S", 0.0)
    monkeypatch.setattr(resume, "WRITE_SHARE", 1e-12)  # no epoch here is long enough to pay for a write
    best, seen = _fit_tiny(tmp_path, epochs, patience)
    assert seen == written
    last = torch.load(tmp_path / "checkpoints" / "train" / "last.ckpt", weights_only=False)
    assert last["epoch"] == written[-1] and last["optimizer_states"]
    (record,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert record["best_model_path"] == best.best_model_path and record["best_model_score"] == 0.0


def test_a_fit_resumed_before_its_best_epoch_keeps_the_best_weights_of_that_resume_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after a better epoch than its last resume point, a fit resumes with best.ckpt as it was at that
    resume point: the weights it keeps are never those of epochs it then trains again, whose scores its records
    do not hold. (With resume points written less often than best.ckpt, the gap can be many epochs.)"""
    import tempfile

    from medcad.engine import resume

    monkeypatch.setattr(resume, "CHEAP_WRITE_S", 0.0)
    monkeypatch.setattr(resume, "WRITE_SHARE", 1e-12)
    # no checkpoint goes through $TMPDIR: Lightning's own writer staged them there and, where that was another
    # filesystem than the run folder (/dev/shm here), copied best.ckpt over its hard-linked snapshot in place
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))

    class Killed(Exception):
        pass

    class KillAt3(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 3:
                raise Killed

    folder = tmp_path / "checkpoints" / "train"
    with pytest.raises(Killed):
        _fit_tiny(tmp_path, 5, 10, KillAt3())
    epoch_of = lambda name: torch.load(folder / name, weights_only=False)["epoch"]  # noqa: E731
    assert epoch_of("last.ckpt") == 0 and epoch_of("best.ckpt") == 1  # the best epoch came after the resume point
    seen = []

    class AtStart(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            seen.append(epoch_of("best.ckpt"))

    (folder / ".last.k1ll3d.ckpt").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves (medcad.atomic)
    best, written = _fit_tiny(tmp_path, 5, 10, AtStart())  # resumes after epoch 0: epochs 1-4 trained again
    assert not (folder / ".last.k1ll3d.ckpt").exists()  # removed when the fit resumes
    assert seen == [0]  # best.ckpt as at the resume point, not the killed fit's epoch 1
    assert written == [1, 4] and epoch_of("best.ckpt") == 1 and best.best_model_score == 0.0
    last = torch.load(folder / "last.ckpt", weights_only=False)
    (record,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert record["best_model_score"] == 0.0  # the record and the weights agree


def test_resume_restores_the_best_weights_of_its_resume_point(tmp_path: Path) -> None:
    """restore_best puts back the hard-linked best.ckpt of the resume point, as often as a fit is stopped before its
    next one; nothing to do without one."""
    from medcad.engine.resume import BEST, BEST_AT_RESUME, _link_best, restore_best

    (tmp_path / BEST).write_bytes(b"epoch 0")
    _link_best(tmp_path)
    _link_best(tmp_path)  # a resume point with no better epoch since the last: linked to the same file again
    (tmp_path / ".new").write_bytes(b"epoch 3")
    (tmp_path / ".new").replace(tmp_path / BEST)  # as Lightning replaces best.ckpt
    assert restore_best(tmp_path) and (tmp_path / BEST).read_bytes() == b"epoch 0"
    (tmp_path / ".new").write_bytes(b"epoch 2")
    (tmp_path / ".new").replace(tmp_path / BEST)  # stopped again before the next resume point: restored alike
    assert restore_best(tmp_path) and (tmp_path / BEST).read_bytes() == b"epoch 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_AT_RESUME, BEST]  # no temporary link left
    (tmp_path / BEST_AT_RESUME).unlink()
    assert not restore_best(tmp_path) and (tmp_path / BEST).read_bytes() == b"epoch 0"


@settings(max_examples=200, deadline=None)
@given(
    epochs=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=60),
    write_s=st.floats(0.0, 30.0),
)
def test_resume_points_cost_a_bounded_share_of_a_fit_and_lose_a_bounded_stretch(epochs, write_s) -> None:
    """Over any fit (epoch durations, a write's cost), the writes beyond the first and the final one cost at most
    WRITE_SHARE of the training time, and the training since the last write never exceeds the stretch that pays
    for one write plus one epoch: what a stopped fit loses is bounded."""
    from medcad.engine.resume import CHEAP_WRITE_S, WRITE_SHARE, resume_point_due

    since, cost, writes, lost = 0.0, None, [], 0.0
    for i, epoch_s in enumerate(epochs):
        since += epoch_s
        final = i == len(epochs) - 1
        if resume_point_due(since, cost, final):
            writes.append(i)
            since, cost = 0.0, write_s
        lost = max(lost, since)
    assert writes[0] == 0 and writes[-1] == len(epochs) - 1
    if write_s >= CHEAP_WRITE_S:
        middle = len(writes) - (2 if len(writes) > 1 else 1)
        assert middle * write_s <= WRITE_SHARE * sum(epochs) + 1e-9
        assert lost <= write_s / WRITE_SHARE + max(epochs) + 1e-9
    else:
        assert writes == list(range(len(epochs)))


STAGES = "1:all:1e-4:adam,2:last4:1e-3:adam"


def test_stages_read_in_every_form_and_are_refused_where_they_cannot_run() -> None:
    from medcad.config import Stage, parse_stages, run_stages

    compact = parse_stages("5:all:1e-4:adam, 30:last 4:1e-3:adam")
    as_json = parse_stages(
        '[{"epochs": 5, "layers": "all", "lr": 1e-4, "optimizer": "adam"},'
        ' {"epochs": 30, "layers": "last-4", "lr": "1e-3", "optimizer": "adam"}]'
    )
    mappings = parse_stages(
        [
            {"epochs": 5, "layers": "all", "lr": "1e-4", "optimizer": "adam"},
            {"epochs": "30", "layers": "last4", "lr": 0.001, "optimizer": "Adam"},
        ]
    )
    assert compact == as_json == mappings == (Stage(5, "all", 1e-4, "adam"), Stage(30, "last4", 1e-3, "adam"))
    assert parse_stages("5:head:1e-3:cached") == (Stage(5, "head", 1e-3, None, True),)
    # text is kept as given (config.json reads back equal); a list becomes the compact form
    assert TrainConfig().replace(stages=STAGES).stages == STAGES
    assert TrainConfig().replace(stages=[{"epochs": 5, "layers": "head", "lr": 1e-3}]).stages == "5:head:0.001"
    for bad, message in [
        ("5:all", "is not EPOCHS:LAYERS:LR"),
        ("5:some:1e-3", "layers 'some' is not all, head or last N"),
        ("5:last0:1e-3", "is not all, head or last N"),
        ("5:all:1e-3:sgd", "unknown optimizer 'sgd'"),
        ("5:all:1e-3:cached", "only a head stage"),
        ("x:all:1e-3", "epochs: 'x' is not a whole number"),
        ("5:all:0", "lr > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig().replace(stages=bad)
    assert run_stages(TrainConfig()) is None
    for task in ("segment", "multitask", "detect"):
        with pytest.raises(ConfigError, match=f"stages apply to classify and multilabel runs; a {task} run"):
            run_stages(TrainConfig(task=task, stages="5:all:1e-3"))


def test_layers_optimiser_groups_and_schedule_are_the_settings() -> None:
    import torch

    from medcad.config import Stage
    from medcad.data.transforms import Normalize
    from medcad.engine.classify import train_layers, weight_layers
    from medcad.engine.modules import ClassifierModule, schedule_note
    from medcad.models.classifier import Classifier

    model = Classifier("test_resnet", 2, head="mlp", weights="none")
    layers = weight_layers(model)
    train_layers(model, Stage(30, "last4", 1e-3))
    trainable = [m for m in layers if all(p.requires_grad for p in m.parameters(recurse=False))]
    # Keras' count: the head's three Linear layers and the backbone's last weight layer (a BatchNorm)
    assert trainable == layers[-4:] and isinstance(trainable[0], torch.nn.BatchNorm2d)
    assert [type(m) for m in trainable[1:]] == [torch.nn.Linear] * 3
    assert train_layers(model, Stage(1, "head", 1e-3)) == 6 and not any(
        p.requires_grad for p in model.backbone.parameters()
    )
    train_layers(model, Stage(1, "all", 1e-3))
    assert all(p.requires_grad for p in model.parameters())

    norm = Normalize([0.5] * 3, [0.5] * 3)
    kw = dict(lr=1e-3, weight_decay=0.0, optimizer="adam", class_weights=None, max_epochs=4)
    opt = ClassifierModule(model, norm, **kw, new_layer_lr_factor=1.0, schedule="constant").configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    default = ClassifierModule(model, norm, lr=2e-4, weight_decay=1e-4, optimizer="adamw", class_weights=None)
    out = default.configure_optimizers()  # today's behaviour: head at 5 x lr, AdamW, cosine
    assert isinstance(out["optimizer"], torch.optim.AdamW)
    assert [g["lr"] for g in out["optimizer"].param_groups] == [pytest.approx(1e-3), 2e-4]
    assert isinstance(out["lr_scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        ClassifierModule(model, norm, **{**kw, "optimizer": "sgd"}).configure_optimizers()

    note = schedule_note(TrainConfig())
    assert "head lr 0.001 (5 x 0.0002, new_layer_lr_factor), backbone lr 0.0002, cosine schedule" in note
    note = schedule_note(TrainConfig(task="segment", lr=1e-3, optimizer="adam", schedule="constant"))
    assert "adam (weight decay 0.0001), decoder, heads and from-scratch models lr 0.005 (5 x 0.001" in note
    assert "constant schedule" in note
    twice = "class weights and oversampling both balance the classes, so the rare ones count twice over"
    assert twice in schedule_note(TrainConfig(oversample=True)) and twice not in schedule_note(TrainConfig())
    assert twice not in schedule_note(TrainConfig(task="segment", oversample=True))  # no class loss to weigh there


def test_mask_and_box_modules_take_the_factor_and_schedule() -> None:
    import torch
    from torch import nn

    from medcad.data.transforms import Normalize
    from medcad.engine.detect import DetectorModule
    from medcad.engine.segment import SegmentationModule

    seg = nn.ModuleDict({"encoder": nn.Linear(2, 2), "decoder": nn.Linear(2, 2)})
    norm = Normalize([0.5] * 3, [0.5] * 3)
    m = SegmentationModule(seg, norm, lr=1e-3, weight_decay=0, optimizer="adam", max_epochs=3)
    out = m.configure_optimizers()  # defaults: new layers at 5 x lr, cosine
    assert [g["lr"] for g in out["optimizer"].param_groups] == [pytest.approx(5e-3), 1e-3]
    m = SegmentationModule(
        seg, norm, lr=1e-3, weight_decay=0, optimizer="adam", max_epochs=3, new_layer_lr_factor=1, schedule="constant"
    )
    opt = m.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]

    det = nn.Module()
    det.backbone = nn.Module()
    det.backbone.body, det.head = nn.Linear(2, 2), nn.Linear(2, 2)
    cfg = TrainConfig(task="detect", lr=1e-3, optimizer="adam", new_layer_lr_factor=2, schedule="constant")
    opt = DetectorModule(det, 1, cfg).configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and [g["lr"] for g in opt.param_groups] == [2e-3, 1e-3]


def test_a_stage_list_trains_every_stage_resumes_and_is_stored(easy_set: Path, tmp_path: Path, one_thread) -> None:
    run = tmp_path / "run"
    args = ["train", str(easy_set), "--out", str(run), "--model", "test_resnet", "--weights", "none", "--head", "mlp"]
    args += ["--image-size", "32", "--folds", "2", "--batch-size", "8", "--val-fraction", "0.25", "--no-report"]
    args += ["--stages", STAGES, "--new-layer-lr-factor", "1", "--schedule", "constant", "--optimizer", "adam"]
    res = runner.invoke(app, [*args, "--keep-checkpoints"])  # kept: each fold as a kill before its result.json left it
    assert res.exit_code == 0, res.output
    assert "note: training (the stage list replaces head_epochs, head_lr, epochs, lr and unfreeze): stage 1: 1 " in (
        res.output
    )
    assert "stage 2: 2 epochs of the last 4 weight layers, adam" in res.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["stages"], saved["new_layer_lr_factor"], saved["schedule"], saved["optimizer"]) == (
        STAGES,
        1.0,
        "constant",
        "adam",
    )
    for k in (0, 1):
        fold = run / f"fold_{k}"
        result = json.loads((fold / "result.json").read_text())
        assert {"val_score_stage1", "val_score_stage2"} <= set(result) and result["selected_stage"] in (
            "stage1",
            "stage2",
        )
        assert (fold / "checkpoints" / "stage1" / "done").read_text().strip() == "1:all:0.0001:adam"
    # an interrupted fold resumes: the finished stage 1 is loaded, not trained again
    best1 = run / "fold_1" / "checkpoints" / "stage1" / "best.ckpt"
    before = best1.stat().st_mtime_ns
    (run / "fold_1" / "result.json").unlink()
    train_run(easy_set, run, TrainConfig.load(run / "config.json"), progress=False)
    assert best1.stat().st_mtime_ns == before and (run / "fold_1" / "result.json").is_file()

    res = runner.invoke(app, ["train", str(easy_set), "--task", "segment", "--stages", STAGES, "--out", "s"])
    assert res.exit_code == 2 and "stages apply to classify and multilabel runs" in res.output


def test_folds_scored_in_fp32_are_what_predict_gives_after_bf16_training(easy_set: Path, tmp_path: Path) -> None:
    """A run that trains in bf16 autocast scores its folds in fp32, the reference of predict's backends: predicting a
    fold's model file with torch-fp32 gives the fold's test probabilities (with its validation temperature)."""
    run = tmp_path / "run"
    train_run(easy_set, run, FAST.replace(precision="bf16-mixed"), progress=False)
    assert_predict_reproduces_fold(run, easy_set, "cpu", atol=2e-5)


def test_predict_gives_the_folds_outputs_on_large_jpegs(easy_set: Path, tmp_path: Path) -> None:
    """JPEGs far larger than the model's input: training, fold scoring and evaluate decode them as predict does (a
    reduced-scale DCT decode for training had made predict's probabilities differ by up to 0.1 on BUSI)."""
    from PIL import Image

    jpegs = tmp_path / "jpegs"
    for png in easy_set.rglob("*.png"):
        out = jpegs / png.relative_to(easy_set).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").resize((200, 200), Image.BICUBIC).save(out, quality=90)
    run = tmp_path / "run"
    train_run(jpegs, run, FAST.replace(precision="bf16-mixed"), progress=False)
    assert_predict_reproduces_fold(run, jpegs, "cpu", atol=2e-5)


def test_a_randomly_initialised_backbone_trains_its_batchnorm_statistics(easy_set: Path, tmp_path: Path) -> None:
    """Without pretrained weights the BatchNorm statistics are trained with the network (they had been kept at the
    fresh initialisation's mean 0 / variance 1 through every epoch, as pretrained ones are kept)."""
    import torch

    from medcad.models.backbones import learned_bn_statistics

    run = tmp_path / "run"
    train_run(easy_set, run, FAST.replace(model="resnet18", weights="none", folds=2), progress=False)
    state = torch.load(run / "fold_0" / "model.pt", weights_only=False)["state_dict"]
    means = [v for k, v in state.items() if k.startswith("backbone.") and k.endswith("running_mean")]
    assert means and any(bool((m != 0).any()) for m in means)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    assert not learned_bn_statistics(model) and learned_bn_statistics(torch.nn.Linear(2, 2))
    model[0].running_mean += 0.5
    assert learned_bn_statistics(model)


def test_val_score_is_the_runs_auc() -> None:
    """Model selection scores a validation part by the AUC the run's metrics report: for two classes the binary
    AUC, also where a float32 softmax saturates; for more, sklearn's one-vs-rest macro AUC over the classes
    present (probabilities renormalised over them); accuracy for one class."""

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = float32_softmax(np.column_stack([np.zeros(60), rng.normal(size=60) * 25 + 3 * (2 * y - 1)]))
    assert (p == 1.0).sum() > 10
    m = classification_metrics(y, p, ["a", "b"], n_boot=0)
    assert val_score(y, p) == m["macro_auc"]["value"] == m["binary"]["auc"]["value"]
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet([1, 1, 1], 60) + 0.5 * np.eye(3)[y3]
    p3 /= p3.sum(axis=1, keepdims=True)
    assert val_score(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    two = y3 != 1  # classes 0 and 2 present: their AUC on p renormalised over them
    renormalised = p3[two, 2] / p3[two][:, [0, 2]].sum(1)
    assert val_score(y3[two], p3[two]) == pytest.approx(roc_auc_score(y3[two] == 2, renormalised))
    y4 = np.r_[0, 1, 2, rng.integers(0, 3, 57)]  # three classes present of four
    p4 = rng.dirichlet([1, 1, 1, 1], 60)
    present = p4[:, :3] / p4[:, :3].sum(axis=1, keepdims=True)
    assert val_score(y4, p4) == pytest.approx(roc_auc_score(y4, present, multi_class="ovr"))
    assert val_score(np.zeros(5, int), p3[:5]) == (p3[:5].argmax(1) == 0).mean()
    # a diverged epoch (nan probabilities) scores 0: argmax of nan rows is class 0, whose accuracy had scored 0.75
    assert val_score(np.array([0, 0, 0, 1]), np.full((4, 2), np.nan)) == 0.0


def test_a_validation_part_of_one_class_is_said() -> None:
    """A fold whose validation part holds one class selects its model by accuracy on it (the AUC is undefined):
    said, naming the class (a sequential study's fold had selected on 2 benign images, val_auc 0.000, silently)."""
    from medcad.engine.classify import one_class_validation

    said = one_class_validation(3, np.array([0, 0]), ["benign", "malignant"])
    assert said and said.startswith("fold 3: its validation part (2 image(s)) holds one class ('benign')")
    assert one_class_validation(0, np.array([0, 1]), ["benign", "malignant"]) is None


def test_a_folder_whose_split_was_refused_starts_anew_with_other_settings(easy_set: Path, tmp_path: Path) -> None:
    """A refused split leaves config.json (no splits.json): the command its error advises, with other settings
    (--group patient), starts the run anew (it had been refused as "a run with other settings"); a run that split
    its data is still resumed only with its own settings."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(FAST.replace(group_by="duplicates").to_dict()))
    train_run(easy_set, run, FAST, progress=False)
    assert json.loads((run / "config.json").read_text())["group_by"] == "auto" and (run / "metrics.json").is_file()
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        train_run(easy_set, run, FAST.replace(group_by="duplicates"), progress=False)


def test_a_refused_split_leaves_no_run_folder(tmp_path: Path) -> None:
    """Two patients cannot fill two folds' training and validation parts: the split is refused before anything of
    the run is written (config.json and manifest.csv had been left in the folder)."""
    from conftest import noise_image, save
    from medcad.errors import DataError

    rows = ["image,label,patient"]
    for i in range(12):
        save(tmp_path / "data" / f"{i}.png", noise_image(i))
        rows.append(f"{i}.png,{'x' if i % 2 else 'y'},p{i % 4 // 2}")
    (tmp_path / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="fold 0 would have"):
        train_run(tmp_path / "data", tmp_path / "run", FAST.replace(group_by="patient"), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_fold_whose_model_predicts_nan_stops_with_the_fold_named(tmp_path: Path) -> None:
    """A diverged fold (NaN probabilities) stops before its result is written, naming the fold and what to change,
    instead of a metrics error after every fold has trained."""
    from medcad.engine.fold import _check_finite
    from medcad.errors import MedcadError

    ok = {"probs": np.full((4, 2), 0.5)}
    _check_finite(tmp_path / "fold_1", {"validation": ok, "test": ok, "boxes": {"detections": []}})
    bad = {"probs": np.array([[0.5, 0.5], [np.nan, np.nan], [0.2, 0.8]])}
    with pytest.raises(
        MedcadError, match=r"fold_1: .*\(NaN\) for 1 of 3 test images: its training diverged; train a new run"
    ):
        _check_finite(tmp_path / "fold_1", {"validation": ok, "test": bad})
    boxes = {"detections": [np.array([[1, 2, 8, 9, 0.9, 0]]), np.zeros((0, 6))]}
    _check_finite(tmp_path / "fold_1", {"validation": boxes, "test": boxes})
    nan_box = {"detections": [np.array([[1, 2, 8, 9, np.nan, 0]]), np.zeros((0, 6))]}
    with pytest.raises(MedcadError, match=r"non-finite boxes or scores \(NaN\) for 1 of 2 validation images"):
        _check_finite(tmp_path / "fold_1", {"validation": nan_box, "test": boxes})


def test_a_segmenter_predicting_nan_is_stopped_though_its_masks_are_uint8(tmp_path: Path) -> None:
    """A diverged segmenter's NaN probabilities become 0 as uint8 masks: empty masks that would score as a poor model.
    predict_masks flags the images whose outputs were not finite, and the fold stops on them."""
    from medcad.data.transforms import Normalize
    from medcad.engine.fold import _check_finite
    from medcad.errors import MedcadError
    from medcad.models.predict import predict_masks
    from medcad.models.segmentation import create_segmenter

    model = create_segmenter("unet", weights="none")  # masks only
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    out = predict_masks(model, norm, images, np.arange(3), bf16=False)
    assert not out["nonfinite"].any()
    _check_finite(tmp_path / "fold_0", {"test": {"masks": out["mask"], "nonfinite": out["nonfinite"]}})
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    out = predict_masks(model, norm, images, np.arange(3), bf16=False)
    assert out["nonfinite"].all() and out["mask"].dtype == np.uint8 and out["class"] is None
    with pytest.raises(MedcadError, match=r"fold_0: .*non-finite masks or probabilities \(NaN\) for 3 of 3 test"):
        _check_finite(tmp_path / "fold_0", {"test": {"masks": out["mask"], "nonfinite": out["nonfinite"]}})


@pytest.mark.heavy
def test_the_positive_class_is_the_users_choice_and_a_finished_run_is_pooled_again(
    easy_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two findings, neither a negation (adenoma vs hyperplastic), had the last label as positive class, with no way
    to choose: `positive` names it for every binary figure (sensitivity, operating points, ROC, evaluate --data),
    and a finished run given another is pooled again, not trained again; what it made before with the old one
    (evaluate --data) is said, and marked in the report until made again. A class the run lacks, or a run of more
    than two classes, is refused before anything is written."""
    renamed = TrainConfig(**{**FAST.to_dict(), "label_map": "lesion=adenoma,normal=hyperplastic"})
    run = tmp_path / "run"
    m = train_run(easy_set, run, renamed.replace(positive="Adenoma"), progress=False)  # matched without case
    assert m["binary"]["positive"] == "adenoma"
    assert m["validated_operating_points"]["positive"] == "adenoma"
    sizes = m["validated_operating_points"]["validation_images"]  # adenoma / the rest in each fold's validation part
    assert set(sizes) == {"0", "1"} and all(a + b >= 2 for a, b in sizes.values())
    assert "fewer than 10 validation images" in m["validated_operating_points"]["few_validation"]  # 24 images
    c = m["confusion_matrix"]["labels"].index("adenoma")
    n_adenoma = sum(m["confusion_matrix"]["matrix"][c])
    at = m["binary"]["at_0.5"]
    assert at["sensitivity"]["value"] == pytest.approx(m["confusion_matrix"]["matrix"][c][c] / n_adenoma)
    saved = json.loads((run / "config.json").read_text())
    assert saved["positive"] == "adenoma"  # as the labels spell it
    assert not any("positive class" in n for n in saved["data_notes"])  # chosen, so not said
    evaluate = ["evaluate", str(run), "--data", str(easy_set), "--label-map", "lesion=adenoma,normal=hyperplastic"]
    ev = runner.invoke(app, evaluate)
    assert ev.exit_code == 0, ev.output
    external = run / "evaluations" / easy_set.name / "metrics.json"
    assert json.loads(external.read_text())["binary"]["positive"] == "adenoma"  # the run's
    model = (run / "fold_0" / "model.pt").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        again = train_run(easy_set, run, renamed.replace(positive="hyperplastic"), progress=False)
    assert (run / "fold_0" / "model.pt").stat().st_mtime_ns == model  # pooled again, not trained again
    assert again["timing"] == m["timing"]  # how long it trained: a re-pool does not change it
    said = [r.getMessage() for r in caplog.records if "was 'adenoma'" in r.getMessage()]
    kept = f"made with 'adenoma' before, until made again (medcad evaluate): evaluations/{easy_set.name}"
    assert said and kept in said[0]
    assert again["binary"]["positive"] == "hyperplastic"
    assert again["binary"]["at_0.5"]["sensitivity"]["value"] == pytest.approx(at["specificity"]["value"])
    assert again["binary"]["auc"]["value"] == pytest.approx(m["binary"]["auc"]["value"])
    assert json.loads((run / "config.json").read_text())["positive"] == "hyperplastic"
    resumed = train_run(easy_set, run, renamed, progress=False)  # the same command without --positive: kept
    assert resumed["binary"]["positive"] == "hyperplastic"
    from medcad.report.html import write_report

    html = write_report(run, gallery=False).read_text().replace("&#39;", "'")
    assert "Made with positive class 'adenoma'; the run's figures are now pooled with 'hyperplastic'" in html
    assert runner.invoke(app, evaluate).exit_code == 0  # made again: the run's positive class
    assert json.loads(external.read_text())["binary"]["positive"] == "hyperplastic"
    assert "Made with positive class" not in write_report(run, gallery=False).read_text()

    # predict and serve decide at a validated operating point when asked: the positive class from its threshold
    # (the folds' mean for the ensemble, the fold's own for --fold), said, and carried by each row
    points = json.loads((run / "metrics.json").read_text())["validated_operating_points"]
    images = sorted(str(p) for p in easy_set.rglob("*.png"))
    ensemble, own = points["sens>=0.90"]["ensemble_threshold"], points["sens>=0.90"]["thresholds"]["1"]
    for fold, cut, model in ((None, ensemble, run), (1, own, run), (None, own, run / "fold_1" / "model.pt")):
        args = ["predict", str(model), *images, "--out", str(tmp_path / f"op{fold}{model.name}"), "--backend"]
        res = runner.invoke(app, [*args, "torch-fp32", *(["--fold", str(fold)] if fold is not None else []), "--json",
                                  "--operating-point", "sens>=0.90"])  # fmt: skip
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        assert all(r["decided_at"] == {"positive": "hyperplastic", "threshold": cut} for r in rows)
        assert [r["label"] for r in rows] == [
            "hyperplastic" if r["probabilities"]["hyperplastic"] >= cut else "adenoma" for r in rows
        ]
        assert f"'hyperplastic' when p_hyperplastic >= {cut:.4g} (operating point 'sens>=0.90'" in res.stderr
    from medcad.inference import backends
    from medcad.inference.card import model_card
    from medcad.inference.registry import load_predictor

    def measured(ref, threads):  # as `auto` measures: the chosen backend's predictor made apart from the reference
        made = type(ref)(ref.run, ref.fold, "torch-fp32", threads, ref.threshold, "cpu")
        return {"backend": "torch-fp32", "reason": "measured"}, made

    monkeypatch.setattr(backends, "measure_choice", measured)
    chosen = load_predictor(run, operating_point="youden")  # `auto`'s measured predictor had decided by argmax
    assert chosen.cut == ("hyperplastic", points["youden"]["ensemble_threshold"])  # on whichever backend it chose
    card = model_card(chosen)
    assert card["decision"].startswith("'hyperplastic' when p_hyperplastic >= ") and card["positive"] == "hyperplastic"
    (line,) = card["calibration"]  # the positive class's, on the scale predict answers on
    assert line["class"] == "hyperplastic" and "not the risk at the data's prevalence" in card["calibration_note"]
    table = pd.read_csv(tmp_path / f"opNone{run.name}" / "predictions.csv")  # the table says where it cut, too
    assert set(table["decided_at"]) == {f"p_hyperplastic >= {points['sens>=0.90']['ensemble_threshold']:.6g}"}
    res = runner.invoke(app, ["predict", str(run), images[0], "--operating-point", "sens>=0.85"])
    assert res.exit_code == 2 and "not one of this run's (youden, spec>=0.90" in res.output

    default = train_run(easy_set, tmp_path / "default", renamed, progress=False)
    assert default["binary"]["positive"] == "hyperplastic"  # the last label, and said
    notes = json.loads((tmp_path / "default" / "config.json").read_text())["data_notes"]
    assert any("positive class 'hyperplastic'" in n and "--positive" in n for n in notes)
    res = runner.invoke(app, ["train", str(easy_set), "--out", str(tmp_path / "b"), "--positive", "polyp"])
    assert res.exit_code == 2 and "'polyp' is not one of the run's classes (lesion, normal)" in res.output
    assert not (tmp_path / "b").exists()
    three = tmp_path / "three"
    for i, lab in enumerate(["a", "b", "c"] * 2):
        (three / lab).mkdir(parents=True, exist_ok=True)
        (three / lab / f"{i}.png").write_bytes((easy_set / "lesion" / "0.png").read_bytes())
    res = runner.invoke(app, ["train", str(three), "--out", str(tmp_path / "c"), "--positive", "a"])
    assert res.exit_code == 2 and "names the positive class of a two-class run; this one has 3" in res.output
