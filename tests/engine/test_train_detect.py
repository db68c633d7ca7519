"""A tiny real detection run end to end on synthetic frames: bad boxes, train, metrics, evaluate, predict images
and a video, report; the colonoscopy design's frame classes (normal / unclear / tumour) on a three-class set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from torchvision.ops import box_iou
from typer.testing import CliRunner

from medcad.cli import app
from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.engine.train import train_run
from medcad.errors import DataError

runner = CliRunner()
FAST = TrainConfig(task="detect", image_size=64, epochs=2, batch_size=8, lr=1e-3, folds=2, val_fraction=0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.heavy
def test_detect_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = generate_synthetic(tmp_path / "synth", n_patients=10, frames_per_patient=3, size=64, seed=2)
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    with_box = [i for i, b in enumerate(table["boxes"]) if b not in ("", "[]")]
    label = table.at[with_box[0], "label"]
    table.at[with_box[0], "boxes"] = json.dumps([[50, 50, 90, 80, label]])  # runs off the 64 x 64 frame
    table.at[with_box[1], "boxes"] = json.dumps([[10, 10, 10, 30, label], *json.loads(table.at[with_box[1], "boxes"])])
    table.to_csv(csv, index=False)

    run = tmp_path / "det"
    m = train_run(csv.parent, run, FAST, progress=False)
    problems = (run / "box_problems.txt").read_text()
    assert "outside the 64x64 image, clipped" in problems and "has no area" in problems
    assert set(m["ap50"]) == {"value", "ci95"} and 0 <= m["ap50"]["value"] <= 1
    assert m["map"]["value"] <= m["ap50"]["value"]
    assert set(m["iou_thresholds"]) == {"0.45", "0.5", "0.55"}
    assert m["frame_level"]["labels"] == ["benign", "malignant", "background"]
    assert len(m["per_fold"]) == 2 and m["evaluation"] == "out-of-fold"
    vo = m["validated_operating_point"]  # each fold's test boxes from the F1-best score on its validation part
    assert len(vo["thresholds"]) == 2 and set(vo["iou_thresholds"]) == {"0.45", "0.5", "0.55"}
    saved = [json.loads((run / f"fold_{k}" / "result.json").read_text())["val_score_threshold"] for k in (0, 1)]
    assert vo["thresholds"] == saved
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 30 and {"true_frame", "predicted_frame", "top_score", "detections"} <= set(pred)

    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ap50"]["value"] == pytest.approx(m["ap50"]["value"])
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(csv.parent), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_images"] == 30
    ext = json.loads(res.stdout)["validated_operating_point"]  # at the threshold --operating-point f1 deploys
    assert ext["thresholds"] == [pytest.approx(m["validated_operating_point"]["mean_threshold"])]
    external = pd.read_csv(run / "evaluations" / csv.parent.name / "predictions.csv", keep_default_na=False)
    assert len(external) == 30 and {"true_frame", "predicted_frame", "top_score", "detections"} <= set(external)
    listed = [b for d in external["detections"] for b in json.loads(d)]  # it had held the image column alone
    assert listed and all(b[5] in ("benign", "malignant") and 0 <= b[2] <= 64 for b in listed)

    image = csv.parent / table.at[with_box[2], "image"]
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(out), "--threshold", "0.2", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["label"] in ("benign", "malignant", "background") and (out / f"{image.stem}_overlay.png").is_file()
    assert all(b[5] in ("benign", "malignant") and b[4] >= 0.2 for b in rows[0]["boxes"])
    # at the run's validated operating point: boxes from the folds' mean threshold, said on stderr
    res = runner.invoke(app, ["predict", str(run), str(image), "--operating-point", "f1", "--json"])
    assert res.exit_code == 0, res.output
    assert f"boxes kept from score {vo['mean_threshold']:.3f}: the run's validated operating point 'f1'" in res.stderr
    assert all(b[4] >= vo["mean_threshold"] for b in json.loads(res.stdout)[0]["boxes"])
    res = runner.invoke(app, ["predict", str(run), str(image), "--operating-point", "f1", "--fold", "5"])
    assert res.exit_code != 0 and "fold 5 does not exist: this run has folds 0" in res.output
    res = runner.invoke(app, ["predict", str(run), str(image), "--operating-point", "youden"])
    assert res.exit_code != 0 and "a detection run's is 'f1'" in res.output
    # both set the box-score threshold: refused, not one of them silently dropped (--threshold 0.3 had been)
    res = runner.invoke(app, ["predict", str(run), str(image), "--operating-point", "f1", "--threshold", "0.3"])
    assert res.exit_code == 2 and "give it or --threshold (0.3), not both" in res.output
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(out), "--threshold", "0.0"])
    assert res.exit_code == 0 and "n_boxes" in res.output and "[[" not in res.output  # the boxes: predictions.csv's
    assert pd.read_csv(out / "predictions.csv")["boxes"].str.startswith("[[").all()

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for p in sorted((csv.parent / "images").glob("*.png"))[:12]:
        writer.write(cv2.imread(str(p)))
    writer.release()
    res = runner.invoke(app, ["predict", str(run), str(video), "--out", str(out)])
    assert res.exit_code == 0, res.output
    frames = pd.read_csv(out / "clip_frames.csv")
    assert len(frames) == 12 and {"label", "score", "n_boxes", "smoothed", "smoothed_score"} <= set(frames)
    assert "frames/s" in res.output and (out / "clip_annotated.mp4").stat().st_size > 0

    # export: raw head outputs in ONNX, boxes decoded in PyTorch; the boxes agree with the eager model's
    res = runner.invoke(app, ["export", str(run), "--json"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout)
    assert exported["agreement"]["model.onnx"]["box_iou_agreement"] >= 0.99
    _decode_as_described(run / "export")
    res = runner.invoke(app, ["bench", str(run), "--backends", "torch-fp32,onnx-fp32", "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backends"]["onnx-fp32"]["agreement"] >= 0.99
    res = runner.invoke(app, ["explain", str(run), str(image), "-o", str(tmp_path / "cam.png")])
    assert res.exit_code == 0 and "EigenCAM" in res.output

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    needles = ("Lesion boxes", "AP50", "frame confusion matrix", 'alt="detections"', "validated score threshold")
    for needle in (*needles, "FROC: lesions found", 'alt="FROC and precision-recall curves"'):
        assert needle in html, needle


def test_run_lists_boxes_as_predict_gives_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's predictions.csv lists each test image's boxes as `predict` gives them for that image: in the image's
    own pixels (not the model's S x S input), the class by name, the score to 4 decimals; the report (which draws
    them at S x S) reads them back there, and reads a file written before (S x S, class as an index) as it was."""
    from medcad.report.det_report import model_space_detections
    from medcad.report.html import write_report

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = generate_synthetic(tmp_path / "synth", n_patients=12, frames_per_patient=2, size=48, seed=1)
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    w, h = 80, 40  # wider than high, neither side the training size
    for i, row in table.iterrows():
        path = str(csv.parent / row["image"])
        cv2.imwrite(path, cv2.resize(cv2.imread(path), (w, h)))
        old = json.loads(row["boxes"] or "[]")
        table.at[i, "boxes"] = json.dumps(
            [[b[0] * w / 48, b[1] * h / 48, b[2] * w / 48, b[3] * h / 48, b[4]] for b in old]
        )
    table["mask"] = ""  # boxes from the column alone
    table.to_csv(csv, index=False)
    run = tmp_path / "det"
    m = train_run(csv.parent, run, FAST.replace(image_size=32, epochs=1, folds=None, holdout=0.3), progress=False)
    pred = pd.read_csv(run / "predictions.csv", dtype={"image": str})
    row = pred.sort_values("top_score").iloc[-1]
    listed = json.loads(row["detections"])
    assert listed and all(b[5] in m["labels"] for b in listed)
    assert max(b[2] for b in listed) > 32 and max(b[2] for b in listed) <= w and max(b[3] for b in listed) <= h

    out = tmp_path / "pred"
    args = ["predict", str(run), str(csv.parent / row["image"]), "--out", str(out), "--json"]
    res = runner.invoke(app, [*args, "--threshold", "0.05", "--backend", "torch-fp32"])
    assert res.exit_code == 0, res.output
    given = json.loads(res.stdout)[0]["boxes"]
    assert [b[5] for b in listed] == [b[5] for b in given]
    np.testing.assert_allclose([b[:4] for b in listed], [b[:4] for b in given], atol=0.11)
    np.testing.assert_allclose([b[4] for b in listed], [b[4] for b in given], atol=2e-4)
    assert row["top_score"] == pytest.approx(listed[0][4], abs=1e-4)

    # the report draws them at S x S: back where the fold predicted them
    fold = json.loads((run / "fold_0" / "result.json").read_text())
    k = fold["test_keys"].index(row["image"])
    at_s = np.array(fold["test_detections"][k]).reshape(-1, 6)
    at_s = at_s[at_s[:, 4] >= 0.05]
    back = model_space_detections(listed, m["labels"], (w, h), 32)
    np.testing.assert_allclose(back[:, :4], at_s[:, :4], atol=0.05 * 32 / h + 1e-6)
    assert (back[:, 5] == at_s[:, 5]).all()
    old_style = np.round(at_s, 2).tolist()  # a run's file before: S x S, class as a float index
    assert np.array_equal(model_space_detections(old_style, m["labels"], (w, h), 32), np.array(old_style))
    pred["detections"] = [
        json.dumps(np.round(model_space_detections(json.loads(d), m["labels"], (w, h), 32), 2).tolist())
        for d in pred["detections"]
    ]
    pred.to_csv(run / "predictions.csv", index=False)
    assert 'alt="detections"' in write_report(run).read_text()


@pytest.mark.heavy
def test_repeats_summarise_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = generate_synthetic(tmp_path / "synth", n_patients=10, frames_per_patient=3, size=64, seed=2)
    args = ["train", str(csv.parent), "--task", "detect", "--image-size", "64", "--epochs", "1", "--folds", "2"]
    res = runner.invoke(app, [*args, "--batch-size", "8", "--repeats", "2", "--no-report", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "repeats.json").read_text())
    assert rep["seeds"] == [0, 1] and rep["summary"]["ap50"]["n"] == 2 and "0.5" in rep["summary"]["f1"]
    assert (tmp_path / "r" / "seed_1" / "splits.json").read_text() == (
        tmp_path / "r" / "seed_0" / "splits.json"
    ).read_text()
    # the folder of seeds has a report (`medcad report` had said it had not finished): each seed's, side by side
    res = runner.invoke(app, ["report", str(tmp_path / "r"), "--no-gallery"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Repeated runs: 2 seeds on the same splits" in page and 'href="seed_1/report.html"' in page
    assert (tmp_path / "r" / "seed_0" / "report.html").is_file() and "<th>ap50</th>" in page
    mean = rep["summary"]["ap50"]["mean"]
    assert f"{mean:.3f} ± " in page
    for command in (["evaluate", str(tmp_path / "r")], ["predict", str(tmp_path / "r"), str(csv), "-o", "x"]):
        res = runner.invoke(app, command)  # they had said "not a run folder" alone
        assert (
            res.exit_code == 2
            and "a folder of --repeats runs, not a run: give one of them (seed_0, seed_1" in res.output
        )


def test_undecodable_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    res = runner.invoke(app, ["data", "frames", str(bad), "--out", str(tmp_path / "frames")])
    assert res.exit_code == 2 and "broken.mp4" in res.output and "cannot" in res.output.lower()


def _three_class_frames(root: Path, n_patients: int = 10, size: int = 64, seed: int = 0) -> Path:
    """Per patient one frame of each class: tumour (a bright blob, with its box), normal (plain mucosa texture) and
    unclear (the texture blurred under a brown haze, as by fluid); no boxes for normal and unclear."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        for label in ("tumour", "normal", "unclear"):
            base = np.array([150, 80, 80], np.float32) + rng.normal(0, 25, (size, size, 3)).astype(np.float32)
            boxes = []
            if label == "tumour":
                r = int(rng.integers(7, 13))
                cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
                cv2.circle(base, (cx, cy), r, (255, 240, 200), -1)
                boxes = [[cx - r, cy - r, cx + r + 1, cy + r + 1, "tumour"]]
            elif label == "unclear":
                base = cv2.GaussianBlur(base, (0, 0), 5) * 0.6 + np.array([90, 70, 30], np.float32) * 0.4
            name = f"images/p{p}_{label}.png"
            cv2.imwrite(str(root / name), np.clip(base, 0, 255).astype(np.uint8)[..., ::-1])
            rows.append({"image": name, "label": label, "patient": f"p{p}", "boxes": json.dumps(boxes)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_whole_frame_boxes_keep_lesion_default_boxes() -> None:
    from medcad.models.detection import anchor_scales, create_detector

    lesions = [np.array([[10, 10, 26, 26, 0]]), np.array([[5, 5, 17, 19, 0]]), np.array([[30, 30, 50, 52, 0]])]
    frames = [np.array([[0, 0, 64, 64, 1]])] * 20
    assert anchor_scales(lesions + frames, 64)[1] == 0.95  # counted as boxes, whole frames stretch every size
    scales = anchor_scales(lesions + frames, 64, frame_classes=[1])
    assert scales == (*anchor_scales(lesions, 64), 1.0)
    model = create_detector(2, weights="none", image_size=64, scales=scales).eval()
    images, _ = model.transform([torch.rand(3, 64, 64)])
    anchors = model.anchor_generator(images, list(model.backbone(images.tensors).values()))[0]
    iou = box_iou(torch.tensor([[0.0, 0, 64, 64], [10, 10, 26, 26]]), anchors)
    assert (iou[0] >= 0.5).sum() >= 4 and iou[0].max() == pytest.approx(1)  # whole frames: the last map's boxes
    assert (iou[1] >= 0.5).sum() >= 2  # a lesion still has its own default boxes
    assert model.medcad_config["anchor_scales"] == list(scales)


def test_frame_classes_must_be_detection_classes() -> None:
    from medcad.engine.detect import frame_class_indices
    from medcad.errors import ConfigError

    cfg = FAST.replace(frame_classes=" normal, unclear,normal")
    assert frame_class_indices(cfg, ["normal", "tumour", "unclear"]) == [0, 2]
    assert frame_class_indices(FAST, ["tumour"]) == []
    with pytest.raises(ConfigError, match="not among the detection classes"):  # boxes read without them
        frame_class_indices(cfg, ["tumour"])


@pytest.mark.heavy
def test_frame_classes_three_class_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medcad.data.boxes as boxes_module
    from medcad.checkpoint import load_model_file
    from medcad.report.console import print_metrics
    from medcad.report.html import write_report

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = _three_class_frames(tmp_path / "colon")
    labels = ["normal", "tumour", "unclear"]
    cfg = FAST.replace(frame_classes="normal,unclear", batch_size=4)  # 2 steps per epoch: enough to decide
    _, boxes, _, _ = boxes_module.manifest_boxes(_manifest(csv), 64, frame_classes=cfg.frame_classes)
    table = pd.read_csv(csv)
    for b, label in zip(boxes, table["label"], strict=True):
        want = [[0, 0, 64, 64, labels.index(label)]] if label != "tumour" else [[*b[0, :4], 1]]
        assert b.tolist() == want

    with pytest.raises(DataError, match="no image's label"):
        boxes_module.manifest_boxes(_manifest(csv), 64, frame_classes="normal,polyp")

    run = tmp_path / "det3"
    m = train_run(csv.parent, run, cfg, progress=False)
    assert m["labels"] == labels
    # the headline AP averages the frame classes too (the design's); the lesion classes' own mean is beside it
    lesions = [lab for lab in labels if lab not in ("normal", "unclear")]
    assert m["lesion_classes"] == lesions
    assert m["ap50_lesions"]["value"] == pytest.approx(np.mean([m["ap50_per_class"][lab] for lab in lesions]))
    assert m["map_lesions"]["value"] == pytest.approx(np.mean([m["map_per_class"][lab] for lab in lesions]))
    assert m["ap50"]["value"] == pytest.approx(np.mean(list(m["ap50_per_class"].values())))

    html = write_report(run, gallery=False).read_text()
    assert "AP50, lesion classes alone (tumour; the rows above also average the frame classes normal,unclear)" in html
    f = m["frame_level"]
    assert f["labels"] == [*labels, "background"]
    assert set(f["iou_thresholds"]) == {"0.45", "0.5", "0.55"}
    for t in f["iou_thresholds"].values():
        assert list(t["per_class"]) == [*labels, "background"] and t["per_class"]["normal"]["support"] == 10
        assert {"accuracy", "precision", "recall", "f1"} <= set(t["macro"]) and "f1" in t["weighted"]
        assert 0 <= t["accuracy"]["value"] <= 1
    on_disk = json.loads((run / "metrics.json").read_text())["frame_level"]["iou_thresholds"]
    assert on_disk["0.5"]["per_class"]["background"]["support"] == 0

    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(set(pred["true_frame"])) == labels and set(pred["predicted_frame"]) <= {*labels, "background"}
    decided = pred[pred["predicted_frame"].isin(["normal", "unclear"])]
    assert len(decided), "frames decided as normal or unclear"
    tops = np.array([json.loads(d)[0][:4] for d in decided["detections"]])
    assert np.median((tops[:, 2] - tops[:, 0]) * (tops[:, 3] - tops[:, 1])) > 0.5 * 64 * 64  # whole-frame boxes
    model, blob = load_model_file(run / "fold_0" / "model.pt")
    assert blob["labels"] == labels and blob["data_config"]["anchor_scales"][2] == 1.0

    for k in (0, 1):  # both losses per epoch, for the report's curves
        log = pd.read_csv(run / f"fold_{k}" / "logs" / "csv" / "detect" / "metrics.csv")
        val = log.dropna(subset=["val_loss"])
        assert len(val) == 2 and np.isfinite(val["val_loss"]).all() and (val["val_loss"] > 0).all()
        assert log["train_loss"].notna().sum() == 2

    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)["frame_level"]["iou_thresholds"]["0.5"]
    assert again["accuracy"]["value"] == pytest.approx(f["iou_thresholds"]["0.5"]["accuracy"]["value"])

    console = Console(record=True, width=120)
    print_metrics(m, console=console)
    text = console.export_text()
    assert "Frame decision by IoU" in text and "background" in text and "weighted average" in text

    image = csv.parent / "images" / "p0_normal.png"
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(tmp_path / "pred"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["label"] in (*labels, "background")

    html = write_report(run).read_text()
    for needle in ("Frame decision at each IoU threshold", "mislocated", 'alt="detector loss curves"', "unclear"):
        assert needle in html, needle


def _manifest(csv: Path):
    from medcad.data.layouts import load_manifest

    return load_manifest(csv)


def _decode_as_described(export: Path) -> None:
    """A user's decoding of the exported graph's outputs from model.json and default_boxes.npz alone (numpy and
    torchvision's public NMS): the boxes medcad's own decoding gives (it had said "PyTorch post-processing" and kept
    the default boxes, learned from each run's training boxes, inside the model files)."""
    from torchvision.ops import batched_nms

    from medcad.inference.onnx import GraphSession
    from medcad.inference.registry import load_predictor

    meta = json.loads((export / "model.json").read_text())
    s, c = meta["image_size"], meta["box_decoding"]["constants"]
    anchors = np.load(export / "default_boxes.npz")
    images = np.random.default_rng(0).integers(0, 256, (4, s, s, 3), dtype=np.uint8)
    outputs = GraphSession(export / "model.onnx", "onnx-fp32", threads=1).run(images, 4)
    medcad = load_predictor(export.parent, backend="torch-fp32").decode(outputs)["boxes"]
    assert sum(len(b) for b in medcad) > 0  # boxes to compare (scores above 0.01 on noise)
    for i, want in enumerate(medcad):
        found = []
        for k in range(len(anchors.files)):
            a, d = anchors[f"anchors_{k}"], outputs[f"boxes_{k}"][i] / np.asarray(c["box_coder_weights"], np.float32)
            w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
            cx, cy = a[:, 0] + 0.5 * w, a[:, 1] + 0.5 * h
            pcx, pcy = cx + d[:, 0] * w, cy + d[:, 1] * h
            pw, ph = (
                w * np.exp(np.minimum(d[:, 2], c["log_size_clip"])),
                h * np.exp(np.minimum(d[:, 3], c["log_size_clip"])),
            )
            box = np.clip(np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], 1), 0, s)
            logits = outputs[f"logits_{k}"][i]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            rows = []
            for label in range(1, p.shape[1]):
                ok = np.flatnonzero(p[:, label] > c["score_threshold"])
                best = ok[np.argsort(-p[ok, label], kind="stable")][: c["top_k_per_class"]]
                rows += [[*box[j], p[j, label], label - 1] for j in best]
            t = torch.tensor(np.asarray(rows, np.float32).reshape(-1, 6))
            t = t[batched_nms(t[:, :4], t[:, 4], t[:, 5].long(), c["nms_iou"])[: c["boxes_per_model"]]]
            found.append(t[(t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])])
        t = torch.cat(found)
        if len(found) > 1:
            t = t[batched_nms(t[:, :4], t[:, 4], t[:, 5].long(), c["ensemble_nms_iou"])[: c["ensemble_boxes"]]]
        np.testing.assert_allclose(t.numpy(), np.asarray(want, np.float32).reshape(-1, 6), atol=1e-3)
