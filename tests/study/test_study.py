"""Study files: clear errors with line numbers; a tiny two-domain sequential study end to end, resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import float32_softmax
from medcad.cli import app
from medcad.data.synthetic import generate_synthetic
from medcad.errors import ConfigError
from medcad.study.paired import adjust_family, paired_tests
from medcad.study.protocol import Experiment, expand, slug
from medcad.study.runner import run_study
from medcad.study.spec import load_study

runner = CliRunner()


@pytest.fixture
def two_domain_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    generate_synthetic(tmp_path / "data", n_patients=20, frames_per_patient=2, size=48, seed=3)
    return tmp_path / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_key_and_missing_data_name_the_line(tmp_path: Path, two_domain_set: Path) -> None:
    bad = write(tmp_path / "s.yaml", "name: x\ndata: data\nprotocol: kfold\nfodls: 3\n")
    with pytest.raises(ConfigError, match=r"s\.yaml line 4: unknown study key 'fodls'; did you mean folds"):
        load_study(bad)
    bad = write(tmp_path / "s2.yaml", "data: data\nsettings:\n  epochs: 2\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"line 4: unknown settings key 'lr_rate'"):
        load_study(bad)
    bad = write(tmp_path / "s3.yaml", "name: x\ndata: nowhere/data\n")
    with pytest.raises(ConfigError, match=r"s3\.yaml line 2: data path 'nowhere/data' not found"):
        load_study(bad)
    bad = write(tmp_path / "s4.yaml", "data: data\nmodels: [resnet_50]\n")
    with pytest.raises(ConfigError, match="line 2.*did you mean"):
        load_study(bad)
    res = runner.invoke(app, ["study", str(tmp_path / "s.yaml")])
    assert res.exit_code == 2 and "line 4" in res.output and "Traceback" not in res.output


def test_a_study_refused_for_its_domains_writes_nothing(tmp_path: Path, two_domain_set: Path) -> None:
    """Domains the data lack are refused by --plan and by the study itself, before the study folder is made (a
    refused study had left its study.yaml behind)."""
    from medcad.study.runner import plan_study

    study = write(tmp_path / "s.yaml", "data: data\nprotocol: sequential\ndomains: [endoscopy, cystoscopy]\n")
    with pytest.raises(ConfigError, match=r"domains \['cystoscopy'\] are not in the data"):
        plan_study(study, out=tmp_path / "study")
    res = runner.invoke(app, ["study", str(study), "-o", str(tmp_path / "study")])
    assert res.exit_code == 2 and "cystoscopy" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "study").exists()


def test_sequential_expands_to_both_directions_and_combined(tmp_path: Path, two_domain_set: Path) -> None:
    spec = load_study(write(tmp_path / "s.yaml", "data: data\nprotocol: sequential\nmodels: [tf_efficientnet_lite0]\n"))
    names = [e.name for e in expand(spec, ["endoscopy", "ultrasound"])]
    assert names == [
        "tf_efficientnet_lite0 | endoscopy",
        "tf_efficientnet_lite0 | endoscopy -> ultrasound",
        "tf_efficientnet_lite0 | ultrasound",
        "tf_efficientnet_lite0 | ultrasound -> endoscopy",
        "tf_efficientnet_lite0 | endoscopy + ultrasound",
    ]
    with pytest.raises(ConfigError, match="two or more domains"):
        expand(spec, ["endoscopy"])


@pytest.mark.heavy
def test_sequential_study_runs_resumes_and_compares(
    tmp_path: Path, two_domain_set: Path, caplog: pytest.LogCaptureFixture
) -> None:
    yaml = write(
        tmp_path / "study.yaml",
        """
name: tiny
data: data
protocol: sequential
folds: 2
models:
  - tf_efficientnet_lite0
  - {name: lite0-mlp, model: tf_efficientnet_lite0, head: mlp}
settings: {image_size: 32, epochs: 1, head_epochs: 2, batch_size: 16, val_fraction: 0.3}
""",
    )
    out = tmp_path / "study"
    res = run_study(yaml, out, progress=False)
    assert len(res["runs"]) == 10
    step2 = next(r for r in res["runs"] if r["name"] == "lite0-mlp | endoscopy -> ultrasound")
    assert step2["init"] == "lite0-mlp | endoscopy" and set(step2["by_domain"]) == {"endoscopy", "ultrasound"}
    assert set(res["cross_domain_matrix"]["tf_efficientnet_lite0 | ultrasound"]) == {"endoscopy", "ultrasound"}
    tests = res["paired_tests"]
    assert tests and all(0 <= d["p_value"] <= 1 for t in tests for d in t["by_class"].values())
    # the design's question, per model and target domain, on the target's test images alone (only runs of one
    # setting had been compared: lite0 against lite0-mlp)
    n_target = len(pd.read_csv(Path(step2["run"]) / "predictions.csv").query("domain == 'ultrasound'"))
    asked = {(t["a"], t["b"], t.get("domain")): t["n"] for t in tests}
    for other in ("lite0-mlp | ultrasound", "lite0-mlp | endoscopy + ultrasound"):
        assert asked[("lite0-mlp | endoscopy -> ultrasound", other, "ultrasound")] == n_target
    # every run used the study's single splits.json
    splits = json.loads((out / "splits.json").read_text())
    for r in res["runs"]:
        assert json.loads((Path(r["run"]) / "splits.json").read_text())["folds"] == splits["folds"]
    # resume: a finished study trains nothing again
    stamp = (Path(res["runs"][0]["run"]) / "fold_0" / "model.pt").stat().st_mtime_ns
    (out / "results.json").unlink()
    with caplog.at_level(logging.WARNING):
        run_study(yaml, out, progress=False)
    assert "note: 10 of 10 run(s) finished before, kept: tf_efficientnet_lite0 | endoscopy, " in caplog.text  # said
    assert (Path(res["runs"][0]["run"]) / "fold_0" / "model.pt").stat().st_mtime_ns == stamp
    assert (out / "results.json").is_file()
    # the study file changed: its finished runs are not kept unsaid (a new user's image_size 64 -> 96 and folds 3 -> 5
    # had kept them, and rewritten the folder's study.yaml to say the new settings)
    before = (out / "study.yaml").read_text()
    for old, new, said in (
        ("image_size: 32", "image_size: 48", "image_size: 32 -> 48"),
        ("folds: 2", "folds: 3", "3 folds"),
    ):
        changed = write(tmp_path / "changed.yaml", yaml.read_text().replace(old, new))
        with pytest.raises(ConfigError, match=said):
            run_study(changed, out, progress=False)
        assert (out / "study.yaml").read_text() == before


@pytest.mark.heavy
@pytest.mark.usefixtures("one_thread")
def test_segmentation_study_compares_dice_pairwise(tmp_path: Path, two_domain_set: Path) -> None:
    study = write(
        tmp_path / "seg.yaml",
        "name: seg\ndata: data\ntask: segment\nprotocol: compare\nfolds: 2\n"
        "models:\n  - {name: unet, arch: unet}\n  - {name: attention, arch: attention-unetpp}\n"
        "settings: {image_size: 32, epochs: 1, batch_size: 8, missing_masks: empty}\n",
    )
    res = runner.invoke(app, ["study", str(study), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["dice"]["value"] is not None for r in results["runs"]] == [True, True]
    (pair,) = results["paired_tests"]
    assert pair["dice"]["test"].startswith("paired cluster bootstrap") and 0 < pair["dice"]["p_value"] <= 1
    # the lesion images alone too (an empty mask scores 1 on a lesion-free frame), in the Holm family
    assert pair["dice_lesion"]["n_groups"] <= pair["dice"]["n_groups"] and "p_holm" in pair["dice_lesion"]
    # the boundaries too: each run's NSD over the lesion images, paired on them, in the same Holm family
    nsd = pair["nsd_lesion"]
    assert nsd["n"] == pair["dice_lesion"]["n"] and nsd["family_size"] == pair["dice"]["family_size"] == 3
    for r, mean in zip(results["runs"], (nsd["mean_a"], nsd["mean_b"]), strict=True):
        assert r["nsd_lesion"]["value"] == pytest.approx(mean)  # the runs' own figure, as in their metrics.json
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Paired Dice and NSD comparisons" in html and "<th>Dice</th>" in html and "images with a lesion" in html
    assert "NSD, images with a lesion within 1.0 % of the diagonal" in html and "<th>NSD, lesion images</th>" in html
    assert nsd["tolerance_pct_diagonal"] == 1.0 and "paired cluster bootstrap of the mean per-image NSD" in nsd["test"]
    # a run scored again at another tolerance: its NSD is another measure, not compared (and said)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "out" / "runs" / "attention"), "--nsd-tolerance", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["study", str(study), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (pair,) = json.loads((tmp_path / "out" / "results.json").read_text())["paired_tests"]
    assert "nsd_lesion" not in pair and pair["nsd_note"].endswith("(unet: 1.0, attention: 2.0)")
    assert pair["dice"]["family_size"] == 2  # the Holm family without it


def test_plan_shows_each_run_as_the_study_folder_holds_it(tmp_path: Path) -> None:
    """`study --plan -o DIR` plans a run begun before strides were written out (freeze_stride None in its
    config.json) at the stride it resumes with, 4, a new run at today's default, 8, and skips a finished one."""
    from medcad.config import TrainConfig
    from medcad.run import settled_settings
    from medcad.study.runner import plan_study

    study = write(
        tmp_path / "s.yaml",
        "name: s\ndata: nowhere\nprotocol: compare\nmodels: [{name: begun, model: tf_efficientnet_lite0}, "
        "{name: new, model: tf_efficientnet_lite0}, {name: done, model: tf_efficientnet_lite0}]\n",
    )
    out = tmp_path / "out"
    legacy = settled_settings(TrainConfig()).replace(freeze_stride=None).to_dict()
    for name in ("begun", "done"):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "config.json").write_text(json.dumps(legacy))
    (out / "runs" / "done" / "metrics.json").write_text("{}")
    runs = {r["name"]: r for r in plan_study(study, out=out)["runs"]}
    assert {k: (r["state"], r["config"]["freeze_stride"]) for k, r in runs.items()} == {
        "begun": ("resumes", 4),
        "new": ("new", 8),
        "done": ("finished", 4),
    }
    assert "stride 4" in runs["begun"]["training"][-1] and "stride 8" in runs["new"]["training"][-1]
    res = runner.invoke(app, ["study", str(study), "-o", str(out), "--plan"])
    assert res.exit_code == 0, res.output
    assert "begun  [all data; trains on all] -> runs/begun (begun: resumes with its saved settings)" in res.output
    assert "(finished: skipped)" in res.output and f"study folder: {out.resolve()}" in res.output


def test_paired_auc_test_shows_the_runs_own_auc(tmp_path: Path) -> None:
    """A two-class study's paired AUC test reports each run's AUC as its metrics do (the summary table's macro AUC
    and the binary AUC), also where the float32 probabilities saturate at exactly 1.0 on many rows."""
    from medcad.metrics.classification import classification_metrics
    from medcad.runfolder import RunFolder

    rng = np.random.default_rng(0)
    labels, n = ["benign", "malignant"], 80
    y = rng.integers(0, 2, n)
    from medcad.study.spec import ModelSpec

    exps = [Experiment(name, ModelSpec(name), None, None, "all data") for name in ("a", "b")]
    probs = {}
    for e in exps:
        probs[e.name] = p = float32_softmax(np.column_stack([np.zeros(n), rng.normal(size=n) * 20 + 8 * (2 * y - 1)]))
        folder = RunFolder(tmp_path / "runs" / slug(e.name))
        folder.root.mkdir(parents=True)
        table = {"image": [f"{i}.png" for i in range(n)], "label": [labels[c] for c in y]}
        table |= {f"p_{lab}": p[:, c].astype(np.float64) for c, lab in enumerate(labels)}
        pd.DataFrame(table).to_csv(folder.predictions, index=False)
    assert (probs["a"] == 1.0).sum() > 10
    (pair,) = paired_tests(tmp_path, exps, labels, {}, {})
    (test,) = pair["by_class"].values()
    for name, key in (("a", "auc_a"), ("b", "auc_b")):
        m = classification_metrics(y, probs[name], labels, n_boot=0)
        assert test[key] == m["macro_auc"]["value"] == m["binary"]["auc"]["value"]


def _tiny_detection_study(tmp_path: Path, protocol: str, models: str) -> tuple[Path, Path]:
    """(manifest, study file) of a 2-fold detection study of tiny detectors (64 px unless `models` say) on a
    two-domain synthetic set, every frame boxed (frame class normal)."""
    data = generate_synthetic(tmp_path / "data", n_patients=16, frames_per_patient=2, size=48, seed=5)
    text = (
        f"name: det\ndata: {data}\ntask: detect\nprotocol: {protocol}\nfolds: 2\n{models}"
        "settings: {model: test_efficientnet, image_size: 64, epochs: 1, batch_size: 8, patience: 1, threads: 1,\n"
        "  frame_classes: normal}\n"
    )
    return data, write(tmp_path / "det.yaml", text)


@pytest.mark.heavy
def test_a_detection_study_tests_detectors_paired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    """Two detectors (trained at 64 and 96 px) on the same folds: the pair gets a paired cluster bootstrap of AP50, mAP,
    CPM, F1 and frame accuracy whose values are each run's own, in the Holm family, the console and study.html (a
    Kvasir-SEG detection study had stopped with KeyError 'label' after training; then it only noted that no paired test
    existed)."""
    from rich.console import Console

    from medcad.report.console import _print_paired_tests
    from medcad.report.html import write_study_report

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    models = "models:\n  - {name: at64, image_size: 64}\n  - {name: at96, image_size: 96}\n"
    results = run_study(_tiny_detection_study(tmp_path, "compare", models)[1], tmp_path / "out", progress=False)
    (pair,) = results["paired_tests"]
    assert pair["test"] == "paired cluster bootstrap of AP50, mAP, CPM, F1 and frame accuracy" and "note" not in pair
    for r in results["runs"]:
        own = json.loads((Path(r["run"]) / "metrics.json").read_text())
        which = "a" if r["name"] == pair["a"] else "b"
        for m in ("ap50", "map"):  # each run's own figure, the 96 px run's boxes scaled to 64 px
            assert pair[m][f"value_{which}"] == pytest.approx(own[m]["value"], abs=1e-9)
        assert pair["cpm"][f"value_{which}"] == pytest.approx(own["froc"]["cpm"]["value"], abs=1e-9)
        assert pair["f1"][f"value_{which}"] == pytest.approx(own["iou_thresholds"]["0.5"]["f1"], abs=1e-9)
        frames = own["frame_level"]["iou_thresholds"]["0.5"]["accuracy"]["value"]
        assert pair["frame_accuracy"][f"value_{which}"] == pytest.approx(frames, abs=1e-9)
    assert pair["ap50"]["family_size"] == 5 and pair["ap50"]["p_holm"] >= pair["ap50"]["p_value"]
    console = Console(record=True, width=200)
    _print_paired_tests(console, [pair])
    text = console.export_text()
    assert all(
        w in text
        for w in ("AP50", "mAP@[.5:.95]", "FROC CPM", "F1 at IoU 0.5", "frame accuracy at IoU 0.5", "at64 vs at96")
    )
    html = write_study_report(tmp_path / "out").read_text()
    assert 'id="paired-ap"' in html and html.count("<td>at64</td><td>at96</td>") == 5
    # a compare study of detectors: no AUC column to explain, no transfer or combined run to describe (both had been
    # printed for every study)
    assert "AUC per fold" not in html and "sequential transfer" not in html and "combined run" not in html
    assert "same way are compared on every test image." in html


def test_detectors_on_one_domain_are_paired_on_its_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    """A combined detection study: each domain's run against the run on both, on that domain's test images (read
    from the dataset: a detection table had no domain column and the study stopped with KeyError 'domain'); every
    run's predictions.csv names each image's patient and domain."""
    from medcad.engine.evaluate import run_detections
    from medcad.metrics.detection import detection_metrics

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data, study = _tiny_detection_study(tmp_path, "combined", "")
    results = run_study(study, tmp_path / "out", progress=False)
    table = pd.read_csv(data, dtype=str)
    n_of = table["domain"].value_counts().to_dict()
    pairs = results["paired_tests"]
    assert sorted(p["domain"] for p in pairs) == sorted(n_of)
    domain_of = dict(zip(table["image"], table["domain"], strict=True))
    for p in pairs:
        assert p["n"] == n_of[p["domain"]] and np.isfinite(p["ap50"]["value_a"]) and "p_holm" in p["map"]
        for name, which in ((p["a"], "a"), (p["b"], "b")):  # each run's AP on that domain's images alone
            d = run_detections(tmp_path / "out" / "runs" / slug(name))
            on = [i for i, k in enumerate(d.keys) if domain_of[k] == p["domain"]]
            m = detection_metrics([d.detections[i] for i in on], [d.truths[i] for i in on], d.labels, n_boot=0)
            assert p["ap50"][f"value_{which}"] == pytest.approx(m["ap50"]["value"], abs=1e-9)
            if "f1" in p:  # the same classes: each run's own decisions
                assert p["f1"][f"value_{which}"] == pytest.approx(m["iou_thresholds"]["0.5"]["f1"], abs=1e-9)
            else:  # a domain without some class: each run decides among its own classes, not comparable
                assert "F1 and frame accuracy are not compared" in p["note"] and "frame_accuracy" not in p
    for r in results["runs"]:
        pred = pd.read_csv(Path(r["run"]) / "predictions.csv", dtype=str)
        assert {"patient", "domain"} <= set(pred.columns) and pred["domain"].notna().all()


def test_a_study_resumed_across_a_default_change_says_its_runs_freeze_differently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A detector study begun when detectors trained every layer, resumed after the stride-8 default: its finished
    run keeps stride 0, a new one would take 8, and the study says so (the paired AP test would measure the recipe)."""
    from medcad.config import TrainConfig
    from medcad.run import settled_settings
    from medcad.study.runner import prepare_study

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data, study = _tiny_detection_study(tmp_path, "compare", "models:\n  - {name: old}\n  - {name: new, lr: 0.002}\n")
    old = tmp_path / "out" / "runs" / "old"
    old.mkdir(parents=True)
    saved = settled_settings(TrainConfig(task="detect", model="test_efficientnet", image_size=64)).replace(
        freeze_stride=0
    )
    (old / "config.json").write_text(json.dumps(saved.to_dict()))
    (old / "metrics.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        prepared = prepare_study(study, tmp_path / "out", progress=False)
    assert [j.name for j in prepared.jobs] == ["new"]
    said = [r.getMessage() for r in caplog.records if "freeze their encoders to different strides" in r.getMessage()]
    assert said and "old at 0, new at 8" in said[0]
    (old / "metrics.json").unlink()  # begun, not finished: it resumes, and its training note says how it trains
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepared = prepare_study(study, tmp_path / "out", progress=False)
    assert [j.name for j in prepared.jobs] == ["old", "new"]
    notes = {
        r.getMessage().split(": training")[0]: r.getMessage() for r in caplog.records if ": training" in r.getMessage()
    }
    assert "stride 8" in notes["note: new"] and "stride" not in notes["note: old"]  # had said 8 for both


@settings(max_examples=100, deadline=None)
@given(st.permutations(["polyp", "adenoma", "normal"]), st.integers(1, 3), st.integers(0, 10_000))
def test_box_classes_pair_by_name(labels: list[str], n_common: int, seed: int) -> None:
    """Two runs' box classes are matched by name: each kept box keeps its class name, boxes of a class outside the
    shared ones are dropped."""
    from medcad.study.paired import on_classes

    rng = np.random.default_rng(seed)
    common = sorted(labels[:n_common])
    boxes = np.c_[rng.uniform(0, 50, (12, 4)), rng.integers(0, 3, 12)]
    out = on_classes(boxes, labels, common)
    kept = [labels[int(c)] in common for c in boxes[:, -1]]
    assert len(out) == sum(kept)
    assert [common[int(c)] for c in out[:, -1]] == [
        labels[int(c)] for c, k in zip(boxes[:, -1], kept, strict=True) if k
    ]
    assert np.array_equal(out[:, :4], boxes[kept, :4])


P_VALUES = st.one_of(st.floats(0, 1), st.just(float("nan")), st.none())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(P_VALUES, max_size=3), min_size=1, max_size=4), st.lists(P_VALUES, max_size=4))
def test_family_size_is_the_number_of_tests_holm_counted(by_class: list, dice: list) -> None:
    """family_size beside each p_holm is the m Holm adjusted over: the tests with a p-value (a nan or missing one is
    left out of the family), so p [0.01, nan, 0.03] has family size 2, not 3 (p_holm 0.02 and 0.03)."""
    from statsmodels.stats.multitest import multipletests

    pairs = [{"by_class": {f"class {j}": {"p_value": v} for j, v in enumerate(ps)}} for ps in by_class]
    pairs += [{"dice": {"p_value": v}} for v in dice]
    tests = [t for pair in adjust_family(pairs) for t in [*pair.get("by_class", {}).values(), pair.get("dice")] if t]
    finite = [t for t in tests if t["p_value"] is not None and np.isfinite(t["p_value"])]
    if finite:
        expected = multipletests([t["p_value"] for t in finite], method="holm")[1]
        assert [t["p_holm"] for t in finite] == pytest.approx(expected.tolist())
    assert {t["family_size"] for t in tests} <= {len(finite)}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_a_holm_p_that_follows_from_a_p_at_its_floor_is_a_bound(tests: list, rnd) -> None:
    """A raw bootstrap p at its resolution is a bound (p < floor); a Holm-adjusted p that any raw p below its floor
    would lower is a bound too (`p_holm_bound`, written "< ..."), and one that none would lower is exact: drawing the
    floored p anywhere below their floors leaves every exact Holm p unchanged and never raises a bound (a raw
    "< 0.0005" had given a Holm p of "0.0020", as if measured)."""
    from medcad.metrics.compare import holm

    floor = 1 / 2000
    raw = [floor if floored else max(v, 2 * floor) for v, floored in tests]
    pairs = [{"n_boot": 2000, "dice": {"p_value": v, "p_floor": floor}} for v in raw]
    got = [pair["dice"] for pair in adjust_family(pairs)]
    for _ in range(5):
        drawn = holm([rnd.uniform(0, floor) if v == floor else v for v in raw])
        for d, h in zip(got, drawn, strict=True):
            assert h <= d["p_holm"] + 1e-12
            if not d["p_holm_bound"]:
                assert h == pytest.approx(d["p_holm"], abs=1e-12)
    lowered = holm([0.0 if v == floor else v for v in raw])
    assert [d["p_holm_bound"] for d in got] == [low < d["p_holm"] - 1e-12 for low, d in zip(lowered, got, strict=True)]


def test_a_holm_p_that_is_a_bound_is_written_as_one() -> None:
    """The console's and the study report's Holm column write a bound as "< ..." (as the raw p beside it)."""
    from rich.console import Console

    from medcad.report.console import _print_paired_tests
    from medcad.report.html import _env

    floored = {"difference": 0.1, "ci95": [0.05, 0.15], "p_value": 0.0005, "p_floor": 0.0005}
    exact = {"difference": 0.1, "ci95": [0.05, 0.15], "p_value": 0.03, "p_floor": 0.0005}
    pairs = adjust_family([{"a": "a", "b": "b", "n_boot": 2000, "dice": floored, "dice_lesion": exact}])
    assert floored["p_holm"] == pytest.approx(0.001) and floored["p_holm_bound"] and not exact["p_holm_bound"]
    console = Console(record=True, width=200)
    _print_paired_tests(console, pairs)
    dice_row = next(line for line in console.export_text().splitlines() if "Dice " in line and "lesion" not in line)
    assert dice_row.count("< 0.0005") == 1 and "< 0.0010" in dice_row
    p = _env().from_string('{% from "macros.html.j2" import p %}{{ p(d.p_holm, holm_floor(d)) }}')
    assert p.render(d=floored) == "&lt; 0.0010" and p.render(d=exact) == "0.0300"
    from medcad.report.console import p_value_text  # a bound rounded up (rounded down it would claim more)

    assert p_value_text(0.00124, 0.00124) == "< 0.0013" and p_value_text(1.0, 1.0) == "1.0000"


def test_a_cross_domain_study_compares_the_combined_run_with_each_domain_on_its_images(
    tmp_path: Path, two_domain_set: Path
) -> None:
    """cross_domain / combined: each model's combined run against each single domain's run, on that domain's test
    images; models trained the same way against each other, on all."""
    from medcad.study.protocol import compared_pairs

    yaml = "data: data\nprotocol: cross_domain\nmodels: [tf_efficientnet_lite0, {name: n, model: resnet18}]\n"
    spec = load_study(write(tmp_path / "s.yaml", yaml))
    pairs = {(a.name, b.name, d) for a, b, d in compared_pairs(expand(spec, ["cysto", "uretero"]))}
    m = "tf_efficientnet_lite0"
    assert pairs == {
        (f"{m} | cysto", "n | cysto", None),
        (f"{m} | uretero", "n | uretero", None),
        (f"{m} | cysto + uretero", "n | cysto + uretero", None),
        (f"{m} | cysto + uretero", f"{m} | cysto", "cysto"),
        (f"{m} | cysto + uretero", f"{m} | uretero", "uretero"),
        ("n | cysto + uretero", "n | cysto", "cysto"),
        ("n | cysto + uretero", "n | uretero", "uretero"),
    }


def test_a_bootstrap_p_at_its_resolution_is_written_as_a_bound() -> None:
    """A paired bootstrap's p where no resample crossed 0 is its resolution, its p_floor (1/B expanded for few
    groups; 1/B for a test written before p_floor): written "< 0.0005" for 2000 resamples (it had read "0.0005", as
    if measured); an analytic p (DeLong) keeps its digits."""
    from medcad.report.html import _env

    p = _env().from_string('{% from "macros.html.j2" import p %}{{ p(v, p_floor(t)) }}')
    old, floored = {"n_boot": 2000}, {"n_boot": 2000, "p_floor": 0.0078}
    assert p.render(v=1 / 2000, t=old) == "&lt; 0.0005" and p.render(v=0.49, t=old) == "0.4900"
    assert p.render(v=0.0078, t=floored) == "&lt; 0.0078" and p.render(v=0.0079, t=floored) == "0.0079"
    assert p.render(v=0.0005, t={}) == "0.0005" and p.render(v=0.00001, t={}) == "&lt; 0.0001"
    assert p.render(v=None, t=old) == "—" and p.render(v=float("nan"), t={}) == "—"
    # the terminal's paired-test table by the same rule (it had printed "0.0000" where the report said "< 0.0001")
    from rich.console import Console

    from medcad.report.console import _print_paired_tests

    console = Console(record=True, width=200)
    test = {"difference": 0.1, "ci95": [0.05, 0.15], "p_value": 1 / 2000, "p_holm": 0.00001, "n_boot": 2000}
    _print_paired_tests(console, [{"a": "a", "b": "b", "dice": test}])
    text = console.export_text()
    assert "< 0.0001" in text and "< 0.0005" in text


def test_an_interval_no_resample_defines_is_said_not_printed_as_nan() -> None:
    """A macro figure whose interval fewer than half of the resamples define (two rare classes, each in one patient:
    `stats.macro_mean`) is printed with a reason, in the console and the HTML reports, not as "(nan–nan)" (console)
    or as a bare value (HTML, where JSON had turned nan into null); a paired Dice row on lesion images is not labelled
    "AUC"."""
    from rich.console import Console

    from medcad.report.console import NO_CI, _fmt, _print_paired_tests
    from medcad.report.html import _env

    assert _fmt({"value": 0.83, "ci95": [float("nan"), float("nan")]}) == f"0.830 (no CI: {NO_CI})"
    assert _fmt({"value": 0.83, "ci95": [None, None]}) == f"0.830 (no CI: {NO_CI})"
    # an interval that says why it is missing (`stats.ci_entry`: too few groups) is shown with its own reason
    few = {"value": 0.83, "ci95": [None, None], "no_ci": "too few groups (4) for a 95 % interval from 1000 resamples"}
    assert _fmt(few) == f"0.830 (no CI: {few['no_ci']})"
    assert _fmt({"value": float("nan"), "ci95": [None, None]}) == "—"  # a separated slope had printed "nan (no CI...)"
    assert _fmt({"value": 0.83, "ci95": [0.7, 0.9]}) == "0.830 (0.700–0.900)" and _fmt({"value": 0.83}) == "0.830"
    # a negative bound reads as the report writes it (the study's console had printed "-0.097 (-0.181–-0.030)"),
    # and an exact interval says so
    assert _fmt({"value": -0.097, "ci95": [-0.181, -0.03]}) == "-0.097 (-0.181 to -0.030)"
    assert _fmt({"value": 1.0, "ci95": [0.912, 1.0], "ci95_method": "exact"}) == "1.000 (0.912–1.000, exact)"
    assert _fmt({"value": 0.8, "ci95": [0.7, 0.9], "ci95_method": "bootstrap of images"}) == "0.800 (0.700–0.900)"
    ci = _env().from_string('{% from "macros.html.j2" import ci %}{{ ci(m) }}')
    assert NO_CI in ci.render(m={"value": 0.83, "ci95": [None, None]})
    assert NO_CI in ci.render(m={"value": 0.83, "ci95": [float("nan"), float("nan")]})
    assert "too few groups (4)" in ci.render(m=few) and NO_CI not in ci.render(m=few)
    assert "0.700–0.900" in ci.render(m={"value": 0.83, "ci95": [0.7, 0.9]}) and "CI" not in ci.render(m={"value": 1.0})
    console = Console(record=True, width=200)
    test = {"difference": 0.1, "ci95": [0.05, 0.15], "p_value": 0.01, "p_holm": 0.02}
    _print_paired_tests(console, [{"a": "a", "b": "b", "dice": test, "dice_lesion": test}])
    text = console.export_text()
    assert "  Dice, lesion images" in text and "AUC Dice" not in text


def test_a_studys_positive_class_is_checked_before_anything_is_written_and_a_new_one_pools_again(
    tmp_path: Path, two_domain_set: Path
) -> None:
    """A study's `positive:` is checked against the data's labels by --plan and before the study folder is made
    (a class the labels lack, or models naming different ones); a finished run pooled with another positive class
    than the study's now is trained again as a job, which resumes its folds and pools them again (it had been kept
    as it was, with its old positive class)."""
    from medcad.study.runner import plan_study, prepare_study

    two = "settings: {label_map: 'benign=lesion,malignant=lesion'"
    bad = write(tmp_path / "bad.yaml", f"data: data\nprotocol: kfold\n{two}, positive: polyp}}\n")
    with pytest.raises(ConfigError, match=r"'polyp' is not one of the run's classes \(lesion, normal\)"):
        plan_study(bad)
    res = runner.invoke(app, ["study", str(bad), "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "polyp" in res.output and not (tmp_path / "bad").exists()
    mixed = write(
        tmp_path / "mixed.yaml",
        f"data: data\nprotocol: compare\n{two}}}\nmodels:\n  - {{name: a, positive: Lesion}}\n"
        "  - {name: b, positive: normal}\n",
    )
    with pytest.raises(ConfigError, match=r"different positive classes \(a: lesion, b: normal\)"):
        prepare_study(mixed, tmp_path / "mixed", progress=False)
    assert not (tmp_path / "mixed").exists()

    study = write(tmp_path / "s.yaml", f"data: data\nprotocol: kfold\n{two}, positive: normal}}\nmodels: [{{name: m}}]")
    run = tmp_path / "out" / "runs" / "m"
    run.mkdir(parents=True)
    for before, job, state in (("lesion", ["m"], "pools again"), ("normal", [], "finished")):
        (run / "metrics.json").write_text(json.dumps({"binary": {"positive": before}}))
        assert [j.name for j in prepare_study(study, tmp_path / "out", progress=False).jobs] == job
        assert plan_study(study, out=tmp_path / "out")["runs"][0]["state"] == state  # --plan says it alike


def test_runs_whose_probabilities_are_on_different_scales_are_said(tmp_path: Path) -> None:
    """A study resumed across 2026-12-06 pairs a run pooled as trained with one pooled on temperature-scaled
    probabilities: its AUC test compares two scales, which is said with the command that re-pools the older."""
    from medcad.study.paired import _run_metrics, _scales_note

    for name, m in (("a", {"probabilities": "temperature-scaled"}), ("b", {"calibration": {}}), ("c", {})):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(m))
    metrics = {name: _run_metrics(tmp_path / "runs" / name) for name in "abc"}  # as paired_tests reads them, once
    with pytest.warns(UserWarning, match=r"a and b hold their probabilities on different scales .*evaluate .*runs/b"):
        said = _scales_note(tmp_path, "a", "b", metrics)
    assert "b: as trained" in said["note"]
    assert _scales_note(tmp_path, "b", "c", metrics) == {}  # both as trained
