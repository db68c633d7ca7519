"""Run settings as a frozen dataclass: defaults, then a YAML/JSON file, then command-line overrides."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from medcad.errors import ConfigError


@dataclass(frozen=True)
class DataOptions:
    """How to read a dataset; every command that reads one takes these same options.

    Attributes:
        layout: force a reader ("folders", "csv", "xlsx", "images-masks", "coco", "labelme", "cvat"); detected when
            None.
        pattern: for "folders", how folders map to columns, e.g. "{label}", "{domain}/{label}", "{group}/{label}".
        mask_suffix: masks beside their images are `<stem><suffix>.*` and `<stem><suffix>_<n>.*`.
        images: for paired folders, the folder of the images (relative to the dataset folder); found when None.
        masks: for paired folders, the folder of the masks, whose file stems match the images'.
        group_from: a regular expression searched in each image path (relative, with `/`); its group `patient`
            (or its first group, or the whole match) becomes the patient id, e.g. `^(P\\d+)_` or `(?P<patient>[^/]+)/`.
        label_map: renamed labels, "old=new,old2=new2" (for rows and boxes), e.g. to score a set whose classes are
            named differently from a model's.
        allow_missing: go on when the read left rows out (missing files, unknown labels: the ledger lists them);
            by default training, evaluation and prediction stop.
        new_images: images added since a run was made (or not in `--splits`) join no fold: "stop" (the default)
            says so and stops, "ignore" goes on with the run's images only.
    """

    layout: str | None = None
    pattern: str | None = None
    mask_suffix: str = "_mask"
    images: str | None = None
    masks: str | None = None
    group_from: str | None = None
    label_map: str | None = None
    allow_missing: bool = False
    new_images: str = "stop"

    def given(self) -> dict[str, object]:
        """The options that differ from the defaults (what a user set), by name."""
        default = DataOptions()
        names = [f.name for f in fields(DataOptions)]
        return {n: getattr(self, n) for n in names if getattr(self, n) != getattr(default, n)}

    def label_mapping(self) -> dict[str, str]:
        """`label_map` as a dict; raises ConfigError for an entry without `=`."""
        out = {}
        for item in (self.label_map or "").split(","):
            if not item.strip():
                continue
            old, sep, new = item.partition("=")
            if not sep or not old.strip() or not new.strip():
                raise ConfigError(
                    f"label map entry {item.strip()!r} is not 'old=new' (e.g. 'lesion=polyp,Normal=normal')"
                )
            out[old.strip()] = new.strip()
        return out


# What a value of each type must look like, for the error that refuses one.
_NOT_A = {float: "a number", int: "a whole number", bool: "true or false", str: "text", list: "a list"}


@functools.cache
def _adapter(annotation: object) -> typing.Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(coerce_numbers_to_str=True, allow_inf_nan=False))


def coerce_value(name: str, value: object, annotation: object) -> object:
    """`value` converted to `annotation` by pydantic in lax mode ("1e-4" and 1 become floats, "yes" a bool, 32 the
    text "32"); a bool is refused for a number. Raises ConfigError naming `name`, the value and the type expected."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    if type(value) in args and not (isinstance(value, float) and not math.isfinite(value)):
        return value  # already of its type: pydantic is not even imported
    if not isinstance(value, bool) or bool in args:
        from pydantic import ValidationError

        try:
            return _adapter(annotation).validate_python(value)
        except ValidationError:
            pass
    what = next((_NOT_A[t] for t in (typing.get_origin(a) or a for a in args) if t in _NOT_A), "valid")
    expected = " | ".join("None" if a is type(None) else a.__name__ if isinstance(a, type) else str(a) for a in args)
    quote = isinstance(value, bool) and str in args  # `tta: off` meant the text
    hint = "; quote it: YAML reads yes/no/on/off as true/false" if quote else ""
    raise ConfigError(f"{name}: {value!r} is not {what} ({expected} expected{hint})")


@functools.cache
def setting_types() -> dict[str, object]:
    """Each `TrainConfig` setting's type, by name."""
    return typing.get_type_hints(TrainConfig)


def coerce_setting(name: str, value: object) -> object:
    """A `TrainConfig` setting's value converted to the field's type (see `coerce_value`); None stays None."""
    return None if value is None else coerce_value(name, value, setting_types()[name])


# Settings that say where a run computes, not what it computes, or how a rerun treats changed data: a run resumes
# with other values of these.
COMPUTE_KEYS = (
    "threads",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "logger",
    "tracking_uri",
    "allow_missing",
    "new_images",
)


# Settings added after runs were made with a different behaviour: a config.json without them loads these values
# (what those runs trained with), so an older run resumes as it started.
OLDER_RUNS = {"freeze_stride": 0, "tta": "none"}


@dataclass(frozen=True)
class TrainConfig(DataOptions):
    """Everything that defines a training run (the dataset-reading options of `DataOptions` first). Stored as
    config.json in the run folder."""

    task: str = "classify"  # classify | segment | multitask | detect
    model: str = "tf_efficientnet_lite0"  # timm backbone (the encoder of segmentation and detection models)
    arch: str = "unet"  # segment/multitask: attention-unetpp | unet | unetpp | unet-vgg11 | dsconv-resnet
    weights: str = "auto"  # auto | hub | none | path to a state dict
    head: str = "linear"  # linear | mlp
    dropout: float = 0.2
    image_size: int = 224
    augment: str = "light"  # kvasir | light | none
    bilateral: bool = False
    interface: str = "none"  # ultrasound: none | crop (to the imaging area) | crop+marks (and inpaint burned-in marks)
    # stage 1: frozen backbone, head trained on cached features
    head_epochs: int = 60
    head_lr: float = 1e-3
    # stage 2: last `unfreeze` parameter groups (timm's coarse groups; 99 = all) trained with the head, at `lr`
    epochs: int = 12
    unfreeze: int = 99
    # every task: a pretrained encoder's stem and stages up to this output stride keep their ImageNet weights
    # (0: fine-tune them all; None: the task's default, see tasks.freeze_stride)
    freeze_stride: int | None = None
    lr: float = 2e-4
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weights: bool = True
    oversample: bool = False
    patience: int = 5
    precision: str = "auto"  # auto (follows the device) | bf16-mixed | 16-mixed | 32-true
    tta: str = "auto"  # test-time augmentation: auto (horizontal flip for mask models) | none | hflip
    seed: int = 0
    # segment / multitask
    missing_masks: str = "error"  # error | empty (images without a mask are lesion-free)
    class_loss_weight: float = 1.0  # multitask loss = BCE + Dice (mask) + this x cross-entropy (class)
    frame_classes: str | None = None  # detect: labels whose frames are whole-frame boxes, e.g. "normal,unclear"
    # splits
    folds: int | None = 5
    holdout: float | None = None
    val_fraction: float = 0.15
    group_by: str = "auto"
    threads: int | None = None
    # compute (medcad.devices resolves and checks them; they may change when a run resumes elsewhere)
    accelerator: str = "auto"  # auto (a GPU when one is present, else the CPU) | cpu | gpu
    devices: int = 1  # processes per node: GPUs, or CPU processes (DDP over gloo)
    num_nodes: int = 1
    strategy: str = "auto"  # auto (ddp when devices x num_nodes > 1) | ddp | any Lightning strategy name
    logger: str = "tensorboard,csv"  # comma-separated: tensorboard, csv, mlflow; or none
    tracking_uri: str | None = None  # MLflow: a tracking server or store; default a file store beside the run

    def data_options(self) -> DataOptions:
        """The dataset-reading options of this run."""
        return DataOptions(**{f.name: getattr(self, f.name) for f in fields(DataOptions)})

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed (None leaves a field as it is); each value is converted to its field's
        type (`coerce_setting`). Unknown names or values of the wrong type raise ConfigError naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: coerce_setting(k, v) for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls().replace(**d)

    @classmethod
    def from_saved(cls, d: dict) -> TrainConfig:
        """The settings a run or model file saved (other keys are metadata); a setting added after it was saved
        takes the value the run was made with (`OLDER_RUNS`), not today's default."""
        return cls.from_dict(OLDER_RUNS | {f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a run's config.json (its other keys, such as data and labels, are run metadata)."""
        try:
            return cls.from_saved(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read run config ({e})") from e
        except ConfigError as e:  # a value of the wrong type
            raise ConfigError(f"{path}: {e}") from e
