"""A run of any task: splits, decoded-image cache, training per fold (the task's hooks), out-of-fold evaluation.

The run folder's files are named in medcad.runfolder. A fold with a result.json is finished and skipped on resume;
an interrupted stage resumes from its last.ckpt (a stop by signal: medcad.stopping).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcad.atomic import atomic_write_text
from medcad.config import RESUMABLE_KEYS, TrainConfig
from medcad.data.datasets import image_cache_key, run_images
from medcad.data.identity import reconcile, run_samples, save_samples
from medcad.data.layouts import load_manifest
from medcad.data.manifest import Manifest
from medcad.data.splits import fold_indices, group_holdout, load_splits, make_splits, row_groups, save_splits
from medcad.devices import environment, fit_torch_threads, is_primary, join_launched_processes, rank_zero_first
from medcad.engine.common import logger_names, quiet_lightning
from medcad.engine.fold import FoldData, FoldHooks, train_fold
from medcad.engine.results import evaluate_results, write_json
from medcad.errors import ConfigError, DataError, UnreadableSamples
from medcad.metrics.stats import group_index
from medcad.run import Run
from medcad.runfolder import RunFolder, fold_words
from medcad.stopping import raise_if_stopped
from medcad.targets import UNREADABLE, left_out_as_by_run, load_targets, run_rows, unreadable_keys, without_rows
from medcad.tasks import Task, get_task, pooled_positive, split_labels, split_strata, unread_settings

log = logging.getLogger(__name__)


def fold_hooks(task: str) -> type[FoldHooks]:
    """The class of the task's part of the fold loop (the engine's column of the task table in medcad.tasks);
    `fold_hooks(name)(run)` makes it for a run."""
    from medcad.engine.classify import ClassifyHooks, MultilabelHooks
    from medcad.engine.detect import DetectHooks
    from medcad.engine.segment import SegmentHooks

    hooks = {t: h for h in (ClassifyHooks, MultilabelHooks, SegmentHooks, DetectHooks) for t in h.tasks}
    return hooks[get_task(task).name]  # each hooks class declares its tasks (`FoldHooks.tasks`)


def splits_for(manifest: Manifest, cfg: TrainConfig, progress: bool = True) -> dict:
    """New splits with a run's split settings (folds or holdout, validation fraction, seed, grouping)."""
    return make_splits(
        manifest,
        folds=cfg.folds,
        holdout=cfg.holdout,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        group_by=cfg.group_by,
        progress=progress,
        strata=split_strata(manifest, get_task(cfg.task)),
    )


def _prepare_splits(manifest: Manifest, run: Run, splits_path: Path | None) -> dict:
    """The run's folds: those of `splits_path`, else of its own splits.json (resuming), else new ones (which may
    be refused, before anything of the run is written)."""
    target = run.folder.splits
    if splits_path is not None:  # without the images this run's read left out as unreadable (--allow-missing)
        return load_splits(splits_path, manifest, leave_out=unreadable_keys(manifest))
    if target.is_file():
        return load_splits(target, manifest)  # resume, or the same folds as an earlier model
    return splits_for(manifest, run.cfg)


def _same_samples(manifest: Manifest, out: Path, splits_path: Path | None, new_images: str) -> Manifest:
    """Today's dataset checked against the samples the run was made on (resuming), or those of `--splits` (a new
    run on given folds): what changed is said, never re-paired (`medcad.data.identity.reconcile`)."""
    samples, where = run_samples(out), out
    if samples is None and splits_path is not None:
        folds = load_splits(splits_path, leave_out=unreadable_keys(manifest))["folds"]
        samples, where = {k: None for f in folds for p in ("train", "val", "test") for k in f.get(p, [])}, splits_path
    return manifest if samples is None else reconcile(manifest, samples, where, new_images)


def check_resumable(cfg: TrainConfig, out: str | Path) -> None:
    """`_check_resume` of the run of settings `cfg` in folder `out`, before anything is written (a study checks its
    runs so, finished ones too: they had been kept unsaid when the study file's settings had changed)."""
    _check_resume(Run.resolve(cfg, out))


def _check_resume(run: Run) -> None:
    """Refuse to resume a run with other settings. A folder whose data were never split (no splits.json: an
    earlier medcad refused its split after writing config.json and manifest.csv) holds nothing to resume: the
    command its error advised, with other settings, starts it anew."""
    cfg = run.cfg
    if run.saved is None or not run.folder.splits.is_file():
        return
    old = run.saved.to_dict()
    if old.get("precision") == run.compute.precision:
        old["precision"] = cfg.precision  # a run from before precision "auto", resumed with what auto gives here
    if cfg.mask_labels is None:
        old["mask_labels"] = None  # the classes the run read from its dataset.json (checked against the masks later)
    changed = _differences(old, cfg.to_dict(), [k for k in cfg.to_dict() if k not in RESUMABLE_KEYS])
    if changed:
        raise ConfigError(
            f"{run.folder.root} holds a run with other settings ({changed}); choose another --out to start a new "
            "run, or repeat the same settings to resume it"
        )


# the settings that decide how a model is built: a run continues (sequential transfer) only from models built alike
ARCHITECTURE_KEYS = ("model", "arch", "decoder_channels", "head")


def _check_init(run: Run, init_run: Path) -> None:
    """A run that continues from another run's fold models is built as they were (before anything is written)."""
    path = RunFolder(init_run).config
    if not path.is_file():
        return  # its fold models say what they are when each fold loads them
    differ = _differences(TrainConfig.load(path).to_dict(), run.cfg.to_dict(), ARCHITECTURE_KEYS)
    if differ:
        raise ConfigError(
            f"{init_run}: its models are built otherwise ({differ}); a run continues only from models of the same "
            "architecture"
        )


def _differences(saved: dict, ours: dict, keys) -> str:
    """The settings among `keys` whose saved value differs from this run's, as "name: 'saved' -> 'ours', ..."."""
    return ", ".join(f"{k}: {saved.get(k)!r} -> {ours.get(k)!r}" for k in keys if saved.get(k) != ours.get(k))


def train_run(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    splits_path: Path | None = None,
    progress: bool = True,
    train_domains: tuple[str, ...] | None = None,
    init_run: Path | None = None,
    folds: Sequence[int] | None = None,
    notes: bool = True,
) -> dict:
    """Train and evaluate a model of the run's task on a dataset with the run's splits; resumable.

    Returns metrics.json ({} in DDP processes other than rank 0, which take part in every fit but write nothing).

    Args:
        train_domains: train and validate on these domains only; the test parts keep every domain, so the
            metrics show how the model does on each (cross-domain evaluation).
        init_run: a run of the same data and splits whose fold models each fold continues from (sequential
            transfer).
        folds: train only these folds (an empty list: prepare the run folder and caches only) and return {}
            without evaluating; a study's executor runs each fold as its own task this way.
        notes: say how the data was read (False in an executor's fold and evaluation tasks: the run's preparation
            task said it).

    Raises:
        ConfigError: settings that cannot run here (devices, accelerator, logger), or an `init_run` whose models are
            built otherwise (`ARCHITECTURE_KEYS`), before anything is written.
    """

    raise_if_stopped()  # a worker process of `--jobs` that was told to stop trains nothing more
    quiet_lightning()
    run = Run.resolve(cfg, out, init_run)  # bad settings fail here, before anything is written (task, compute, ...)
    logger_names(cfg)  # ... and an unknown logger
    fit_torch_threads(cfg.threads)
    out, folder = run.folder.root, run.folder
    join_launched_processes(run.compute)
    primary = is_primary()
    _check_resume(run)
    unread = unread_settings(cfg)
    if unread and primary and notes:
        log.warning("note: a %s run does not read %s: no effect", cfg.task, "; ".join(unread))
    if init_run is not None:
        _check_init(run, Path(init_run))
    with rank_zero_first():  # rank 0 writes the run folder's files and the caches; the others read them
        manifest, targets, splits, images, decode_s = _prepare(
            data, run, splits_path, train_domains, init_run, progress, primary, primary and notes
        )
    if targets.mask_classes is not None:  # the classes read (e.g. from dataset.json) go into every model file
        run = run.with_settings(run.cfg.replace(mask_labels=targets.mask_classes.describe()))
    hooks = fold_hooks(cfg.task)(run)
    t0 = time.perf_counter()
    labels, y = targets.labels, targets.y
    feature_key = f"{image_cache_key(manifest, cfg.image_size, cfg.bilateral, cfg.interface)}|{cfg.model}|{cfg.weights}"
    fold_data = FoldData(
        images, y, labels, masks=targets.masks, boxes=targets.boxes, feature_key=feature_key, keys=manifest.keys
    )
    domains = manifest.table["domain"].to_numpy(dtype=str)
    keys = manifest.keys
    if primary and notes:
        _say_resumed(folder, [f["fold"] for f in splits["folds"]], folds)
    results, finished = [], []  # finished: the folds done before this session
    for fold in splits["folds"]:
        k = fold["fold"]
        if folds is not None and k not in folds:
            continue
        done = folder.fold(k).result
        if done.is_file():
            results.append(json.loads(done.read_text()))
            finished.append(k)
            continue
        raise_if_stopped()
        log.info("fold %d", k)
        parts = fold_indices(manifest, fold)
        if train_domains:
            keep = np.isin(domains, train_domains)
            parts["train"], parts["val"] = parts["train"][keep[parts["train"]]], parts["val"][keep[parts["val"]]]
            if len(parts["val"]) == 0 and len(parts["train"]) > 1:  # no validation image of these domains
                gmap = splits.get("groups") or {}
                g = group_index(row_groups(gmap, keys, parts["train"]), len(parts["train"]))[0]
                single = y is not None and np.ndim(y) == 1  # one label per row (not multi-label): every label validated
                tr, va = group_holdout(g, cfg.val_fraction or 0.15, cfg.seed + k, y[parts["train"]] if single else None)
                parts["train"], parts["val"] = parts["train"][tr], parts["train"][va]
        init = RunFolder(init_run).fold(k).model if init_run else None
        results.append(train_fold(k, parts, fold_data, hooks, progress, init))
    if not primary or folds is not None:
        return {}
    metrics, pred = evaluate_results(
        manifest, targets, results, splits, out, run.cfg.image_size, nsd_tolerance=run.cfg.nsd_tolerance
    )
    atomic_write_text(folder.predictions, pred.to_csv(index=False))
    before = json.loads(folder.metrics.read_text()) if folder.metrics.is_file() else {}
    if len(finished) == len(results) and "timing" in before:  # pooled again, nothing trained: the training's time
        metrics["timing"] = before["timing"]
    else:
        total = time.perf_counter() - t0 + decode_s
        metrics["timing"] = {"decode_seconds": decode_s, "total_seconds_this_session": total}
    write_json(folder.metrics, metrics)
    return metrics


def _say_resumed(folder: RunFolder, every: list[int], folds: Sequence[int] | None) -> None:
    """Say which folds a resumed run keeps (finished) and which it trains now (those among `folds`; None or []: all
    that are not finished); nothing for a run without a finished fold."""
    finished = folder.finished(every)
    if not finished:
        return
    todo = [k for k in every if k not in finished and (not folds or k in folds)]
    training = f"; training {fold_words(todo)}" if todo else ""
    log.warning("note: resuming %s: %s finished, kept%s", folder.root, fold_words(finished), training)


def _say_positive_changed(folder: RunFolder, positive: str | None) -> None:
    """Say when a finished run is pooled again with another positive class than its metrics.json's, and which of
    its outputs keep the one they were made with (external evaluations, the shortcut check: made again by their own
    commands)."""
    if positive is None or not folder.metrics.is_file():
        return
    before = pooled_positive(json.loads(folder.metrics.read_text()))
    if before is None or before == positive:
        return
    kept = [str(p.parent.relative_to(folder.root)) for p in sorted(folder.root.glob("evaluations/*/metrics.json"))]
    kept += [folder.shortcut_check.name] if folder.shortcut_check.is_file() else []
    log.warning(
        "note: positive class %r, was %r: the run's figures are pooled again%s",
        positive,
        before,
        f"; made with {before!r} before, until made again (medcad evaluate): {', '.join(kept)}" if kept else "",
    )


def fold_coverage(
    manifest: Manifest, splits: dict, task: Task, train_domains: Sequence[str] | None = None
) -> list[str]:
    """What the folds' parts lack of the labels (classes; a multi-label task's findings), in words: a fold whose
    training part holds no image of one (its model never learns it, yet its test images of it are scored and pooled)
    and a fold whose test part holds none (its own figures average over the others; a holdout's: not scored). With
    `train_domains` (a transfer run) a training part is the images of those domains only, as the run trains. Given
    splits had left both unsaid; empty for tasks without labels."""
    if "probabilities" not in task.outputs or "labels" not in task.targets:
        return []
    cells = manifest.table["label"].tolist()
    sets = [set(split_labels(v)) if task.label_kind == "multi" else ({v} if v else set()) for v in cells]
    every = set().union(*sets) if sets else set()
    lacking: dict[str, list[str]] = {"train": [], "test": []}
    domains = manifest.table["domain"].to_numpy(dtype=str)
    for i, fold in enumerate(splits["folds"]):
        parts = fold_indices(manifest, fold)
        if train_domains:
            parts["train"] = parts["train"][np.isin(domains[parts["train"]], list(train_domains))]
        for part, said in lacking.items():
            held = set().union(*(sets[j] for j in parts[part])) if len(parts[part]) else set()
            if len(parts[part]) and every - held:
                said.append(f"fold {fold.get('fold', i)} ({', '.join(sorted(every - held))})")
    what = "finding" if task.label_kind == "multi" else "class"
    out = []
    if lacking["train"]:
        out.append(
            f"training parts without any image of a {what}: {'; '.join(lacking['train'])}: that fold's model never "
            f"learns it, yet its test images of it are scored and pooled with the other folds'"
        )
    if lacking["test"] and len(splits["folds"]) == 1:
        out.append(f"the test part holds no image of a {what}: {lacking['test'][0]}: not scored")
    elif lacking["test"]:
        out.append(
            f"test parts without any image of a {what}: {'; '.join(lacking['test'])}: those folds' own figures "
            "average over the others"
        )
    return out


def _readable(manifest: Manifest, cfg: TrainConfig, progress: bool) -> Manifest:
    """`manifest` with every image decodable (decoded into the cache the run then reads), before anything is
    written: an unreadable image (truncated, corrupt, over the pixel limit) stops the run naming all of them and
    how to go on, or with --allow-missing is left out, named in the ledger with why (a run had stopped on the first,
    after writing its folder, and --allow-missing had not helped).

    Raises:
        DataError: unreadable images without --allow-missing, or no readable image left.
    """
    try:
        run_images(manifest, cfg, progress=progress)
        return manifest
    except UnreadableSamples as e:
        if not cfg.allow_missing:
            raise DataError(
                e.path,
                f"{e.problem}. Fix or remove the file(s), or rerun with --allow-missing to leave them out (each named "
                "in RUN/data_ledger.csv)",
            ) from e
        bad = {str(Path(x.path).resolve()): x.problem for x in e.errors}
        out = [
            (i, f"{UNREADABLE}{bad[p]}")
            for i in range(len(manifest))
            if (p := str(manifest.image_path(i).resolve())) in bad
        ]
        if len(out) == len(manifest):
            raise DataError(manifest.root, f"no image can be read: {e.problem}") from e
        note = f"{len(out)} unreadable image(s) left out (--allow-missing), e.g. {manifest.keys[out[0][0]]}"
        return without_rows(manifest, out, note)


def _prepare(data, run: Run, splits_path, train_domains, init_run, progress: bool, write: bool, say: bool) -> tuple:
    """Read and check the data, write config.json, manifest.csv and splits.json (when `write`), say how the data was
    read (when `say`), and load (or make) the decoded-image and mask caches. Returns (manifest, targets, splits,
    images, decode seconds)."""
    folder, cfg = run.folder, run.cfg
    out = folder.root
    manifest = load_manifest(data, cfg.data_options())
    if cfg.layout is None:  # config.json keeps the reader chosen: the run's data read again (evaluate, report,
        cfg = cfg.replace(layout=manifest.layout)  # export, a resume) as it was, whatever the folder gains since
    try:
        manifest.check_complete(cfg.allow_missing)
        manifest = run_rows(manifest, cfg)  # before the run's samples are compared: they are those it kept
    finally:  # how the data was read, before any refusal; its ledger's line counting the rows the run leaves out
        for note in manifest.notes if say else []:
            log.warning("note: %s", note)
    said = len(manifest.notes)
    t0 = time.perf_counter()
    manifest = left_out_as_by_run(manifest, out)  # a resume leaves out what the run did, with or without the flag
    manifest = _readable(manifest, cfg, progress and write)  # before a resumed run's samples are compared: without
    decode_s = time.perf_counter() - t0
    for note in manifest.notes[said:] if say else []:  # the images it left out as unreadable
        log.warning("note: %s", note)
    said = len(manifest.notes)
    manifest = _same_samples(manifest, out, splits_path, cfg.new_images)
    for note in manifest.notes[said:] if say else []:  # what changed since the run was made
        log.warning("note: %s", note)
    said = len(manifest.notes)
    targets = load_targets(manifest, cfg, source=data, progress=progress and say)  # before anything is written
    if cfg.positive is not None:
        cfg = cfg.replace(positive=targets.positive)  # as the labels spell it
    if say:
        _say_positive_changed(folder, targets.positive)
    for note in manifest.notes[said:] if say else []:  # how the labels were read
        log.warning("note: %s", note)
    said = len(manifest.notes)
    if targets.mask_classes is not None and say:
        log.warning("note: lesion classes %s (from %s)", targets.mask_classes.describe(), targets.mask_classes.source)
    problems = targets.box_problems
    labels = targets.labels
    domains = manifest.table["domain"].to_numpy(dtype=str)
    if train_domains:
        missing = sorted(set(train_domains) - set(domains))
        if missing:
            raise DataError(data, f"no images of domain(s) {missing}; domains here: {sorted(set(domains) - {''})}")
    splits = _prepare_splits(manifest, run, splits_path)  # a refused split leaves no run folder behind
    for note in manifest.notes[said:] if say else []:  # what grouping the samples found (duplicates under two labels)
        log.warning("note: %s", note)
    for note in fold_coverage(manifest, splits, get_task(cfg.task), train_domains) if say else []:
        log.warning("note: %s", note)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        if problems:
            atomic_write_text(folder.box_problems, "\n".join(problems) + "\n")
            if say:
                log.warning("%d box problem(s), e.g. %s; all in %s", len(problems), problems[0], folder.box_problems)
        write_json(
            folder.config,
            {
                **cfg.to_dict(),
                "data": str(Path(data).resolve()),
                "labels": labels,
                **({"mask_labels": targets.mask_classes.describe()} if targets.mask_classes else {}),
                "train_domains": list(train_domains or []),
                "init_run": str(init_run) if init_run else None,
                "data_notes": manifest.notes,
                "environment": environment(),  # software and machine of the session that wrote it (a resume: its own)
            },
        )
        manifest.save(folder.manifest)
        atomic_write_text(folder.ledger, manifest.ledger.table().to_csv(index=False))
        if not folder.samples.is_file():
            save_samples(manifest, folder.samples)
        if splits_path is None or not folder.splits.is_file():
            save_splits(splits, folder.splits)
    t0 = time.perf_counter()
    images = run_images(manifest, cfg, progress=progress and write)  # decoded by `_readable`: the cache, read back
    return manifest, targets, splits, images, decode_s + time.perf_counter() - t0


def train_repeats(
    data: str | Path, out: str | Path, cfg: TrainConfig, repeats: int, *, splits_path: Path | None = None
) -> dict:
    """Train `repeats` runs with seeds cfg.seed, cfg.seed + 1, ... into out/seed_<s>, all on the first run's splits
    (so the spread is the training's alone), and write out/repeats.json: every headline metric as mean ± sd over
    the runs (for detection also F1 at each IoU threshold and the frame accuracy). Resumable like a run."""
    from medcad.metrics.stats import mean_sd

    out = Path(out)
    runs, metrics = [], []
    for s in range(cfg.seed, cfg.seed + repeats):
        run = out / f"seed_{s}"
        metrics.append(train_run(data, run, cfg.replace(seed=s), splits_path=splits_path, progress=False))
        splits_path = splits_path or RunFolder(run).splits
        runs.append(str(run))
    task = get_task(cfg.task)
    summary = {k: mean_sd([m[k]["value"] for m in metrics]) for k in task.headline if all(k in m for m in metrics)}
    if "boxes" in task.outputs:
        from medcad.metrics.detection import seeds_summary

        summary = {**summary, **seeds_summary(metrics)}
    result = {"runs": runs, "seeds": list(range(cfg.seed, cfg.seed + repeats)), "summary": summary}
    write_json(RunFolder(out).repeats, result)
    return result
