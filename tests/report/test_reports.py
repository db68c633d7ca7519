"""Reports of a real tiny run and study, opened in headless Chromium: every figure loads, the tables are there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from browser import CHROMEDRIVER, CHROMIUM, chromium_page
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medcad.cli import app
from medcad.data.synthetic import generate_synthetic
from medcad.errors import DataError

runner = CliRunner()
CHECK = """
const imgs = Array.from(document.images);
return {n_images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
        tables: Array.from(document.querySelectorAll('table')).map(t => t.className),
        h2: Array.from(document.querySelectorAll('h2')).map(h => h.id)};
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDCAD_CACHE_DIR", str(tmp / "cache"))
    generate_synthetic(tmp / "data", n_patients=16, frames_per_patient=2, size=48, seed=5)
    (tmp / "study.yaml").write_text(
        "name: r\ndata: data\nprotocol: combined\nfolds: 2\nmodels: [tf_efficientnet_lite0]\n"
        "settings: {image_size: 32, epochs: 1, head_epochs: 2, batch_size: 16, val_fraction: 0.3}\n"
    )
    res = runner.invoke(app, ["study", str(tmp / "study.yaml"), "--out", str(tmp / "study")])
    mp.undo()
    assert res.exit_code == 0, res.output
    return tmp / "study"


@pytest.mark.heavy
def test_reports_are_written_and_self_contained(study_dir: Path) -> None:
    study_html = (study_dir / "report.html").read_text()
    assert "Cross-domain matrix" in study_html and "data:image/png;base64," in study_html
    # what the comparison and the matrix are computed over (it had not been said)
    assert "pooled over its\n2 fold(s): all 32 images" in study_html
    assert "restricted to the test images of that domain" in study_html
    runs = sorted((study_dir / "runs").iterdir())
    assert len(runs) == 3
    run_html = (runs[0] / "report.html").read_text()
    for section in ("Results", "Grad-CAM", "Audit", "Model card", "Splits"):
        assert section in run_html
    # a one-domain run's splits table: the images its folds used (the study's splits hold both domains' twice as
    # many, which the table had shown)
    import json
    import re

    for k in (0, 1):
        n = json.loads((runs[0] / f"fold_{k}" / "result.json").read_text())
        assert f"<tr><td>{k}</td><td>{n['n_train']}</td><td>{n['n_val']}</td><td>{n['n_test']}</td></tr>" in run_html
    assert "a share of the splits: its training domains' (endoscopy)" in run_html
    assert re.search(r"the splits hold \d+ / \d+ / \d+ in fold 0", run_html)
    assert "http://" not in run_html and "https://" not in run_html  # nothing fetched from the network


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver not installed (apt-get install chromium chromium-driver; .ci/run installs them)",
)
def test_reports_render_in_chromium(study_dir: Path, tmp_path: Path) -> None:
    run = sorted((study_dir / "runs").iterdir())[0]
    with chromium_page(tmp_path) as page:
        page.open((run / "report.html").as_uri())
        info = page.js(CHECK)
        assert info["n_images"] >= 4 and info["broken"] == []
        assert {"headline", "per-class", "card", "splits"} <= set(info["tables"])
        assert {"results", "gallery", "data", "model-card"} <= set(info["h2"])
        page.screenshot(tmp_path / "run.png")
        page.open((study_dir / "report.html").as_uri())
        info = page.js(CHECK)
        assert info["broken"] == [] and {"comparison", "matrix"} <= set(info["tables"])
    assert (tmp_path / "run.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        (["stage1", "stage2"], "stage2"),  # a classifier: head on cached features, then fine-tuning
        (["stage1", "stage2", "stage10"], "stage10"),  # the last of a long stage list, not the last by name
        (["train"], "train"),
        (["stage3", "other"], "stage3"),
        ([], None),
    ],
)
def test_training_curves_follow_the_stages_the_fold_logged(tmp_path: Path, logged: list[str], expected) -> None:
    from medcad.report.run_report import _fit_stage
    from medcad.runfolder import RunFolder

    fold = RunFolder(tmp_path).fold(0)
    for name in logged:
        fold.history(name).parent.mkdir(parents=True)
        fold.history(name).write_text("epoch,train_loss\n0,1.0\n")
    (fold.logs / "csv" / "stage7").mkdir(parents=True)  # a stage folder without metrics.csv is not a history
    assert _fit_stage(fold) == expected


def test_frame_accuracy_without_background_frames_says_so(capsys) -> None:
    """Kvasir-SEG has no lesion-free frame: the detector's frame accuracy then counts lesion frames given any box
    (1.000 beside an AP50 of 0.013 in the helper's run), and the console says there is no background frame."""
    from medcad.report.console import print_metrics

    m = {
        "n_images": 2,
        "ap50": {"value": 0.013, "ci95": [0.0, 0.02]},
        "map": {"value": 0.003, "ci95": [0.0, 0.01]},
        "frame_level": {
            "accuracy": {"value": 1.0, "ci95": [1.0, 1.0]},
            "confusion_matrix": {"labels": ["polyp", "background"], "matrix": [[2, 0], [0, 0]]},
        },
        "iou_thresholds": {"0.5": {"precision": 0.1, "recall": 0.1, "f1": 0.1}},
    }
    print_metrics(m)
    assert "no background frame here" in capsys.readouterr().out


def test_figures_say_what_their_numbers_are_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training figure names the task's validation score (a multitask run's is the mean of Dice and AUC; it had
    said 'macro AUC; Dice for masks') under a title that does not overlap it; the Dice histogram says it is over the
    images with a lesion (its median had been read as the run's, 0.646 beside 0.811 over all images)."""
    import pandas as pd

    from medcad.report import plots
    from medcad.report.seg_report import collect_segmentation
    from medcad.tasks import get_task

    figures = []

    def keep(fig) -> bytes:
        fig.canvas.draw()
        figures.append(fig)
        return b""

    monkeypatch.setattr(plots, "figure_png", keep)
    history = {"fold 0": {"train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "val_score": [0.5, 0.6]}}
    plots.curves_png(history, get_task("multitask").val_score, "Training")
    fig = figures[-1]
    assert "mean of Dice" in fig.axes[1].get_title() and "macro AUC" in fig.axes[1].get_title()
    above = fig._suptitle.get_window_extent()
    assert all(not above.overlaps(ax.title.get_window_extent()) for ax in fig.axes)

    pred = pd.DataFrame({"dice": [0.2, 0.4, 1.0], "true_area": [5, 9, 0]})
    collect_segmentation(Path("."), None, None, pred, gallery=False)
    assert figures[-1].axes[0].get_title() == "Dice of the 2 of 3 images with a lesion, median 0.300"


def test_a_moved_or_copied_study_reports_its_own_files(study_dir: Path, tmp_path: Path) -> None:
    """results.json holds paths relative to the study folder, so a copy reports its own runs and a moved study still
    reports (a copy had read the original's files, a moved one failed: 'splits file not found'); a results.json of
    before, with absolute paths, is read the same way."""
    import json
    import shutil

    from medcad.report.study_report import collect_study

    saved = json.loads((study_dir / "results.json").read_text())
    assert saved["splits"] == "splits.json" and all(r["run"].startswith("runs/") for r in saved["runs"])
    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("*.pt", "*.ckpt", "*.npz", "logs"))
    first = copy / saved["runs"][0]["run"] / "metrics.json"
    first.write_text(json.dumps(json.loads(first.read_text()) | {"evaluation": "the copy's own"}))
    assert collect_study(copy)["runs"][0]["evaluation"] == "the copy's own"
    old = saved | {"splits": str(study_dir / "splits.json")}  # as written before: absolute, the original's
    old["runs"] = [r | {"run": str(study_dir / r["run"])} for r in saved["runs"]]
    (copy / "results.json").write_text(json.dumps(old))
    assert collect_study(copy)["runs"][0]["evaluation"] == "the copy's own"  # its own files, not the original's
    moved = copy.rename(tmp_path / "moved")
    s = collect_study(moved)
    assert s["splits"] == str(moved / "splits.json") and s["runs"][0]["run"].startswith(str(moved))
    (moved / "results.json").write_text(json.dumps(saved))
    shutil.rmtree(moved / saved["runs"][1]["run"])
    with pytest.raises(DataError, match=r"results.json: a path it holds cannot be read: .*runs.* is gone"):
        collect_study(moved)


def test_study_bars_start_at_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bars of the study's headline start at 0 (the axis had been cut at 0.4, making 0.6 look like half of 0.8)."""
    from medcad.report import plots

    seen = []
    monkeypatch.setattr(plots, "figure_png", lambda fig: seen.append(fig.axes[0].get_ylim()) or b"")
    plots.bars_png({"a": (0.6, 0.5, 0.7), "b": (0.8, 0.72, 0.86)}, "macro AUC per run", "macro AUC")
    assert seen == [(0.0, 1.0)]


def test_negative_intervals_and_tiny_p_values_read_plainly() -> None:
    """A CI with a negative bound reads '(-0.024 to -0.001)' (it had been '(-0.024–-0.001)'), a p-value below 0.0001
    '< 0.0001' (it had been '0.0000')."""
    from medcad.report.html import _env

    macros = _env().from_string(
        '{% from "macros.html.j2" import ci, p %}{{ ci(a) }}|{{ ci(b) }}|{{ p(0.00001) }}|{{ p(0.0123) }}'
    )
    out = macros.render(a={"value": -0.01, "ci95": [-0.024, -0.001]}, b={"value": 0.5, "ci95": [0.4, 0.6]})
    assert out.split("|") == [
        '-0.010 <span class="small">(-0.024 to -0.001)</span>',
        '0.500 <span class="small">(0.400–0.600)</span>',
        "&lt; 0.0001",
        "0.0123",
    ]


def test_a_class_legend_is_written_on_images_it_fits_and_worded_beside_small_ones() -> None:
    """A gallery thumbnail of a label-map run (64 px) had its class legend drawn over 40 % of it, cut off
    ("malignan"); thumbnails below `LEGEND_MIN_SIDE` get none, and the grid's title words the colours instead."""
    import numpy as np

    from medcad.drawing import LEGEND_MIN_SIDE, class_overlay, colour_legend

    for side, drawn in ((64, False), (LEGEND_MIN_SIDE, True)):
        img, classes = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)
        classes[4:20, 4:20] = 1
        with_names = class_overlay(img, classes, None, ["benign", "malignant"])
        assert (not np.array_equal(with_names, class_overlay(img, classes, None, None))) == drawn
    assert colour_legend(["benign", "malignant"]) == "benign red, malignant blue"


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="…"),
        min_size=1,
        max_size=120,
    )
)
def test_a_gallery_tile_names_its_image_whole_or_says_where_it_is_cut(key: str) -> None:
    """A case tile's caption holds its image's name whole, broken onto lines (it had shown the last 26 characters,
    "lignant/malignant (23).jpg"); a name longer than three lines keeps its start and its end, with "…" between."""
    from medcad.report.plots import tile_name

    lines = tile_name(key).split("\n")
    assert len(lines) <= 3 and all(len(line) <= 28 for line in lines)
    if "…" not in lines[-1]:
        assert "".join(lines).replace(" ", "") == key.replace(" ", "")
    else:
        assert key.replace(" ", "").startswith("".join(lines[:-1]).replace(" ", ""))
        assert key.endswith(lines[-1][1:])


def test_calibration_kept_at_t_1_is_not_said_to_have_changed() -> None:
    """Where every fold kept T = 1 (no evidence against it), the console gives the calibration once and says it was
    not scaled (it had read "ECE 0.174 -> 0.174 ... after temperature scaling"); where some folds scaled, it names
    them and the folds kept at 1."""
    from rich.console import Console

    from medcad.report.console import _print_validated

    figures = {"ece": {"value": 0.174, "ci95": [0.1, 0.2]}, "brier": {"value": 0.2, "ci95": [0.1, 0.3]}}
    cal = {"before": figures, "after": figures, "temperatures": {"0": 1.0, "1": 1.0}}
    console = Console(record=True, width=300)
    _print_validated(console, {"labels": ["a", "b"], "calibration": cal})
    text = console.export_text()
    assert "ECE 0.174 (0.100–0.200)" in text and "->" not in text and "no temperature scaling" in text, text
    console = Console(record=True, width=300)
    _print_validated(console, {"labels": ["a", "b"], "calibration": cal | {"temperatures": {"0": 1.5, "1": 1.0}}})
    text = console.export_text()
    assert "->" in text and "(fold 0 T = 1.50; 1 fold(s) kept at T = 1 for lack of evidence)" in text, text


LABELS = st.one_of(
    st.sampled_from(["None", "NA", "null", "nan", "01", "1.0", "", "N/A", "#N/A", "-1"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8),
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(LABELS, LABELS, st.floats(0, 1)), min_size=1, max_size=6))
def test_predictions_are_read_back_as_written(rows: list, tmp_path_factory) -> None:
    """A run's predictions.csv read back (`read_predictions`, as the report and a study's paired tests read it):
    labels spelled as written (a class named "None" had come back NaN and "01" as 1), probabilities as numbers."""
    import pandas as pd

    from medcad.runfolder import read_predictions

    table = pd.DataFrame(
        {
            "image": [f"{k}.png" for k in range(len(rows))],
            "label": [r[0] for r in rows],
            "predicted": [r[1] for r in rows],
        }
    )
    table["p_None"] = [r[2] for r in rows]
    path = tmp_path_factory.mktemp("pred") / "predictions.csv"
    table.to_csv(path, index=False)
    back = read_predictions(path)
    assert (
        back["label"].tolist() == table["label"].tolist() and back["predicted"].tolist() == table["predicted"].tolist()
    )
    assert back["p_None"].dtype.kind == "f" and back["p_None"].tolist() == pytest.approx(table["p_None"].tolist())


def test_a_runs_data_is_read_again_in_the_layout_it_was_read(tiny_run: Path, easy_set: Path) -> None:
    """A manifest.csv with patient ids added to a folder of class folders after training had been read instead by
    the report, evaluate and a resume: the report's data section counted 12 patients the run never had, beside
    splits grouped without them. config.json keeps the layout read, and every later read uses it."""
    from medcad.config import TrainConfig
    from medcad.engine.train import train_run
    from medcad.report.html import write_report
    from medcad.targets import run_dataset

    assert json.loads((tiny_run / "config.json").read_text())["layout"] == "folders"
    rows = [{"image": f"{c}/{k}.png", "label": c, "patient": f"p{k}"} for c in ("lesion", "normal") for k in range(12)]
    pd.DataFrame(rows).to_csv(easy_set / "manifest.csv", index=False)
    manifest = run_dataset(easy_set, TrainConfig.load(tiny_run / "config.json"), tiny_run)
    assert manifest.layout == "folders" and not manifest.table["patient"].astype(bool).any()
    assert "patients given: none" in write_report(tiny_run).read_text()
    cfg = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)
    before = (tiny_run / "metrics.json").read_text()
    train_run(easy_set, tiny_run, cfg, progress=False)  # resumed as made: read as then, nothing trained again
    assert json.loads((tiny_run / "config.json").read_text())["layout"] == "folders"
    assert json.loads((tiny_run / "metrics.json").read_text())["per_fold"] == json.loads(before)["per_fold"]


def test_the_report_gives_each_parts_classes_and_groups_and_the_software_it_ran_on(tiny_run: Path) -> None:
    """What CLAIM and STARD ask a paper for and a new user had to dig out of splits.json: each fold part's images
    per class and the groups they come from; and the library versions and machine (only medcad's had been given)."""
    from medcad.report.html import write_report
    from medcad.report.run_report import collect_run

    html = write_report(tiny_run).read_text()
    assert '<table class="splits-labels">' in html
    env = json.loads((tiny_run / "config.json").read_text())["environment"]
    assert {"torch", "timm", "lightning", "medcad"} <= set(env["packages"]) and env["cpu"] and env["python"]
    assert f"<td>torch</td><td>{env['packages']['torch']}</td>" in html
    result = json.loads((tiny_run / "fold_0" / "result.json").read_text())  # what "auto" became (it had said "auto")
    assert f"<td>precision</td><td>auto: {result['train_precision']}</td>" in html
    assert "<td>group_by</td><td>auto: duplicates</td>" in html
    collected = collect_run(tiny_run)
    card = collected["card"]  # the latency's precision as measured (the table had said bf16 always)
    # the epochs each fold ran and the one it kept (the settings' "epochs" had been all a reader saw)
    assert collected["epochs"]
    for k in (0, 1):  # the kept epoch where the fold kept its fine-tuned model, else the stage it kept instead
        e, kept = collected["epochs"][f"fold {k}"], json.loads((tiny_run / f"fold_{k}" / "result.json").read_text())
        assert 1 <= e["kept"] <= e["ran"] if kept["selected_stage"] == "stage2" else e["selected"] == "stage1"
    assert "Epochs each fold's last logged stage ran" in html
    assert f"latency (PyTorch, batch 1, {card['latency_precision']}, " in html
    again = collect_run(tiny_run)  # the latency as kept, not timed anew (one run's had read 10.1, 23.5, 9.5 ms)
    assert again["card"]["ms_per_image"] == card["ms_per_image"]
    kept = json.loads((tiny_run / "model_card.json").read_text())
    assert kept["card"]["ms_per_image"] == card["ms_per_image"]
    kept["card"]["ms_per_image"] = 123.0  # the run's own kept card is what its report shows (a study's too)
    (tiny_run / "model_card.json").write_text(json.dumps(kept))
    assert collect_run(tiny_run, shared={})["card"]["ms_per_image"] == 123.0
    model = tiny_run / "fold_0" / "model.pt"
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # another model file: again
    collect_run(tiny_run)
    assert (
        json.loads((tiny_run / "model_card.json").read_text())["measured_on"]["model_file"][1]
        == model.stat().st_mtime_ns
    )
    for f in again["fold_sizes"]:  # as each fold trained, validated and tested
        result = json.loads((tiny_run / f"fold_{f['fold']}" / "result.json").read_text())
        for part in ("train", "val", "test"):
            assert sum(f["labels"][part].values()) == result[f"n_{part}"] == f[part] >= f["groups"][part] > 0


def test_the_report_gives_the_flow_of_images_the_run_left_out(easy_set: Path, tmp_path: Path) -> None:
    """A manifest row whose file is missing, left out with --allow-missing: the report names it and why (it had
    said "24 images" alone; the left-out rows were in data_ledger.csv only)."""
    from medcad.config import TrainConfig
    from medcad.engine.train import train_run
    from medcad.report.html import write_report

    rows = [{"image": f"{c}/{k}.png", "label": c} for c in ("lesion", "normal") for k in range(12)]
    rows.append({"image": "lesion/gone.png", "label": "lesion"})
    pd.DataFrame(rows).to_csv(easy_set / "list.csv", index=False)
    cfg = TrainConfig(image_size=32, epochs=0, head_epochs=1, batch_size=8, folds=2, val_fraction=0.25)
    train_run(easy_set / "list.csv", tmp_path / "run", cfg.replace(allow_missing=True), progress=False)
    html = write_report(tmp_path / "run").read_text()
    assert (
        "Flow of images (data_ledger.csv lists each left out or not read): 24 used;\n1 left out by the run's read (1 "
        in html
    )
    assert "e.g. lesion/gone.png: " in html


def test_the_report_scores_the_run_again_without_images_under_two_labels(easy_set: Path, tmp_path: Path) -> None:
    """An image copied under both labels (as BUSI holds 8 such groups) stays in the run, named by the audit; the
    report adds the headline figures without those images, recomputed here from predictions.csv."""
    import shutil

    import numpy as np

    from medcad.config import TrainConfig
    from medcad.engine.train import train_run
    from medcad.metrics.classification import classification_metrics
    from medcad.report.html import write_report
    from medcad.report.run_report import collect_run

    for k in (0, 1):
        shutil.copy(easy_set / "lesion" / f"{k}.png", easy_set / "normal" / f"copy{k}.png")
    cfg = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)
    train_run(easy_set, tmp_path / "run", cfg, progress=False)
    r = collect_run(tmp_path / "run")
    wl = r["without_cross_label"]
    groups = r["audit"]["cross_label_duplicates"]
    doubtful = {k for g in groups for k in g}
    assert {"lesion/0.png", "lesion/1.png", "normal/copy0.png", "normal/copy1.png"} <= doubtful
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    kept = pred[~pred["image"].isin(doubtful)]
    assert (
        wl["n_left_out"] == len(doubtful)
        and wl["n_groups"] == len(groups)
        and wl["n"] == len(kept) == 26 - len(doubtful)
    )
    by_hand = classification_metrics(
        kept["label"].map(r["labels"].index).to_numpy(),
        kept[["p_lesion", "p_normal"]].to_numpy(),
        r["labels"],
        n_boot=0,
    )
    assert wl["accuracy"]["value"] == pytest.approx(by_hand["accuracy"]["value"])
    assert wl["macro_auc"]["value"] == pytest.approx(by_hand["macro_auc"]["value"])
    assert np.isfinite(wl["accuracy"]["ci95"]).all()
    assert f"a sensitivity analysis on {wl['n']} images" in write_report(tmp_path / "run").read_text()
