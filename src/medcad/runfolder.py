"""The layout of a run folder, in one place: every module that writes or reads a run's files asks `RunFolder`.

    RUN/config.json          the run's settings (medcad.config.TrainConfig) and the dataset it was made on
    RUN/splits.json          folds by image key (medcad.data.splits);  RUN/manifest.csv  the dataset as read
    RUN/samples.json         a fingerprint per image key (medcad.data.identity)
    RUN/data_ledger.csv      every file and row read, used or left out with its reason (medcad.data.ledger)
    RUN/predictions.csv      every test prediction of every fold;  RUN/metrics.json  the metrics with CIs
    RUN/repeats.json         mean ± sd over seeds (`--repeats`);    RUN/backends.json  `--backend auto`'s choices
    RUN/report.html          the run's report;  RUN/box_problems.txt  boxes clipped or dropped (detection)
    RUN/evaluations/<set>/   `evaluate --data`;  RUN/shortcut_check.json, shortcut_gallery.npz  `--shortcut-check`
    RUN/fold_<k>/model.pt    fold k's model;  result.json  its test predictions by key;  test_masks.npz  its masks
    RUN/fold_<k>/logs/{csv,tensorboard}/<stage>/   its training logs
    RUN/fold_<k>/checkpoints/<stage>/{best,last}.ckpt   while it trains (kept once finished: --keep-checkpoints)
    RUN/export[_fold<k>]/    the ONNX export of the ensemble (or of fold k)
A study keeps the same names for its own files (STUDY/splits.json, STUDY/report.html) and one run folder per
experiment under STUDY/runs/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FoldFolder:
    """Paths of one fold's files: `path` is RUN/fold_<k>."""

    path: Path

    @property
    def number(self) -> int:
        """k of RUN/fold_<k>."""
        return int(self.path.name.rpartition("_")[2])

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def result(self) -> Path:
        """result.json: written last, so a fold with one is finished."""
        return self.path / "result.json"

    @property
    def masks(self) -> Path:
        """test_masks.npz: the test images' lesion probabilities (mask tasks)."""
        return self.path / "test_masks.npz"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def all_checkpoints(self) -> Path:
        """The folder of every training stage's checkpoints."""
        return self.path / "checkpoints"

    def checkpoints(self, stage: str) -> Path:
        """The Lightning checkpoints (best.ckpt, last.ckpt) of a training stage."""
        return self.all_checkpoints / stage

    def history(self, stage: str) -> Path:
        """The CSV log (one row per epoch) of a training stage."""
        return self.logs / "csv" / stage / "metrics.csv"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder's files (nothing is created or checked here).

    Args:
        root: the run folder.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples.json"

    @property
    def ledger(self) -> Path:
        return self.root / "data_ledger.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def repeats(self) -> Path:
        return self.root / "repeats.json"

    def not_a_run(self) -> str:
        """Why this folder is not a run folder (no config.json), with what it is where medcad can tell: a folder of
        `--repeats` runs names its seeds' (evaluate and predict had said "not a run folder" alone)."""
        if self.repeats.is_file():
            seeds = sorted(p.name for p in self.root.glob("seed_*") if (p / "config.json").is_file())
            first = self.root / (seeds[0] if seeds else "seed_0")
            return (
                f"a folder of --repeats runs, not a run: give one of them ({', '.join(seeds[:4]) or 'seed_<s>'}, e.g. "
                f"{first}); `medcad report` of this folder shows them side by side"
            )
        return "not a run folder (no config.json)"

    @property
    def backends(self) -> Path:
        return self.root / "backends.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def model_card(self) -> Path:
        """The model card's figures as measured (latency included), kept with what they were measured on."""
        return self.root / "model_card.json"

    @property
    def box_problems(self) -> Path:
        """Boxes clipped or dropped while reading a detection set, one per line."""
        return self.root / "box_problems.txt"

    @property
    def shortcut_check(self) -> Path:
        """`evaluate --shortcut-check`: AUC with the lesion blanked / only the lesion kept."""
        return self.root / "shortcut_check.json"

    @property
    def shortcut_gallery(self) -> Path:
        return self.root / "shortcut_gallery.npz"

    @property
    def evaluations(self) -> Path:
        """`evaluate --data`: one folder per external set (its predictions.csv and metrics.json)."""
        return self.root / "evaluations"

    def fold(self, k: int) -> FoldFolder:
        """Fold k's folder."""
        return FoldFolder(self.root / f"fold_{int(k)}")

    def folds(self) -> list[int]:
        """The numbers of the fold folders there, in order."""
        return sorted(int(d.name[5:]) for d in self.root.glob("fold_*") if d.name[5:].isdigit())

    def finished(self, folds: list[int]) -> list[int]:
        """Those of `folds` whose result.json is written (a resumed run keeps them)."""
        return [k for k in folds if self.fold(k).result.is_file()]

    def fold_models(self) -> list[Path]:
        """Every fold's model file that exists, by fold number."""
        return sorted(self.root.glob("fold_*/model.pt"), key=lambda p: FoldFolder(p.parent).number)

    def export(self, fold: int | None = None) -> Path:
        """The ONNX export folder of the fold ensemble (or of one fold)."""
        return self.root / ("export" if fold is None else f"export_fold{int(fold)}")


def fold_of(model_file: str | Path) -> int | None:
    """k of a fold's model file (RUN/fold_k/model.pt), else None."""
    name = Path(model_file).parent.name
    return int(name[5:]) if name.startswith("fold_") and name[5:].isdigit() else None


def study_path(study: Path, stored: str | Path) -> Path:
    """A path a study's results.json holds (a run folder, the splits), as one to read, so a study folder can be moved
    or copied: a relative one is under `study`; an absolute one (studies written before paths were relative) is
    the study's own copy where `study` holds its tail (runs/<name>, splits.json), else the path itself.

    Raises:
        FileNotFoundError: neither exists, naming both.
    """
    p = Path(stored)
    if not p.is_absolute():
        if not (study / p).exists():
            raise FileNotFoundError(f"{study / p} (from {study / 'results.json'}) is gone")
        return study / p
    for k in (2, 1):  # runs/<name>, then splits.json
        own = study / Path(*p.parts[-k:])
        if own.exists():
            return own
    if p.exists():
        return p
    raise FileNotFoundError(f"{p} (from {study / 'results.json'}) is gone and {study} has no copy of it")


def fold_words(folds) -> str:
    """ "fold 2", "folds 0, 1": fold numbers in words."""
    return f"fold{'s' * (len(folds) != 1)} {', '.join(map(str, folds))}"


# predictions.csv columns that are text as written (names, classes, identities, JSON): never read as numbers or NaN
TEXT_COLUMNS = frozenset(
    {"image", "label", "predicted", "patient", "domain", "subgroup", "group", "status", "error", "warnings"}
    | {"frame_decision", "true_frame", "predicted_frame", "boxes", "true_boxes", "overlay_file", "mask_file"}
)


def read_predictions(path: str | Path):
    """A predictions.csv as it was written (pandas DataFrame): its text columns (TEXT_COLUMNS, and any column that is
    not all numbers) as spelled, empty cells "", so that a class named "None" or "NA" stays itself and "01" stays "01"
    (pandas' defaults had read them as NaN and 1: a report failed on "p_nan", a study skipped that class's test);
    every other column numeric (empty cells NaN; "inf" infinite)."""
    import numpy as np
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in table.columns:
        if column not in TEXT_COLUMNS:
            try:
                table[column] = pd.to_numeric(table[column].replace("", np.nan))
            except (ValueError, TypeError):  # text after all: kept as written
                pass
    return table
