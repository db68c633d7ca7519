"""A real (tiny) classification run end to end: train, resume, metrics.json, predict, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medcad.cli import app
from medcad.config import TrainConfig
from medcad.engine.train import train_run
from medcad.errors import ConfigError
from medcad.tasks import freeze_stride

runner = CliRunner()
FAST = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)


def test_train_resume_predict_evaluate(easy_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = train_run(easy_set, run, FAST, progress=False)
    for name in ("accuracy", "macro_f1", "macro_auc"):
        assert set(m[name]) == {"value", "ci95"}
    assert set(m["per_class"]["lesion"]) >= {"precision", "recall", "specificity", "f1", "support", "auc"}
    assert m["confusion_matrix"]["labels"] == ["lesion", "normal"]
    assert len(m["per_fold"]) == 2 and m["evaluation"] == "out-of-fold"
    assert m["accuracy"]["value"] > 0.6  # the task is easy
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["confusion_matrix"]["matrix"] == m["confusion_matrix"]["matrix"]
    pred = (run / "predictions.csv").read_text().splitlines()
    assert len(pred) == 25 and pred[0].startswith("image,fold,label,predicted,p_lesion,p_normal")
    for k in (0, 1):
        assert (run / f"fold_{k}" / "model.pt").is_file()
        assert list((run / f"fold_{k}" / "logs" / "tensorboard").rglob("events.out.tfevents*"))

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
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(easy_set), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 24


def test_cli_train_errors(easy_set: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(easy_set), "--model", "efficientnet_b00", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "nothing"), str(easy_set / "lesion" / "0.png")])
    assert res.exit_code == 2 and "not a run folder" in res.output


def test_positive_label_is_the_finding() -> None:
    from medcad.engine.results import positive_label

    assert positive_label(["lesion", "normal"]) == "lesion"
    assert positive_label(["abnormal", "normal"]) == "abnormal"
    assert positive_label(["benign", "malignant"]) == "malignant"


def test_runs_made_before_freeze_stride_resume_as_they_started(tmp_path: Path) -> None:
    """A config.json written before `freeze_stride` existed trained every encoder stage: it loads as 0, not as
    today's default, so resuming such a run does not mix recipes between its folds."""
    new = TrainConfig()
    assert new.freeze_stride is None  # the task's default: 4 for classifiers, 0 for mask models and detectors
    assert freeze_stride(None, "classify") == 4 and freeze_stride(None, "segment") == freeze_stride(None, "detect") == 0
    with pytest.raises(ConfigError, match="freeze_stride"):
        freeze_stride(-1, "classify")
    d = new.to_dict()
    del d["freeze_stride"], d["tta"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    old = TrainConfig.load(tmp_path / "config.json")
    assert old.freeze_stride == 0 and old.tta == "none"  # ... and was predicted without test-time augmentation
    (tmp_path / "config.json").write_text(json.dumps(new.replace(freeze_stride=8).to_dict()))
    assert TrainConfig.load(tmp_path / "config.json").freeze_stride == 8


def test_every_epoch_leaves_a_full_resume_point_and_the_best_weights(tmp_path: Path) -> None:
    """last.ckpt (optimizer and scheduler included) is rewritten after every epoch, so a fit killed mid-way resumes
    where it stopped; best.ckpt holds the best epoch's weights only."""
    import lightning as L
    import torch

    from medcad.engine.common import make_trainer

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val_score", float(self.current_epoch == 1))  # epoch 1 is the best

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), 1e-3)

    seen: list[int] = []

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            last = tmp_path / "checkpoints" / "train" / "last.ckpt"
            if trainer.current_epoch > 0:
                assert last.is_file(), f"no resume point before epoch {trainer.current_epoch}"
                seen.append(torch.load(last, weights_only=False)["epoch"])

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer, best = make_trainer(tmp_path, "train", 3, FAST.replace(logger="none"), "val_score", "max", 5, False)
    trainer.callbacks.append(Probe())
    trainer.fit(Tiny(), data, data)
    assert seen == [0, 1]
    last = torch.load(tmp_path / "checkpoints" / "train" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["optimizer_states"]
    kept = torch.load(best.best_model_path, weights_only=False)
    assert kept["epoch"] == 1 and "optimizer_states" not in kept
