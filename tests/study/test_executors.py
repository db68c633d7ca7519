"""Study executors: the same study on a local 2-worker Ray cluster, in 2 local worker processes and in this process
gives the same results.json;
a missing Ray or an unreachable cluster fails with one message before anything is written."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.errors import ConfigError
from medcad.study.executors import RunJob
from medcad.study.runner import run_study

STUDY = """
name: fan-out
data: data
protocol: sequential
folds: 2
models: [test_resnet]  # a tiny backbone: the executors are under test, not the model
settings: {image_size: 32, epochs: 1, head_epochs: 2, batch_size: 16, val_fraction: 0.3, threads: 1}
"""


@pytest.fixture
def study_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    generate_synthetic(tmp_path / "data", n_patients=12, frames_per_patient=2, size=40, seed=3)
    (tmp_path / "study.yaml").write_text(STUDY)
    return tmp_path / "study.yaml"


def _comparable(results: dict) -> dict:
    """results.json without what names the folder or the clock."""
    out = {k: v for k, v in results.items() if k not in ("splits", "seconds_this_session")}
    out["runs"] = [{k: v for k, v in r.items() if k != "run"} for r in results["runs"]]
    return out


def _close(a, b, tolerance: float) -> bool:
    """The same structure, strings and integers, and floats within `tolerance`."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list):
        same_length = isinstance(b, list) and len(a) == len(b)
        return same_length and all(_close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tolerance or (a != a and b != b)
    return a == b


@pytest.mark.heavy
def test_ray_and_local_workers_write_the_same_results_as_one_process(study_file: Path, tmp_path: Path) -> None:
    one = run_study(study_file, tmp_path / "one", progress=False)
    seg = TrainConfig(task="segment", image_size=32, epochs=1, batch_size=16, threads=1)

    def also(study) -> list[RunJob]:  # another task on the study's splits, trained by the same workers
        data = study_file.parent / "data"
        return [RunJob("seg", (tmp_path / "seg").resolve(), seg, data, study.splits_path, study.folds)]

    two = run_study(study_file, tmp_path / "two", progress=False, jobs=2, also=also)  # in 2 worker processes
    assert "dice" in two.pop("also")["seg"]
    assert sorted(p.parent.name for p in (tmp_path / "seg").glob("fold_*/model.pt")) == ["fold_0", "fold_1"]
    assert (tmp_path / "seg" / "splits.json").read_text() == (tmp_path / "two" / "splits.json").read_text()
    fanned = [two]
    try:
        import ray
    except ImportError:
        ray = None  # the Ray extra is not installed: the local workers are still checked
    if ray is not None:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local cluster: 2 workers
        try:
            fanned.append(run_study(study_file, tmp_path / "ray", progress=False, executor="ray"))
        finally:
            ray.shutdown()
    for k, results in enumerate(fanned):
        assert len(results["runs"]) == 5  # two steps each way and the combined run, step 2 after its step 1
        if k == 0:  # local workers: the same numbers to the last bit
            assert _comparable(results) == _comparable(one)
        else:  # Ray's workers run torch with thread pools of their own: fp32 sums in another order change the last
            # bits of the cached features and folds (bf16 had rounded them away), which 8-image folds amplify to a
            # swapped rank (a rate over 6 images, or an AUC over 16 pairs, moves by 1/6 or 1/16)
            assert _close(_comparable(results), _comparable(one), 0.17)
        for r in results["runs"]:
            assert sorted(p.name for p in Path(r["run"]).glob("fold_*/model.pt")) == ["model.pt", "model.pt"]
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        run_study(study_file, tmp_path / "zero", progress=False, jobs=0)
    assert not (tmp_path / "zero").exists()


def test_task_graph_orders_each_task_after_what_it_needs(study_file: Path) -> None:
    from medcad.config import TrainConfig
    from medcad.study.executors import RunJob, task_graph

    def job(name: str, init: str | None = None) -> RunJob:
        return RunJob(name, study_file.parent / name, TrainConfig(), study_file, study_file, (0, 1), None, init)

    tasks = task_graph([job("A"), job("B"), job("A - B", "A")])
    after = {t.name: t.after for t in tasks}
    assert after["prepare A"] == () and after["prepare B"] == ("prepare A",)  # the first one fills the image cache
    assert after["A - B fold 1"] == ("prepare A - B", "A fold 1")  # fold k continues from fold k of its step 1
    assert after["evaluate A - B"] == ("A - B fold 0", "A - B fold 1")
    names = [t.name for t in tasks]
    assert all(names.index(d) < names.index(t.name) for t in tasks for d in t.after)
    assert [t.folds for t in tasks if t.job.name == "A"] == [[], [0], [1], None]
    ready = task_graph([job("A"), job("A - B", "A")], prepared=True)  # run folders made already: no preparation
    assert [t.name for t in ready if t.folds == []] == [] and {t.name: t.after for t in ready}["A fold 0"] == ()


def test_fold_and_evaluation_tasks_keep_the_data_notes_to_themselves(
    study_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medcad.study.executors import train_job

    data = study_file.parent / "data"
    for said in (False, True):
        caplog.clear()
        job = RunJob("r", tmp_path / f"r{said}", TrainConfig(image_size=32, folds=2), data, None, ())
        train_job(job, [], said=said)  # prepares the run: reads the data, which makes notes
        notes = [r for r in caplog.records if r.name == "medcad.engine.train" and str(r.msg).startswith("note:")]
        assert bool(notes) is not said
    caplog.clear()
    logging.getLogger("medcad.engine.train").warning("note: said after the task")
    assert caplog.records  # the filter is gone with the task


def test_ray_missing_or_unreachable_fails_before_writing(
    study_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:9"):
        run_study(study_file, tmp_path / "a", progress=False, executor="ray", address="127.0.0.1:9")
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        run_study(study_file, tmp_path / "b", progress=False, executor="dask")
    with pytest.raises(ConfigError, match="--jobs is for --executor local"):
        run_study(study_file, tmp_path / "b", progress=False, executor="ray", jobs=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'medcad\[ray\]'"):
        run_study(study_file, tmp_path / "c", progress=False, executor="ray")
    assert not any((tmp_path / d).exists() for d in "abc")
