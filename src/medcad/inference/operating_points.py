"""A run's validated operating points as predict and serve apply them, read from its metrics.json before any model
loads: a two-class run's class decision (`validated_cut`: positive class and threshold of a rule chosen on
validation), a detector's box-score threshold (`validated_score_threshold`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from medcad.checkpoint import fold_model_files
from medcad.errors import ConfigError
from medcad.runfolder import RunFolder, fold_of


def validated_rules(run: Path) -> tuple[str, dict[str, dict]] | None:
    """`operating_rules` of a run folder's metrics.json; None for a model file or a run without one."""
    metrics = RunFolder(run).metrics if Path(run).is_dir() else None
    if metrics is None or not metrics.is_file():
        return None
    return operating_rules(json.loads(metrics.read_text()))


def operating_rules(metrics: dict) -> tuple[str, dict[str, dict]] | None:
    """A two-class run's positive class and its validated operating points ({rule: its metrics.json block, with
    "thresholds" per fold and "ensemble_threshold"}), on the temperature-scaled probabilities predict and serve give;
    None for another task, more classes, or a run from before thresholds were on that scale."""
    v = metrics.get("validated_operating_points") or {}
    if not v.get("scale"):  # older runs: thresholds on the probabilities before temperature scaling
        return None
    return v["positive"], {rule: o for rule, o in v.items() if isinstance(o, dict) and "thresholds" in o}


def rule_threshold(rule: dict, fold: int | None) -> float | None:
    """An operating point's threshold (its `operating_rules` block) for fold k's model, or for the fold models'
    ensemble (their mean) with None; None where the run has none."""
    return rule.get("ensemble_threshold") if fold is None else rule["thresholds"].get(str(fold))


def validated_cut(run: Path, fold: int | None, rule: str) -> tuple[str, float]:
    """(positive class, threshold on its temperature-scaled probability) of a two-class run's validated operating
    point `rule`: the fold models' mean threshold for their ensemble, fold k's own for `fold` k or for a fold's model
    file given as `run` (RUN/fold_k/model.pt).

    Raises:
        ConfigError: the run has no validated operating points (a model file, another task or more than two
            classes), or none of that name (its rules are named).
    """
    run = Path(run)
    if run.is_file() and fold_of(run) is not None:  # a fold's model file: that fold's own threshold
        fold, run = fold_of(run), run.parent.parent
    found = validated_rules(run)
    metrics = RunFolder(run).metrics
    if not found and metrics.is_file() and json.loads(metrics.read_text()).get("validated_operating_points_by_class"):
        raise ConfigError(
            f"{run}: --operating-point decides a two-class run's class; this run has more classes, so its class "
            "stays the most probable one. Its validated thresholds per class (validated_operating_points_by_class in "
            "metrics.json, and the report) are on the p_<class> that predict and serve give: cut those at them"
        )
    if not found or not found[1]:
        raise ConfigError(
            f"{run}: no validated operating points to decide at (two-class classify and multitask run folders "
            "have them, in metrics.json); drop --operating-point to name the most probable class"
        )
    positive, rules = found
    if rule not in rules:
        raise ConfigError(f"operating point {rule!r}: not one of this run's ({', '.join(rules)})")
    threshold = rule_threshold(rules[rule], fold)
    nothing = rules[rule].get("folds_calling_nothing") or []
    calls_nothing = str(fold) in nothing if fold is not None else len(nothing) == len(rules[rule]["thresholds"])
    if threshold is None and calls_nothing:
        whose = "every fold's validation part" if fold is None else f"fold {fold}'s validation part"
        raise ConfigError(
            f"operating point {rule!r}: {whose} met it only by calling nothing positive (too few of the rest there "
            "to reach it otherwise), so it has no threshold to decide at; choose another operating point"
        )
    if threshold is None:
        whose = "the fold models' mean threshold" if fold is None else f"fold {fold}'s threshold"
        raise ConfigError(
            f"operating point {rule!r}: {run} has no {whose} (a validation part of one class, or a run from before "
            "ensemble thresholds: `medcad evaluate RUN` records them)"
        )
    return positive, float(threshold)


DETECTION_RULE = "f1"  # a detector's validated operating point: the box score of the highest F1 on validation


def validated_score_threshold(run: Path, fold: int | None, rule: str) -> float:
    """A detection run's validated box-score threshold (`rule` "f1": the score of the highest box F1 at IoU 0.5 on the
    validation part, metrics.json's `validated_operating_point`): the fold models' mean for their ensemble, fold k's
    own for `fold` k or for a fold's model file given as `run`.

    Raises:
        ConfigError: another rule, a model file outside its run folder, a run trained before detectors chose one, or
            a fold whose validation part gave none.
    """
    run = Path(run)
    if rule != DETECTION_RULE:
        raise ConfigError(f"operating point {rule!r}: a detection run's is {DETECTION_RULE!r} (its box-score threshold "
                          "of the highest F1 on validation)")  # fmt: skip
    if run.is_file() and fold_of(run) is not None:
        fold, run = fold_of(run), run.parent.parent
    if run.is_file():
        raise ConfigError(
            f"{run}: a model file on its own holds no validation figures; give its run folder (or RUN/fold_k/model.pt "
            "inside it), or set --threshold"
        )
    metrics = RunFolder(run).metrics
    found = json.loads(metrics.read_text()).get("validated_operating_point") if metrics.is_file() else None
    if not found:
        raise ConfigError(
            f"{run}: no validated box-score threshold (detection runs choose one on validation since 2026-12-06; a "
            "run trained before has none: train it again, or set --threshold)"
        )
    if fold is None:
        missing = found.get("folds_without_threshold") or []
        if found.get("mean_threshold") is None or len(missing) == len(found["thresholds"]):
            raise ConfigError(
                f"operating point {rule!r}: no fold's validation part gave a threshold (no box found a true one "
                "there); set --threshold"
            )
        if missing:
            warnings.warn(
                f"operating point {rule!r}: fold(s) {', '.join(map(str, missing))} gave no threshold on validation; "
                "the ensemble's is the mean of the other folds' alone",
                stacklevel=2,
            )
        return float(found["mean_threshold"])
    fold_model_files(run, fold)  # a fold the run does not have is named as predict names it
    threshold = found["thresholds"][fold] if 0 <= fold < len(found["thresholds"]) else None
    if threshold is None:
        raise ConfigError(
            f"operating point {rule!r}: fold {fold}'s validation part gave no threshold (no box found a true one "
            "there); set --threshold"
        )
    return float(threshold)
