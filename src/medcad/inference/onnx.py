"""The run's exported ONNX graph on a CPU runtime, for every task's predictor: ONNX Runtime or OpenVINO.

Backend names are `<runtime>-<precision>`: onnx-fp32, onnx-int8 (ONNX Runtime on model.onnx / model.int8.onnx),
openvino-fp32, openvino-bf16 (OpenVINO on model.onnx, inference precision f32 or bf16) and openvino-int8 (OpenVINO
on model.int8.onnx). Both runtimes run the same file, so the graph's outputs and their decoding are the same.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from medcad.devices import runtime_threads
from medcad.errors import ConfigError
from medcad.runfolder import RunFolder
from medcad.stopping import own_signal_stack

GRAPH_BACKENDS = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
DEFAULT_BOXES = "default_boxes.npz"  # a detector export's default boxes of each fold model, beside its graph


def nchw(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 0..255, the graphs' input."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).astype(np.float32))


class GraphSession:
    """An exported graph (float32 (N, 3, S, S) 0..255 -> named outputs) on ONNX Runtime or OpenVINO.

    Args:
        path: the .onnx file.
        backend: one of GRAPH_BACKENDS (the runtime and, for OpenVINO, the inference precision).
        threads: CPU threads (None: `medcad.devices.runtime_threads`, the count torch gets too: OMP_NUM_THREADS when
            set, else the usable cores).
    """

    def __init__(self, path: str | Path, backend: str, threads: int | None = None) -> None:
        self.path, self.backend = Path(path), backend
        threads = runtime_threads(threads)
        if backend.startswith("openvino"):
            from medcad import release_onednn_cap

            release_onednn_cap()
            import openvino as ov

            # each output under the name the graph declares (OpenVINO's first name for a tensor may be another), as
            # the export's description beside the graph lists them (loading the graph with onnx took 0.56 s of import)
            declared = _declared_outputs(self.path)
            precision = "bf16" if backend == "openvino-bf16" else "f32"  # int8 runs its QDQ graph's int8 layers
            config: dict = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
            config["INFERENCE_NUM_THREADS"] = threads
            config |= _openvino_cache()
            with own_signal_stack():  # OpenVINO's would be left dangling on this thread (see own_signal_stack)
                core = ov.Core()
                self._ov = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            names = [[d for d in declared if d in o.get_names()] for o in self._ov.outputs]
            if not all(names):
                raise ConfigError(f"{self.path}: its description (model.json) names outputs the graph lacks")
            self.output_names = [found[0] for found in names]
            self._requests = threading.local()  # one infer request per thread (see `_run`)
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self._ort = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            self.output_names = [o.name for o in self._ort.get_outputs()]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for one batch, safe to call from several threads at once: ONNX Runtime's session
        runs are; OpenVINO's compiled model called as a function reuses one infer request, so each thread has its
        own (two threads had been handed each other's outputs: serve's batcher beside a video job)."""
        if hasattr(self, "_ov"):
            request = getattr(self._requests, "request", None)
            if request is None:
                request = self._requests.request = self._ov.create_infer_request()
            result = request.infer({"images": x})  # copies of the outputs (share_outputs=False)
            return [np.asarray(result[out]) for out in self._ov.outputs]
        return self._ort.run(None, {"images": x})

    def run(self, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
        """Every named output for prepared uint8 images (N, S, S, 3), batch by batch, concatenated."""
        parts = [self._run(nchw(x[i : i + batch])) for i in range(0, len(x), batch)]
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(self.output_names)} if parts else {}


def _declared_outputs(path: Path) -> list[str]:
    """The output names of an exported graph, from the description `export_onnx` writes beside it (model.json); an
    export from before 2026-11-30, whose description lists none, has them read from the graph (with onnx).

    Raises:
        ConfigError: no readable description (a graph not exported by medcad), naming the file.
    """
    described = path.with_suffix(".json")
    try:
        meta = json.loads(described.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{described}: the export's description is missing or unreadable ({type(e).__name__}: {e}); export the "
            "run again (`medcad export RUN`, with the --fold and --int8 it was exported with)"
        ) from e
    if isinstance(meta, dict) and isinstance(meta.get("outputs"), list):
        return [str(n) for n in meta["outputs"]]
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def _openvino_cache() -> dict:
    """OpenVINO's compiled-model cache in medcad's cache folder (`cache_dir()/openvino`), where it can be written: a
    predictor's graph compiles once per model, machine and settings, not at every start (a 64 px U-Net: 0.38 s a
    compile, 0.17 s read and taken from the cache, 2026-12-05). The model is given to OpenVINO read, not by path,
    so that the cache key is its content (a re-exported model.onnx at the same path is compiled again)."""
    import os

    from medcad.data.cache import cache_dir

    folder = cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    return {"CACHE_DIR": str(folder)} if os.access(folder, os.W_OK) else {}


def graph_session(run: Path, fold: int | None, backend: str, threads: int | None = None) -> GraphSession:
    """The backend's session on RUN/export[_fold<k>]/model[.int8].onnx (medcad.inference.registry.load_predictor
    exports the run first when it is missing).

    Raises:
        ConfigError: `run` is a model file rather than a run folder, or the run has no export for the backend.
    """
    run = Path(run)
    if run.is_file():
        raise ConfigError(f"{run}: the {backend} backend needs a run folder (it exports the run on first use)")
    path = RunFolder(run).export(fold) / ("model.int8.onnx" if backend.endswith("int8") else "model.onnx")
    if not path.is_file():
        raise ConfigError(
            f"{path}: not exported; run `medcad export {run}{' --int8' if backend.endswith('int8') else ''}` "
            "or load the predictor with medcad.inference.registry.load_predictor, which exports it"
        )
    return GraphSession(path, backend, threads)
