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
from medcad.tasks import FREEZE_DEFAULTS_BEFORE, Task, decoder_setting, flip_tta, freeze_stride, get_task


@dataclass(frozen=True)
class Run:
    """One training run.

    Attributes:
        cfg: the run's settings.
        task: its task (`medcad.tasks`).
        compute: its resolved compute (accelerator, devices, nodes, strategy, precision).
        folder: its run folder's layout.
        saved: the settings its folder's config.json holds, as the run trained with them (`saved_settings`); None
            for a new run. A resumed run is checked against them (`engine.train`).
    """

    cfg: TrainConfig
    task: Task
    compute: Compute
    folder: RunFolder
    saved: TrainConfig | None = None

    @classmethod
    def resolve(cls, cfg: TrainConfig, out: str | Path, init_run: str | Path | None = None) -> Run:
        """The run of these settings in folder `out`, continuing from the fold models of `init_run` if given
        (nothing is written).

        Raises:
            ConfigError: an unknown task; compute this machine cannot give (medcad.devices.resolve_compute); an
                unknown augmentation preset or test-time augmentation; a stage list for a task that trains in one
                stage; an interface option the task cannot use; a negative freeze stride; an unknown mask-model
                architecture; decoder widths that are not five positive integers or for a model without that decoder
                (`tasks.decoder_setting`); an unreadable config.json. Unset decoder widths and freeze stride are
                written out as the run will use them (`settled_settings`: a resumed run keeps what it was made with).
        """
        task = get_task(cfg.task)
        compute = resolve_compute(cfg)
        augmentation(cfg.augment)  # the presets' names are the same for boxes (`box_augmentation`)
        flip_tta(cfg.tta, cfg.task)
        run_stages(cfg)
        check_interface(cfg.interface, cfg.task)
        freeze_stride(cfg)
        if "mask" in task.outputs:
            from medcad.models.segmentation import check_arch

            check_arch(cfg.arch)
        saved = saved_settings(out)
        return cls(settled_settings(cfg, saved, init_run), task, compute, RunFolder(Path(out)), saved)

    def with_settings(self, cfg: TrainConfig) -> Run:
        """The same run with settings completed from the data (e.g. the lesion classes read from dataset.json);
        task and compute settings must not change."""
        return replace(self, cfg=cfg)

    @property
    def device(self) -> torch.device:
        """Where this process predicts after fitting: its GPU on a GPU run, else the CPU."""
        if self.compute.accelerator == "gpu":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")


def settled_settings(
    cfg: TrainConfig, resumed: TrainConfig | None = None, init_run: str | Path | None = None
) -> TrainConfig:
    """`cfg` with the settings whose "unset" means a default written out as the run will use them, so that its
    config.json keeps what it was made with and a later change of default does not change how it resumes.
    `resumed`: the settings of the run it resumes (`saved_settings` of its folder), None for a new run.

    - `decoder_channels` "auto": the widths of the models the run resumes or continues from (`init_run`) when task
      and architecture match, else the architecture's default; then one spelling (`tasks.decoder_setting`: None for
      smp's widths).
    - `freeze_stride` None: the stride of the run it resumes, else the task's default (`tasks.freeze_stride`). A run
      continuing from another run's models takes today's default: the freeze is a recipe, not part of the model.
    - `positive` None: the positive class of the run it resumes, if it was given one (a resume without
      `--positive` had pooled a run made with `--positive benign` again with the default class).
    - `layout` None: the layout the run it resumes read its data in (a manifest.csv added to a folder of class
      folders since had been read instead, with its other patients).
    """
    unset_widths = cfg.decoder_channels == "auto"
    for name in ("positive", "layout"):
        if getattr(cfg, name) is None and resumed is not None and getattr(resumed, name) is not None:
            cfg = replace(cfg, **{name: getattr(resumed, name)})
    if cfg.freeze_stride is None:
        cfg = replace(cfg, freeze_stride=freeze_stride(cfg) if resumed is None else resumed.freeze_stride)
    made = resumed or (saved_settings(init_run) if unset_widths else None)
    if unset_widths and made is not None and (made.task, made.arch) == (cfg.task, cfg.arch):
        cfg = replace(cfg, decoder_channels=made.decoder_channels)  # as the models it resumes or continues from
    return replace(cfg, decoder_channels=decoder_setting(cfg))  # one spelling, so a run resumes however written


def saved_settings(run: str | Path | None) -> TrainConfig | None:
    """The settings saved in the run folder `run` (its config.json) as the run trained with them, if there is one:
    a freeze stride saved as None (runs made from 2026-11-30 to 2026-12-04, before strides were written out) is the
    default of then, 4 for classifiers and 0 for the others (`tasks.FREEZE_DEFAULTS_BEFORE`).

    Raises:
        ConfigError: an unreadable config.json.
    """
    path = RunFolder(Path(run)).config if run is not None else None
    if path is None or not path.is_file():
        return None
    saved = TrainConfig.load(path)
    if saved.freeze_stride is not None:
        return saved
    return replace(saved, freeze_stride=freeze_stride(saved, FREEZE_DEFAULTS_BEFORE))
