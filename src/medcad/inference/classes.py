"""Class probabilities (classify): the folds' classifiers as one ensemble."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medcad.inference.predictor import Predictor
from medcad.models.predict import run_batched


class _Ensemble(torch.nn.Module):
    """Mean of the members' softmax probabilities, each member's logits divided by its temperature (fitted on its
    fold's validation part; 1 for model files without one); with `multilabel`, the mean of per-label sigmoids.
    Exports carry the temperatures as constants."""

    def __init__(
        self, models: Sequence[torch.nn.Module], temperatures: Sequence[float] | None = None, multilabel: bool = False
    ) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.temperatures = [float(t) for t in (temperatures or [1.0] * len(models))]
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return torch.stack([m(x).float().sigmoid() for m in self.members]).mean(0)  # (B, n)
        probs = [(m(x).float() / t).softmax(-1) for m, t in zip(self.members, self.temperatures, strict=True)]
        return torch.stack(probs).mean(0)  # (B, n)


class _Graph(torch.nn.Module):
    """0..255 float images -> probabilities, as one exportable module."""

    def __init__(self, normalize, net: torch.nn.Module) -> None:
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) float 0..255
        return self.net(self.normalize(x))  # (N, n_labels), probabilities


class ClassPredictor(Predictor):
    """Class probabilities (N, K) of the ensemble."""

    tasks = ("classify",)
    graph_outputs = ("probabilities",)
    agreement_measure = "top1_agreement"
    built_from_networks = ("_net",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperatures = [float(m.get("temperature", 1.0)) for m in self.metas]
        self._net: _Ensemble | None = None

    @property
    def net(self) -> _Ensemble:
        """The folds' classifiers as one ensemble (built with `models`)."""
        with self.build_lock:
            if self._net is None:
                self._net = _Ensemble(self.models, self.temperatures, self.multilabel).eval()
            return self._net

    def infer_torch(self, x: np.ndarray, batch: int) -> dict:
        eager = self.backend == "torch-fp32"
        probs = run_batched(self.net, self.normalize, x, batch_size=batch, bf16=self.bf16, channels_last=not eager)[0]
        return {"probabilities": probs.reshape(len(x), len(self.labels))}

    def graph(self) -> torch.nn.Module:
        return _Graph(self.normalize, self.net).eval()

    def agreement(self, ref: dict, got: dict) -> dict:
        a, b = ref["probabilities"], got["probabilities"]
        return {
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(a - b).max()),
        }


class MultilabelPredictor(ClassPredictor):
    """Per-label probabilities (N, K) of the ensemble; a label is present at or above the threshold."""

    tasks = ("multilabel",)
    agreement_measure = "label_agreement"
    multilabel = True

    def agreement(self, ref: dict, got: dict) -> dict:
        a, b = ref["probabilities"], got["probabilities"]
        t = self.threshold
        return {"label_agreement": float(((a >= t) == (b >= t)).mean()), "max_prob_diff": float(np.abs(a - b).max())}
