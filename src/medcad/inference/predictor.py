"""Load a run's models (one fold, or all folds as an ensemble) and predict class probabilities for images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medcad.config import DataOptions, TrainConfig
from medcad.data.datasets import preprocess
from medcad.data.io import read_image
from medcad.data.transforms import Normalize
from medcad.engine.features import run_batched
from medcad.errors import ConfigError, DataError
from medcad.models.classifier import Classifier


def load_model_file(path: Path) -> tuple[torch.nn.Module, dict]:
    """A model (in eval mode) and its metadata from a model.pt written by a run, of any task.

    Raises:
        DataError: the file is missing, unreadable, or not a medcad model.
    """
    from medcad.engine.common import MODEL_FORMATS

    if not path.is_file():
        raise DataError(path, "model file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(
            path,
            f"corrupt or unreadable model file ({type(e).__name__}: {e}); retrain that fold by "
            "deleting its folder and running the same train command",
        ) from e
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt not in MODEL_FORMATS.values():
        raise DataError(path, f"not a medcad model file (format {fmt!r})")
    missing = [k for k in ("config", "labels", "data_config", "state_dict") if k not in blob]
    if missing:
        raise DataError(path, f"incomplete model file: no {', '.join(missing)}; retrain that fold")
    cfg = TrainConfig.from_dict(blob["config"])
    n = len(blob["labels"])
    if fmt == MODEL_FORMATS["classify"]:
        model = Classifier(cfg.model, n, head=cfg.head, weights="none", dropout=cfg.dropout)
    elif fmt == MODEL_FORMATS["segment"]:
        from medcad.engine.segment import build_segmenter

        model = build_segmenter(cfg.replace(weights="none"), n)
    else:
        from medcad.engine.detect import build_detector

        scales = blob["data_config"].get("anchor_scales")
        model = build_detector(cfg.replace(weights="none"), n, tuple(scales) if scales else None)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob


def run_task(run: Path) -> str:
    """The task of a run folder (from config.json) or of a model.pt file."""
    run = Path(run)
    if run.is_file():
        return load_model_file(run)[1]["config"].get("task", "classify")
    path = run / "config.json"
    if not path.is_file():
        raise DataError(run, "not a run folder (no config.json) nor a model.pt file")
    return TrainConfig.load(path).task


def require_task(meta: dict, path: Path, *tasks: str) -> None:
    """DataError unless the model file was trained for one of `tasks`."""
    task = meta["config"].get("task", "classify")
    if task not in tasks:
        raise DataError(path, f"is a {task} model; this needs a {' or '.join(tasks)} model")


def load_models(run: Path, fold: int | None, *tasks: str) -> tuple[list[Path], list[tuple[torch.nn.Module, dict]]]:
    """The model files of a run (every fold, or one), or a single model.pt, loaded; each must be of `tasks`."""
    if run.is_file():
        files = [run]
    elif fold is not None:
        files = [run / f"fold_{fold}" / "model.pt"]
    else:
        files = sorted(run.glob("fold_*/model.pt"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise DataError(run, "no trained model found (fold_*/model.pt): train it first, or check the path")
    loaded = [load_model_file(f) for f in files]
    for f, (_, meta) in zip(files, loaded, strict=True):
        require_task(meta, f, *tasks)
    if any(m["labels"] != loaded[0][1]["labels"] for _, m in loaded):
        raise ConfigError(f"{run}: its fold models disagree on the labels")
    return files, loaded


class _Ensemble(torch.nn.Module):
    """Mean of the members' softmax probabilities, each member's logits divided by its temperature (fitted on its
    fold's validation part; 1 for model files without one). Exports carry the temperatures as constants."""

    def __init__(self, models: Sequence[torch.nn.Module], temperatures: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.temperatures = [float(t) for t in (temperatures or [1.0] * len(models))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [(m(x).float() / t).softmax(-1) for m, t in zip(self.members, self.temperatures, strict=True)]
        return torch.stack(probs).mean(0)  # (B, n)


BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")


class Predictor:
    """Class probabilities for images from a run folder (ensemble of its folds, or one `fold`) or a model.pt.

    Backends: `torch-bf16` (channels_last, bf16 autocast; the default), `torch-fp32` (plain eager), and
    `onnx-fp32` / `onnx-int8` (ONNX Runtime on the run's export, made on first use).
    """

    def __init__(
        self,
        run: str | Path,
        fold: int | None = None,
        bf16: bool = True,
        backend: str | None = None,
        threads: int | None = None,
    ) -> None:
        backend = backend or ("torch-bf16" if bf16 else "torch-fp32")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if threads:
            torch.set_num_threads(threads)
        self.backend, self.threads, self.session = backend, threads, None
        run = Path(run)
        files, loaded = load_models(run, fold, "classify")
        meta = loaded[0][1]
        self.files = files
        self.labels: list[str] = meta["labels"]
        self.config = TrainConfig.from_dict(meta["config"])
        self.data_config = meta["data_config"]
        self.normalize = Normalize(self.data_config["mean"], self.data_config["std"])
        self.temperatures = [float(m.get("temperature", 1.0)) for _, m in loaded]
        self.net = _Ensemble([m for m, _ in loaded], self.temperatures).eval()
        self.bf16 = backend == "torch-bf16"
        if backend.startswith("onnx"):
            self.session = self._onnx_session(run, fold, int8=backend == "onnx-int8")

    def _onnx_session(self, run: Path, fold: int | None, int8: bool):
        import onnxruntime as ort

        from medcad.inference.export import export_onnx

        if run.is_file():
            raise ConfigError(f"{run}: the onnx backends need a run folder (they export it on first use)")
        folder = run / ("export" if fold is None else f"export_fold{fold}")
        path = folder / ("model.int8.onnx" if int8 else "model.onnx")
        if not path.is_file():
            export_onnx(run, folder, fold=fold, int8=int8)
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) of any size -> the model's (S, S, 3) input."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        return preprocess(image, self.config.image_size, self.config.bilateral)

    def predict_arrays(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, n_labels) for prepared uint8 images (N, S, S, 3)."""
        if self.session is not None:
            outs = [
                self.session.run(
                    None,
                    {
                        "images": np.ascontiguousarray(
                            images[i : i + batch_size].transpose(0, 3, 1, 2).astype(np.float32)
                        )
                    },
                )[0]
                for i in range(0, len(images), batch_size)
            ]
            return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)
        return run_batched(
            self.net,
            self.normalize,
            images,
            batch_size=batch_size,
            bf16=self.bf16,
            channels_last=self.backend != "torch-fp32",
        )[0]

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 32) -> list[dict]:
        """[{"image", "label", "probabilities": {label: p}}] for image files (unreadable ones raise DataError)."""
        s = self.config.image_size
        arr = np.empty((len(paths), s, s, 3), np.uint8)
        for i, p in enumerate(paths):
            arr[i] = self.prepare(read_image(p, draft=s))
        probs = self.predict_arrays(arr, batch_size) if len(paths) else np.zeros((0, len(self.labels)))
        return [
            {
                "image": str(p),
                "label": self.labels[int(pr.argmax())],
                "probabilities": {lab: float(v) for lab, v in zip(self.labels, pr, strict=True)},
            }
            for p, pr in zip(paths, probs, strict=True)
        ]


def image_batches(paths: Sequence[Path], prepare, batch: int):
    """Yield (paths, original RGB images, prepared (n, S, S, 3) array) per batch of image files, so that outputs
    can be drawn on and sized to the originals."""
    for start in range(0, len(paths), batch):
        chunk = list(paths[start : start + batch])
        originals = [read_image(p) for p in chunk]
        yield chunk, originals, np.stack([prepare(im) for im in originals])


def expand_inputs(inputs: Sequence[str | Path], options: DataOptions | None = None) -> list[Path]:
    """Files as given; a folder read as a dataset (any layout, `options` as for training) and expanded to its
    images, so that masks beside or paired with the images are not predicted as images.

    Raises:
        DataError: a path does not exist, or a folder holds no images.
    """
    from medcad.data.manifest import load_manifest

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            m = load_manifest(p, options)
            out += [m.root / rel for rel in dict.fromkeys(m.table["image"])]
        elif p.exists():
            out.append(p)
        else:
            raise DataError(p, "file not found")
    return out
