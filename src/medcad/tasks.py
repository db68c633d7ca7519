"""THE task table: what each task is, its model builder, model-file format, targets, outputs and headline metrics.

Every layer above looks a task up here instead of branching on its name. A task's classes in the upper layers
declare the tasks they serve (`tasks = (...)`), and each layer has its table of them (a test checks that every task
has every piece and that each class serves the tasks its table gives it):
    engine.train.fold_hooks     FoldHooks, made per `medcad.run.Run`: one fold's training and test predictions
    inference.registry.PREDICTORS   Predictor: prepare -> infer -> postprocess into `inference.Prediction` (each
                                class named "module:Class", imported when a run of its task is loaded)
    explain.EXPLAINERS          the CAM of a prediction, chosen by the task's `outputs`
    report.run_report           the task's sections of report.html follow the metrics its run wrote
Adding a task is an entry here plus its own modules, each named in its layer's list.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from medcad.config import TrainConfig
from medcad.data.manifest import cell_parts
from medcad.errors import ConfigError


@dataclass(frozen=True)
class Task:
    """One task of the table.

    Attributes:
        name: the `--task` value.
        summary: one line for help texts.
        model_format: the `format` written in its model files.
        targets: what the manifest must provide: "labels", "masks", "boxes".
        outputs: what its predictions carry: "probabilities", "mask", "boxes".
        headline: metrics.json keys shown first (console, study tables, repeats).
        build: (run settings, number of classes, the data_config stored in a model file or None) -> the model.
        data_config: model -> its preprocessing (mean, std, input size, ...), stored in model files.
        label_kind: "single" (one class per image: softmax, argmax) or "multi" (any subset of the labels: one
            sigmoid per label, each present when its probability reaches the threshold; the manifest's label
            column lists them separated by '|', ';' or ',', empty for none).
        val_score: what the validation score logged each epoch (val_score / val_auc, the training figure's) is.
    """

    name: str
    summary: str
    model_format: str
    targets: tuple[str, ...]
    outputs: tuple[str, ...]
    headline: tuple[str, ...]
    build: Callable[[TrainConfig, int, dict | None], nn.Module]
    data_config: Callable[[nn.Module], dict]
    label_kind: str = "single"
    mask_kind: str = "binary"
    val_score: str = "macro AUC, one class against the rest (accuracy when the part holds one class)"


def _classifier(cfg: TrainConfig, n: int, _: dict | None) -> nn.Module:
    from medcad.models.classifier import Classifier

    return Classifier(cfg.model, n, head=cfg.head, weights=cfg.weights, dropout=cfg.dropout)


def _classifier_data_config(model: nn.Module) -> dict:
    from medcad.models.backbones import backbone_data_config

    return backbone_data_config(model.backbone)


def _segmenter(
    cfg: TrainConfig, n: int, _: dict | None, *, with_class: bool = False, label_maps: bool = False
) -> nn.Module:
    """A mask model: one lesion channel, or with `label_maps` background + n lesion classes; with `with_class` a
    class head beside the mask (multitask)."""
    from medcad.models.segmentation import segmenter_from_config

    return segmenter_from_config(cfg, n, with_class=with_class, mask_channels=n + 1 if label_maps else 1)


def _segmenter_data_config(model: nn.Module) -> dict:
    from medcad.models.segmentation import segmenter_data_config

    return segmenter_data_config(model)


def _detector(cfg: TrainConfig, n: int, data_config: dict | None) -> nn.Module:
    from medcad.models.detection import detector_from_config

    scales = (data_config or {}).get("anchor_scales")
    return detector_from_config(cfg, n, tuple(scales) if scales else None)


def _detector_data_config(model: nn.Module) -> dict:
    from medcad.models.detection import detector_data_config

    return detector_data_config(model)


CLASS_HEADLINE = ("accuracy", "macro_f1", "macro_auc")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "classify",
            "class per image (two-stage transfer learning)",
            "medcad-classifier-1",
            ("labels",),
            ("probabilities",),
            CLASS_HEADLINE,
            _classifier,
            _classifier_data_config,
        ),
        Task(
            "segment",
            "lesion mask per image",
            "medcad-segmenter-1",
            ("masks",),
            ("mask",),
            ("dice", "iou"),
            _segmenter,
            _segmenter_data_config,
            val_score="Dice, mean per image (lesion probability >= 0.5)",
        ),
        Task(
            "multitask",
            "lesion mask and class per image, one network",
            "medcad-segmenter-1",
            ("labels", "masks"),
            ("probabilities", "mask"),
            ("dice", "iou", *CLASS_HEADLINE),
            partial(_segmenter, with_class=True),
            _segmenter_data_config,
            val_score="mean of Dice (per image, lesion probability >= 0.5) and macro AUC",
        ),
        Task(
            "segment-multiclass",
            "mask of several lesion classes per image (label maps: 0 background, 1 cyst, 2 stone, ...)",
            "medcad-segmenter-1",
            ("masks",),
            ("mask",),
            ("dice", "iou", "class_dice"),
            partial(_segmenter, label_maps=True),
            _segmenter_data_config,
            mask_kind="classes",
            val_score="Dice, mean per image of the mean over lesion classes",
        ),
        Task(
            "detect",
            "lesion boxes per image and the frame decision",
            "medcad-detector-1",
            ("boxes",),
            ("boxes",),
            ("ap50", "map"),
            _detector,
            _detector_data_config,
            val_score="AP at IoU 0.5",
        ),
        Task(
            "multilabel",
            "several findings per image, each present or absent (e.g. co-occurring abnormality subtypes)",
            "medcad-multilabel-1",
            ("labels",),
            ("probabilities",),
            ("macro_auc", "macro_f1", "exact_match"),
            _classifier,
            _classifier_data_config,
            label_kind="multi",
            val_score="mean AUC over the labels with both outcomes (1 - Hamming loss when none has)",
        ),
    )
}


REFERENCE_LABEL = "normal"  # the lesion-free class: subtypes are compared with it; frames of it show no lesion


# names of a lesion-free class as datasets spell them, compared without case, spaces or punctuation
REFERENCE_NAMES = ("normal", "healthy", "nolesion", "nofinding", "nofindings", "negative")


# a finding's negation as labels spell it: "no cancer", "No_DR", "non-malignant", "without polyp", "tumour-free",
# "controls". After non- / not / without, only a finding word itself: "non-small cell lung cancer", "non-Hodgkin
# lymphoma", "non-proliferative DR" and "non-mass enhancement" are findings.
FINDING_WORDS = (
    r"(?:lesions?|polyps?|tumou?rs?|cancers?|cancerous|malignan\w*|neoplas\w*|nodules?|mass(?:es)?|findings?|"
    r"abnormal\w*|diseased?|stones?|cysts?|patholog\w*)"
)
NEGATED_FINDING = re.compile(
    r"^no[\s_\-]+[a-z]|^(?:non|not|without)[\s_\-]*" + FINDING_WORDS + r"$|[a-z][\s_\-]+free$"
    r"|^(?:healthy[\s_\-]+)?controls?$"
)


def says_no_finding(label: str) -> bool:
    """Whether a label names the absence of findings ("normal", "No Finding", "none", "no_lesion", "no cancer",
    "non-malignant", "tumour-free", "control", ...)."""
    text = str(label).strip().lower()
    return _letters(text) in (*REFERENCE_NAMES, "none") or bool(NEGATED_FINDING.search(text))


def says_benign(label: str) -> bool:
    """Whether a label names benign findings ("benign", "Benign", "BENIGN_"): a finding, not its absence."""
    return _letters(label) == "benign"


def _letters(label: str) -> str:
    """A label's letters alone, lower case: how `says_no_finding` and `says_benign` compare names."""
    return re.sub(r"[^a-z]", "", str(label).lower())


def reference_label(labels: list[str]) -> str | None:
    """The run's lesion-free (reference) class among `labels` as the dataset spells it ("normal", "Normal",
    "no_lesion", "Healthy", "No finding", "none", ...), or None when none or more than one label reads as one."""
    found = [lab for lab in labels if says_no_finding(lab)]
    return found[0] if len(found) == 1 else None


def positive_label(labels: list[str], chosen: str | None = None) -> str:
    """The class shown as 'positive' in ROC curves and binary metrics (its sensitivity, the operating points).

    Args:
        labels: the run's class labels.
        chosen: the user's choice (a run's `positive` setting), matched exactly or, failing that, without case.
            None: for {X, a lesion-free class} it is X, the finding (`says_no_finding`: normal, no X, non-X,
            X-free, control); for {X, benign} it is X (malignancy is what is looked for); otherwise the last label.
            ("no cancer" had been positive beside "cancer", and "benign" beside "Malignant": the last label in sorted
            order.)

    Raises:
        ConfigError: `chosen` for other than two labels, or not one of them.
    """
    if chosen is not None:
        found = [lab for lab in labels if lab == chosen] or [lab for lab in labels if lab.lower() == chosen.lower()]
        if len(labels) != 2:
            raise ConfigError(
                f"positive: {chosen!r} names the positive class of a two-class run; this one has {len(labels)} "
                f"({', '.join(labels)}), each scored against the rest: drop the setting"
            )
        if len(found) != 1:
            raise ConfigError(f"positive: {chosen!r} is not one of the run's classes ({', '.join(labels)})")
        return found[0]
    return positive_from_names(labels) or labels[-1]


def run_positive(task: str, labels: list[str], chosen: str | None = None) -> str | None:
    """The positive class of a run of `task` with class `labels` (`positive_label`): for the tasks that read the
    `positive` setting (`TASK_SETTINGS`) with two labels or a chosen class; else None.

    Raises:
        ConfigError: as `positive_label`.
    """
    if task not in TASK_SETTINGS["positive"] or (len(labels) != 2 and chosen is None):
        return None
    return positive_label(labels, chosen)


def positive_from_names(labels: list[str]) -> str | None:
    """Of two labels, the finding beside its negation (`reference_label`) or beside benign; None when the names do
    not say (two findings, e.g. adenoma and hyperplastic) or for other than two labels."""
    if len(labels) != 2:
        return None
    ref = reference_label(labels)
    if ref is None:
        benign = [lab for lab in labels if says_benign(lab)]
        ref = benign[0] if len(benign) == 1 else None
    return None if ref is None else next(lab for lab in labels if lab != ref)


def metrics_positive(metrics: dict, labels: list[str]) -> str:
    """The positive class a run's metrics (metrics.json) were pooled with: that of their binary block, else as
    `positive_label` chooses for `labels` (metrics without one)."""
    return pooled_positive(metrics) or positive_label(labels)


def pooled_positive(metrics: dict) -> str | None:
    """The positive class of a metrics.json's binary block (a two-class run's pooled figures), else None."""
    return (metrics.get("binary") or {}).get("positive")


def p_lesion_words(labels: list[str]) -> str:
    """What a frame score of kind "p_lesion" is, in words: the class head's probability of no reference class."""
    return f"the class head's probability that the frame is not {reference_label(labels)!r}"


def split_strata(manifest, task: Task):
    """What a run's splits stratify by (`medcad.data.splits.make_splits`' strata): None (the label column) for
    single-label tasks; for multi-label ones each row's rarest finding ('' for none), so that every finding is spread
    over the folds without needing enough groups for every combination (cells as written, 'mass|malignant' beside
    'malignant|mass' and 'No Finding' beside '', had been strata of their own). `train` and `data split` alike."""
    from collections import Counter

    import numpy as np

    if task.label_kind != "multi":
        return None
    sets = [split_labels(v) for v in manifest.table["label"]]
    counts = Counter(lab for labs in sets for lab in labs)
    return np.array([min(labs, key=lambda lab: (counts[lab], lab)) if labs else "" for labs in sets], dtype=object)


def split_labels(value: str) -> list[str]:
    """The findings of one multi-label cell ('stone|cyst', 'stone; cyst', '' and 'No Finding': none), without
    empties; a label that names the absence of findings (`says_no_finding`, as ChestX-ray14's 'No Finding') is none."""
    return findings(cell_parts(value))


def images_per_finding(cells) -> dict[str, int] | None:
    """Where some label cell names several findings ('stone|cyst'), how many images hold each finding, as a
    multilabel run reads them (`split_labels`: 'No Finding' is none); else None (one label per image)."""
    sets = [set(split_labels(c)) for c in cells]
    if not any(len(s) > 1 for s in sets):
        return None
    return dict(sorted(Counter(f for s in sets for f in s).items()))


def findings(parts: list[str]) -> list[str]:
    """The findings among a cell's parts (`cell_parts`): not empty, not naming the absence of findings."""
    return [v for v in parts if v and not says_no_finding(v)]


def get_task(name: str) -> Task:
    """The task of this name; ConfigError listing the tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


_MASK_TASKS = ("segment", "segment-multiclass", "multitask")
_STAGED = ("classify", "multilabel")
# The settings that only some tasks read (every other setting applies to every task), and those tasks. Read from
# the engines: the classifier's two stages, a mask model's architecture and flip, the multitask class loss, the
# detector's frame classes; a detector has no dropout, class weights or oversampling.
TASK_SETTINGS: dict[str, tuple[str, ...]] = {
    "arch": _MASK_TASKS,
    "decoder_channels": _MASK_TASKS,
    "missing_masks": _MASK_TASKS,
    "nsd_tolerance": _MASK_TASKS,
    "tta": _MASK_TASKS,
    "mask_labels": ("segment-multiclass",),
    "class_loss_weight": ("multitask",),
    "frame_classes": ("detect",),
    "positive": ("classify", "multitask"),
    "head": (*_STAGED, "detect"),
    "head_epochs": _STAGED,
    "head_lr": _STAGED,
    "unfreeze": _STAGED,
    "stages": _STAGED,
    "label_smoothing": _STAGED,
    "class_weights": (*_STAGED, "multitask"),
    "dropout": (*_STAGED, *_MASK_TASKS),
    "oversample": (*_STAGED, *_MASK_TASKS),
}


def _model_reads(cfg: TrainConfig) -> dict[str, str]:
    """Settings the task reads that this run's model does not: {name: why}. A detector builds SSD or SSDlite (a
    classifier's head name builds SSDlite); an smp U-Net without a class head has no dropout."""
    from medcad.models.detection import HEADS
    from medcad.models.segmentation import DECODER_ARCHS  # segmentation-models-pytorch's nets: no dropout of their own

    out, task = {}, get_task(cfg.task)
    if "boxes" in task.outputs and cfg.head not in HEADS:
        out["head"] = f"a detector reads {' or '.join(HEADS)}"
    if task.outputs == ("mask",) and cfg.arch in DECODER_ARCHS:  # a mask alone: no class head
        out["dropout"] = f"{cfg.arch} without a class head has no dropout"
    return out


def settings_read(cfg: TrainConfig) -> dict:
    """The run's settings that its task and model read (`TASK_SETTINGS`, `_model_reads`), as `cfg.to_dict()` gives
    them: what a settings table shows. A detector's head is the detection head it builds."""
    read = {k: v for k, v in cfg.to_dict().items() if cfg.task in TASK_SETTINGS.get(k, (cfg.task,))}
    unread = _model_reads(cfg)
    if "head" in unread:
        from medcad.models.detection import HEADS

        read["head"] = HEADS[0]  # the detection head it builds
    return {k: v for k, v in read.items() if k not in unread or k == "head"}


def unread_settings(cfg: TrainConfig) -> list[str]:
    """Settings given a value other than medcad's default that the run never reads, each as "name=value (read by
    task, ...[; why not by this model])": they change nothing, and a run says so."""
    default, read, why = TrainConfig().to_dict(), settings_read(cfg), _model_reads(cfg)
    return [
        f"{k}={v} (read by {', '.join(TASK_SETTINGS[k])}{'; ' + why[k] if k in why else ''})"
        for k, v in cfg.to_dict().items()
        if (k not in read or read[k] != v) and v != default[k]
    ]


TTA_CHOICES = ("auto", "none", "hflip")


def flip_tta(setting: str, task: str) -> bool:
    """Whether a model's predictions average the image and its horizontal mirror (test-time augmentation).

    "hflip": yes; "none": no; "auto": for models that output masks (segment, multitask). Measured on the saved fold
    models of 5-fold runs (docs/results.md): BUSI multitask U-Net 128 px mean Dice 0.659 -> 0.683 and accuracy
    0.756 -> 0.772; Kvasir-SEG U-Net 256 px 0.807 -> 0.815; BUSI lite0 classifier accuracy 0.801 -> 0.812 but macro
    AUC 0.928 -> 0.928, so classifiers keep one pass. It doubles the inference cost.

    Raises:
        ConfigError: an unknown setting.
    """
    if setting not in TTA_CHOICES:
        raise ConfigError(f"unknown test-time augmentation {setting!r}; choose one of {', '.join(TTA_CHOICES)}")
    return setting == "hflip" or (setting == "auto" and "mask" in get_task(task).outputs)


FREEZE_DEFAULTS = {("probabilities",): 8, ("boxes",): 8}  # by a task's outputs; mask models (and the rest) 0
FREEZE_DEFAULTS_BEFORE = {("probabilities",): 4}  # runs saved without a stride, 2026-11-30 to 2026-12-04


def freeze_stride(cfg: TrainConfig, defaults: dict[tuple[str, ...], int] = FREEZE_DEFAULTS) -> int:
    """The output stride up to which a run's pretrained encoder stays frozen in fine-tuning (see
    `medcad.models.backbones.freeze_early_stages`): `cfg.freeze_stride`, or when it is None the default, 0 with a
    stage list (its "all" means every layer) and else the task's by its outputs (`defaults`): 8 for classifiers
    (stage 2) and detectors, 0 for mask models (`FREEZE_DEFAULTS_BEFORE`: classifiers 4 and detectors 0 in runs saved
    before 2026-12-04 without a stride, see `medcad.run.saved_settings`).

    Defaults, measured (docs/results.md). Classifiers, BUSI lite0, 5 grouped folds, every layer / stride 4 / stride 8:
    at 160 px, 8 epochs accuracy 0.801 / 0.817 / 0.808, macro AUC 0.928 / 0.931 / 0.936 (2026-11-30); at 224 px, 12
    epochs, stride 4 / 8: accuracy 0.809 / 0.836, macro AUC 0.930 / 0.935, no class AUC lower at stride 8 by the
    paired cluster bootstrap (2026-12-04); stage 2 trains 1.2-1.3x faster at 8 than at 4. Detectors (SSD heads read
    only the encoder's last two maps, at strides 16 and 32), SSDlite / lite0 on Kvasir-SEG, 256 px, 5 grouped folds,
    every layer / stride 8: AP50 0.865 / 0.862, paired difference 0.003 (95 % CI -0.011 to 0.019, p 0.59); mAP 0.508
    / 0.500, 0.008 (-0.005 to 0.020, p 0.26), training 1.8x faster there and 1.55x at 320 px (2026-12-05); on BUSI
    (benign / malignant boxes, normal frames) AP50 0.403 / 0.488, every paired measure better at stride 8 (p_Holm
    0.002). 0 for mask models, since a U-Net on Kvasir-SEG lost Dice with a frozen stem (256 px, 3 epochs: 0.814 ->
    0.791, Wilcoxon p < 0.001). `Run.resolve` saves the stride a run uses, so a later change of default does not
    change how a saved run resumes.

    Raises:
        ConfigError: a negative stride.
    """
    setting = cfg.freeze_stride
    if setting is None:
        return 0 if cfg.stages is not None else defaults.get(get_task(cfg.task).outputs, 0)
    if setting < 0:
        raise ConfigError(
            f"freeze_stride must be 0 (fine-tune every layer) or an output stride such as 4, not {setting}"
        )
    return setting


def decoder_setting(cfg: TrainConfig) -> str | None:
    """A run's `decoder_channels` in the one spelling its config.json keeps: "128,64,32,16,16", or None for smp's
    widths (however given) and for models without that decoder. "auto" gives the architecture's default
    (`medcad.models.segmentation.decoder_widths`).

    Raises:
        ConfigError: widths for a task or architecture without that decoder, or not "auto" nor five positive
            integers.
    """
    from medcad.models.segmentation import DECODER_ARCHS, SMP_DECODER_CHANNELS, decoder_widths

    mask = "mask" in get_task(cfg.task).outputs
    if not mask or cfg.arch not in DECODER_ARCHS:
        if cfg.decoder_channels in ("auto", None):
            return None
        raise ConfigError(
            f"decoder_channels apply to mask models with arch {', '.join(DECODER_ARCHS)}, not a {cfg.task} run"
            + (f" with arch {cfg.arch}" if mask else "")
        )
    widths = decoder_widths(cfg.decoder_channels, cfg.arch)
    return None if widths == SMP_DECODER_CHANNELS else ",".join(map(str, widths))
