"""Class probabilities (classify): the folds' classifiers as one ensemble, on torch or ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medcad.errors import ConfigError
from medcad.inference.predictor import TORCH_BACKENDS, Predictor
from medcad.models.predict import run_batched

BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")


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


class ClassPredictor(Predictor):
    """Class probabilities. Backends: torch-bf16, torch-fp32, and onnx-fp32 / onnx-int8 (ONNX Runtime on the
    run's export, made on first use)."""

    tasks = ("classify",)
    backends = (*TORCH_BACKENDS, "onnx-fp32", "onnx-int8")

    def __init__(self, run: str | Path, fold: int | None = None, backend: str = "torch-bf16", **kw) -> None:
        super().__init__(run, fold, backend, **kw)
        self.temperatures = [float(m.get("temperature", 1.0)) for m in self.metas]
        self.net = _Ensemble(self.models, self.temperatures).eval()
        self.session = None
        if backend.startswith("onnx"):
            self.session = self._onnx_session(self.run, fold, int8=backend == "onnx-int8")

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

    def infer(self, x: np.ndarray, batch: int = 32) -> dict:
        """{"probabilities": (N, K)} for prepared uint8 images (N, S, S, 3)."""
        if self.session is not None:
            outs = [
                self.session.run(
                    None, {"images": np.ascontiguousarray(x[i : i + batch].transpose(0, 3, 1, 2).astype(np.float32))}
                )[0]
                for i in range(0, len(x), batch)
            ]
            probs = np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)
        else:
            probs = run_batched(
                self.net,
                self.normalize,
                x,
                batch_size=batch,
                bf16=self.bf16,
                channels_last=self.backend != "torch-fp32",
            )[0]
        return {"probabilities": probs}
