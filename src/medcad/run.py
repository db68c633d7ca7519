"""A training run resolved once: its settings, its task, its compute and its folder, in one object.

`Run.resolve` checks everything about the settings that can be checked before anything is written (task, compute,
test-time augmentation, stage list, interface option, freeze stride, architecture, decoder widths) and is the only
place where a training run resolves its task and its compute; the engine passes the `Run` down instead of resolving
them again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medcad.config import TrainConfig, run_stages
from medcad.data.interface import check_interface
from medcad.data.transforms import augmentation
from medcad.devices import Compute, resolve_compute
from medcad.runfolder import RunFolder
from medcad.tasks import Task, decoder_setting, flip_tta, freeze_stride, get_task


@dataclass(frozen=True)
class Run:
    """One training run.

    Attributes:
        cfg: the run's settings.
        task: its task (`medcad.tasks`).
        compute: its resolved compute (accelerator, devices, nodes, strategy, precision).
        folder: its run folder's layout.
    """

    cfg: TrainConfig
    task: Task
    compute: Compute
    folder: RunFolder

    @classmethod
    def resolve(cls, cfg: TrainConfig, out: str | Path, init_run: str | Path | None = None) -> Run:
        """The run of these settings in folder `out`, continuing from the fold models of `init_run` if given
        (nothing is written).

        Raises:
            ConfigError: an unknown task; compute this machine cannot give (medcad.devices.resolve_compute); an
                unknown augmentation preset or test-time augmentation; a stage list for a task that trains in one
                stage; an interface option the task cannot use; a negative freeze stride; an unknown mask-model
                architecture; decoder widths that are not five positive integers or for a model without that decoder
                (`tasks.decoder_setting`; "auto" gives a resumed run the widths it was made with, a run continuing
                from `init_run` that run's, a new run the architecture's default); an unreadable config.json.
        """
        task = get_task(cfg.task)
        compute = resolve_compute(cfg)
        augmentation(cfg.augment)  # the presets' names are the same for boxes (`box_augmentation`)
        flip_tta(cfg.tta, cfg.task)
        run_stages(cfg)
        check_interface(cfg.interface, cfg.task)
        freeze_stride(cfg.freeze_stride, cfg.task)
        if "mask" in task.outputs:
            from medcad.models.segmentation import check_arch

            check_arch(cfg.arch)
        made = _models_made(out, init_run) if cfg.decoder_channels == "auto" else None
        if made is not None and (made.task, made.arch) == (cfg.task, cfg.arch):
            cfg = replace(cfg, decoder_channels=made.decoder_channels)  # as the models it resumes or continues from
        cfg = replace(cfg, decoder_channels=decoder_setting(cfg))  # one spelling, so a run resumes however written
        return cls(cfg, task, compute, RunFolder(Path(out)))

    def with_settings(self, cfg: TrainConfig) -> Run:
        """The same run with settings completed from the data (e.g. the lesion classes read from dataset.json);
        task and compute settings must not change."""
        return replace(self, cfg=cfg)

    @property
    def reduced_precision(self) -> bool:
        """True when the run trains in bf16/fp16 (then its validation and test predictions autocast too)."""
        return not self.compute.precision.startswith(("32", "64"))

    @property
    def device(self) -> torch.device:
        """Where this process predicts after fitting: its GPU on a GPU run, else the CPU."""
        if self.compute.accelerator == "gpu":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")


def _models_made(out: str | Path, init_run: str | Path | None) -> TrainConfig | None:
    """The settings of the models a run resumes (a run folder at `out`) or continues from (`init_run`), if any."""
    for root in (out, init_run):
        if root is not None and (path := RunFolder(Path(root)).config).is_file():
            return TrainConfig.load(path)
    return None
