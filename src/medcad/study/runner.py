"""Run a study: expand its protocol into runs (same splits for all), train them (resumable), compare them."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medcad.atomic import atomic_write_text
from medcad.config import STAGED_TASKS, DataOptions, TrainConfig
from medcad.data.layouts import load_manifest
from medcad.data.splits import load_splits, save_splits
from medcad.engine.results import write_json
from medcad.errors import ConfigError
from medcad.run import saved_settings, settled_settings
from medcad.runfolder import RunFolder, study_path
from medcad.study.executors import RunJob
from medcad.study.paired import paired_tests
from medcad.study.protocol import Experiment, expand, slug
from medcad.study.spec import StudySpec, load_study
from medcad.targets import run_dataset
from medcad.tasks import TASK_SETTINGS, pooled_positive, run_positive

log = logging.getLogger(__name__)


def _headline(m: dict) -> dict:
    keep = ("accuracy", "macro_f1", "macro_auc", "balanced_accuracy", "dice", "iou", "ap50", "map")
    out = {k: m.get(k) for k in keep}
    out["fold_summary"] = m.get("fold_summary")
    seg = m.get("segmentation") or {}
    # runs scored before NSD have none; where every image holds a lesion, NSD is over them all
    out["nsd_lesion"] = (seg.get("nsd_lesion") or ({} if seg.get("empty_images") else seg.get("nsd")) or {}).get("mean")
    blocks = (("", seg), ("decided_", seg.get("frame_decision")), ("spec_", seg.get("frame_decision_specificity")))
    for key, block in blocks:
        if block:
            out[f"{key}dice"] = block.get("dice") if key else out["dice"]
            out[f"{key}dice_lesion"] = block.get("dice_lesion")
            e = block.get("empty_images")  # lesion-free images with any lesion pixel
            out[f"{key}lesion_free_fp"] = (
                {"value": e["false_positive_rate"]} | {k: e[k] for k in ("ci95", "ci95_method", "no_ci") if k in e}
                if e
                else None
            )
    out["by_domain"] = {
        d: {k: v.get(k) for k in keep} | {"auc_classes": (v.get("averaged_over") or {}).get("macro_auc")}
        for d, v in (m.get("by_domain") or {}).items()
    }
    return out


def _matrix_cell(row: dict, domain: str, labels: list[str]) -> dict | None:
    """A run's macro AUC on one test domain, with `averaged_over` where that domain lacks some of the study's classes
    (the mean is then over fewer classes than its neighbours in the matrix)."""
    cell = (row["by_domain"].get(domain) or {}).get("macro_auc")
    over = (row["by_domain"].get(domain) or {}).get("auc_classes")
    if cell is None or over is None or len(over) == len(labels):
        return cell
    return {**cell, "averaged_over": over}


def _state(run: RunFolder, positive: str | None = None) -> str:
    """A study's run as the next `medcad study` finds it: "finished" (skipped), "pools again" (finished, with its
    figures pooled with another positive class than the study's `positive`: its folds are kept, its figures pooled
    again), "resumes" or "new"."""
    if run.metrics.is_file():
        return "finished" if pooled_positive(json.loads(run.metrics.read_text())) in (None, positive) else "pools again"
    return "resumes" if run.config.is_file() else "new"


def _given(cfg: TrainConfig, than: TrainConfig) -> dict:
    """The settings of `cfg` that differ from those of `than`."""
    a, b = cfg.to_dict(), than.to_dict()
    return {k: v for k, v in a.items() if v != b[k]}


def study_folder(spec: StudySpec, out: str | Path | None = None) -> Path:
    """A study's folder: `out`, or studies/<its name> beside the study file (absolute)."""
    return (Path(out) if out else spec.path.parent / "studies" / slug(spec.name)).resolve()


def plan_study(path: str | Path, data_options: DataOptions | None = None, out: str | Path | None = None) -> dict:
    """What a study would train, without training or writing anything: every run (protocol step, domains it trains
    on, the run it continues from), its settings and its training stages (optimiser, learning rate per parameter
    group, schedule), as it will train in the study folder (`out`, see `study_folder`): a run already there is
    shown with the settings it resumes with (`state` "resumes"), or as "finished" (skipped). The data need not exist
    yet; it is read only to find the domains of a transfer protocol whose file names none.

    Raises:
        ConfigError: a bad study file, settings that cannot train, or a protocol without its domains.
    """
    from medcad.engine.modules import schedule_lines

    spec = load_study(path, check_data=False)
    base = spec.base.replace(**data_options.given()) if data_options is not None else spec.base
    manifest = load_manifest(spec.data, base.data_options()) if spec.data.exists() else None
    domains = list(spec.domains or [])
    if manifest is not None and (domains or spec.protocol not in ("holdout", "kfold", "compare")):
        domains = _study_domains(spec, manifest)
    positive = _study_positive(spec, base, manifest.labels) if manifest is not None else None
    study_dir = study_folder(spec, out)
    runs = []
    for e in expand(spec, domains):
        cfg = base.replace(**e.model.settings)
        run_dir = study_dir / "runs" / slug(e.name)
        settled = _settled(e, study_dir, base, positive)
        if (
            settled.layout is None and manifest is not None
        ):  # a new run saves the layout it reads (a resumed one: its own)
            settled = settled.replace(layout=manifest.layout)
        training = schedule_lines(settled)
        if e.init and cfg.task in STAGED_TASKS and cfg.stages is None:  # the built-in order continues at stage 2
            training[0] = f"stage 1: none (the head continues from {e.init}'s fold models)"
        runs.append(
            {
                "name": e.name,
                "step": e.step,
                "train_domains": list(e.train_domains or []) or "all",
                "init": e.init,
                "run": f"runs/{slug(e.name)}",
                "state": _state(RunFolder(run_dir), positive),
                "settings": _given(cfg, base),
                "training": training,
                "config": settled.to_dict(),  # as the run saves it, or saved it when it resumes
            }
        )
    split = f"holdout {base.holdout:g}" if base.holdout is not None else f"{base.folds} folds"
    return {
        "name": spec.name,
        "file": str(spec.path),
        "folder": str(study_dir),
        "data": str(spec.data),
        "data_found": manifest is not None,
        "task": spec.task,
        "protocol": spec.protocol,
        "splits": str(spec.splits) if spec.splits else f"{split}, grouped by {base.group_by}, seed {base.seed}",
        "domains": domains,
        "settings": _given(base, TrainConfig()),
        "runs": runs,
    }


def _run_settings(e: Experiment, base: TrainConfig, positive: str | None) -> TrainConfig:
    """The settings a study gives experiment `e`'s run: the study's, its model's own, and the study's positive class
    by name (`_study_positive`: a run it resumes keeps no other)."""
    cfg = base.replace(**e.model.settings)
    return cfg.replace(positive=positive) if positive is not None and cfg.task in TASK_SETTINGS["positive"] else cfg


def _settled(e: Experiment, study_dir: Path, base: TrainConfig, positive: str | None = None) -> TrainConfig:
    """The settings experiment `e` of a study trains with (`medcad.run.settled_settings`): `_run_settings`, and
    those its run folder keeps when it resumes."""
    init = study_dir / "runs" / slug(e.init) if e.init else None
    return settled_settings(_run_settings(e, base, positive), saved_settings(study_dir / "runs" / slug(e.name)), init)


def _say_training(jobs: list) -> None:
    """One `note:` per distinct way the study's runs train (optimiser, learning rates, schedule, stages), as each
    trains: a resumed run with its own saved settings."""
    from medcad.engine.modules import schedule_note

    notes: dict[str, list[str]] = {}
    again = [job.name for job in jobs if RunFolder(job.run_dir).metrics.is_file()]  # finished: a job to pool again
    if again:
        log.warning("note: %s: finished; pooled again with the study's positive class, not trained", ", ".join(again))
    for job in jobs:
        if job.name in again:
            continue
        settled = settled_settings(job.cfg, saved_settings(job.run_dir), job.init_dir)
        notes.setdefault(schedule_note(settled), []).append(job.name)
    for note, names in notes.items():
        who = "every run" if len(notes) == 1 else ", ".join(names)
        log.warning("note: %s: %s", who, note)


def _say_mixed_strides(exps: list[Experiment], study_dir: Path, base: TrainConfig) -> None:
    """A `note:` where the study's runs freeze their encoders to different strides though the study file sets none:
    a study begun before a default changed (detectors: every layer until 2026-12-05, stride 8 since) and resumed
    would compare the recipes, not the models."""
    strides = {
        e.name: _settled(e, study_dir, base).freeze_stride
        for e in exps
        if base.freeze_stride is None and "freeze_stride" not in e.model.settings
    }
    if len(set(strides.values())) > 1:
        said = ", ".join(f"{name} at {s}" for name, s in strides.items())
        log.warning(
            "note: the study file sets no freeze_stride and its runs freeze their encoders to different strides "
            "(%s; runs begun before a default changed keep theirs): set freeze_stride in the study file to compare "
            "like with like",
            said,
        )


def _jobs(
    exps, study_dir: Path, base, spec, splits_path: Path, folds: tuple, several_domains: bool, positive: str | None
) -> tuple:
    """The study's runs still to train, as executor jobs, and the metrics of those finished (skipped on resume; a
    finished run pooled with another positive class than the study's `positive` is a job: pooled again)."""
    from medcad.engine.train import check_resumable

    jobs, metrics = [], {}
    for e in exps:
        run_dir = study_dir / "runs" / slug(e.name)
        cfg = _run_settings(e, base, positive)
        check_resumable(cfg, run_dir)  # a run made with other settings than the study file's now is not kept unsaid
        if _state(RunFolder(run_dir), positive) == "finished":
            metrics[e.name] = json.loads(RunFolder(run_dir).metrics.read_text())
            continue
        train_domains = e.train_domains if several_domains and e.train_domains else None
        init_dir = study_dir / "runs" / slug(e.init) if e.init else None
        jobs.append(
            RunJob(e.name, run_dir, cfg, Path(spec.data).resolve(), splits_path, folds, train_domains, e.init, init_dir)
        )
    return jobs, metrics


@dataclass
class PreparedStudy:
    """A study ready for an executor: its file, folder, settings, runs and splits (written), the jobs still to train
    and the metrics of the runs finished before (skipped on resume)."""

    spec: StudySpec
    study_dir: Path
    base: TrainConfig
    labels: list[str]
    domains: list[str]
    splits_path: Path
    folds: tuple[int, ...]
    exps: list[Experiment]
    jobs: list[RunJob]
    metrics: dict[str, dict]
    domain_of: dict[str, str]  # each image key's domain ("" without)
    positive: str | None = None  # the positive class its two-class runs pool with (`_study_positive`)


def _check_same_split(splits_path: Path, base: TrainConfig) -> None:
    """A resumed study's folds are those its file asks for: a study folder split in 3 folds, rerun with a file that
    says 5, had kept its 3 folds and its finished runs, unsaid (its study.yaml rewritten to say 5).

    Raises:
        ConfigError: the folder's splits are of another number of folds, holdout fraction, validation fraction or
            seed.
    """
    saved = json.loads(splits_path.read_text())
    if saved.get("method") not in ("kfold", "holdout"):
        return  # the dataset's own split column ("given"): nothing to compare

    def said(method, folds, holdout, val_fraction, seed) -> str:
        split = f"{folds} folds" if method == "kfold" else f"a holdout of {holdout:g}"
        return f"{split}, validation fraction {val_fraction:g}, seed {seed}"

    had = said(
        saved["method"], saved.get("n_folds"), saved.get("holdout"), saved.get("val_fraction"), saved.get("seed")
    )
    method = "holdout" if base.holdout is not None else "kfold"
    asked = said(method, base.folds, base.holdout, base.val_fraction, base.seed)
    if had != asked:
        raise ConfigError(
            f"{splits_path.parent} was split with {had} (its splits.json); the study file asks for {asked}: give "
            "another --out for a new study, or the settings it was made with to resume it"
        )


def _study_domains(spec: StudySpec, manifest) -> list[str]:
    """The study file's domains, else every domain of the data.

    Raises:
        ConfigError: a domain the study file names is not in the data."""
    present = sorted(set(manifest.table["domain"]) - {""})
    domains = list(spec.domains or present)
    unknown = sorted(set(domains) - set(present))
    if unknown:
        raise ConfigError(f"{spec.path}: domains {unknown} are not in the data (it has {present})")
    return domains


def _study_positive(spec: StudySpec, base: TrainConfig, labels: list[str]) -> str | None:
    """The positive class of the study's two-class classify / multitask runs (`tasks.positive_label`: each model's
    `positive` setting, else the default), checked against the data's labels before anything is written.

    Raises:
        ConfigError: a positive class the labels lack, one named for other than two classes, or models that name
            different ones (their pairs are compared on one positive class).
    """
    found = {}
    for m in spec.models:
        cfg = base.replace(**m.settings)
        if (positive := run_positive(cfg.task, labels, cfg.positive)) is not None:
            found[m.name] = positive
    if len(set(found.values())) > 1:
        named = ", ".join(f"{name}: {p}" for name, p in found.items())
        raise ConfigError(f"positive: the study's models name different positive classes ({named}); give one")
    return next(iter(found.values()), None)


def prepare_study(
    path: str | Path, out: str | Path | None = None, progress: bool = True, data_options: DataOptions | None = None
) -> PreparedStudy:
    """Read a study file, check its data and write its folder's study.yaml and splits.json (see `run_study`).

    Raises:
        ConfigError: a bad study file, or domains not in the data.
    """
    from medcad.engine.train import splits_for

    spec = load_study(path)
    study_dir = study_folder(spec, out)
    base = spec.base
    if data_options is not None:
        base = base.replace(**data_options.given())
    manifest = run_dataset(spec.data, base)  # as its runs read it (--missing-masks leave-out: without those images)
    domains = _study_domains(spec, manifest)
    positive = _study_positive(spec, base, manifest.labels)
    splits_path = RunFolder(study_dir).splits
    splits = None  # the study's own, when it has them from before
    if spec.splits is not None:
        splits = load_splits(spec.splits, manifest)
    elif not splits_path.is_file():
        splits = splits_for(manifest, base, progress)  # refused before the study folder is written
    else:
        _check_same_split(splits_path, base)
    study_dir.mkdir(parents=True, exist_ok=True)
    if splits is not None:
        save_splits(splits, splits_path)
    exps = expand(spec, domains)
    folds = tuple(f["fold"] for f in load_splits(splits_path)["folds"])
    jobs, metrics = _jobs(exps, study_dir, base, spec, splits_path, folds, len(domains) > 1, positive)
    atomic_write_text(study_dir / "study.yaml", spec.path.read_text())  # after its runs' settings are checked
    if metrics:  # a resumed study: its finished runs are kept, not trained again
        log.warning("note: %d of %d run(s) finished before, kept: %s", len(metrics), len(exps), ", ".join(metrics))
    _say_training(jobs)
    _say_mixed_strides(exps, study_dir, base)
    domain_of = dict(zip(manifest.keys, manifest.table["domain"].astype(str), strict=True))
    return PreparedStudy(
        spec, study_dir, base, manifest.labels, domains, splits_path, folds, exps, jobs, metrics, domain_of, positive
    )


def run_study(
    path: str | Path,
    out: str | Path | None = None,
    progress: bool = True,
    data_options: DataOptions | None = None,
    executor: str = "local",
    address: str | None = None,
    jobs: int = 1,
    also: Callable[[PreparedStudy], list[RunJob]] | None = None,
) -> dict:
    """Run (or resume) the study described by a YAML file; returns results.json's content, its paths (run folders,
    splits) absolute (results.json holds them relative to the study folder).

    Every run of the study uses one splits.json, so models and protocols are compared on the same folds; a run
    whose metrics.json exists is skipped.

    Args:
        data_options: dataset-reading options from the command line; those set (not default) override the
            study file's settings.
        executor: "local" (the runs one after another here) or "ray" (fanned out over a Ray cluster; see
            medcad.study.executors); the results are the same.
        address: the Ray cluster's address (executor "ray").
        jobs: worker processes of the local executor (1: the runs in this process; see
            medcad.study.executors.LocalExecutor).
        also: a function of the prepared study giving more runs (`executors.RunJob`, e.g. another task on the
            study's splits) that the executor trains beside the study's; their metrics are in results["also"].

    Raises:
        ConfigError: a bad study file, executor or cluster address, before anything is written.
    """
    from medcad.study.executors import make_executor

    runner = make_executor(executor, address, jobs)
    study = prepare_study(path, out, progress, data_options)
    t0 = time.perf_counter()
    extra = list(also(study)) if also else []
    metrics = study.metrics | runner.run(extra + study.jobs, progress)  # the other task first: its folds are longer
    results = _study_results(study, metrics, time.perf_counter() - t0)
    write_json(study.study_dir / "results.json", results)
    results = results | {  # the caller's paths: absolute
        "splits": str(study_path(study.study_dir, results["splits"])),
        "runs": [r | {"run": str(study_path(study.study_dir, r["run"]))} for r in results["runs"]],
    }
    return results | ({"also": {j.name: metrics[j.name] for j in extra}} if extra else {})


def _study_results(study: PreparedStudy, metrics: dict, seconds: float) -> dict:
    """results.json of a study whose runs are trained: a row per run, the paired tests, the cross-domain matrix."""
    spec, base, splits_path, domains = study.spec, study.base, study.splits_path, study.domains
    rows = []
    for e in study.exps:
        cfg = base.replace(**e.model.settings)
        rows.append(
            {
                "name": e.name,
                "model": e.model.name,
                "backbone": cfg.model,
                "step": e.step,
                "train_domains": list(e.train_domains or []),
                "init": e.init,
                "run": f"runs/{slug(e.name)}",  # relative to the study folder: it can be moved or copied
                **_headline(metrics[e.name]),
            }
        )
    labels = study.labels
    groups = load_splits(splits_path).get("groups") or {}
    results = {
        "name": spec.name,
        "protocol": spec.protocol,
        "data": str(spec.data),
        "labels": labels,
        "domains": domains,
        "splits": os.path.relpath(splits_path, study.study_dir),
        "runs": rows,
        "paired_tests": paired_tests(study.study_dir, study.exps, labels, groups, study.domain_of, study.positive),
        "multiplicity": "Holm over every paired test of the study (p_holm beside each raw p_value)",
        "seconds_this_session": seconds,
    }
    if len(domains) > 1 and spec.protocol in ("sequential", "combined", "cross_domain"):
        results["cross_domain_matrix"] = {r["name"]: {d: _matrix_cell(r, d, labels) for d in domains} for r in rows}
    return results
