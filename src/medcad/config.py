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
        layout: force a reader ("folders", "csv", "xlsx", "images-masks", "coco", "labelme", "cvat", "yolo",
            "voc", "via", "datalist"); detected when None.
        pattern: for "folders", how folders map to columns, e.g. "{label}", "{domain}/{label}", "{group}/{label}".
        mask_suffix: masks beside their images are `<stem><suffix>.*` and `<stem><suffix>_<n>.*`.
        images: for paired folders, the folder of the images (relative to the dataset folder); found when None.
        masks: for paired folders, the folder of the masks, whose file stems match the images'.
        group_from: a regular expression searched in each image path (relative, with `/`); its group `patient`
            (or its first group, or the whole match) becomes the patient id, e.g. `^(P\\d+)_` or `(?P<patient>[^/]+)/`.
        mask_shapes: annotation files (labelme, CVAT, COCO, YOLO polygons): the shape labels drawn into the lesion
            masks, "polyp,adenoma" (other shapes stay boxes and shape labels); every shape when None.
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
    mask_shapes: str | None = None
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
    """A `TrainConfig` setting's value converted to the field's type (see `coerce_value`); None only for a setting
    that may be None (ConfigError otherwise). `stages` (text, JSON or a list of mappings) is checked and kept as text
    (`stages_text`)."""
    if name == "stages" and value is not None:
        return stages_text(value)
    return coerce_value(name, value, setting_types()[name])


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "constant")
STAGED_TASKS = ("classify", "multilabel")  # tasks whose fold trainer runs a `stages` list
_STAGE_KEYS = ("epochs", "layers", "lr", "optimizer", "cached")


@dataclass(frozen=True)
class Stage:
    """One stage of a classifier's training (`TrainConfig.stages`).

    Attributes:
        epochs: epochs of the stage (0: skipped); the best validation epoch is kept, as in every fit.
        layers: what trains: "all" (every layer), "head" (the new head alone), or "lastN" (the last N layers with
            weights, counted from the output as Keras counts weight layers: each Linear, Conv and BatchNorm module
            with its own parameters is one layer, the head's included; ResNet50 + the mlp head: last4 = the head's
            three Linear layers and layer4's last BatchNorm, last21 = layer4 and a linear head).
        lr: learning rate of the pretrained layers; new layers (the head) learn at lr x `new_layer_lr_factor`.
        optimizer: adam | adamw; None: the run's `optimizer`.
        cached: "head" only: train on backbone features computed once (fast, but without augmentation).
    """

    epochs: int
    layers: str
    lr: float
    optimizer: str | None = None
    cached: bool = False

    @property
    def last(self) -> int | None:
        """N of "lastN", else None."""
        return int(self.layers[4:]) if self.layers.startswith("last") else None

    def text(self) -> str:
        """The compact form: EPOCHS:LAYERS:LR[:OPTIMIZER][:cached]."""
        parts = [str(self.epochs), self.layers, f"{self.lr:g}", *([self.optimizer] if self.optimizer else [])]
        return ":".join(parts + (["cached"] if self.cached else []))


def _stage(item: object, where: str) -> Stage:
    """One stage from its compact text or a mapping; raises ConfigError naming `where` and what is wrong."""
    form = "EPOCHS:LAYERS:LR[:OPTIMIZER][:cached], e.g. 5:all:1e-4:adam or 5:head:1e-3:adamw:cached"
    if isinstance(item, str):
        fields_ = [f.strip() for f in item.strip().split(":")]
        if len(fields_) < 3:
            raise ConfigError(f"stages: {where} {item!r} is not {form}")
        d: dict[str, object] = {"epochs": fields_[0], "layers": fields_[1], "lr": fields_[2]}
        for extra in fields_[3:]:
            d["cached" if extra == "cached" else "optimizer"] = True if extra == "cached" else extra
    elif isinstance(item, dict):
        unknown = sorted(set(map(str, item)) - set(_STAGE_KEYS))
        if unknown or not {"epochs", "layers", "lr"} <= set(item):
            raise ConfigError(
                f"stages: {where} needs keys epochs, layers, lr (optional: optimizer, cached); "
                f"{'unknown: ' + ', '.join(unknown) if unknown else 'got ' + ', '.join(map(str, item))}"
            )
        d = dict(item)
    elif isinstance(item, Stage):
        d = dataclasses.asdict(item)
    else:
        raise ConfigError(f"stages: {where} is {item!r}, not {form} or a mapping")
    try:
        epochs = coerce_value("epochs", d["epochs"], int)
        lr = coerce_value("lr", d["lr"], float)
        cached = coerce_value("cached", d.get("cached") or False, bool)
    except ConfigError as e:
        raise ConfigError(f"stages: {where}: {e}") from e
    layers = "".join(str(d["layers"]).lower().split()).replace("-", "").replace("_", "")
    optimizer = str(d["optimizer"]).lower() if d.get("optimizer") else None
    if not (layers in ("all", "head") or (layers.startswith("last") and layers[4:].isdigit() and int(layers[4:]))):
        raise ConfigError(f"stages: {where}: layers {d['layers']!r} is not all, head or last N (N >= 1)")
    if epochs < 0 or not lr > 0:
        raise ConfigError(f"stages: {where}: epochs must be >= 0 and lr > 0 (got {epochs}, {lr:g})")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ConfigError(f"stages: {where}: unknown optimizer {optimizer!r}; choose {' or '.join(OPTIMIZERS)}")
    if cached and layers != "head":
        raise ConfigError(f"stages: {where}: only a head stage trains on cached features (layers {layers})")
    return Stage(epochs, layers, lr, optimizer, cached)


def parse_stages(value: object) -> tuple[Stage, ...]:
    """A stage list from the compact text ("5:all:1e-4:adam,30:last4:1e-3:adam"), a JSON list of mappings
    ('[{"epochs": 5, "layers": "all", "lr": 1e-4}]'), or a list of mappings / `Stage`s (a study file).

    Raises:
        ConfigError: an empty list, or a stage that is not EPOCHS:LAYERS:LR[:OPTIMIZER][:cached].
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"stages: {text!r} is not a JSON list ({e})") from e
        else:
            value = [s for s in text.split(",") if s.strip()]
    if isinstance(value, dict | Stage):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"stages: {value!r} is not a list of stages (e.g. 5:all:1e-4:adam,30:last4:1e-3:adam)")
    return tuple(_stage(item, f"stage {i + 1}") for i, item in enumerate(value))


def stages_text(value: object) -> str:
    """A stage list given in any form `parse_stages` reads as text, checked: text as given (so that a run's
    config.json reads back equal to the settings it was made with), a list as its compact form."""
    stages = parse_stages(value)
    return value.strip() if isinstance(value, str) else ",".join(s.text() for s in stages)


def run_stages(cfg: TrainConfig) -> tuple[Stage, ...] | None:
    """The run's stage list, or None for the task's built-in order.

    Raises:
        ConfigError: stages for a task that trains in one built-in stage (segment, multitask, detect).
    """
    if cfg.stages is None:
        return None
    if cfg.task not in STAGED_TASKS:
        raise ConfigError(
            f"stages apply to {' and '.join(STAGED_TASKS)} runs; a {cfg.task} run trains in one stage of every "
            "layer: drop 'stages' and set epochs, lr, optimizer, schedule and new_layer_lr_factor instead"
        )
    return parse_stages(cfg.stages)


# Settings that say where a run computes, not what it computes, how a rerun treats changed data, which class its
# pooled figures call positive or at what tolerance they score NSD, or what it keeps on disk: a run resumes with other
# values of these (a finished one is pooled again).
RESUMABLE_KEYS = (
    "keep_checkpoints",
    "threads",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "logger",
    "tracking_uri",
    "allow_missing",
    "new_images",
    "positive",
    "nsd_tolerance",
)


# Settings added after runs were made with a different behaviour: a config.json without them loads these values
# (what those runs trained with), so an older run resumes as it started.
OLDER_RUNS = {"freeze_stride": 0, "tta": "none", "decoder_channels": None}


def check_nsd_tolerance(value: float) -> float:
    """`value` as NSD's tolerance (% of each image's diagonal); ConfigError unless above 0 and at most 100."""
    if not 0 < value <= 100:  # nan fails too
        raise ConfigError(f"nsd_tolerance {value!r}: give a share of each image's diagonal above 0 and at most 100 (%)")
    return value


@dataclass(frozen=True)
class TrainConfig(DataOptions):
    """Everything that defines a training run (the dataset-reading options of `DataOptions` first). Stored as
    config.json in the run folder."""

    task: str = "classify"  # classify | segment | segment-multiclass | multitask | detect | multilabel
    model: str = "tf_efficientnet_lite0"  # timm backbone (the encoder of segmentation and detection models)
    arch: str = "unet"  # segment/multitask: attention-unetpp | unet | unetpp | unet-vgg11 | dsconv-resnet
    # unet / unetpp / unet-vgg11: decoder widths, deepest block first, "256,128,64,32,16"; None: smp's; auto: the
    # architecture's default (`models.segmentation.decoder_widths`)
    decoder_channels: str | None = "auto"
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
    optimizer: str = "adamw"  # adam | adamw (every task, every stage that names none)
    weight_decay: float = 1e-4
    # new layers (classifier head; decoder and heads of mask models and detectors; every layer of a model trained
    # from scratch) learn at this x the stage's lr, pretrained layers at lr
    new_layer_lr_factor: float = 5.0
    schedule: str = "cosine"  # cosine | constant: the learning rate over each fit's epochs
    # classify / multilabel: a stage list that replaces the built-in head-then-fine-tune order (see `Stage`), in the
    # compact form "5:all:1e-4:adam,30:last4:1e-3:adam"; None: the built-in order
    stages: str | None = None
    label_smoothing: float = 0.0
    class_weights: bool = True
    oversample: bool = False
    patience: int = 5
    # a finished fold's training checkpoints (checkpoints/<stage>: best, last with the optimizer's state) are removed
    # once its model.pt and result.json are written (model.pt holds the weights it kept); True keeps them
    keep_checkpoints: bool = False
    precision: str = "auto"  # auto (follows the device) | bf16-mixed | 16-mixed | 32-true
    tta: str = "auto"  # test-time augmentation: auto (horizontal flip for mask models) | none | hflip
    seed: int = 0
    # segment / multitask
    missing_masks: str = "error"  # error | empty (images without a mask are lesion-free) | leave-out (named)
    nsd_tolerance: float = 1.0  # NSD's tolerance, % of each image's diagonal (`medcad.metrics.boundary`)
    # segment-multiclass: the lesion class of each label-map value, "1=cyst,2=stone"; None: the dataset.json beside
    # the masks (nnU-Net). A run stores the classes it read.
    mask_labels: str | None = None
    class_loss_weight: float = 1.0  # multitask loss = BCE + Dice (mask) + this x cross-entropy (class)
    frame_classes: str | None = None  # detect: labels whose frames are whole-frame boxes, e.g. "normal,unclear"
    # classify / multitask with two classes: the positive one (its sensitivity, ROC and operating points); None: the
    # finding beside its negation, malignant beside benign, else the last label (`tasks.positive_label`)
    positive: str | None = None
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

    def __post_init__(self) -> None:
        # a holdout split has no folds: config.json says so instead of the default 5 (which the split ignores)
        if self.holdout is not None and self.folds is not None:
            object.__setattr__(self, "folds", None)
        check_nsd_tolerance(self.nsd_tolerance)

    def data_options(self) -> DataOptions:
        """The dataset-reading options of this run."""
        return DataOptions(**{f.name: getattr(self, f.name) for f in fields(DataOptions)})

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with the given fields changed, None included (`decoder_channels=None`: smp's widths); each value is
        converted to its field's type (`coerce_setting`). Unknown names, values of the wrong type and None for a
        setting that cannot be None raise ConfigError naming them. Options a user left out are not passed: the CLI
        and the study reader drop them first."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: coerce_setting(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls().replace(**d)

    @classmethod
    def from_saved(cls, d: dict) -> TrainConfig:
        """The settings a run or model file saved (other keys are metadata); a setting added after it was saved
        takes the value the run was made with (`OLDER_RUNS`), not today's default; a saved None stays None (a saved
        decoder_channels of None means smp's widths, not "auto")."""
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
