"""Figures for reports (matplotlib, Agg backend), returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (110 dpi, tight bounding box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(labels: list[str], matrix: list[list[int]], title: str = "Confusion matrix") -> bytes:
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return figure_png(fig)


def roc_png(curves: dict[str, dict], title: str = "ROC curves", aucs: dict[str, float] | None = None) -> bytes:
    """`curves`: {name: {"fpr": [...], "tpr": [...]}}."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, c in curves.items():
        if not c.get("fpr"):
            continue
        auc = (aucs or {}).get(name)
        ax.plot(c["fpr"], c["tpr"], lw=1.6, label=f"{name}" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return figure_png(fig)


def reliability_png(rel: dict, ece: float | None = None, note: str = "") -> bytes:
    conf = np.asarray(rel.get("bin_confidence", []), dtype=float)
    acc = np.asarray(rel.get("bin_accuracy", []), dtype=float)
    cnt = np.asarray(rel.get("bin_count", []), dtype=float)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    keep = cnt > 0
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    ax.scatter(conf[keep], acc[keep], s=12 + 60 * cnt[keep] / max(cnt.max(), 1), zorder=3, label="bins (size = n)")
    ax.plot(conf[keep], acc[keep], lw=1)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Reliability" + (f", {note}" if note else "") + (f" (ECE {ece:.3f})" if ece is not None else ""))
    return figure_png(fig)


def curves_png(
    histories: dict[str, dict[str, list[float]]],
    score: str,
    title: str = "Training curves",
    loss_title: str = "loss",
    score_title: str | None = None,
) -> bytes:
    """`histories`: {fold: {"train_loss": [...], "val_loss": [...], "val_score": [...]}} per epoch; `score` names
    the validation score (the task's `val_score`; the right panel's title unless `score_title`)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")  # room for the title above the panels'

    def epochs(values: list[float]) -> tuple[range, list[float]]:  # epochs from 1; a marker each, so one shows
        return range(1, len(values) + 1), values

    style = {"lw": 1.2, "marker": "o", "ms": 3}
    for name, h in histories.items():
        line = axes[0].plot(*epochs(h.get("train_loss", [])), **style, label=f"{name} train")[0]
        axes[0].plot(*epochs(h.get("val_loss", [])), **style, ls="--", c=line.get_color(), label=f"{name} val")
        axes[1].plot(*epochs(h.get("val_score", [])), **style, c=line.get_color(), label=name)
    axes[0].set_title(loss_title)
    axes[1].set_title(score_title or f"validation score:\n{score}", fontsize=9)
    last = max(1, max((len(v) for h in histories.values() for v in h.values()), default=1))  # an empty log too
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)  # whole epochs, a single one too
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return figure_png(fig)


def froc_png(froc: dict) -> bytes:
    """The FROC (lesion sensitivity against false positives per image, log axis, its CPM points marked with their
    95 % CIs) beside the precision-recall curve of the same ranking (lesion classes pooled, IoU 0.5)."""
    c = froc["curve"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
    fpi = np.asarray(c["fp_per_image"], float)
    shown = fpi > 0
    sens = np.asarray(c["sensitivity"], float)
    start = sens[~shown].max() if (~shown).any() else 0.0  # lesions found before the first false positive
    a.step(np.r_[min(froc["fp_per_image"]) / 2, fpi[shown]], np.r_[start, sens[shown]], where="post", lw=1.4)
    rates = np.asarray(froc["fp_per_image"])
    value = np.array([s["value"] for s in froc["sensitivity"]], float)
    lo, hi = (np.array([s["ci95"][j] for s in froc["sensitivity"]], float) for j in (0, 1))  # None (no CI): nan
    err = [np.nan_to_num(np.clip(d, 0, None)) for d in (value - lo, hi - value)]
    a.errorbar(rates, value, yerr=err, fmt="o", ms=3,
               capsize=2, c="k", lw=0.8, label=f"CPM {froc['cpm']['value']:.3f}")  # fmt: skip
    a.set_xscale("log")
    a.set_xlim(rates.min() / 2, rates.max() * 2)
    a.set_ylim(0, 1.01)
    a.set_xlabel("false positives per image")
    a.set_ylabel("lesion sensitivity")
    a.set_title(f"FROC (IoU {froc['iou']:g}; {froc['n_lesions']} lesions)", fontsize=10)
    a.legend(fontsize=8, loc="lower right")
    b.plot(c["sensitivity"], c["precision"], lw=1.4)
    b.set_xlim(0, 1)
    b.set_ylim(0, 1.01)
    b.set_xlabel("recall (lesion sensitivity)")
    b.set_ylabel("precision")
    b.set_title(f"precision-recall ({', '.join(froc['classes'])}; IoU {froc['iou']:g})", fontsize=10)
    return figure_png(fig)


def bars_png(values: dict[str, tuple[float, float, float]], title: str, ylabel: str) -> bytes:
    """Bar chart with CI whiskers; `values`: {name: (value, lo, hi)}."""
    names = list(values)
    v = np.array([values[n][0] for n in names], dtype=float)
    lo = np.array([values[n][1] for n in names], dtype=float)
    hi = np.array([values[n][2] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 3.4))
    err = np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0)
    ax.bar(range(len(names)), v, yerr=err, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.0)  # from 0: a bar's height is its value (a cut axis had made small differences look large)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return figure_png(fig)


def tile_name(key: str, width: int = 28, lines: int = 3) -> str:
    """An image's name (its key in the dataset) as a gallery tile's caption shows it: whole, broken onto lines of
    `width` characters; past `lines` lines, its start and its end with "…" between (the tiles had shown only the last
    26 characters, "lignant/malignant (23).jpg", without saying so)."""
    import textwrap

    parts = textwrap.wrap(key, width, break_long_words=True, break_on_hyphens=False) or [key]
    if len(parts) > lines:
        parts = [*parts[: lines - 1], "…" + key[-(width - 1) :]]
    return "\n".join(parts)


def image_grid_png(tiles: list[np.ndarray], captions: list[str], cols: int = 4, title: str = "") -> bytes:
    rows = max(1, int(np.ceil(len(tiles) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, cap in zip(axes.flat, tiles, captions, strict=False):
        ax.imshow(tile)
        ax.set_title(cap, fontsize=7)
    if title:
        fig.suptitle(title)
    return figure_png(fig)


def histogram_png(values: np.ndarray, title: str, xlabel: str, bins: np.ndarray | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=np.linspace(0, 1, 21) if bins is None else bins, color="#4C72B0", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title)
    return figure_png(fig)
