"""ONNX export (fp32 and int8) of a real tiny run, the prediction backends, and the side-by-side benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import export_graph
from medcad.cli import app

runner = CliRunner()


@pytest.mark.heavy
def test_export_backends_and_bench(tiny_run: Path, easy_set: Path) -> None:
    run = tiny_run
    res = runner.invoke(app, ["export", str(run), "--int8", "--fold", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["agreement"]["model.onnx"]["top1_agreement"] == 1.0
    assert out["agreement"]["model.onnx"]["max_prob_diff"] < 1e-4
    assert 0 <= out["agreement"]["model.int8.onnx"]["top1_agreement"] <= 1
    splits = json.loads((run / "splits.json").read_text())["folds"][0]
    n_val = len(splits["val"])
    calibrated = out["int8"]["calibration"]  # the training images that top up a small validation part are said
    assert calibrated.startswith(f"{n_val} validation") and calibrated.endswith("images of fold 0")
    assert (" training" in calibrated) == (out["int8"]["calibration_images"] > n_val)
    meta = json.loads((run / "export_fold0" / "model.json").read_text())  # where predict --fold 0 looks
    assert meta["labels"] == ["lesion", "normal"] and meta["image_size"] == 32
    # the members relative to the run, whatever the working folder (they had been cwd-relative for one run,
    # absolute for another); the resize rule exact where one side shrinks and the other grows
    assert meta["members"] == ["fold_0/model.pt"] and meta["members_relative_to"] == "source_run"
    assert "INTER_AREA (area averaging) when S < min(h, w)" in meta["interpolation"]
    # what a user outside medcad needs to reproduce it: how files are decoded, what comes before the resize, and
    # for each file how well it agrees with torch-fp32 (model.int8.json had said nothing of its disagreement)
    assert "orientation applied; alpha dropped" in meta["decoding"] and meta["before_resize"] == "nothing"
    assert meta["agreement"]["agrees"] and meta["agreement"]["measure"] == "top1_agreement"
    meta8 = json.loads((run / "export_fold0" / "model.int8.json").read_text())
    assert meta8["agreement"]["agrees"] == out["agreement"]["model.int8.onnx"]["agrees"]
    assert meta8["int8"]["format"] in ("QDQ", "QOperator") and meta8["int8"]["tried"]
    assert "also when one side shrinks and the other grows" in meta["interpolation"]

    image = str(easy_set / "lesion" / "3.png")
    probs = {}
    for backend in ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"):
        res = runner.invoke(app, ["predict", str(run), image, "--fold", "0", "--backend", backend, "--json"])
        assert res.exit_code == 0, res.output
        probs[backend] = json.loads(res.stdout)[0]["probabilities"]["lesion"]
    assert abs(probs["onnx-fp32"] - probs["torch-fp32"]) < 1e-4
    assert abs(probs["openvino-fp32"] - probs["torch-fp32"]) < 1e-4  # the same graph on another runtime
    assert abs(probs["torch-bf16"] - probs["torch-fp32"]) < 0.05

    res = runner.invoke(app, ["bench", str(run), "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    b = result["backends"]
    assert set(b) == {"torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16"} | {
        "openvino-int8"
    }
    assert b["torch-fp32"]["agreement"] == 1.0 and b["torch-fp32"]["agrees"]
    for v in b.values():
        assert v["images_per_s"] > 0 and v["p95_ms"] >= v["p50_ms"] > 0
    assert result["cpu"]["kind"] and "native_bf16" in result["cpu"]
    assert result["default_backend"] in b  # what predict / serve use here, measured for the fold ensemble


def test_a_predictor_on_a_graph_builds_no_network_and_imports_no_trainer(tiny_run: Path, easy_set: Path) -> None:
    """`medcad predict` on an exported graph (what `auto` picks on CPUs) neither builds the folds' torch networks nor
    imports what only training, detection or statistics need: a one-image predict had spent ~4 s of its 6.7 s on
    them (torchvision pulls torch._dynamo; scipy.stats, scipy.optimize, segmentation_models_pytorch, timm). The
    predictions are those of the predictor with its networks built."""
    import os
    import subprocess
    import sys

    image = str(easy_set / "lesion" / "3.png")
    runner.invoke(app, ["export", str(tiny_run), "--fold", "0"])
    probe = (
        "import json, sys\n"
        "import medcad.inference.files  # noqa: F401  (what `medcad predict` imports)\n"
        "from medcad.inference.registry import load_predictor\n"
        f"p = load_predictor({str(tiny_run)!r}, 0, backend='onnx-fp32', device='cpu')\n"
        f"pred = p.predict_files([{image!r}])\n"
        "probs = next(pred)[0].summary()['probabilities']\n"
        "heavy = ('torchvision', 'scipy.stats', 'scipy.optimize', 'segmentation_models_pytorch', 'timm')\n"
        "print(json.dumps({'probs': probs, 'built': 'models' in vars(p), 'imported': [m for m in heavy if m in "
        "sys.modules]}))\n"
    )
    import medcad

    env = {**os.environ, "PYTHONPATH": str(Path(medcad.__file__).parents[1])}  # this medcad, from any folder
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["imported"] == [] and not got["built"]
    from medcad.inference.registry import load_predictor

    built = load_predictor(tiny_run, 0, backend="onnx-fp32", device="cpu")
    assert len(built.models) == 1  # built when asked for (export, boxes, explanations)
    expected = next(built.predict_files([image]))[0].summary()["probabilities"]
    assert got["probs"] == pytest.approx(expected, abs=1e-6)


def test_auto_backend_follows_the_machine(tiny_run: Path, easy_set: Path, monkeypatch) -> None:
    """`auto` measures once per model and CPU kind, picks a backend that agrees, and never emulated bf16."""
    from medcad import devices
    from medcad.inference import backends
    from medcad.inference.registry import load_predictor

    monkeypatch.setattr(backends, "UNSTEADY_RATIO", float("inf"))  # kept at once, whatever else runs beside
    for flags, bf16_allowed in (("avx2,fma", False), ("avx2,fma,avx512f,avx512_bf16,avx512_vnni", True)):
        monkeypatch.setenv(devices.CPU_FLAGS_ENV, flags)
        devices.machine.cache_clear()
        p = load_predictor(tiny_run, 0)
        choice = p.backend_choice
        assert "measured now" in choice["reason"]
        measured = choice["measured"]
        assert ("torch-bf16" in measured) == bf16_allowed and ("openvino-bf16" in measured) == bf16_allowed
        assert {"torch-fp32", "onnx-fp32", "openvino-fp32"} <= set(measured)
        assert measured[p.backend]["agreement"] >= 0.99
        assert p.backend == max(
            (k for k, v in measured.items() if v.get("agreement", 0) >= 0.99), key=lambda k: measured[k]["images_per_s"]
        )
        again = load_predictor(tiny_run, 0)  # read from RUN/backends.json, not measured again
        assert again.backend == p.backend and "measured before" in again.backend_choice["reason"]
        # 12 test images and fold 0's 3 validation images cannot show a reduced-precision backend agrees >= 0.99
        assert choice["n_images"] == 15 and "bf16" not in p.backend
        assert "test images" in choice["images"] and "3 of its validation images" in choice["images"]
        assert not any("agreement" in v for k, v in measured.items() if "bf16" in k)
    monkeypatch.delenv(devices.CPU_FLAGS_ENV)
    devices.machine.cache_clear()
    res = runner.invoke(app, ["predict", str(tiny_run), str(easy_set / "lesion" / "3.png"), "--fold", "0"])
    assert res.exit_code == 0, res.output
    assert "note: backend " in res.output


def test_autos_first_measurement_builds_each_network_and_reference_once(tiny_run: Path, monkeypatch) -> None:
    """`auto`'s first call builds the fold's network once (torch-bf16 is measured on torch-fp32's) and runs
    torch-fp32 on the check images once (the ONNX export's check and the agreement measurement share the outputs);
    it had built two networks and computed the reference twice."""
    from medcad import devices
    from medcad.inference import backends, predictor
    from medcad.inference.classes import ClassPredictor
    from medcad.inference.registry import load_predictor

    monkeypatch.setattr(backends, "UNSTEADY_RATIO", float("inf"))
    monkeypatch.setenv(devices.CPU_FLAGS_ENV, "avx2,fma,avx512f,avx512_bf16,avx512_vnni")  # torch-bf16 a candidate
    devices.machine.cache_clear()
    built, runs = [], []
    real_build, real_infer = predictor.build_model, ClassPredictor.infer_torch
    monkeypatch.setattr(predictor, "build_model", lambda *a: built.append(a) or real_build(*a))

    def infer_torch(self, x, batch):
        runs.append((self.backend, x.shape, x.tobytes()))
        return real_infer(self, x, batch)

    monkeypatch.setattr(ClassPredictor, "infer_torch", infer_torch)
    p = load_predictor(tiny_run, 0)
    measured = p.backend_choice["measured"]
    assert "torch-bf16" in measured and "onnx-fp32" in measured and len(built) == 1
    whole = [r for r in runs if r[0] == "torch-fp32" and r[1][0] > backends.BATCH]  # not the timed batches
    assert len(whole) == 1 and whole[0][1][0] == 12  # the 12 test images, once
    # topped up with fold 0's 3 validation images, which the export's check does not take: run once more, alone
    assert p.backend_choice["n_images"] == 15 and [r[1][0] for r in runs if r[0] == "torch-fp32"].count(3) == 1


def test_auto_measures_again_when_its_choice_was_timed_on_shared_cores(tiny_run: Path, monkeypatch) -> None:
    """A choice whose backend's repeats varied as when another job shares the cores is measured again on the next
    calls, MAX_ATTEMPTS times in all, then kept and said (a choice made while a helper's tests ran had timed
    torch-fp32 at 3 images/s, not 54, and would have stayed in RUN/backends.json). With the thresholds at zero every
    real timing counts as unsteady."""
    from medcad.inference import backends
    from medcad.inference.registry import load_predictor

    (tiny_run / "backends.json").unlink(missing_ok=True)
    monkeypatch.setattr(backends, "UNSTEADY_RATIO", 1.0)
    monkeypatch.setattr(backends, "UNSTEADY_S", 0.0)
    for attempt in range(1, backends.MAX_ATTEMPTS + 2):
        p = load_predictor(tiny_run, 0)
        choice, (kept,) = p.backend_choice, json.loads((tiny_run / "backends.json").read_text()).values()
        assert kept["backend"] == p.backend and kept["unsteady_attempts"] == min(attempt, backends.MAX_ATTEMPTS)
        if attempt < backends.MAX_ATTEMPTS:
            assert "measured now" in choice["reason"] and "the next call measures again" in choice["reason"]
        elif attempt == backends.MAX_ATTEMPTS:
            assert "measured now" in choice["reason"] and f"in each of {attempt} measurements: kept" in choice["reason"]
        else:
            assert "measured before" in choice["reason"] and "delete" in choice["reason"]
    times = kept["measured"][p.backend]["unsteady"]  # seconds, kept to the ms
    seconds = backends.BATCH / kept["measured"][p.backend]["images_per_s"]
    assert len(times) == backends.REPEATS and abs(seconds - min(times)) <= 0.0005 + 1e-6  # the fastest repeat's


def test_choices_kept_side_by_side_are_all_kept(tmp_path: Path, monkeypatch) -> None:
    """Processes (here threads) predicting with one run's folds side by side each keep their choice in
    RUN/backends.json, and an unsteady choice counts its attempts; a plain read-modify-write drops some of them. The
    lock file lies in medcad's cache folder, not in the run."""
    from concurrent.futures import ThreadPoolExecutor

    from medcad.inference.backends import remember

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    cache = tmp_path / "run" / "backends.json"
    cache.parent.mkdir()
    keys = [f"fold{k}|cpu|{i}" for k in range(6) for i in range(15)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda k: remember(cache, k, {"backend": "onnx-fp32"}, unsteady=True), keys))
    kept = json.loads(cache.read_text())
    assert sorted(kept) == sorted(keys) and {v["unsteady_attempts"] for v in kept.values()} == {1}
    assert remember(cache, keys[0], {"backend": "onnx-fp32"}, unsteady=True)["unsteady_attempts"] == 2
    assert sorted(p.name for p in cache.parent.iterdir()) == ["backends.json"]


def test_a_choice_is_used_where_it_cannot_be_locked_or_kept(tmp_path: Path, monkeypatch, caplog) -> None:
    """medcad's cache folder not writable (a serving container's read-only home): kept without the lock; the run
    folder not writable: not kept, measured again next time. Both said; neither stops a prediction."""
    import logging

    from medcad.inference.backends import remember

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "afile" / "cache"))  # under a file: cannot be made
    cache = tmp_path / "run" / "backends.json"
    cache.parent.mkdir()
    with caplog.at_level(logging.WARNING):
        assert remember(cache, "k", {"backend": "onnx-fp32"}) == {"backend": "onnx-fp32"}
        assert json.loads(cache.read_text()) == {"k": {"backend": "onnx-fp32"}}
        assert "written without a lock" in caplog.text
        unkept = tmp_path / "afile" / "backends.json"  # a run folder that cannot be written
        assert remember(unkept, "k", {"backend": "onnx-fp32"}, unsteady=True)["unsteady_attempts"] == 1
        assert "not kept" in caplog.text and not unkept.exists()


def test_a_pick_is_doubtful_only_where_an_unsteady_timing_could_have_decided_it() -> None:
    """The pick itself unsteady, or an eligible backend close enough behind it (within UNSTEADY_RATIO: another job
    only slows a backend, so it may be the faster); not one far behind, nor one that does not agree."""
    from medcad.inference.backends import doubtful

    shaky = [0.1, 0.5, 0.1]
    base = {"openvino-fp32": {"images_per_s": 100.0, "agreement": 1.0}, "torch-fp32": {"images_per_s": 30.0}}
    assert doubtful(base, "openvino-fp32") is None
    assert doubtful(base | {"openvino-fp32": base["openvino-fp32"] | {"unsteady": shaky}}, "openvino-fp32")
    assert doubtful(base | {"torch-fp32": {"images_per_s": 30.0, "unsteady": shaky}}, "openvino-fp32") is None
    close = {"onnx-fp32": {"images_per_s": 60.0, "not_checked": "slower", "unsteady": shaky}}
    assert doubtful(base | close, "openvino-fp32") == "onnx-fp32"
    disagrees = {"torch-bf16": {"images_per_s": 90.0, "agreement": 0.95, "unsteady": shaky}}
    assert doubtful(base | disagrees, "openvino-fp32") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-4, 10), min_size=1, max_size=8), st.floats(0.5, 100))
def test_a_timing_is_unsteady_by_ratio_and_seconds(times: list[float], scale: float) -> None:
    """Unsteady exactly when the slowest repeat is over 2x the fastest and over 50 ms slower; a steady model's
    repeats (within 2x) never are, however slow, and a tiny model's never, however noisy."""
    from medcad.inference.backends import unsteady

    t = np.array(times)
    assert unsteady(t) == bool(t.max() > 2 * t.min() and t.max() - t.min() > 0.05)
    assert not unsteady(np.linspace(1, 1.99, len(t)) * scale)
    assert not unsteady(t / t.max() * 0.049)


def test_export_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tmp_path / "none")])
    assert res.exit_code == 2 and "not a run folder" in res.output
    run = tmp_path / "broken"
    (run / "fold_0").mkdir(parents=True)
    (run / "fold_0" / "model.pt").write_bytes(b"garbage")
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2 and "corrupt or unreadable model file" in res.output
    res = runner.invoke(app, ["predict", str(run), "x.png", "--backend", "tpu"])
    assert res.exit_code == 2


def test_auto_measures_only_where_it_can_pay(tiny_run: Path, easy_set: Path, tmp_path: Path, monkeypatch) -> None:
    """A predict of fewer than MEASURE_FROM images runs on torch-fp32 unmeasured, says so, keeps and exports nothing
    (a first one-image predict on the demo's multitask run had taken 16 s, 12 of them measuring, to save ~10 ms);
    a choice measured before is used whatever the job; a job of MEASURE_FROM images, serve (size unknown) and a
    video of unknown length measure; a video counts its frames."""
    from test_video import make_video

    from medcad.cli.predict import _job_size
    from medcad.inference import backends
    from medcad.inference.registry import load_predictor
    from medcad.runfolder import RunFolder

    image = str(easy_set / "lesion" / "3.png")
    res = runner.invoke(app, ["predict", str(tiny_run), image, "--out", str(tmp_path / "p1")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert f"backend torch-fp32: 1 image(s) to predict, fewer than {backends.MEASURE_FROM}" in said, said
    assert not (tiny_run / "backends.json").exists() and not list(tiny_run.rglob("*.onnx"))
    from medcad.cli.common import BackendOpt  # the help's figure is written out (no torch import for --help)

    assert f"fewer than {backends.MEASURE_FROM} images" in " ".join(BackendOpt.__metadata__[0].help.split())

    calls = []

    def measured(ref, threads):
        calls.append(ref.fold)
        return {"backend": "torch-fp32", "reason": "measured"}, ref

    monkeypatch.setattr(backends, "measure_choice", measured)
    assert load_predictor(tiny_run, images=backends.MEASURE_FROM - 1).backend_choice["backend"] == "torch-fp32"
    assert calls == []
    load_predictor(tiny_run, images=backends.MEASURE_FROM)
    load_predictor(tiny_run)  # serve: the job's size unknown
    assert calls == [None, None]

    key = backends._cache_key(tiny_run, None, None)
    backends.remember(RunFolder(tiny_run).backends, key, {"backend": "onnx-fp32", "measured": {}})
    res = runner.invoke(app, ["predict", str(tiny_run), image, "--out", str(tmp_path / "p2")])
    assert res.exit_code == 0 and "backend onnx-fp32: measured before" in res.stderr, res.output
    moved = tmp_path / "elsewhere" / "run"  # a run moved or copied with its times keeps its choices
    shutil.copytree(tiny_run, moved, copy_function=shutil.copy2)
    res = runner.invoke(app, ["predict", str(moved), image, "--out", str(tmp_path / "p3")])
    assert res.exit_code == 0 and "backend onnx-fp32: measured before" in res.stderr, res.output

    frames = [np.full((32, 32, 3), k * 20, np.uint8) for k in range(12)]
    clip = make_video(tmp_path / "clip.mp4", frames)
    assert _job_size([image, image], [clip]) == 14
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert _job_size([image], [tmp_path / "broken.mp4"]) is None  # measured as for many; predict names it later


def test_model_file_of_another_kind_and_odd_images(tiny_run: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    for missing in ("gone.png", "gone.mp4"):
        res = runner.invoke(app, ["predict", str(tiny_run), str(tmp_path / missing)])
        assert res.exit_code != 0 and f"{missing}: " in res.output and "not found" in res.output
    assert not (tiny_run / "backends.json").exists()  # refused before the models loaded and `auto` measured them
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    other = tmp_path / "seg.pt"
    torch.save({"format": "medcad-segmenter-1", "state_dict": {}}, other)
    res = runner.invoke(app, ["predict", str(other), str(image)])
    assert res.exit_code == 2 and "incomplete model file: no config" in res.output
    torch.save({"format": "something-else"}, other)
    res = runner.invoke(app, ["predict", str(other), str(image)])
    assert res.exit_code == 2 and "not a medcad model file" in res.output
    # a grey 16-bit image of another size and an RGBA image are converted, not refused
    Image.fromarray(np.arange(50 * 70, dtype=np.uint16).reshape(50, 70) * 10).save(tmp_path / "g16.png")
    Image.fromarray(np.zeros((20, 90, 4), np.uint8)).save(tmp_path / "rgba.png")
    res = runner.invoke(
        app, ["predict", str(tiny_run), str(tmp_path / "g16.png"), str(tmp_path / "rgba.png"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 2


@pytest.mark.heavy
def test_int8_keeps_the_noisiest_layers_in_float_until_it_agrees(tiny_run: Path, tmp_path: Path) -> None:
    """While int8 disagrees on the calibration (validation) images, the layers with the most quantisation noise are
    kept in float, 2, 4, ... of them; what was tried is reported."""
    from medcad.inference import export
    from medcad.inference.registry import load_predictor

    p = load_predictor(tiny_run, 0, backend="torch-fp32")
    export.export_onnx(p, tmp_path / "exp")
    calib = export.check_images(tiny_run, p).calibration
    seen = []

    def agreement(path: Path) -> float:  # the first two QDQ models "disagree", the second less
        seen.append(path)
        return (0.5, 0.6)[len(seen) - 1] if len(seen) < 3 else 0.995

    out = export.quantize_int8(tmp_path / "exp" / "model.onnx", tmp_path / "q.onnx", calib, agreement)
    assert [t["float_layers"] for t in out["tried"] if t["format"] == "QDQ"] == [0, 2, 4]
    assert len(out["float_layers"]) == 4 and out["agreement_calibration"] == 0.995 and (tmp_path / "q.onnx").is_file()
    assert all("Conv" in name for name in out["float_layers"]) and out["depthwise_in_float"] > 0


@pytest.mark.heavy
def test_int8_stops_keeping_layers_in_float_when_it_does_not_help(tiny_run: Path, tmp_path: Path) -> None:
    from medcad.inference import export
    from medcad.inference.registry import load_predictor

    p = load_predictor(tiny_run, 0, backend="torch-fp32")
    export.export_onnx(p, tmp_path / "exp")
    calib = export.check_images(tiny_run, p).calibration
    out = export.quantize_int8(tmp_path / "exp" / "model.onnx", tmp_path / "q.onnx", calib, lambda path: 0.82)
    assert [t["float_layers"] for t in out["tried"] if t["format"] == "QDQ"] == [0, 2]  # +0 with 2: no 4, 8, ...
    assert out["agreement_calibration"] == 0.82
    # layers kept in float that agree less than none: the better model is kept (the worse one had replaced it)
    values = iter([0.867, 0.859, 0.5])  # QDQ all int8, QDQ with 2 layers in float, then QOperator
    out = export.quantize_int8(tmp_path / "exp" / "model.onnx", tmp_path / "q.onnx", calib, lambda path: next(values))
    assert (out["agreement_calibration"], out["format"], out["float_layers"]) == (0.867, "QDQ", [])
    assert [(t["float_layers"], t["format"]) for t in out["tried"]] == [(0, "QDQ"), (2, "QDQ"), (0, "QOperator")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("q.")) == ["q.onnx"]  # no candidate left

    def failing(path: Path) -> float:  # a measurement that fails after two candidates were built
        if len(list(tmp_path.glob("q.tmp*"))) > 1:
            raise RuntimeError("cut off")
        return 0.5

    (tmp_path / "q.onnx").unlink()
    with pytest.raises(RuntimeError, match="cut off"):
        export.quantize_int8(tmp_path / "exp" / "model.onnx", tmp_path / "q.onnx", calib, failing)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("q.")]  # no prepared graph, no candidate


@pytest.mark.heavy
def test_bench_and_export_check_on_the_folds_own_held_out_images(tiny_run: Path) -> None:
    """`bench --fold 1` and `export --fold 1` measure on fold 1's test images (bench's accuracy is fold 1's test
    accuracy of metrics.json), int8 calibrates on fold 1's validation images; the ensemble (the default, as predict
    loads) reports no accuracy and says its images are not held out. Before, every fold was checked on fold 0's test
    images, which fold 1 trained on ("held_out": "fold 0 test images"; BUSI fold 2: accuracy 0.808 against 0.642)."""
    import numpy as np

    from medcad.inference.export import check_images
    from medcad.inference.registry import load_predictor

    per_fold = json.loads((tiny_run / "metrics.json").read_text())["per_fold"]
    p = load_predictor(tiny_run, 1, backend="torch-fp32")
    check = check_images(tiny_run, p)
    assert check.held_out and check.described.startswith("fold 1's test images")
    assert len(check.images) == per_fold[1]["n_test"]
    flat = {bytes(x) for x in check.images}
    assert not any(bytes(x) in flat for x in check.calibration)  # nothing tuned on what is measured

    args = ["bench", str(tiny_run), "--fold", "1", "--backends", "torch-fp32", "--batch", "4", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["fold"] == 1 and out["held_out"] and out["images"].startswith("fold 1's test images")
    assert np.isclose(out["backends"]["torch-fp32"]["accuracy"], per_fold[1]["accuracy"])
    # agreement on each test image once, with a batch larger than the test part (it had counted the images repeated
    # to fill one timed batch: "32 of fold 0's test images" of 13, some counted three times)
    res = runner.invoke(app, [*args[:-3], "--batch", str(4 * per_fold[1]["n_test"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_agreement_images"] == per_fold[1]["n_test"]

    res = runner.invoke(app, ["bench", str(tiny_run), "--backends", "torch-fp32", "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["fold"] is None and not out["held_out"] and "not held out" in out["images"]
    assert "accuracy" not in out["backends"]["torch-fp32"]
    res = runner.invoke(app, ["bench", str(tiny_run), "--backends", "torch-fp32", "--batch", "4"])
    said = " ".join(res.output.split())  # the table's title wraps at the table's width (it follows the CPU)
    assert res.exit_code == 0 and "fold ensemble" in said and "not held out" in said, res.output

    res = runner.invoke(app, ["export", str(tiny_run), "--fold", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["held_out"] and out["images"].startswith("fold 1's test images")
    assert out["agreement"]["model.onnx"]["n"] == per_fold[1]["n_test"]
    res = runner.invoke(app, ["export", str(tiny_run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["held_out"] is False
    # an ensemble of one member (a holdout run, or one fold trained) is checked on that fold's held-out images (it
    # had said "not held out ... seen in training by the models of folds " and dropped the accuracy)
    (tiny_run / "fold_0" / "model.pt").unlink()
    check = check_images(tiny_run, load_predictor(tiny_run, backend="torch-fp32"))
    assert check.held_out and check.described == "fold 1's test images (held out from its training)"


def test_a_fold_out_of_range_names_the_folds(tiny_run: Path, easy_set: Path) -> None:
    """`--fold 5` (or -1) of a two-fold run: 'fold 5 does not exist: this run has folds 0-1', in every command that
    takes --fold; it had said 'no trained model found ... train it first'."""
    image = str(easy_set / "lesion" / "3.png")
    for fold in ("5", "-1"):
        for args in (
            ["predict", str(tiny_run), image],
            ["explain", str(tiny_run), image],
            ["bench", str(tiny_run), "--backends", "torch-fp32"],
            ["export", str(tiny_run)],
        ):
            res = runner.invoke(app, [*args, "--fold", fold])
            assert res.exit_code == 2, (args, res.output)
            assert f"fold {fold} does not exist: this run has folds 0-1" in res.output, (args, res.output)
            assert "train it first" not in res.output
    (tiny_run / "fold_1" / "model.pt").rename(tiny_run / "fold_1" / "model.bak")
    res = runner.invoke(app, ["predict", str(tiny_run), image, "--fold", "1"])
    assert res.exit_code == 2 and "fold 1 has no trained model: this run has fold 0" in res.output


_SIGNAL_AFTER_OPENVINO = """
import ctypes, faulthandler, gc, os, signal, sys, threading
import numpy as np, torch
from medcad.inference.onnx import GraphSession
from medcad.stopping import _SignalStack

faulthandler.enable()  # an alternate signal stack of its own, as pytest and `python -X faulthandler` set one
libc = ctypes.CDLL(None)

def stack():
    s = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(s))
    return s.ss_sp, s.ss_flags, s.ss_size

path = sys.argv[1]
torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 16, 16), path, input_names=["images"], output_names=["p"],
                  dynamo=False)
open(path[: -len(".onnx")] + ".json", "w").write('{"outputs": ["p"]}')  # the export's description
before = stack()
sessions = [GraphSession(path, "openvino-fp32", threads=2)]
sessions[0].run(np.zeros((1, 16, 16, 3), np.uint8), 1)
alive = stack()
threading.Thread(target=sessions.clear).start()  # freed in another thread, as a pool's worker may
gc.collect()
junk = [bytearray(20000) for _ in range(500)]  # what freed memory is reused for
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(a[0]))
os.kill(os.getpid(), signal.SIGINT)
print(before == alive, before == stack(), got == [signal.SIGINT])
"""


def test_a_signal_after_openvino_runs_on_the_threads_own_signal_stack(tmp_path: Path) -> None:
    """OpenVINO's compile_model puts an alternate signal stack of its own (11.5 KB) on the calling thread, left
    there dangling when the model is freed in another thread; Python handlers run on it (SA_ONSTACK), so a SIGINT
    in a process that had run OpenVINO died of SIGSEGV (the single-process pytest crash of the external-set and
    stop/resume tests). The thread keeps its own stack."""
    import os
    import subprocess
    import sys

    import medcad

    env = {**os.environ, "PYTHONPATH": str(Path(medcad.__file__).parents[1])}  # this checkout's medcad
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AFTER_OPENVINO, str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr[-2000:]


def test_openvino_compiles_a_graph_once_and_again_when_its_file_changes(tmp_path: Path, monkeypatch) -> None:
    """OpenVINO's compiled graphs are cached in medcad's cache folder, keyed by the graph's content: a re-exported
    model.onnx at the same path (another fold's weights, the same size) is compiled again, never run from the old
    one's cache."""
    from medcad.inference.onnx import GraphSession

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "export" / "model.onnx"
    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)

    def export(seed: int) -> None:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        export_graph(net.eval(), path, 16, ["p"])

    def outputs(backend: str) -> np.ndarray:
        (out,) = GraphSession(path, backend, threads=1).run(x, 2).values()
        return out

    export(0)
    first = outputs("openvino-fp32")
    blobs = lambda: sorted((tmp_path / "cache" / "openvino").glob("*.blob"))  # noqa: E731
    assert len(blobs()) == 1
    np.testing.assert_allclose(outputs("openvino-fp32"), first)  # from the cache
    assert len(blobs()) == 1
    export(1)
    again = outputs("openvino-fp32")
    np.testing.assert_allclose(again, outputs("onnx-fp32"), rtol=1e-4, atol=1e-3)  # the new weights
    assert not np.allclose(again, first) and len(blobs()) == 2


def test_openvino_names_each_output_as_the_export_describes_it(tmp_path: Path) -> None:
    """OpenVINO gets its output names from the export's description beside the graph (model.json), not by loading
    the graph with onnx; a graph without one is refused, naming the file."""
    from medcad.errors import ConfigError
    from medcad.inference.onnx import GraphSession

    class Two(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).softmax(1), x[:, 0].sigmoid()

    path = tmp_path / "model.onnx"
    export_graph(Two(), path, 8, ["probs", "mask"])
    out = GraphSession(path, "openvino-fp32", threads=1).run(np.full((2, 8, 8, 3), 255, np.uint8), 2)
    assert list(out) == ["probs", "mask"] and out["probs"].shape == (2, 3) and out["mask"].shape == (2, 8, 8)
    (tmp_path / "model.json").write_text(json.dumps({"outputs": ["mask", "probs"]}))  # the names it declares
    assert GraphSession(path, "openvino-fp32", threads=1).output_names == ["probs", "mask"]  # each by its own name
    (tmp_path / "model.json").write_text(json.dumps({"format": "medcad-onnx-1"}))  # older exports listed none
    assert GraphSession(path, "openvino-fp32", threads=1).output_names == ["probs", "mask"]
    (tmp_path / "model.json").write_text(json.dumps({"outputs": ["probabilities"]}))
    with pytest.raises(ConfigError, match=r"model\.onnx: its description \(model\.json\) names outputs the graph"):
        GraphSession(path, "openvino-fp32", threads=1)
    (tmp_path / "model.json").unlink()
    with pytest.raises(ConfigError, match=r"model\.json: the export's description is missing"):
        GraphSession(path, "openvino-fp32", threads=1)


@pytest.mark.parametrize("backend", ["onnx-fp32", "openvino-fp32"])
def test_a_graph_answers_each_thread_for_its_own_images(tmp_path: Path, backend: str) -> None:
    """Threads running one graph session at once (serve's batcher beside a video job) each get their own images'
    outputs: OpenVINO's compiled model, called as a function, had shared one infer request between them (243 of 600
    answers were another thread's)."""
    from concurrent.futures import ThreadPoolExecutor

    from medcad.inference.onnx import GraphSession

    class Mean(torch.nn.Module):
        def forward(self, x):
            return (x.mean((1, 2, 3)),)

    path = tmp_path / "model.onnx"
    export_graph(Mean(), path, 16, ["mean"])
    session = GraphSession(path, backend, threads=1)
    batches = [np.full((4, 16, 16, 3), v, np.uint8) for v in (10, 200)]

    def wrong(k: int) -> int:
        value = float(batches[k][0, 0, 0, 0])
        return sum(not np.allclose(session.run(batches[k], 4)["mean"], value) for _ in range(150))

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(wrong, [0, 1])) == [0, 0]


def test_a_reduced_precision_backend_needs_enough_images_to_show_it_agrees(tiny_run: Path, monkeypatch) -> None:
    """On fewer than MIN_INEXACT_IMAGES images a bf16 backend is `ineligible` (one disagreement in 100 is 0.99: 26
    images all agreeing had passed an openvino-bf16 that changed 9 of 321 labels); fp32 graphs stay candidates; with
    the bound lowered the same bf16 backend is checked as before."""
    from medcad import devices
    from medcad.inference import backends
    from medcad.inference.classes import ClassPredictor

    monkeypatch.setenv(devices.CPU_FLAGS_ENV, "avx2,fma,avx512f,avx512_bf16,avx512_vnni")
    devices.machine.cache_clear()
    ref = ClassPredictor(tiny_run, 0, backend="torch-fp32", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), np.uint8)
    monkeypatch.setattr(backends, "_speed", lambda p, x: {"images_per_s": {"torch-bf16": 3.0}.get(p.backend, 1.0)})
    measured, _ = backends.measure(ref, ["torch-fp32", "torch-bf16", "onnx-fp32"], x, None)
    assert "12 images cannot show agreement >= 0.99" in measured["torch-bf16"]["ineligible"]
    assert "agreement" not in measured["torch-bf16"] and backends.pick(measured) in ("torch-fp32", "onnx-fp32")
    monkeypatch.setattr(backends, "MIN_INEXACT_IMAGES", 10)
    measured, _ = backends.measure(ref, ["torch-fp32", "torch-bf16", "onnx-fp32"], x, None)
    assert "ineligible" not in measured["torch-bf16"] and "agreement" in measured["torch-bf16"]
    # the last 4 images are validation images an int8 export may have been calibrated on: not int8's evidence
    measured, _ = backends.measure(ref, ["torch-fp32", "torch-bf16", "onnx-int8"], x, None, tuned=4)
    assert "8 images outside its calibration cannot show" in measured["onnx-int8"]["ineligible"]
    assert "ineligible" not in measured["torch-bf16"]
    devices.machine.cache_clear()
