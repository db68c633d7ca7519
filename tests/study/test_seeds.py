"""The reference designs as study files (docs/studies/seeds/): each one's plan without data, and each one run end to
end at tiny size (tiny backbones, 32-64 px, one epoch per stage) on a tiny synthetic set made in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medcad.cli import app
from medcad.config import parse_stages
from medcad.data.synthetic import generate_synthetic
from medcad.study.runner import plan_study, run_study

SEEDS = Path(__file__).resolve().parents[2] / "docs" / "studies" / "seeds"
FILES = sorted(SEEDS.glob("*.yaml"))
runner = CliRunner()

# The tiny stand-in for each backbone the seeds name (random init, a few thousand parameters).
TINY = {"efficientnet": "test_efficientnet", "lite": "test_efficientnet"}


def test_one_seed_per_reference_design() -> None:
    assert [f.stem for f in FILES] == [
        "colonoscopy_ssd",
        "gi_kvasir8",
        "paediatric_renal",
        "renal_tumour_multitask",
        "urinary_transfer",
    ]
    for f in FILES:
        head = f.read_text().splitlines()[0]
        assert head.startswith("# Reference design "), f
        assert "DATA:" in f.read_text(), f"{f.name}: say which data it points at"


@pytest.mark.parametrize("seed", FILES, ids=lambda p: p.stem)
def test_plan_lists_every_run_stage_and_setting_without_training(seed: Path, tmp_path: Path) -> None:
    plan = plan_study(seed)
    assert plan["runs"] and all(r["training"] for r in plan["runs"])
    res = runner.invoke(app, ["study", str(seed), "--plan"])
    assert res.exit_code == 0, res.output
    for r in plan["runs"]:
        assert r["name"] in res.output
    assert "nothing trained" in res.output and not (seed.parent / "studies").exists()
    res = runner.invoke(app, ["study", str(seed), "--plan", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["runs"]) == len(plan["runs"])


def test_plan_of_the_urinary_design_shows_its_schedule_at_both_steps() -> None:
    plan = plan_study(SEEDS / "urinary_transfer.yaml")
    assert len(plan["runs"]) == 15  # 3 backbones x (2 directions x 2 steps + combined)
    step2 = next(r for r in plan["runs"] if r["step"] == "step 2")
    assert step2["init"] and len(step2["training"]) == 2  # no stage skipped on the second step
    assert step2["training"][0].startswith("stage 1: 5 epochs of every layer, adam")
    assert "stage 2: 30 epochs of the last 4 weight layers, adam" in step2["training"][1]
    assert "lr 0.001 (1 x 0.001" in step2["training"][1] and "constant schedule" in step2["training"][1]
    assert step2["config"]["stages"] == "5:all:0.0001:adam,30:last4:0.001:adam"


def _tiny_data(root: Path, kind: str) -> Path:
    """A tiny synthetic set as each seed's data: the `medcad demo` set (lesion / normal) or a BUSI-like one
    (normal / benign / malignant with masks)."""
    manifest = generate_synthetic(root, n_patients=16, frames_per_patient=2, size=48, seed=5)
    if kind == "demo":
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        table["label"] = table["label"].where(table["label"] == "normal", "lesion")
        table.to_csv(manifest, index=False)
    return manifest


def _tiny(model: str) -> str:
    return next((t for k, t in TINY.items() if k in model), "test_resnet")


def _tiny_study(seed: Path, tmp_path: Path) -> Path:
    """The seed file with tiny sizes: its data a tiny synthetic set, 2 folds, 32 px (64 for the detector), one
    epoch per stage, tiny backbones; protocol, domains, stages' layers and every other setting as written."""
    study = yaml.safe_load(seed.read_text())
    demo = "runs/demo/data" in study["data"]
    study["data"] = str(_tiny_data(tmp_path / "data", "demo" if demo else "busi"))
    if study.get("folds"):
        study["folds"] = 2
    size = 64 if study.get("task") == "detect" else 32

    def shrink(settings: dict) -> dict:
        out = dict(settings)
        if "stages" in out:
            out["stages"] = ",".join(f"1:{s.layers}:{s.lr:g}" for s in parse_stages(out["stages"]))
        if "model" in out:
            out["model"] = _tiny(out["model"])
        if "image_size" in out:
            out["image_size"] = size
        return out

    tiny = {"image_size": size, "epochs": 1, "head_epochs": 2, "batch_size": 8, "patience": 1, "threads": 1}
    study["settings"] = shrink({**study.get("settings", {}), **tiny})
    if "models" in study:
        study["models"] = [shrink(m if isinstance(m, dict) else {"name": m, "model": m}) for m in study["models"]]
    elif "model" not in study["settings"]:
        study["settings"]["model"] = "test_resnet"
    out = tmp_path / seed.name
    out.write_text(yaml.safe_dump(study, sort_keys=False))
    return out


HEAVY_SEEDS = ("renal_tumour_multitask", "urinary_transfer")  # 27 and 14 s on 2 cores, the others about 1.5 s


@pytest.mark.parametrize(
    "seed",
    [pytest.param(p, marks=pytest.mark.heavy) if p.stem in HEAVY_SEEDS else p for p in FILES],
    ids=lambda p: p.stem,
)
def test_seed_runs_end_to_end_at_tiny_size(
    seed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    """About 80 s for the five on 2 cores (urinary ~30 s: 15 runs; renal ~38 s: 6 runs)."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    study = _tiny_study(seed, tmp_path)
    results = run_study(study, tmp_path / "out", progress=False)
    planned = {r["name"]: r for r in plan_study(study)["runs"]}
    assert [r["name"] for r in results["runs"]] == list(planned)
    for r in results["runs"]:
        run = Path(r["run"])
        saved = json.loads((run / "config.json").read_text())
        config = planned[r["name"]]["config"]
        assert {k: saved[k] for k in config} == config  # each run trained with the settings the plan showed
        assert (run / "metrics.json").is_file()
        if config["stages"]:  # every stage at every step, sequential transfer's second step included
            n = len(parse_stages(config["stages"]))
            for fold in run.glob("fold_*"):
                assert sorted(p.name for p in (fold / "logs" / "csv").iterdir()) == [f"stage{i + 1}" for i in range(n)]
                assert not (fold / "checkpoints").exists()  # finished: model.pt holds the kept weights
                # the kept model is named by the stage that trained it: a second step's had been called "init" (as
                # if the first step's model were kept unchanged)
                result = json.loads((fold / "result.json").read_text())
                assert result["selected_stage"] in {f"stage{i + 1}" for i in range(n)}, result["selected_stage"]
