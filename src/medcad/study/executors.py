"""Where a study's runs are trained: on this machine (`local`, the default: one after another in this process, or
with `--jobs N` as tasks in N worker processes), or fanned out over a Ray cluster (`ray`); in both of the latter each
run's preparation, each fold and each run's evaluation is a task (`task_graph`).

All train the same runs with the same settings, splits and seeds into the same study folder, so their results match;
every one resumes (a run with metrics.json is skipped before it reaches an executor, a fold with result.json inside
`train_run`). The executors only schedule: the order a protocol needs is expressed as task dependencies (fold k of a
sequential-transfer step 2 waits for fold k of its step 1; a run's evaluation waits for its folds).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from medcad.config import TrainConfig
from medcad.errors import ConfigError, MedcadError
from medcad.stopping import Stopped, handle_signals

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunJob:
    """One run of a study, as an executor trains it.

    Attributes:
        name: the experiment's name (unique in the study).
        run_dir: its run folder (absolute, on storage every worker sees).
        cfg: its settings.
        data: the dataset (absolute path).
        splits_path: the study's splits.json.
        folds: the fold numbers of the splits.
        train_domains: domains it trains on (None: all).
        init: the name of the job whose fold models it continues from, and that job's run folder.
    """

    name: str
    run_dir: Path
    cfg: TrainConfig
    data: Path
    splits_path: Path
    folds: tuple[int, ...]
    train_domains: tuple[str, ...] | None = None
    init: str | None = None
    init_dir: Path | None = None


def train_job(
    job: RunJob, folds: list[int] | None = None, *after: object, progress: bool = False, said: bool = False
) -> dict:
    """`train_run` of a job: only `folds` (an empty list: prepare only) and {} back, or the whole run and its
    metrics. `after` are results of tasks this one waits for (Ray resolves them first); they are not used. `said`:
    the run's preparation task has said its data notes (how the data was read), so this task keeps them to itself."""
    from medcad.engine.train import train_run

    return train_run(
        job.data,
        job.run_dir,
        job.cfg,
        splits_path=job.splits_path,
        progress=progress,
        train_domains=job.train_domains,
        init_run=job.init_dir,
        folds=folds,
        notes=not said,
    )


@dataclass(frozen=True)
class Task:
    """One step of a study as an executor schedules it: a run's preparation (`folds` []), one fold ([k]) or its
    evaluation (None), after the tasks named in `after`."""

    name: str
    job: RunJob
    folds: list[int] | None
    after: tuple[str, ...]


def task_graph(jobs: list[RunJob], prepared: bool = False) -> list[Task]:
    """The study's tasks in an order that puts each after those it waits for: per run a preparation (the first one
    decodes the images into the shared cache, the others wait for it and read it; none when the runs are `prepared`
    already), one task per fold (fold k of a sequential-transfer step 2 after fold k of its step 1) and an evaluation
    after its folds. `jobs` come in the protocol's order (a job's init before it)."""
    tasks: list[Task] = []
    fold_task: dict[tuple[str, int], str] = {}
    first_prep: tuple[str, ...] = ()
    for job in jobs:
        prep: tuple[str, ...] = ()
        if not prepared:
            prep = (f"prepare {job.name}",)
            tasks.append(Task(prep[0], job, [], first_prep))
            first_prep = first_prep or prep
        for k in job.folds:
            init = (fold_task[(job.init, k)],) if (job.init, k) in fold_task else ()
            fold_task[(job.name, k)] = f"{job.name} fold {k}"
            tasks.append(Task(fold_task[(job.name, k)], job, [k], (*prep, *init)))
        tasks.append(Task(f"evaluate {job.name}", job, None, tuple(fold_task[(job.name, k)] for k in job.folds)))
    return tasks


class LocalExecutor:
    """The runs on this machine: with `workers` 1, one after another in this process, in the protocol's order; with
    more, as the tasks of `task_graph` in that many worker processes, each with an equal share of the CPU cores as
    torch threads (a run's `threads` setting wins), a task started as soon as those it waits for are done.

    On few cores, small images train faster this way: one torch process does not keep 2 cores busy on small
    convolutions, two processes of one thread each do (tf_efficientnet_lite0, 96 px, batch 32, forward and backward on
    2 AVX2 cores: 74 images/s in one process of 2 threads, 110 in two of 1 thread; at 224 px 14.4 against 16.2).
    The results are those of one process with the same threads per fold.
    """

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--jobs must be at least 1 (got {workers})")
        self.workers = workers

    def run(self, jobs: list[RunJob], progress: bool = True, prepared: bool = False) -> dict[str, dict]:
        """metrics.json of each job by name; `prepared`: the runs' folders and caches are made (and their data notes
        said) already, so no preparation tasks."""
        if self.workers == 1:
            out = {}
            for job in jobs:
                if progress:
                    print(f"== {job.name}", flush=True)
                out[job.name] = train_job(job, None, progress=progress)
            return out
        return self._run_in_processes(task_graph(jobs, prepared), progress)

    def _run_in_processes(self, tasks: list[Task], progress: bool) -> dict[str, dict]:
        import multiprocessing
        import time
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from medcad.devices import machine

        _one_process_per_fit([t.job.cfg for t in tasks])
        threads = max(1, machine().cores // self.workers)
        waiting, done, out = list(tasks), set(), {}
        running: dict = {}
        t0 = time.perf_counter()
        # spawn, not fork: a fork of a process that has torch's and OpenMP's threads running can hang
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_start_worker, initargs=(threads,)) as pool:
            for _ in range(self.workers):  # every worker started now, each importing the engine while others work
                pool.submit(_ready)
            try:
                while waiting or running:
                    for t in [t for t in waiting if set(t.after) <= done]:
                        waiting.remove(t)
                        running[pool.submit(train_job, t.job, t.folds, said=t.folds != [])] = t
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        t = running.pop(f)
                        try:
                            result = f.result()  # a task's error stops here (running tasks finish first)
                        except BrokenProcessPool as e:
                            raise MedcadError(
                                f"a worker process died while training {t.name} (out of memory? try fewer --jobs or "
                                "a smaller batch); the folds finished are kept: the same command resumes"
                            ) from e
                        done.add(t.name)
                        if t.folds is None:
                            out[t.job.name] = result
                        if progress:
                            print(f"== {t.name} done ({time.perf_counter() - t0:.0f} s)", flush=True)
            except Stopped as stop:  # here (a signal) or in a worker (its fold stopped): every worker stops too
                for p in multiprocessing.active_children():
                    with contextlib.suppress(ProcessLookupError):  # a worker that has just ended
                        os.kill(p.pid, stop.signum)  # a fold stops at its next step; an idle worker takes no more
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return out


def train_in_workers(data: Path, out: Path, cfg: TrainConfig, workers: int, splits_path: Path | None = None) -> dict:
    """`train_run` of one run with its folds trained side by side in `workers` processes (`LocalExecutor`): the run
    is prepared here first (its notes, caches and splits.json), then its folds are tasks. Returns metrics.json.

    Raises:
        ConfigError: workers < 1, or several processes per fit (devices, num_nodes), before anything is written.
        MedcadError: a worker process died (the folds finished are kept).
    """
    from medcad.data.splits import load_splits
    from medcad.engine.train import train_run
    from medcad.runfolder import RunFolder

    executor = LocalExecutor(workers)
    _one_process_per_fit([cfg])
    data, out = Path(data).resolve(), Path(out).resolve()
    train_run(data, out, cfg, splits_path=splits_path, folds=[])
    splits = RunFolder(out).splits
    folds = tuple(f["fold"] for f in load_splits(splits)["folds"])
    job = RunJob(out.name, out, cfg, data, splits, folds)
    return executor.run([job], progress=False, prepared=True)[out.name]


def _one_process_per_fit(cfgs: list[TrainConfig]) -> None:
    if any(cfg.devices * cfg.num_nodes > 1 for cfg in cfgs):
        raise ConfigError("--jobs trains each fold in one process: use it with devices 1 and num_nodes 1")


def _start_worker(threads: int) -> None:
    """A worker process's torch threads; and the training engine imported (~10 s on 2 cores: torch, torchvision,
    Lightning) as the process starts, so that a worker started beside a busy one is ready for its first task."""
    handle_signals()  # first: a SIGTERM or SIGINT stops the worker's fold at its next step (see _run_in_processes)
    import torch

    torch.set_num_threads(threads)
    import medcad.engine.train  # noqa: F401


def _ready() -> None:
    """A no-op task: submitting one per worker at once starts them all together (a spawn-context pool starts a
    worker only when a task finds none idle)."""


class RayExecutor:
    """The runs as Ray tasks on a cluster: the tasks of `task_graph`, each asking for `cfg.threads` CPUs (1 when
    unset) and, with `accelerator: gpu`, `devices` GPUs.

    Args:
        address: "auto" (the cluster this machine belongs to), "HOST:PORT" (a head node's GCS port, 6379 by
            default), "ray://HOST:10001" (Ray Client); None: the cluster Ray is already connected to, else a new
            local one.

    Raises:
        ConfigError: Ray not installed, or no cluster at the address.
    """

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("--executor ray needs Ray: pip install 'medcad[ray]' (or use --executor local)") from e
        self.ray = ray
        if ray.is_initialized():
            return
        if address and address != "auto" and not address.startswith("ray://"):
            _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"cannot connect to a Ray cluster at {address or 'a new local cluster'} ({e}); start one with "
                "`ray start --head`, give its address with --address HOST:PORT, or use --executor local"
            ) from e

    def _options(self, cfg: TrainConfig) -> dict:
        if cfg.devices * cfg.num_nodes > 1:
            raise ConfigError(
                "--executor ray runs each fold as one process: set devices: 1 and num_nodes: 1 in the study settings "
                "(several processes per run: train it with `medcad train --devices N`)"
            )
        return {"num_cpus": cfg.threads or 1, "num_gpus": cfg.devices if cfg.accelerator == "gpu" else 0}

    def run(self, jobs: list[RunJob], progress: bool = True) -> dict[str, dict]:
        task = self.ray.remote(train_job)
        refs: dict[str, object] = {}
        finals = {}
        for t in task_graph(jobs):
            after = [refs[name] for name in t.after]
            opts = self._options(t.job.cfg)
            refs[t.name] = task.options(**opts, name=t.name).remote(t.job, t.folds, *after, said=t.folds != [])
            if t.folds is None:
                finals[t.job.name] = refs[t.name]
        if progress:
            print(f"== {len(jobs)} run(s), {len(refs)} task(s) submitted to Ray", flush=True)
        return dict(zip(finals, self.ray.get(list(finals.values())), strict=True))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address} ({e}); check the head node's address and port (`ray status` "
            "on the head node), or use --executor local"
        ) from e


def make_executor(name: str = "local", address: str | None = None, workers: int = 1) -> LocalExecutor | RayExecutor:
    """The executor named (connected, for Ray), before a study writes anything; `workers`: the local executor's
    processes.

    Raises:
        ConfigError: an unknown executor, an address without Ray, workers < 1 or with Ray, or Ray's problems (see
            RayExecutor).
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise ConfigError("--address is for --executor ray")
        return LocalExecutor(workers)
    if workers != 1:
        raise ConfigError("--jobs is for --executor local (Ray schedules by each run's threads)")
    return RayExecutor(address)
