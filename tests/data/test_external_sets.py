"""External test sets: boxes from masks take the detector's class, labels can be renamed, and evaluate --data
reads any layout with the same data options as every other command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import noise_image, save
from medcad.cli import app
from medcad.data.boxes import manifest_boxes
from medcad.data.layouts import load_manifest
from medcad.errors import ConfigError, DataError


def _masks_only_set(root: Path, label: str) -> Path:
    for k in range(3):
        save(root / label / f"{k}.png", noise_image(k))
        m = np.zeros((32, 32), np.uint8)
        m[4 : 12 + k, 8:20] = 255
        save(root / label / f"{k}_mask.png", m)
    return root


def test_boxes_from_masks_take_the_detectors_only_class(tmp_path: Path) -> None:
    m = load_manifest(_masks_only_set(tmp_path / "ext", "lesion"))
    labels, boxes, problems, _ = manifest_boxes(m, 32, ["polyp"])
    assert labels == ["polyp"] and not problems
    assert [b.tolist() for b in boxes[0]] == [[8.0, 4.0, 20.0, 12.0, 0.0]]


def test_label_map_renames_rows_and_boxes(tmp_path: Path) -> None:
    root = _masks_only_set(tmp_path / "ext", "Tumour")
    with pytest.raises(ConfigError, match="names 'x', which no image or box"):
        load_manifest(root, label_map="Tumour=tumour, x=y")
    m = load_manifest(root, label_map="Tumour=tumour, ")
    assert m.labels == ["tumour"] and any("Tumour -> tumour" in n for n in m.notes)
    save(root / "b.png", noise_image(9))
    (root / "boxes.csv").write_text('image,label,boxes\nb.png,Tumour,"[[1, 2, 10, 12, ""Tumour""]]"\n')
    m2 = load_manifest(root / "boxes.csv", label_map="Tumour=tumour")
    assert m2.boxes(0) == [[1, 2, 10, 12, "tumour"]]
    with pytest.raises(ConfigError, match="is not 'old=new'"):
        load_manifest(root, label_map="Tumour")


def test_two_class_detector_still_names_an_unknown_box_label(tmp_path: Path) -> None:
    m = load_manifest(_masks_only_set(tmp_path / "ext", "lesion"))
    # no guess at which class it means ('lesion=polyp' had been offered: the first class)
    with pytest.raises(DataError, match="'lesion' is none of them: map it to the label it means"):
        manifest_boxes(m, 32, ["polyp", "adenoma"])
    with pytest.raises(DataError, match="--label-map 'lesion=Lesion'"):  # the same label spelled otherwise
        manifest_boxes(m, 32, ["polyp", "Lesion"])


def test_every_dataset_command_takes_the_same_data_options() -> None:
    runner = CliRunner()
    wanted = ["--layout", "--pattern", "--mask-suffix", "--images", "--masks", "--group-from", "--label-map"]
    for cmd in (["data", "inspect"], ["data", "audit"], ["data", "split"], ["train"], ["evaluate"]):
        res = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        missing = [o for o in wanted if o not in res.output]
        assert not missing, (cmd, missing)


def test_evaluate_data_reads_a_nested_layout(tiny_run: Path, tmp_path: Path) -> None:
    """A classification run scored on an external set laid out as {group}/{label} with other label names."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:40, :40]
    for site in ("siteA", "siteB"):
        for name in ("Lesion", "Normal"):
            for k in range(3):
                img = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
                if name == "Lesion":
                    img[(yy - 20) ** 2 + (xx - 20) ** 2 < 64] = 230
                save(tmp_path / "ext" / site / name / f"{k}.png", img)
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tiny_run),
            "--data",
            str(tmp_path / "ext"),
            "--pattern",
            "{group}/{label}",
            "--label-map",
            "Lesion=lesion,Normal=normal",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n"] == 12 and metrics["accuracy"]["value"] is not None
    assert "labels renamed: Lesion -> lesion, Normal -> normal" in res.output
    pred = (tiny_run / "evaluations" / "ext" / "predictions.csv").read_text()
    assert pred.count("\n") == 13 and "siteA/Lesion/0.png" in pred
    # the run's report is rewritten with the set (its checklist had kept saying "add it yourself"); said on stderr
    assert "(evaluate --data)" in (tiny_run / "report.html").read_text() and "report: " in res.stderr
    assert "<td>ECE (15 bins, the predictor&#39;s probabilities)</td>" in (tiny_run / "report.html").read_text()


def test_two_external_sets_of_one_name_keep_their_own_results(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """hospitalA/data and hospitalB/data: each evaluation in its own folder (the second had overwritten the first);
    the same set evaluated again keeps its folder."""
    import shutil

    for site, n in (("hospitalA", 12), ("hospitalB", 5)):
        for label in ("lesion", "normal"):
            shutil.copytree(easy_set / label, tmp_path / site / "data" / label, ignore=lambda d, f, n=n: sorted(f)[n:])
    for site in ("hospitalA", "hospitalB", "hospitalA"):
        res = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--data", str(tmp_path / site / "data"), "--json"])
        assert res.exit_code == 0, res.output
    folders = sorted(p.name for p in (tiny_run / "evaluations").iterdir())
    assert folders == ["data", "data-2"]
    saved = [json.loads((tiny_run / "evaluations" / f / "metrics.json").read_text()) for f in folders]
    assert [m["n"] for m in saved] == [24, 10]
    # copies of the run's own images: scored, but said and marked not independent (it had been a plain "external")
    assert saved[0]["overlap_with_run"]["n"] == 24 and "NOT independent" in saved[0]["evaluation"]
    assert "groups of its images by" in saved[0]["ci_clusters"]


def test_an_external_set_with_labels_the_model_never_saw(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """A hospital's set with a class the model was not trained on: evaluate --data stops and names both ways on (a
    label map, or scoring the known labels alone); with --unseen-labels leave-out the others are scored and the
    images left out counted."""
    import shutil

    ext = tmp_path / "site"
    for label in ("lesion", "normal"):
        shutil.copytree(easy_set / label, ext / label)
    for k in range(3):
        save(ext / "other" / f"{k}.png", noise_image(40 + k))
    args = ["evaluate", str(tiny_run), "--data", str(ext)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "'other' is none of them" in res.output and "--unseen-labels leave-out" in res.output
    res = CliRunner().invoke(app, [*args, "--unseen-labels", "leave-out", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n"] == 24 and metrics["left_out_unseen_labels"] == {"other": 3}
    assert "left out 3 image(s) without a label or of label(s) the model never saw" in res.output
    res = CliRunner().invoke(app, [*args, "--unseen-labels", "skip"])
    assert res.exit_code == 2 and "use one of stop, leave-out" in res.output


def test_an_external_set_with_unlabelled_images_is_not_scored_as_the_first_class(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    """Images without a label (an empty cell, an unlabelled folder) had been scored as the model's first class, with
    `used N of N` and no word. evaluate --data stops and names them; --unseen-labels leave-out scores the labelled
    ones and counts the others."""
    import shutil

    ext = tmp_path / "site"
    for label in ("lesion", "normal"):
        shutil.copytree(easy_set / label, ext / label)
    rows = [{"image": p.relative_to(ext).as_posix(), "label": p.parent.name} for p in sorted(ext.rglob("*.png"))]
    for row in rows[:2] + rows[-1:]:
        row["label"] = ""
    pd.DataFrame(rows).to_csv(ext / "manifest.csv", index=False)
    args = ["evaluate", str(tiny_run), "--data", str(ext / "manifest.csv")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and f"3 of {len(rows)} image(s) have no label (e.g. {rows[0]['image']})" in res.output
    res = CliRunner().invoke(app, [*args, "--unseen-labels", "leave-out", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n"] == len(rows) - 3 and metrics["left_out_unseen_labels"] == {"(no label)": 3}
    flat = tmp_path / "flat"
    shutil.copytree(easy_set / "lesion", flat)
    res = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--data", str(flat)])
    assert res.exit_code == 2 and "image(s) have no label" in res.output


def test_targets_refuse_a_label_the_run_does_not_have(easy_set: Path) -> None:
    """The backstop: a labelled task's targets are never built with an unknown or empty label read as class 0."""
    from medcad.config import TrainConfig
    from medcad.targets import load_targets

    m = load_manifest(easy_set)
    with pytest.raises(DataError, match=r"have no label or one not among \['lesion'\]"):
        load_targets(m, TrainConfig(), ["lesion"])


def test_near_duplicates_of_the_runs_images_are_found_in_an_external_set(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    """An external set holding the run's images re-encoded (JPEG) and resized: no file is the same, so only exact
    copies being checked, it had passed as an independent test set."""
    from PIL import Image

    ext = tmp_path / "hospital"
    for label in ("lesion", "normal"):
        for k, src in enumerate(sorted((easy_set / label).glob("*.png"))[:3]):
            img = Image.open(src).convert("RGB").resize((56, 56))
            (ext / label).mkdir(parents=True, exist_ok=True)
            img.save(ext / label / f"scan{k}.jpg", quality=90)
        fresh = noise_image(900 + len(label), 40)  # and one picture the run never saw
        save(ext / label / "new.png", fresh)
    res = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--data", str(ext), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["overlap_with_run"]["n"] == 0 and m["near_duplicates_of_run"]["n"] == 6
    assert "NOT independent: 6 near duplicates of the run's images" in m["evaluation"]
    pairs = dict(m["near_duplicates_of_run"]["pairs"])
    first = sorted((easy_set / "lesion").glob("*.png"))[0]
    assert pairs["lesion/scan0.jpg"] == f"lesion/{first.name}"
    assert "new.png" not in " ".join(pairs)


def test_a_label_map_is_offered_only_for_the_same_label_spelled_otherwise() -> None:
    """A new user's 'Benign' and 'MALIGNANT' were offered --label-map 'MALIGNANT=benign' (the first unknown label as
    the model's first): the advice maps spellings of the model's labels and leaves the others to the user."""
    from medcad.data.manifest import label_map_advice

    assert "--label-map 'Benign=benign,MALIGNANT=malignant'" in label_map_advice(
        ["Benign", "MALIGNANT"], ["benign", "malignant"]
    )
    said = label_map_advice(["MALIGNANT", "Normal"], ["benign", "malignant"])
    assert "--label-map 'MALIGNANT=malignant'" in said and "'Normal' is none of them" in said and "=benign" not in said


def test_rows_an_external_read_left_out_are_kept_with_its_evaluation(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    """`evaluate --data SET --allow-missing`: the rows the read left out (a listed file not there) are counted in the
    evaluation's metrics.json and listed in its data_ledger.csv (the console had said so, the saved results not)."""
    import pandas as pd

    rows = [f"{p},{p.parent.name}" for p in sorted(easy_set.rglob("*.png"))[:10]] + [f"{easy_set}/gone.png,lesion"]
    (tmp_path / "site.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    args = ["evaluate", str(tiny_run), "--data", str(tmp_path / "site.csv"), "--allow-missing", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n"] == 10 and metrics["left_out_by_the_read"]["n"] == 1
    again = CliRunner().invoke(app, args[:-1])  # the same set again: its evaluation replaced, said
    assert again.exit_code == 0 and "earlier evaluation" in again.output and "is replaced" in again.output
    (ledger,) = tiny_run.glob("evaluations/*/data_ledger.csv")
    left = pd.read_csv(ledger).query("status == 'left out'")
    assert list(left["path"].str.endswith("gone.png")) == [True] and "not found" in left["reason"].iat[0]


def test_an_external_sets_images_without_a_mask_follow_its_own_missing_masks(
    tiny_segmenter: Path, tmp_path: Path
) -> None:
    """evaluate --data --missing-masks: the set's images without a mask are an error (naming the option, which
    evaluate had not had), lesion-free, or left out and named; without --data it is refused (a run's own images are
    read as it was trained)."""
    runner = CliRunner()
    ext = tmp_path / "ext"
    for k in range(4):
        save(ext / "lesion" / f"{k}.png", noise_image(40 + k, 48))
        if k:  # 0.png has no mask
            m = np.zeros((48, 48), np.uint8)
            m[10 : 20 + k, 8:30] = 255
            save(ext / "lesion" / f"{k}_mask.png", m)
    res = runner.invoke(app, ["evaluate", str(tiny_segmenter), "--data", str(ext), "--missing-masks", "error"])
    assert res.exit_code != 0 and "has no mask" in res.output and "--missing-masks" in res.output
    res = runner.invoke(app, ["evaluate", str(tiny_segmenter), "--data", str(ext), "--missing-masks", "leave-out"])
    assert res.exit_code == 0, res.output
    assert "1 image(s) without a mask left out (--missing-masks leave-out), e.g. lesion/0.png" in res.output
    table = pd.read_csv(tiny_segmenter / "evaluations" / "ext" / "predictions.csv")
    assert sorted(table["image"]) == ["lesion/1.png", "lesion/2.png", "lesion/3.png"]
    res = runner.invoke(app, ["evaluate", str(tiny_segmenter), "--data", str(ext), "--json"])  # the run's: empty
    assert res.exit_code == 0 and json.loads(res.stdout)["segmentation"]["n_images"] == 4
    res = runner.invoke(app, ["evaluate", str(tiny_segmenter), "--missing-masks", "leave-out"])
    assert res.exit_code == 2 and "--missing-masks is --data's" in res.output
    res = runner.invoke(app, ["evaluate", str(tiny_segmenter), "--data", str(ext), "--missing-masks", "drop"])
    assert res.exit_code == 2 and "--missing-masks 'drop': use one of" in res.output
