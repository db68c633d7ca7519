"""Where a study's runs are trained: one after another in this process (`local`, the default), or fanned out over a
Ray cluster (`ray`), each run's preparation, each fold and each run's evaluation a Ray task.

Both train the same runs with the same settings, splits and seeds into the same study folder, so their results
match; both resume (a run with metrics.json is skipped before it reaches an executor, a fold with result.json
inside `train_run`). Ray only schedules: the order a protocol needs is expressed as task dependencies (fold k of a
sequential-transfer step 2 waits for fold k of its step 1; a run's evaluation waits for its folds).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from medcad.config import TrainConfig
from medcad.errors import ConfigError

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


def train_job(job: RunJob, folds: list[int] | None = None, *after: object, progress: bool = False) -> dict:
    """`train_run` of a job: only `folds` (an empty list: prepare only) and {} back, or the whole run and its
    metrics. `after` are results of tasks this one waits for (Ray resolves them first); they are not used."""
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
    )


class LocalExecutor:
    """The runs one after another in this process, in the protocol's order."""

    def run(self, jobs: list[RunJob], progress: bool = True) -> dict[str, dict]:
        out = {}
        for job in jobs:
            if progress:
                print(f"== {job.name}", flush=True)
            out[job.name] = train_job(job, None, progress=progress)
        return out


class RayExecutor:
    """The runs as Ray tasks on a cluster: per run a preparation task (run folder, caches), one task per fold and an
    evaluation task; each asks for `cfg.threads` CPUs (1 when unset) and, with `accelerator: gpu`, `devices` GPUs.

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
        ray = self.ray
        task = ray.remote(train_job)
        folds: dict[tuple[str, int], object] = {}
        finals, first_prep = {}, None
        for job in jobs:  # in the protocol's order: a job's init comes before it
            opts = self._options(job.cfg)
            # the first preparation decodes the images into the shared cache; the others wait and read it
            prep = task.options(**opts, name=f"prepare {job.name}").remote(
                job, [], *([first_prep] if first_prep else [])
            )
            first_prep = first_prep or prep
            for k in job.folds:
                waits = [prep] + ([folds[(job.init, k)]] if (job.init, k) in folds else [])
                folds[(job.name, k)] = task.options(**opts, name=f"{job.name} fold {k}").remote(job, [k], *waits)
            mine = [folds[(job.name, k)] for k in job.folds]
            finals[job.name] = task.options(**opts, name=f"evaluate {job.name}").remote(job, None, *mine)
        if progress:
            print(f"== {len(jobs)} run(s), {len(folds)} fold task(s) submitted to Ray", flush=True)
        return dict(zip(finals, ray.get(list(finals.values())), strict=True))


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


def make_executor(name: str = "local", address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor named (connected, for Ray), before a study writes anything.

    Raises:
        ConfigError: an unknown executor, an address without Ray, or Ray's problems (see RayExecutor).
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise ConfigError("--address is for --executor ray")
        return LocalExecutor()
    return RayExecutor(address)
