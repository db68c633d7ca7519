"""The predictor contract of every task: prepare -> infer -> postprocess, returning `Prediction`s.

A predictor loads a run's models: with `fold=None` (the default) every fold's model as one ensemble, the same for
every task (mean class probabilities; mean lesion probability per pixel; every model's boxes merged by class-wise
non-maximum suppression); with `fold=k` that fold's model alone; or a single model.pt file.

- `prepare(rgb)`: the deterministic preprocessing of training (optional interface removal and bilateral filter,
  resize to S x S), uint8.
- `infer(x)`: (N, S, S, 3) uint8 -> {"probabilities": (N, K), "mask": (N, S, S) float 0..1, "lesion_classes":
  (N, K, S, S) float 0..1 (label maps), "boxes": N x (m, 6) in S x S pixels}, what the task has, on the chosen
  backend.
- `postprocess(outputs, i, name, (h, w))`: one `Prediction` at the original image's size.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from medcad import usable_cores
from medcad.checkpoint import build_model, read_models
from medcad.config import DataOptions, TrainConfig
from medcad.data.datasets import preprocess
from medcad.data.filekinds import not_found
from medcad.data.io import read_image
from medcad.data.labelmaps import parse_mask_labels
from medcad.data.manifest import FRAME_SEP
from medcad.data.pixel_limit import MAX_PIXELS_ENV, max_pixels
from medcad.data.transforms import Normalize
from medcad.devices import fit_torch_threads, torch_device
from medcad.errors import ConfigError, DataError
from medcad.inference.onnx import GRAPH_BACKENDS, graph_session
from medcad.inference.operating_points import validated_cut
from medcad.inference.prediction import Prediction

TORCH_BACKENDS = ("torch-bf16", "torch-fp32")
MIN_AGREEMENT = 0.99  # a backend agrees with torch-fp32 when the task's agreement measure reaches this


class Predictor:
    """Base of every task's predictor (see the module docstring). Subclasses set `tasks` and implement
    `infer_torch`, `graph` (the exportable network, float32 (N, 3, S, S) 0..255 -> the tensors `graph_outputs`
    names), `decode` (those outputs -> the `infer` dict) and `agreement` (how close two backends' outputs are).

    Args:
        run: a run folder or a model.pt file.
        fold: one fold's model instead of the ensemble of all folds.
        backend: "torch-fp32" (plain eager), "torch-bf16" (channels_last, reduced-precision autocast: fast on GPUs
            and CPUs with native bf16, ~10x slower than fp32 where bf16 is emulated), or a graph backend on the
            run's export in RUN/export[_fold<k>], made on first use: "onnx-fp32", "onnx-int8" (ONNX Runtime),
            "openvino-fp32", "openvino-bf16", "openvino-int8" (OpenVINO). `medcad.inference.registry.
            load_predictor` also takes "auto" (the fastest that agrees here: medcad.inference.backends).
        threads: CPU threads for torch / ONNX Runtime.
        threshold: lesion-probability threshold of masks, score threshold of boxes.
        device: where the torch backends run: "cpu", "auto" (the first GPU if any, else the CPU), "cuda", "cuda:N";
            "torch-bf16" autocasts to bf16 there (fp16 on GPUs without bf16).
        networks: the folds' networks as another predictor of the same run, fold and device has them built (its
            `models`): used, not built again (`auto` measures torch-bf16 on torch-fp32's networks).

    Raises:
        DataError: no model, or a model of another task; ConfigError: an unknown backend or device.
    """

    tasks: tuple[str, ...] = ()
    backends: tuple[str, ...] = TORCH_BACKENDS + GRAPH_BACKENDS
    graph_outputs: tuple[str, ...] = ()
    agreement_measure = ""  # the key of `agreement` that says, in one number, how well two backends agree
    multilabel = False  # probabilities are per label (sigmoid), not over classes
    # a two-class run's decision at a validated operating point (`decide_at`): its rule, (positive class, threshold)
    operating_point: str | None = None
    cut: tuple[str, float] | None = None
    frame_score_kind, min_frame_score = "lesion_area", 0.0  # masks: the frame-level decision (see Prediction)
    networks_at_start = False  # build the torch networks as the predictor starts on a graph backend too
    built_from_networks: tuple[str, ...] = ()  # attributes a subclass builds from `models` (None until then)

    def __init__(
        self,
        run: str | Path,
        fold: int | None = None,
        backend: str = "torch-fp32",
        threads: int | None = None,
        threshold: float = 0.5,
        device: str = "cpu",
        *,
        networks: list[torch.nn.Module] | None = None,
    ) -> None:
        if backend not in self.backends:
            raise ConfigError(
                f"backend {backend!r} is not available for {'/'.join(self.tasks)} runs; choose one of "
                f"{', '.join(self.backends)}"
            )
        fit_torch_threads(threads)
        self.run, self.fold, self.backend, self.threads, self.threshold = Path(run), fold, backend, threads, threshold
        self.files, self.metas = read_models(self.run, fold, *self.tasks)
        self.device = torch_device(device)
        meta = self.metas[0]
        self.labels: list[str] = meta["labels"]
        self.config = TrainConfig.from_saved(meta["config"])
        self.task = self.config.task
        self.data_config = meta["data_config"]
        self.normalize = Normalize(self.data_config["mean"], self.data_config["std"])
        self.bf16 = backend == "torch-bf16"
        self.session = graph_session(self.run, fold, backend, threads) if backend in GRAPH_BACKENDS else None
        self.backend_choice: dict = {"backend": backend, "reason": "asked for"}  # `auto` says why it chose
        # label-map models: the mask value of each class, as the run read its masks
        self.class_values = parse_mask_labels(self.config.mask_labels).values if self.config.mask_labels else None
        self._built: list[torch.nn.Module] | None = networks
        self._remembered: dict[str, dict] | None = None  # `infer_once`'s outputs by the images' digest
        self.build_lock = threading.RLock()  # one build, whichever threads ask first (serve's batchers, video jobs)
        if self.session is None or self.networks_at_start:
            self.models  # noqa: B018  (built now: a model file that does not fit fails here, not at the first image)

    @property
    def models(self) -> list[torch.nn.Module]:
        """The folds' networks on the predictor's device. Built as the predictor starts where it runs them (torch
        backends; detectors, which decode boxes with them); on an exported graph only when asked for (export,
        Grad-CAM), since building them takes longer than the graph's start (three U-Nets: ~1 s, and
        segmentation_models_pytorch's import).

        Raises:
            DataError: a model file's weights do not fit its network (`checkpoint.build_model`).
        """
        with self.build_lock:
            if self._built is None:
                built = [build_model(meta, f) for meta, f in zip(self.metas, self.files, strict=True)]
                self._built = [m.to(self.device) for m in built]
            return self._built

    def with_own_networks(self) -> Predictor:
        """A copy of this predictor, the same in every setting, whose torch networks are its own (copies of
        `models`, built first if not yet): hooks and gradients on them (Grad-CAM, in serve) see nothing of what other
        threads predict with this one at the same time (a CAM had taken in a video frame's activations). Its graph
        session, if any, is this one's (sessions answer each thread for its own images)."""
        networks = [copy.deepcopy(m) for m in self.models]  # under no lock: inference does not change the weights
        twin = copy.copy(self)
        twin._built, twin.build_lock, twin._remembered = networks, threading.RLock(), None
        for name in self.built_from_networks:
            setattr(twin, name, None)
        return twin

    @classmethod
    def operating_point_settings(cls, run: Path, fold: int | None, rule: str) -> tuple[dict, tuple[str, float] | None]:
        """What a validated operating point `rule` of `run` (fold `fold`, or the ensemble with None) changes, read
        from its metrics before any model loads: (settings for `__init__`, the cut for `decide_at`). A class
        decision's: ({}, `validated_cut`).

        Raises:
            ConfigError: the run has no such operating point."""
        return {}, validated_cut(run, fold, rule)

    def decide_at(self, operating_point: str | None, cut: tuple[str, float] | None) -> Predictor:
        """Name the class at a validated operating point (`validated_cut`: the positive class when its
        temperature-scaled probability reaches the rule's threshold, else the other class), or, with None, the most
        probable class; an operating point set at load (a detector's box-score threshold,
        `operating_point_settings`) is recorded with `cut` None. Returns the predictor."""
        self.operating_point, self.cut = operating_point, cut
        return self

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (S, S, 3) uint8 model input."""
        return preprocess(rgb, self.config.image_size, self.config.bilateral, self.config.interface)

    def infer(self, x: np.ndarray, batch: int = 32) -> dict:
        """Model outputs for prepared images (N, S, S, 3) uint8 (see the module docstring), on the backend."""
        if self.session is None:
            return self.infer_torch(x, batch)
        return self.decode(self.session.run(x, batch))

    @contextmanager
    def remembering(self) -> Iterator[None]:
        """Within, `infer_once` computes each set of images' outputs once (forgotten on leaving: they can be large)."""
        self._remembered = {}
        try:
            yield
        finally:
            self._remembered = None

    def infer_once(self, x: np.ndarray, batch: int = 16) -> dict:
        """`infer(x, batch)`, remembered by the images' content within `remembering()`: an export's check and
        `auto`'s measurement compare the backends with the same torch-fp32 outputs, computed once (on a hit, `batch`
        is not looked at). Not for timing."""
        if self._remembered is None:
            return self.infer(x, batch)
        x = np.ascontiguousarray(x)
        key = f"{x.shape} {x.dtype} {hashlib.blake2b(x.data, digest_size=16).hexdigest()}"
        if key not in self._remembered:
            self._remembered[key] = self.infer(x, batch)
        return self._remembered[key]

    def infer_torch(self, x: np.ndarray, batch: int) -> dict:
        raise NotImplementedError

    def graph(self) -> torch.nn.Module:
        """The network as one exportable module: float32 RGB (N, 3, S, S) in 0..255 -> `graph_outputs`."""
        raise NotImplementedError

    def decode(self, outputs: dict[str, np.ndarray]) -> dict:
        """The graph's named outputs -> the `infer` dict (identity unless the task decodes, e.g. boxes)."""
        return outputs

    def agreement(self, ref: dict, got: dict) -> dict:
        """How closely `got` (another backend's `infer` output) agrees with `ref`, by the task's measure."""
        raise NotImplementedError

    def postprocess(self, outputs: dict, i: int, name: str, size: tuple[int, int]) -> Prediction:
        """Image i's outputs as a Prediction at the original (height, width): each output type scales itself (the
        mask's probabilities resized bilinearly, then thresholded; the boxes scaled)."""
        settings = {
            "threshold": self.threshold,
            "multilabel": self.multilabel,
            "frame_score_kind": self.frame_score_kind,
            "min_frame_score": self.min_frame_score,
            "class_values": self.class_values,
            "cut": self.cut,
        }
        return Prediction.from_infer(outputs, i, name, self.labels, size, self.config.image_size, settings)

    def predict(self, images: Sequence[np.ndarray], names: Sequence[str], batch: int = 32) -> list[Prediction]:
        """Predictions for RGB images (H, W, 3) uint8 of any sizes."""
        if not images:
            return []
        outputs = self.infer(np.stack([self.prepare(im) for im in images]), batch)
        return [
            self.postprocess(outputs, i, str(n), im.shape[:2])
            for i, (im, n) in enumerate(zip(images, names, strict=True))
        ]

    def predict_files(
        self, paths: Sequence[str | Path], batch: int = 32, workers: int | None = None, errors: str = "yield"
    ) -> Iterator[tuple[Prediction, np.ndarray] | tuple[DataError, None]]:
        """(Prediction, original RGB image) per image file, in order: a DataLoader decodes and prepares the files in
        `workers` processes (default: up to 4, none for a single batch) while the model predicts batch by batch.

        Args:
            errors: "yield": an unreadable file (corrupt, truncated, over the pixel limit) gives (DataError naming it,
                None) in its place and the others go on; "raise": it raises that DataError.

        Raises:
            DataError: an unreadable image, with errors="raise"; ConfigError: a bad MEDCAD_MAX_PIXELS.
        """
        from torch.utils.data import DataLoader

        if errors not in ("yield", "raise"):
            raise ValueError(f"errors={errors!r}: use 'yield' or 'raise'")
        max_pixels()  # a bad MEDCAD_MAX_PIXELS is one ConfigError here, not a failure of every file in the workers
        if workers is None:
            workers = min(4, usable_cores()) if len(paths) > batch else 0
        files = _ImageFiles(paths, self.config.image_size, self.config.bilateral, self.config.interface)
        # workers start from a clean forkserver process, never forked from this one: a fork of a process whose
        # OpenVINO / ONNX Runtime thread pools are running crashed it (signal 11) now and then. The forkserver
        # imports this module once as it starts (torch, torchvision: ~8 s on 2 cores), so each worker forked from it
        # starts ready instead of importing them again. Workers get this process's pixel limit, which the
        # forkserver (started once, earlier) may not have.
        context = _forkserver() if workers and sys.platform.startswith("linux") else None
        same_limit = functools.partial(_set_env, {MAX_PIXELS_ENV: os.environ.get(MAX_PIXELS_ENV)})
        loader = DataLoader(files, batch, num_workers=workers, collate_fn=list, multiprocessing_context=context)
        loader.worker_init_fn = same_limit
        for items in loader:
            bad = [DataError(name, problem) for _, _, name, problem in items if problem is not None]
            if bad and errors == "raise":
                raise bad[0]
            good = [(prepared, rgb, name) for prepared, rgb, name, problem in items if problem is None]
            outputs = self.infer(np.stack([prepared for prepared, _, _ in good]), batch) if good else {}
            bad_iter, k = iter(bad), 0
            for _, rgb, name, problem in items:
                if problem is not None:
                    yield next(bad_iter), None
                else:
                    yield self.postprocess(outputs, k, name, rgb.shape[:2]), rgb
                    k += 1


def _forkserver():
    """The forkserver context, with this module preloaded in the server (it takes effect when the server starts:
    once per process)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])  # "__main__": the default list
    return context


def _set_env(values: dict[str, str | None], worker_id: int) -> None:
    """A DataLoader worker's environment variables set (or removed, for None) as in the process that started it."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _ImageFiles(torch.utils.data.Dataset):
    """(prepared (S, S, 3) uint8, original RGB, path, None) per file, or (None, None, path, problem) when unreadable
    (a worker cannot raise DataError into the main process as itself)."""

    def __init__(self, paths: Sequence[str | Path], size: int, bilateral: bool, interface: str = "none") -> None:
        self.paths, self.size, self.bilateral, self.interface = list(paths), size, bilateral, interface

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        try:
            rgb = read_image(*split_frame(self.paths[i]))
        except DataError as e:
            return None, None, str(self.paths[i]), e.problem
        return preprocess(rgb, self.size, self.bilateral, self.interface), rgb, str(self.paths[i]), None


def expand_inputs(inputs: Sequence[str | Path], options: DataOptions | None = None) -> list[str]:
    """What to predict, one item per image: files as given (`FILE#k`: frame or page k of a multi-frame file, as predict
    names it); a folder or a manifest file (CSV / TSV / Excel / COCO JSON / CVAT XML, or any file with --layout csv)
    read as a dataset (any layout, `options` as for training) and expanded to its images, so that masks beside or paired
    with the images are not predicted as images; every frame of a multi-frame DICOM as `<path>#<frame>` (`split_frame`
    reads it back). A folder of folders is read without labels unless `options.pattern` gives them: every image at any
    depth is predicted (images beside one sub-folder had been left out as not fitting the class folders' pattern
    `{label}`).

    Raises:
        DataError: a path does not exist, or a folder holds no images.
    """
    from medcad.data.layouts import load_manifest
    from medcad.data.ledger import TABLE_SUFFIXES
    from medcad.data.media import MEDIA_SUFFIXES, expand_frames

    out: list[str] = []
    options = options or DataOptions()
    unlabelled = options if options.pattern is not None else dataclasses.replace(options, pattern="")
    for item in inputs:
        p = Path(item)
        suffix = p.suffix.lower()
        listed = p.is_file() and (
            suffix in TABLE_SUFFIXES or (options.layout == "csv" and suffix not in MEDIA_SUFFIXES)
        )  # an image stays one
        if p.is_dir() or listed:  # a folder, or a manifest (CSV, Excel, COCO, CVAT) naming the images
            m = load_manifest(p, unlabelled)
            for note in m.notes:  # how the folder was read, with its ledger line
                logging.getLogger(__name__).warning("note: %s", note)
            m.check_complete(options.allow_missing)
            out += [str(m.root / key) for key in m.keys]
        elif p.exists():
            rows = expand_frames([{"image": p.name}], p.parent, [])  # an unreadable DICOM fails as itself, later
            out += [str(p) if r.get("frame") is None else f"{p}{FRAME_SEP}{r['frame']}" for r in rows] or [str(p)]
        elif split_frame(p)[1] is not None:  # one frame or page, named as predict names it (`a.tif#1`)
            out.append(str(p))
        else:
            raise DataError(p, not_found(p))
    return _once_each(out)


def _once_each(items: list[str]) -> list[str]:
    """`items` with each image (file and frame, the file by its real path) once, in first-given order; the repeats
    said in a note (the same file given twice, or given and in a folder given, had been predicted twice: two rows)."""
    seen: set[tuple[str, int | None]] = set()
    once, repeats = [], []
    for item in items:
        base, frame = split_frame(item)
        key = (os.path.realpath(base), frame)
        (repeats if key in seen else once).append(item)
        seen.add(key)
    if repeats:
        shown = ", ".join(repeats[:3]) + (f" and {len(repeats) - 3} more" if len(repeats) > 3 else "")
        logging.getLogger(__name__).warning(
            "note: %d input(s) given more than once (or also in a folder given) predicted once: %s", len(repeats), shown
        )
    return once


def split_frame(item: str | Path) -> tuple[Path, int | None]:
    """(file, frame) of an item of `expand_inputs`: `a.dcm#3` is frame 3 of a.dcm (unless a file of that very name
    exists); anything else is a file."""
    text = str(item)
    base, sep, frame = text.rpartition(FRAME_SEP)
    if sep and frame.isdigit() and not Path(text).exists() and Path(base).is_file():
        return Path(base), int(frame)
    return Path(text), None
