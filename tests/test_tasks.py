"""The task contract: every task of the table has every layer's hook, and its model file round-trips (a test run
per task, as segmentation-models-pytorch runs one per architecture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medcad.checkpoint import load_model_file, save_model
from medcad.config import TrainConfig
from medcad.engine.fold import FoldHooks
from medcad.engine.train import fold_hooks
from medcad.errors import ConfigError
from medcad.explain.explainers import EXPLAINERS
from medcad.inference.outputs import BACKGROUND, LESION, NO_LESION
from medcad.inference.prediction import Prediction
from medcad.inference.registry import PREDICTORS, predictor_class
from medcad.run import Run
from medcad.tasks import TASKS, get_task

SETTINGS = {
    "classify": {},
    "segment": {"arch": "unet"},
    "segment-multiclass": {"arch": "attention-unetpp"},
    "multitask": {"arch": "unet"},
    "detect": {},
    "multilabel": {},
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_has_every_hook(name: str) -> None:
    task = get_task(name)
    assert issubclass(fold_hooks(name), FoldHooks) and name in fold_hooks(name).tasks
    assert name in predictor_class(name).tasks and set(PREDICTORS) == set(TASKS)
    assert name in EXPLAINERS
    assert task.targets and task.outputs and task.headline


@pytest.mark.parametrize("name", list(TASKS))
def test_model_file_round_trip(name: str, tmp_path, one_thread) -> None:
    cfg = TrainConfig(task=name, weights="none", image_size=64, **SETTINGS[name])
    task = get_task(name)
    model = task.build(cfg, 2, None).eval()
    dc = task.data_config(model)
    save_model(tmp_path / "model.pt", model, cfg, ["a", "b"], dc, temperature=1.5)
    loaded, meta = load_model_file(tmp_path / "model.pt", name)
    assert meta["format"] == task.model_format and meta["labels"] == ["a", "b"] and meta["temperature"] == 1.5
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = (model([x[0]]) if name == "detect" else model(x)), (loaded([x[0]]) if name == "detect" else loaded(x))
    if name == "detect":
        assert torch.equal(a[0]["boxes"], b[0]["boxes"])
    elif isinstance(a, dict):
        assert all(torch.allclose(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    else:
        assert torch.allclose(a, b)
    other = next(t for t in TASKS if TASKS[t].model_format != task.model_format)
    with pytest.raises(Exception, match=f"is a {name} model; this needs a {other} model"):
        load_model_file(tmp_path / "model.pt", other)


@pytest.mark.parametrize("name", ["classify", "segment", "detect"])
def test_a_model_file_whose_weights_do_not_fit_fails_as_its_predictor_starts(name: str, tmp_path, one_thread) -> None:
    """A model file missing a tensor of its network is named when a predictor that runs the networks starts (torch
    backends; detectors also on a graph, whose boxes they decode): with the networks built on first use it had
    started, `/health` said ok, and every request failed with a RuntimeError."""
    from medcad.errors import DataError
    from medcad.inference.registry import predictor_class

    cfg = TrainConfig(task=name, weights="none", image_size=64, **SETTINGS[name])
    task = get_task(name)
    model = task.build(cfg, 2, None).eval()
    save_model(tmp_path / "model.pt", model, cfg, ["a", "b"], task.data_config(model))
    blob = torch.load(tmp_path / "model.pt", weights_only=False)
    blob["state_dict"].pop(next(reversed(blob["state_dict"])))  # the network's last tensor
    torch.save(blob, tmp_path / "model.pt")
    with pytest.raises(DataError, match=f"its weights do not fit the {name} network") as e:
        predictor_class(name)(tmp_path / "model.pt", backend="torch-fp32")
    assert "model.pt" in str(e.value) and "retrain that fold" in str(e.value)
    assert predictor_class(name).networks_at_start == (name == "detect")


def test_several_labels_are_written_as_a_manifest_reads_them() -> None:
    """A multi-label decision and a label map's classes are joined with '|', as manifests' cells are and as the run's
    predictions.csv writes them: predict's table reads back as the same labels ('disc+square' had read as one)."""
    from medcad.inference.outputs import ClassProbabilities
    from medcad.tasks import split_labels

    both = ClassProbabilities(["disc", "square"], np.array([0.9, 0.7]), multilabel=True)
    assert both.decision()[0] == "disc|square" and split_labels(both.decision()[0]) == ["disc", "square"]
    none = ClassProbabilities(["disc", "square"], np.array([0.2, 0.1]), multilabel=True)
    assert none.decision()[0] == "none" and split_labels("none") == []


def test_label_map_prediction_classes_rows_and_mask_file() -> None:
    lesion = np.zeros((60, 60), np.float32)
    lesion[25:30, 5:10], lesion[40:50, 20:40] = 0.9, 0.8  # a small cyst and a larger stone (below the label band)
    lesion_class = np.ones((60, 60), np.uint8)
    lesion_class[35:, :] = 2
    p = Prediction.of("k.png", ["cyst", "stone"], mask=lesion, lesion_class=lesion_class, class_values=(3, 7))
    assert p.label == "stone|cyst"  # largest first, joined as a manifest's multi-label cells are
    row = p.row()
    assert row["fraction_cyst"] == pytest.approx(25 / 3600) and row["fraction_stone"] == pytest.approx(200 / 3600)
    assert (
        set(np.unique(p.mask.mask_image())) == {0, 3, 7} and (p.mask.mask_image() == 7).sum() == 200
    )  # the run's values
    drawn = p.draw(np.zeros((60, 60, 3), np.uint8))
    drawn = drawn[drawn.shape[0] - 60 :]  # the image under the decision's band
    assert tuple(drawn[27, 7]) != tuple(drawn[45, 30]) and drawn[27, 7].any() and drawn[45, 30].any()
    assert Prediction.of("e", ["cyst", "stone"], mask=lesion * 0, lesion_class=lesion_class).label == NO_LESION


def test_unknown_task_names_the_tasks() -> None:
    with pytest.raises(ConfigError, match="unknown task 'segmentation'; choose one of classify, segment"):
        get_task("segmentation")


def test_prediction_decisions_rows_and_drawing() -> None:
    labels = ["benign", "malignant"]
    p = Prediction.of("a.png", labels, probabilities=np.array([0.3, 0.7]))
    assert (p.label, p.score) == ("malignant", 0.7) and p.row()["p_benign"] == 0.3
    assert p.summary()["probabilities"] == {"benign": 0.3, "malignant": 0.7}
    mask = np.zeros((20, 30), np.float32)
    assert Prediction.of("m", labels, mask=mask).label == NO_LESION
    mask[5:10, 5:10] = 0.9
    m = Prediction.of("m", labels, mask=mask)
    assert m.label == LESION and m.row()["lesion_fraction"] == pytest.approx(25 / 600)
    boxes = np.array([[1, 2, 10, 12, 0.8, 1], [3, 3, 5, 5, 0.3, 0]])
    d = Prediction.of("d", labels, boxes=boxes, threshold=0.5)
    assert d.label == "malignant" and d.row()["n_boxes"] == 1 and d.summary()["boxes"][0][5] == "malignant"
    assert Prediction.of("d", labels, boxes=boxes, threshold=0.9).label == BACKGROUND
    rgb = np.zeros((20, 30, 3), np.uint8)
    for pred in (p, m, d):
        shown = pred.draw(rgb)  # the decision on a band above the image
        assert shown.shape[1:] == rgb.shape[1:] and shown.shape[0] > 20 and shown.any() and not rgb.any()
        assert pred.draw(rgb, above=False).shape == rgb.shape  # a video frame keeps its size
    # what each number is, where it is not a class's probability (a frame's overlay said "lesion 0.93", its video
    # "lesion 0.09": the top lesion probability, then the smoothed lesion area, both unnamed); no threshold takes
    # part in a one-class-per-image decision (serve had said 0.5)
    assert (p.decider.score_means, m.decider.score_means, m.decider.evidence_means) == (
        "",
        "top lesion probability",
        "lesion area",
    )
    assert p.threshold is None and m.threshold == 0.5 and d.threshold == 0.5


def test_detector_ensemble_merges_overlapping_boxes() -> None:
    from medcad.inference.detections import merge_detections

    a = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.6, 1]])
    b = np.array([[1, 1, 10, 10, 0.8, 0], [0, 0, 10, 10, 0.7, 1]])  # same lesion (class 0), and a class-1 box
    merged = merge_detections([a, b])
    assert merged[:, 4].tolist() == [0.9, 0.7, 0.6]  # the weaker class-0 duplicate is gone, best first


def test_reference_label_as_datasets_spell_it() -> None:
    """The lesion-free class is found however a dataset writes it; the frame decision then scores its class head."""
    from medcad.engine.segment import frame_score_kind
    from medcad.tasks import positive_label, reference_label

    assert reference_label(["benign", "malignant", "normal"]) == "normal"
    assert reference_label(["Cyst", "Normal", "Stone", "Tumor"]) == "Normal"  # CT-KIDNEY's folders
    assert reference_label(["no_lesion", "polyp"]) == "no_lesion" and reference_label(["Healthy", "AMD"]) == "Healthy"
    assert reference_label(["benign", "malignant"]) is None
    assert reference_label(["normal", "healthy", "tumour"]) is None  # two candidates: none guessed
    assert frame_score_kind(["Benign", "Malignant", "Normal"], True) == ("p_lesion", 2)
    assert frame_score_kind(["Benign", "Malignant", "Normal"], False) == ("lesion_area", None)
    assert positive_label(["Normal", "Stone"]) == "Stone" and positive_label(["Polyp", "No lesion"]) == "Polyp"


@pytest.mark.parametrize(
    ("labels", "positive"),
    [
        (["cancer", "no cancer"], "cancer"),
        (["malignant", "non-malignant"], "malignant"),
        (["Non_Polyp", "Polyp"], "Polyp"),
        (["tumour", "tumour-free"], "tumour"),
        (["cancer", "control"], "cancer"),
        (["Healthy controls", "stone"], "stone"),
        (["Malignant", "benign"], "Malignant"),
        (["adenoma", "hyperplastic"], "hyperplastic"),
        (["nodule", "non-specific"], "non-specific"),
    ],
)
def test_the_positive_class_is_the_finding_however_its_negation_is_written(labels: list[str], positive: str) -> None:
    """A binary run's positive class (its sensitivity, operating points and ROC) is the finding beside its negation
    as labels write it (`no X`, `non-X`, `X-free`, control) and malignancy beside benign; else the last label. `no
    cancer` had been the positive beside `cancer`, and `benign` beside `Malignant`. `non-specific` is a finding,
    not a negation: two findings keep the last label."""
    from medcad.tasks import positive_label

    assert positive_label(sorted(labels)) == positive


def test_decoder_widths_of_a_run_and_of_runs_made_before_the_setting(tmp_path) -> None:
    """Bad decoder widths and an unknown architecture fail when a run's settings are resolved, before anything is
    written (an unknown architecture failed at the first fold, after the run folder was made); a saved run from
    before the setting (no widths in its config) or from before "auto" (None) is built with smp's, so its model files
    load."""
    import json

    from medcad.engine.train import train_run
    from medcad.models.segmentation import SMP_DECODER_CHANNELS

    cfg = TrainConfig(task="segment", arch="unet", weights="none")
    bad = [
        (cfg.replace(decoder_channels="64,32"), "5 positive integers"),
        (TrainConfig(task="detect", decoder_channels="64,32,16,16,8"), "not a detect run"),
        (cfg.replace(arch="unett"), "unknown segmentation architecture 'unett'"),
    ]
    for settings, message in bad:
        with pytest.raises(ConfigError, match=message):
            train_run(tmp_path, tmp_path / "r", settings, progress=False)
        assert not (tmp_path / "r").exists()
    d = cfg.to_dict()
    del d["decoder_channels"]  # written before the setting existed
    for saved in (d, d | {"decoder_channels": None}):  # ... or before "auto" existed, with smp's widths as None
        (tmp_path / "config.json").write_text(json.dumps(saved))
        model = get_task("segment").build(TrainConfig.load(tmp_path / "config.json"), 1, None)
        assert [b.conv1[0].out_channels for b in model.net.decoder.blocks] == list(SMP_DECODER_CHANNELS)
    # unset ("auto"): a new run gets the U-Net's default; a resumed one, or one continuing from another run's models,
    # those models' widths
    assert Run.resolve(cfg, tmp_path / "new").cfg.decoder_channels == "128,64,32,16,16"
    assert Run.resolve(cfg, tmp_path).cfg.decoder_channels is None
    assert Run.resolve(cfg, tmp_path / "new", init_run=tmp_path).cfg.decoder_channels is None  # continues from it
    (tmp_path / "config.json").write_text(json.dumps(d | {"decoder_channels": "64,32,16,16,8"}))
    assert Run.resolve(cfg, tmp_path).cfg.decoder_channels == "64,32,16,16,8"
    other_arch = Run.resolve(cfg.replace(arch="unetpp"), tmp_path / "new", init_run=tmp_path)  # not its models
    assert other_arch.cfg.decoder_channels is None
    (tmp_path / "splits.json").write_text("{}")  # a run that split its data: resumed, not started anew
    with pytest.raises(ConfigError, match="holds a run with other settings"):  # given widths are checked on resume
        train_run(tmp_path, tmp_path, cfg.replace(decoder_channels="32,32,16,16,8"), progress=False)


@given(
    findings=st.lists(st.sampled_from(["stone", "cyst", "Tumour", "normal mucosa", "polyp 2"]), unique=True),
    none=st.sampled_from(["", "No Finding", "none", "Normal", "no_lesion", "NONE", "healthy"]),
    sep=st.sampled_from(["|", "; ", " | ", ";"]),
    where=st.integers(0, 5),
)
def test_a_multi_label_cell_gives_its_findings_and_no_finding_names_none(findings, none, sep, where) -> None:
    """However a cell spells 'no finding' (alone or beside findings), the cell's findings are exactly the others."""
    from medcad.tasks import split_labels

    parts = list(findings)
    parts.insert(min(where, len(parts)), none)
    assert split_labels(sep.join(parts)) == findings


_ALTERED = {  # a value other than the default for each setting some tasks do not read
    "arch": "unetpp",
    "decoder_channels": "64,32,16,8,8",
    "missing_masks": "empty",
    "nsd_tolerance": 2.0,
    "tta": "hflip",
    "mask_labels": "1=cyst",
    "class_loss_weight": 2.0,
    "frame_classes": "normal",
    "head": "mlp",
    "head_epochs": 3,
    "head_lr": 0.01,
    "unfreeze": 2,
    "stages": "1:all:1e-4",
    "label_smoothing": 0.1,
    "class_weights": False,
    "dropout": 0.5,
    "oversample": True,
    "positive": "lesion",
}


@given(st.sampled_from(list(TASKS)), st.sets(st.sampled_from(list(_ALTERED))))
def test_a_setting_the_task_does_not_read_is_named_and_left_out_of_its_table(task: str, changed: set[str]) -> None:
    """`--tta hflip` on a classifier, `--unfreeze 2` on a mask model, `--dropout` on a detector: given, read by
    nothing, and the run had said nothing. Each is named with the tasks that read it; the settings table keeps
    those the task reads."""
    from medcad.tasks import TASK_SETTINGS, settings_read, unread_settings

    assert set(_ALTERED) == set(TASK_SETTINGS) and set().union(*TASK_SETTINGS.values()) <= set(TASKS)
    cfg = TrainConfig(task=task).replace(**{k: _ALTERED[k] for k in changed})
    named = {s.split("=")[0] for s in unread_settings(cfg)}
    by_model = set()
    if task == "detect" and "head" in changed:  # mlp: a classifier's head, the detector builds SSDlite
        by_model.add("head")
    if task in ("segment", "segment-multiclass") and "dropout" in changed:  # unet / unetpp: smp nets, no dropout
        by_model.add("dropout")
    assert named == {k for k in changed if task not in TASK_SETTINGS[k]} | by_model
    if task == "detect":
        ssd = cfg.replace(head="ssd")
        assert settings_read(cfg)["head"] == "ssdlite" and not any(s.startswith("head=") for s in unread_settings(ssd))
    assert not (named - {"head"}) & set(settings_read(cfg))
    if task == "segment":  # attention-unetpp has dropout of its own
        assert "dropout" in settings_read(cfg.replace(arch="attention-unetpp"))
    assert {"task", "epochs", "lr", "image_size"} <= set(settings_read(cfg))


@pytest.mark.parametrize(
    "finding",
    ["Non-small cell lung cancer", "non-Hodgkin lymphoma", "Non-proliferative DR", "non-invasive carcinoma",
     "Non-mass enhancement", "non-specific", "nodule"],
)  # fmt: skip
def test_findings_named_with_non_are_findings(finding: str) -> None:
    """A disease named with non- is a finding, not its negation: it stays a label of a multi-label cell, and the
    lesion-free class beside it is still found (non-X had read as no finding for any X)."""
    from medcad.targets import split_labels
    from medcad.tasks import reference_label, says_no_finding

    assert not says_no_finding(finding)
    assert finding in split_labels(f"{finding}|effusion")
    assert reference_label(["normal", finding, "other"]) == "normal"
    assert reference_label(["No_DR", "Non-proliferative DR", "Proliferative DR"]) == "No_DR"


@given(n=st.integers(0, 60))
def test_a_detector_at_its_box_cap_is_said_doubtful(n: int) -> None:
    """A detector returning its most boxes (50) on an image had been listed without a word (a new user's run: 50 on
    every image, each scoring 0.5 or more)."""
    from medcad.models.detection import DETECTIONS_PER_IMAGE

    boxes = np.array([[1, 1, 9, 9, 0.99 - i / 200, 0] for i in range(n)], np.float64).reshape(-1, 6)  # all >= 0.5
    said = Prediction.of("d.png", ["polyp"], boxes=boxes).doubts()
    assert bool(said) == (n >= DETECTIONS_PER_IMAGE)
    # 50 candidates of which one is listed (score >= 0.5): a detector's usual answer, not doubtful
    boxes[1:, 4] = np.minimum(boxes[1:, 4], 0.3)
    assert Prediction.of("d.png", ["polyp"], boxes=boxes).doubts() == []
    assert not said or "returned its most, 50 boxes" in said[0]
