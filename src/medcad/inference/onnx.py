"""ONNX Runtime sessions on a run's export, for every task's predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcad.errors import ConfigError


def nchw(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 0..255, the graphs' input."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).astype(np.float32))


def export_folder(run: Path, fold: int | None) -> Path:
    return run / ("export" if fold is None else f"export_fold{fold}")


def onnx_session(run: Path, fold: int | None, int8: bool, threads: int | None = None):
    """An InferenceSession on RUN/export[_fold<k>]/model[.int8].onnx, exporting the run first when it is missing.

    Raises:
        ConfigError: `run` is a model file rather than a run folder.
    """
    import onnxruntime as ort

    from medcad.inference.export import export_onnx

    run = Path(run)
    if run.is_file():
        raise ConfigError(f"{run}: the onnx backends need a run folder (they export it on first use)")
    folder = export_folder(run, fold)
    path = folder / ("model.int8.onnx" if int8 else "model.onnx")
    if not path.is_file():
        export_onnx(run, folder, fold=fold, int8=int8)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Every named output of the session for prepared uint8 images (N, S, S, 3), batch by batch, concatenated."""
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, {"images": nchw(x[i : i + batch])}) for i in range(0, len(x), batch)]
    return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)} if parts else {}
