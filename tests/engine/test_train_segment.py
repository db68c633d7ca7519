"""Tiny real segmentation and multitask runs end to end on synthetic frames: train, metrics, predict, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import noise_image, save
from medcad.cli import app
from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.engine.train import train_run
from medcad.errors import ConfigError, DataError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = TrainConfig(task="segment", arch="unet", image_size=64, epochs=2, batch_size=8, folds=2, val_fraction=0.25)


@pytest.fixture
def synth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    return generate_synthetic(tmp_path / "synth", n_patients=8, frames_per_patient=3, size=64, seed=1).parent


@pytest.mark.heavy
def test_segment_run_metrics_predict(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "seg"
    m = train_run(synth, run, FAST.replace(missing_masks="empty"), progress=False)
    for name in ("dice", "iou"):
        assert set(m[name]) == {"value", "ci95"} and 0 <= m[name]["value"] <= 1
    seg = m["segmentation"]
    assert seg["n_images"] == 24 and len(seg["per_fold"]) == 2
    assert "accuracy" not in m  # segmentation only: no class head
    pred = (run / "predictions.csv").read_text().splitlines()
    assert pred[0].startswith("image,fold,label,dice,iou") and len(pred) == 25
    with np.load(run / "fold_0" / "test_masks.npz") as z:
        assert z["probs"].dtype == np.uint8 and z["probs"].shape[1:] == (64, 64)
    # the frame-level decision: fitted per fold on validation, kept in model.pt, applied to the pooled test masks
    import torch

    decisions = [json.loads((run / f"fold_{k}" / "result.json").read_text())["decision"] for k in (0, 1)]
    assert all(d["frame_score"] == "lesion_area" and 0 <= d["min_frame_score"] <= 1 + 1e-6 for d in decisions)
    assert torch.load(run / "fold_0" / "model.pt", weights_only=False)["decision"] == decisions[0]
    fd = seg["frame_decision"]
    assert fd["thresholds"] == [d["min_frame_score"] for d in decisions] and fd["n_images"] == 24
    assert fd["frame_score"] == ["lesion_area"] and "rule" in fd
    from medcad.inference.registry import load_predictor

    predictor = load_predictor(run)
    assert predictor.min_frame_score == pytest.approx(np.mean(fd["thresholds"]))

    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dice"]["value"] == pytest.approx(m["dice"]["value"])
    # NSD at another tolerance for one scoring: a wider one lets as much of each boundary in, or more
    res = runner.invoke(app, ["evaluate", str(run), "--nsd-tolerance", "20", "--json"])
    assert res.exit_code == 0, res.output
    wide, narrow = json.loads(res.stdout)["segmentation"]["nsd"], seg["nsd"]
    assert (wide["tolerance_pct_diagonal"], narrow["tolerance_pct_diagonal"]) == (20, 1.0)
    assert wide["mean"]["value"] >= narrow["mean"]["value"] and wide["n_scored"] == narrow["n_scored"]
    # the run's figures and its setting stay one: config.json keeps the tolerance its metrics.json was scored at
    assert json.loads((run / "config.json").read_text())["nsd_tolerance"] == 20
    res = runner.invoke(app, ["evaluate", str(run), "--nsd-tolerance", "1", "--json"])
    assert (
        json.loads(res.stdout)["segmentation"]["nsd"] == narrow
        and json.loads((run / "config.json").read_text())["nsd_tolerance"] == 1
    )
    res = runner.invoke(app, ["evaluate", str(run), "--nsd-tolerance", "0"])
    assert res.exit_code == 2 and "nsd_tolerance 0.0" in res.output
    # continuing from this run's models needs the same architecture: refused before anything is written
    narrow = FAST.replace(missing_masks="empty", decoder_channels="64,32,16,16,8")
    with pytest.raises(ConfigError, match="decoder_channels: '128,64,32,16,16' -> '64,32,16,16,8'"):
        train_run(synth, tmp_path / "next", narrow, progress=False, init_run=run)
    assert not (tmp_path / "next").exists()
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(synth), "--json"])  # as an external set
    assert res.exit_code == 0, res.output
    ext = json.loads(res.stdout)["segmentation"]
    assert ext["n_images"] == 24 and ext["resolution"].startswith("each image's own size")  # scored as runs are
    assert ext["training_size"]["n_images"] == 24 and ext["hd95"]["n_defined"] + ext["hd95"]["n_undefined"] <= 24
    table = pd.read_csv(run / "evaluations" / synth.name / "predictions.csv")
    assert {"dice", "hd95_px", "nsd", "dice_training_size"} <= set(table.columns) and len(table) == 24
    # NSD beside HD95: scored where either mask holds a lesion, its tolerance 1 % of the 64 px frames' diagonal
    assert ext["nsd"]["n_scored"] == table["nsd"].notna().sum() == (table["hd95_px"].notna()).sum()
    assert (
        ext["nsd"]["mean"]["value"] == pytest.approx(table["nsd"].mean()) and ext["nsd"]["tolerance_px"] == [0.91] * 2
    )
    # the frames are 64 px as the training size: scored at their own size, each image's Dice is the training-size one
    np.testing.assert_allclose(table["dice"], table["dice_training_size"])
    assert ext["dice"]["value"] == pytest.approx(ext["training_size"]["dice"]["value"])

    image = next((synth / "images").glob("*.png"))
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(out)])
    assert res.exit_code == 0, res.output
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == np.asarray(Image.open(image)).shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert (out / f"{image.stem}_overlay.png").is_file() and (out / "predictions.csv").is_file()

    res = runner.invoke(app, ["explain", str(run), str(image), "-o", str(tmp_path / "explain.png")])
    assert res.exit_code == 0, res.output
    assert "Grad-CAM lesion" in res.output and "one row per model (fold_0, fold_1)" in res.output
    # outline + Grad-CAM (no CBAM), each under its caption, one row per fold model of the ensemble, under a header
    # with what predict says; one row with --fold
    bar = 14  # a caption line (max(14, 64 // 12)); the header wraps onto as many lines as it needs
    h, w, _ = np.asarray(Image.open(tmp_path / "explain.png")).shape
    header = h - 2 * (64 + bar)
    assert w == 128 and header >= bar and header % bar == 0
    res = runner.invoke(app, ["explain", str(run), str(image), "--fold", "1", "-o", str(tmp_path / "one.png")])
    assert res.exit_code == 0 and "fold_1" in res.output
    h, w, _ = np.asarray(Image.open(tmp_path / "one.png")).shape
    assert w == 128 and (h - (64 + bar)) % bar == 0 and h - (64 + bar) >= bar
    check_explain_share_at_full_size(run, image)
    # a segmenter has no class head: --class is refused, not ignored; an unknown class always
    for label, why in (("benign", "has no class head"), ("nosuch", "is not one of the model's labels")):
        res = runner.invoke(app, ["explain", str(run), str(image), "--class", label])
        assert res.exit_code == 2 and why in res.output, res.output

    # every command for this task: ONNX export with the Dice agreement, bench, and a video through the predictor (int8's
    # search, 15 s of this test, is the classifier's in tests/inference/test_export_bench.py: it is the same for every
    # task but for the agreement measure, which the fp32 export checks here)
    res = runner.invoke(app, ["export", str(run), "--fold", "0", "--json"])  # one fold: half the graph
    assert res.exit_code == 0, res.output
    agreement = json.loads(res.stdout)["agreement"]
    assert agreement["model.onnx"]["mask_dice"] >= 0.99 and agreement["model.onnx"]["max_prob_diff"] < 0.01
    res = runner.invoke(app, ["bench", str(run), "--backends", "torch-fp32,onnx-fp32", "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    b = json.loads(res.stdout)
    assert b["agreement_measure"] == "mask_dice" and b["backends"]["onnx-fp32"]["agreement"] >= 0.99
    res = runner.invoke(app, ["predict", str(run), str(image), "--backend", "onnx-fp32", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", str(run), str(image), "--backend", "torch-fp32", "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    onnx_mask = np.asarray(Image.open(tmp_path / "o" / f"{image.stem}_mask.png")) > 0
    torch_mask = np.asarray(Image.open(tmp_path / "f" / f"{image.stem}_mask.png")) > 0  # fp32 against fp32
    assert (onnx_mask != torch_mask).mean() < 0.01
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for p in sorted(synth.rglob("*.png"))[:8]:
        if "mask" not in p.name:
            writer.write(cv2.resize(cv2.imread(str(p)), (64, 64)))
    writer.release()
    res = runner.invoke(app, ["predict", str(run), str(video), "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output

    frames = pd.read_csv(tmp_path / "v" / "clip_frames.csv")
    assert len(frames) > 0 and {"label", "lesion_fraction", "smoothed"} <= set(frames)
    assert set(frames["label"]) <= {"lesion", "no lesion"}

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    for needle in (
        "Lesion masks",
        "Dice, mean per image",
        "best cases",
        "worst cases",
        "attention maps",
        "After the frame-level decision",
    ):
        assert needle in html, needle
    assert 'alt="confusion matrix"' not in html  # no class head


@pytest.mark.heavy
def test_multitask_run(synth: Path, tmp_path: Path) -> None:
    # decoder widths of its own: the fold models, the ONNX export and the predictor are built with them
    cfg = FAST.replace(task="multitask", missing_masks="empty", epochs=1, decoder_channels="64,32,16,16,8")
    m = train_run(synth, tmp_path / "mt", cfg, progress=False)
    assert json.loads((tmp_path / "mt" / "config.json").read_text())["decoder_channels"] == "64,32,16,16,8"
    import torch

    weights = torch.load(tmp_path / "mt" / "fold_0" / "model.pt", weights_only=False)["state_dict"]
    widths = [weights[f"segmenter.net.decoder.blocks.{i}.conv1.0.weight"].shape[0] for i in range(5)]
    assert widths == [64, 32, 16, 16, 8]
    assert {"accuracy", "macro_auc", "dice", "iou", "segmentation"} <= set(m)
    # three classes: each finding against the rest gets operating points chosen on validation
    fd = m["segmentation"]["frame_decision"]  # a class head with 'normal': the decision scores P(not normal)
    assert fd["frame_score"] == ["p_lesion"] and len(fd["thresholds"]) == 2
    spec = m["segmentation"]["frame_decision_specificity"]  # the second operating point: >= 90 % clean frames
    assert len(spec["thresholds"]) == 2 and "90%" in spec["rule"] and spec["n_images"] == 24
    ops = m["validated_operating_points_by_class"]
    assert set(ops) == {"benign", "malignant"} and all(o["one_vs_rest"] and "youden" in o for o in ops.values())
    pred = (tmp_path / "mt" / "predictions.csv").read_text().splitlines()[0]
    assert pred.startswith("image,fold,label,predicted") and "dice" in pred
    res = runner.invoke(app, ["export", str(tmp_path / "mt"), "--json"])  # mask and class head in one graph
    assert res.exit_code == 0, res.output
    a = json.loads(res.stdout)["agreement"]["model.onnx"]
    assert a["mask_dice"] >= 0.99 and a["max_prob_diff"] < 0.01  # (top-1 can flip on exact ties of a toy model)
    image = next(p for p in sorted(synth.rglob("*.png")) if "mask" not in p.name)
    res = runner.invoke(app, ["predict", str(tmp_path / "mt"), str(image), "--json", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)[0]
    assert row["label"] in m["labels"] and "lesion_fraction" in row and set(row["probabilities"]) == set(m["labels"])
    check_onnx_reproduces_predict(tmp_path / "mt", image, tmp_path)
    check_multitask_explain(tmp_path / "mt", image, tmp_path, m["labels"])
    # as an external set: scored with the frame-level decision the deployed models apply (it had been left out)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "mt"), "--data", str(synth), "--json"])
    assert res.exit_code == 0, res.output
    ext = json.loads(res.stdout)["segmentation"]["frame_decision"]
    assert ext["frame_score"] == ["p_lesion"] and "deployed" in ext["rule"] and ext["n_images"] == 24
    table = pd.read_csv(tmp_path / "mt" / "evaluations" / synth.name / "predictions.csv")
    assert ext["dice"]["value"] == pytest.approx(table["dice_frame_decision"].mean())
    from medcad.report.html import write_report

    html = write_report(tmp_path / "mt").read_text()
    assert "Lesion masks" in html and "Classification" in html
    # figures without a frame decision sit under their own heading, before the decisions' (they had followed them)
    after = html.index("After the frame-level decision (maximum mean Dice)")
    assert html.index("before any frame-level decision") < html.index('class="seg-folds"') < after
    # what the predictor applies: the ensemble at the mean threshold, not scored by the out-of-fold figures
    assert f"from the mean of these thresholds, {np.mean(fd['thresholds']):.4f}, on" in html
    assert "they do not score the ensemble's rule" in html and "the predictor does not apply it" in html
    # the headline's figures on the probabilities as predict gives them (temperature-scaled), as predictions.csv's
    assert "ECE, temperature-scaled as predict gives the probabilities" in html
    assert m["probabilities"] == "temperature-scaled"
    assert "thresholds\nare on the temperature-scaled probabilities each fold's model predicts" in html
    seg = m["segmentation"]  # the per-label table scored in the headline's resamples
    assert sum(v["n_images"] for v in seg["by_label"].values()) == seg["n_images"]
    saved = json.loads((tmp_path / "mt" / "metrics.json").read_text())  # a fold whose rule no threshold met (inf)
    saved["segmentation"]["frame_decision_specificity"]["thresholds"][0] = None
    (tmp_path / "mt" / "metrics.json").write_text(json.dumps(saved))
    assert "no threshold met the rule" in write_report(tmp_path / "mt").read_text()  # it had crashed the report
    assert "Operating points chosen on validation data (positive class: malignant, against every other class)" in html
    # a three-class run's thresholds are not what predict --operating-point decides at (it had said they were)
    assert "decides a two-class run's class only" in html and "predict / serve (the folds' ensemble" not in html


def test_frame_decision_of_a_prediction() -> None:
    """A frame below the decision's threshold is 'no lesion' and shows no lesion pixel: by lesion area, or by the
    class head's probability that the frame is not normal (the label stays the most probable class)."""
    from medcad.inference.prediction import Prediction

    mask = np.zeros((10, 10), np.float32)
    mask[:2, :2] = 0.9  # 4 % of the frame
    assert Prediction.of("a", ["lesion"], mask=mask).label == "lesion"
    kept = Prediction.of("a", ["lesion"], mask=mask, min_frame_score=0.04)
    assert kept.label == "lesion" and kept.mask.lesion.sum() == 4
    dropped = Prediction.of("a", ["lesion"], mask=mask, min_frame_score=0.05)
    assert dropped.label == "no lesion" and not dropped.mask.lesion.any() and dropped.row()["lesion_fraction"] == 0
    p = np.array([0.5, 0.2, 0.3])  # benign, malignant, normal: P(lesion) = 0.7
    labels = ["benign", "malignant", "normal"]
    kw = {"mask": mask, "probabilities": p, "frame_score_kind": "p_lesion"}
    assert Prediction.of("a", labels, min_frame_score=0.7, **kw).mask.lesion.sum() == 4
    gated = Prediction.of("a", labels, min_frame_score=0.75, **kw)
    assert not gated.mask.lesion.any() and gated.label == "benign"
    row = gated.row()  # the table says the mask was emptied although the class label is a lesion class
    assert row["frame_decision"] == "no lesion" and row["frame_score"] == pytest.approx(0.7)
    assert row["lesion_fraction"] == 0 and gated.summary()["frame_decision"] == "no lesion"
    assert kept.row()["frame_decision"] == "lesion" and kept.row()["frame_score"] == pytest.approx(0.04)
    # each answer says why: a score below the frame threshold, or (above it) no pixel at the pixel threshold - the
    # page had said 'frame score 0.43, mask not shown' for a score above the threshold
    assert gated.summary()["frame_reason"] == "no lesion: P(not 'normal') 0.700 is below the frame threshold 0.75"
    assert gated.summary()["frame_threshold"] == 0.75 and gated.summary()["frame_score_kind"] == "p_lesion"
    faint = Prediction.of("a", labels, min_frame_score=0.5, **(kw | {"mask": mask * 0.5}))
    assert faint.summary()["frame_reason"] == (
        "no lesion: no pixel's lesion probability reaches 0.5 (highest 0.45); P(not 'normal') 0.700 reaches the frame "
        "threshold 0.5"
    )
    assert kept.summary()["frame_reason"] == (
        "lesion: lesion area 0.040 reaches the frame threshold 0.04 and 4 pixels (4.00% of the image) reach lesion "
        "probability 0.5"
    )


def test_a_multitask_overlay_says_the_masks_own_decision_beside_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """'normal 0.54' had been written over a drawn lesion outline (the class and the mask decide apart): the band
    says the mask's decision too, and a video frame's smoothed caption says it is a mean."""
    import medcad.inference.prediction as prediction

    said = []
    monkeypatch.setattr(
        prediction, "draw_label", lambda rgb, label, p, note="", above=False: said.append((label, note)) or rgb
    )
    mask = np.zeros((10, 10), np.float32)
    mask[:2, :2] = 0.9
    rgb = np.zeros((10, 10, 3), np.uint8)
    kw = {"mask": mask, "probabilities": np.array([0.46, 0.54]), "frame_score_kind": "p_lesion"}
    pred = prediction.Prediction.of("a", ["lesion", "normal"], min_frame_score=0.25, **kw)
    pred.draw(rgb)
    pred.draw(rgb, caption=("normal", 0.6), note="5-frame mean")
    prediction.Prediction.of("a", ["lesion"], mask=mask).draw(rgb)  # a mask alone decides: what its number is
    assert said == [
        ("normal", "mask: lesion"),
        ("normal", "5-frame mean; mask: lesion"),
        ("lesion", "top lesion probability"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    p_normal=st.floats(0, 1),
    min_frame_score=st.floats(0, 1),
    peak=st.floats(0, 1),
    labels=st.sampled_from([["lesion", "normal"], ["benign", "malignant", "normal"], ["benign", "malignant"]]),
)
def test_a_class_label_its_mask_contradicts_is_said(p_normal, min_frame_score, peak, labels) -> None:
    """A multitask prediction whose class label and mask decide apart either agree (a lesion class with a mask, the
    lesion-free class without) or say that they do not, with both decisions (the demo run had 50 of 360 images
    labelled one way and drawn the other, without a word); a mask model's prediction, or labels with no lesion-free
    class, never."""
    from medcad.inference.prediction import Prediction

    mask = np.zeros((8, 8), np.float32)
    mask[:3, :3] = peak
    rest = (1 - p_normal) if "normal" in labels else 1.0
    probs = np.array(
        [rest * 0.7, rest * 0.3, p_normal][: len(labels)] if len(labels) == 3 else [1 - p_normal, p_normal]
    )
    kind = "p_lesion" if "normal" in labels else "lesion_area"  # P(not normal) needs a lesion-free class
    pred = Prediction.of(
        "a", labels, mask=mask, probabilities=probs, frame_score_kind=kind, min_frame_score=min_frame_score
    )
    doubts = pred.doubts()
    agree = (pred.label != "normal") == pred.mask.frame_has_lesion
    assert (not doubts) == (agree or "normal" not in labels)
    if doubts:
        (said,) = doubts
        assert f"the class says {pred.label!r}" in said and f"the mask says {pred.mask.frame_reason()}" in said
    assert Prediction.of("a", ["lesion"], mask=mask, min_frame_score=min_frame_score).doubts() == []


def test_mask_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for k in range(4):
        save(root / "lesion" / f"{k}.png", noise_image(k, 32))
        save(root / "lesion" / f"{k}_mask.png", (noise_image(50 + k, 32, gray=True) > 128).astype(np.uint8) * 255)
    save(root / "lesion" / "1_mask.png", np.zeros((20, 24), np.uint8))  # wrong size
    cfg = FAST.replace(image_size=32, epochs=1)
    with pytest.raises(DataError, match=r"1_mask.png: mask 24x20 but image 32x32 \(.*1.png\)"):
        train_run(root, tmp_path / "r1", cfg, progress=False)
    save(root / "lesion" / "1_mask.png", np.zeros((32, 32), np.uint8))
    (root / "lesion" / "2_mask.png").unlink()
    with pytest.raises(DataError, match=r"2.png: has no mask; .*--missing-masks empty"):
        train_run(root, tmp_path / "r2", cfg, progress=False)


def test_stages_are_refused_for_a_one_stage_task_before_anything_is_written(tmp_path: Path) -> None:
    from medcad.config import TrainConfig
    from medcad.engine.train import train_run
    from medcad.errors import ConfigError

    cfg = TrainConfig(task="segment", stages="2:all:1e-3")
    with pytest.raises(ConfigError, match="stages apply to"):
        train_run(tmp_path / "no-data", tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()


def check_multitask_explain(run: Path, image: Path, tmp_path: Path, labels: list[str]) -> None:
    """explain on a multitask run: the header and caption say what predict says (the ensemble's lesion share, not
    the last fold's), each row is labelled with its fold, the tiles keep the image's aspect (a 128 x 40 image came
    out as 64 x 64 tiles), and --class adds the Grad-CAM of that class of the class head (it had been ignored, and
    an unknown class too)."""
    wide = tmp_path / "wide.png"
    Image.fromarray(np.asarray(Image.open(image).convert("RGB").resize((128, 40)))).save(wide)
    args = ["predict", str(run), str(wide), "--json", "--out", str(tmp_path / "pw"), "--backend", "torch-fp32"]
    res = runner.invoke(app, args)  # explain's backend (Grad-CAM needs the torch models)
    assert res.exit_code == 0, res.output
    said = json.loads(res.stdout)[0]
    out = tmp_path / "ex.png"
    res = runner.invoke(app, ["explain", str(run), str(wide), "-o", str(out), "--class", labels[-1]])
    assert res.exit_code == 0, res.output
    assert f"ensemble of 2: {said['label']} ({said['score']:.2f}); predicted lesion {said['lesion_fraction']:.1%}" in (
        res.output
    )
    assert said["frame_reason"] in res.output and f"Grad-CAM lesion, Grad-CAM {labels[-1]}" in res.output
    bar = 14
    h, w, _ = np.asarray(Image.open(out)).shape  # outline, lesion, class, under the wrapped header
    assert w == 3 * 128 and (h - 2 * (40 + bar)) % bar == 0 and h - 2 * (40 + bar) >= bar
    res = runner.invoke(app, ["explain", str(run), str(wide), "--class", "nosuch"])
    assert res.exit_code == 2 and "'nosuch' is not one of the model's labels" in res.output
    # serve's Grad-CAM explains the prediction it answers with: the ensemble runs once per upload (it had run
    # twice: the explainer predicted again for its header)
    from fastapi.testclient import TestClient

    from medcad.explain.explainers import bound_explainer
    from medcad.inference.registry import load_predictor
    from medcad.inference.server import create_app

    predictor = load_predictor(run, backend="torch-fp32")
    calls, infer = [], predictor.infer
    predictor.infer = lambda *a, **k: calls.append(1) or infer(*a, **k)
    with TestClient(create_app(predictor, explain=bound_explainer(predictor))) as client:
        r = client.post("/predict?gradcam=true", files={"file": ("w.png", wide.read_bytes(), "image/png")})
    assert r.status_code == 200 and len(calls) == 1, r.text
    body = r.json()
    assert body["heatmap"]["caption"].startswith(f"ensemble of 2: {body['label']} ({body['score']:.2f})")


def check_onnx_reproduces_predict(run: Path, image: Path, tmp_path: Path) -> None:
    """model.json of a multitask export says enough to reproduce predict from the ONNX file alone: the resize rule,
    what `mask` is (mirror-averaged lesion probability at S x S), its bilinear resize and threshold, and the frame
    decision with its threshold (it had said "area (shrink) / cubic (enlarge)" and nothing of the mask)."""
    import cv2
    import onnxruntime as ort

    meta = json.loads((run / "export" / "model.json").read_text())
    assert meta["members"] == ["fold_0/model.pt", "fold_1/model.pt"] and meta["members_relative_to"] == "source_run"
    m = meta["mask"]
    assert "mean over the 2 fold models" in m["what"] and "horizontal mirror" in m["what"]
    assert "bilinear" in m["to_image"] and ">= 0.5" in m["to_image"]
    fd = m["frame_decision"]
    assert fd["score"] == "p_lesion" and fd["threshold_of"] == "the mean of the fold models' thresholds"

    rgb = np.asarray(Image.open(image).convert("RGB").resize((90, 50)))  # one side shrinks, the other grows
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    h, w, s = 50, 90, meta["image_size"]
    x = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA if s < min(h, w) else cv2.INTER_CUBIC)
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"images": x.transpose(2, 0, 1)[None].astype(np.float32)})
    got = dict(zip(meta["outputs"], raw, strict=True))
    above = cv2.resize(got["mask"][0], (w, h), interpolation=cv2.INTER_LINEAR) >= fd["pixel_threshold"]
    p_lesion = 1 - got["probabilities"][0][meta["labels"].index("normal")]
    fraction = float(above.mean()) if p_lesion >= fd["threshold"] and above.any() else 0.0
    args = ["predict", str(run), str(tmp_path / "odd.png"), "--json", "--backend", "onnx-fp32"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "po")])
    assert res.exit_code == 0, res.output
    said = json.loads(res.stdout)[0]
    assert said["lesion_fraction"] == pytest.approx(fraction, abs=1e-4)
    assert said["frame_decision"] == ("lesion" if fraction > 0 else "no lesion")


def check_explain_share_at_full_size(run: Path, image: Path) -> None:
    """A model's row in explain gives its lesion share at the image's own size, as predict measures it, not at the
    picture shrunk for showing (a 11.0 % lesion had been captioned 10.9 %). Here the picture is 12 x 8 pixels and the
    threshold the median probability, so a share measured on the picture is off by whole percents."""
    import cv2

    from medcad.explain.segmentation import explain_mask
    from medcad.inference.registry import load_predictor

    predictor = load_predictor(run, 1, backend="torch-fp32")
    rgb = cv2.resize(np.asarray(Image.open(image).convert("RGB")), (301, 203))
    x = predictor.prepare(rgb)
    prob = predictor.postprocess(predictor.infer(x[None]), 0, "image", rgb.shape[:2]).mask.prob  # (203, 301)
    t = float(np.median(prob))
    shown = cv2.resize(rgb, (12, 8), interpolation=cv2.INTER_AREA)
    kw = dict(hflip=predictor.hflip, threshold=t, size=rgb.shape[:2])
    tiles = explain_mask(predictor.models[0], predictor.normalize, x, shown, **kw)
    assert tiles[0][0].shape == (8, 12, 3) and tiles[0][1] == f"lesion {(prob >= t).mean():.1%}"
