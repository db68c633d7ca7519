"""Tiny image sets generated in tmp_path, and the location of the real datasets in ../shared/data."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch

# The suite is the CPU's, as CI runs it: on a machine with a GPU, `accelerator auto` and `--device auto` would train and
# predict there, under thresholds and tolerances set for the CPU (seen on an H200: 6 of 39 engine tests failed so).
# GPUs stay hidden unless MEDCAD_TEST_GPU=1, which runs the GPU's own tests: `MEDCAD_TEST_GPU=1 pytest -m gpu`.
if os.environ.get("MEDCAD_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _memory_backed_temp_root(min_free: int = 8 << 30) -> None:
    """Tests' tmp folders in /dev/shm (memory) where it has room: the suite writes gigabytes of checkpoints and caches
    in minutes (up to 2.9 GB held at once), which a disk writes back at its own speed (188 MB/s here: the kernel then
    stalls the writers; two of the longest tests took 1.5-1.7x as long on disk). pytest's own numbered folders and
    their pruning stay (PYTEST_DEBUG_TEMPROOT is where pytest puts them); a folder the user named (--basetemp, the
    variable) wins."""
    import shutil

    shm = Path("/dev/shm")
    try:
        room = shutil.disk_usage(shm).free if shm.is_dir() and os.access(shm, os.W_OK) else 0
    except OSError:
        room = 0
    if room >= min_free:
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(shm))


_memory_backed_temp_root()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the modules with a test marked `heavy` start first, shared out among the workers:
    `make test`'s scheduler (--dist worksteal) hands each worker a run of consecutive tests (the first half, then the
    rest) and lets an idle one take the end of another's queue, so a heavy test left near the end kept the run waiting
    on it with the other worker idle. Each worker's run now begins with its share of those modules (every k-th), each
    whole and in its own order, so that a module's fixtures (a trained run, a study) serve all its tests at once
    (a heavy test moved alone had split its module, whose fixture was then built twice). The order is the same in
    every worker, as xdist needs; without workers nothing moves."""
    k = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    modules: dict[str, list[pytest.Item]] = {}
    for it in items:
        modules.setdefault(it.nodeid.split("::")[0], []).append(it)
    heavy = [tests for tests in modules.values() if any(t.get_closest_marker("heavy") for t in tests)]
    if k < 2 or not heavy:
        return
    light = [t for tests in modules.values() if tests not in heavy for t in tests]
    order, left = [], len(items)
    for c in range(k):
        size = left // (k - c)  # as worksteal's first hand-out sizes worker c's run
        share = [t for tests in heavy[c::k] for t in tests]
        take = max(0, size - len(share))
        order += share + light[:take]
        light, left = light[take:], left - len(share) - take
    items[:] = order + light


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUSI = SHARED_DATA / "busi" / "Dataset_BUSI_with_GT"
KVASIR_SEG = SHARED_DATA / "kvasir-seg"


def require(path: Path) -> Path:
    """Skip the test, saying why, when a real dataset is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"real dataset not found at {path} (expected ../shared/data beside the checkout)")
    return path


def noise_image(seed: int, size: int = 32, gray: bool = False) -> np.ndarray:
    """A random smooth image, distinct per seed (so that it is no near-duplicate of another seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8) if gray else (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def float32_softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) as a float32 softmax gives them: a class whose logit leads by more than ~17 gets
    exactly 1.0, while the others keep distinct tiny values (down to ~1e-45; 0 beyond a lead of ~104)."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def kidney_label_maps(
    root: Path, n: int = 24, size: int = 64, seed: int = 0, labels_file: bool = True, values: tuple[int, int] = (1, 2)
) -> Path:
    """images/ and masks/ (PNG label maps: 0 background, `values` a cyst (dark disc) and a stone (bright square);
    16-bit PNGs where a value exceeds 255, as ITK exports them) and an nnU-Net dataset.json."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cyst, stone = values
    for i in range(n):
        img = rng.normal(120, 12, (size, size)).clip(0, 255)
        mask = np.zeros((size, size), np.uint8 if max(values) <= 255 else np.uint16)
        if i % 4 != 3:  # a cyst: dark disc
            cx, cy, r = rng.integers(14, 50), rng.integers(14, 50), rng.integers(6, 11)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            img[disc], mask[disc] = 30, cyst
        if i % 2 == 0:  # a stone: bright square, where no cyst is
            x0, y0 = rng.integers(4, 50), rng.integers(4, 50)
            sq = np.zeros_like(mask, bool)
            sq[y0 : y0 + 9, x0 : x0 + 9] = True
            sq &= mask == 0
            img[sq], mask[sq] = 240, stone
        save(root / "images" / f"case_{i:03d}.png", np.repeat(img.astype(np.uint8)[..., None], 3, 2))
        save(root / "masks" / f"case_{i:03d}.png", mask)
    if labels_file:
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cyst": cyst, "stone": stone}}))
    return root


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels but holds none: a decompression bomb's header, without the memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def write_dicom(path: Path, frames: np.ndarray, patient: str = "P1", **elements) -> Path:
    """Write a (F, H, W) uint16 monochrome DICOM (multi-frame when F > 1) of PatientID `patient`; `elements` set
    more attributes or replace these (BitsStored=12, PixelRepresentation=1, RescaleIntercept=-1024, ...)."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = patient
    f, h, w = frames.shape
    ds.Rows, ds.Columns = h, w
    if f > 1:
        ds.NumberOfFrames = f
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = frames.astype("<u2").tobytes()
    for name, value in elements.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temporary folder, so that command defaults (predictions/, runs/) never write into
    the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _machine_read_per_test():
    """medcad reads the machine once per process (MEDCAD_CPU_FLAGS included): a test that sets the variable must not
    leave its reading to the next tests, whose worker processes (Ray, DataLoader) read the environment anew."""
    from medcad import devices

    devices.machine.cache_clear()
    yield
    devices.machine.cache_clear()
    # free the test's predictors now (OpenVINO / ONNX Runtime sessions and their thread pools), not at some later
    # collection: a later fork of this process (a subprocess, a worker) with such pools alive crashed it now and then
    # Then freeze what survives: the next collection scans only what later tests allocate, not the millions of
    # objects of torch, Lightning, OpenVINO and the rest (a full collection took ~0.5 s per test, minutes a suite).
    import gc

    gc.collect()
    gc.freeze()
    # Lightning's teardown re-registers every signal with the handler Python knows of (SIG_DFL for SIGSEGV, whose
    # handler is faulthandler's C one): a crash after a training test would print nothing. Reinstall it.
    import faulthandler
    import sys

    if sys.__stderr__ is not None:
        faulthandler.enable(file=sys.__stderr__, all_threads=True)


@pytest.fixture(autouse=True)
def _training_precision_timed_once_per_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On a CPU with bf16 in hardware a fit of `precision: auto` times its model in both precisions once per machine
    and keeps the choice in the cache folder (`medcad.engine.precision`), which each test has of its own: timed anew
    in every test, 62 fits of the suite had spent 44 s timing (Sapphire Rapids). Here the choices are kept per test
    process, as a machine keeps them; a test marked `precision_cache` has its own. Worker processes a test starts
    (a study's local or Ray workers, DDP ranks, the CLI) read the same choices: the test's cache folder's file is a
    link to the process's (each had timed on its own, and under load could choose otherwise than the test's own fit:
    local workers' results then differed from one process's in the last bits)."""
    if request.node.get_closest_marker("precision_cache"):
        return
    from medcad.data.cache import cache_dir
    from medcad.engine import precision

    shared = tmp_path_factory.getbasetemp() / "training_precision.json"

    def cache_file() -> Path:
        seen = cache_dir() / "training_precision.json"  # where worker processes of the test look
        own = bool(os.environ.get("MEDCAD_CACHE_DIR"))  # never a link in the user's own cache folder
        if own and not seen.exists() and not seen.is_symlink():
            seen.parent.mkdir(parents=True, exist_ok=True)
            seen.symlink_to(shared)
        return shared

    monkeypatch.setattr(precision, "cache_file", cache_file)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: training tests may share the 2 cores with other work, where two
    spinning OpenMP threads per process slow everything down many times over."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """root/<label>/*.png with 2 labels x 6 distinct images."""
    root = tmp_path / "classes"
    for li, label in enumerate(["lesion", "normal"]):
        for k in range(6):
            save(root / label / f"{label}_{k}.png", noise_image(100 * li + k))
    return root


def _write_easy_set(root: Path) -> Path:
    """Two learnable classes: a bright disc or not, on noise; 12 images each (the same bytes every time)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for label in ("lesion", "normal"):
        for k in range(12):
            img = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            if label == "lesion":
                cy, cx = rng.integers(10, 30, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 230
            save(root / label / f"{k}.png", img)
    return root


@pytest.fixture
def easy_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two learnable classes: a bright disc or not, on noise; 12 images each."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    return _write_easy_set(tmp_path / "ds")


_TRAINED: dict[tuple, Path] = {}


def _trained_once(name: str, build, tmp_path: Path, factory: pytest.TempPathFactory, entries: tuple[str, ...]) -> None:
    """Copies into `tmp_path` the `entries` (run and data folders) that `build(root)` makes under a folder of its own
    the first time this process asks for `name` in this environment: a test gets the files training would have
    written in its own folder (the runs' absolute paths rewritten to it) without training again (a tiny run trained
    per test had cost ~1.5 s of ~55 tests). The cache folder is not copied: its entries are keyed by the data's
    absolute paths, so a test's starts cold. The environment is the MEDCAD_* variables but the cache folder, the
    visible GPUs and torch's threads: a run trained under another reading of the machine is not reused.

    Raises AssertionError where a copied file still names the build folder (a path this copy does not rewrite)."""
    import shutil

    import torch

    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MEDCAD_") and k != "MEDCAD_CACHE_DIR"))
    key = (name, env, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.get_num_threads())
    if key not in _TRAINED:
        root = factory.mktemp(name)
        cache = os.environ.get("MEDCAD_CACHE_DIR")
        os.environ["MEDCAD_CACHE_DIR"] = str(root / "cache")
        try:
            build(root)
        finally:
            if cache is None:
                del os.environ["MEDCAD_CACHE_DIR"]
            else:
                os.environ["MEDCAD_CACHE_DIR"] = cache
        _TRAINED[key] = root
    root = _TRAINED[key]
    old, new = str(root).encode(), str(tmp_path).encode()
    for entry in entries:
        if not (root / entry).exists():
            continue
        shutil.copytree(root / entry, tmp_path / entry, dirs_exist_ok=True)
        for path in (tmp_path / entry).rglob("*"):
            if path.is_file() and old in (data := path.read_bytes()):
                assert path.suffix in (".json", ".csv", ".yaml"), f"{path} names the build folder {root}"
                path.write_bytes(data.replace(old, new))


@pytest.fixture
def tiny_run(easy_set: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-fold classification run on `easy_set` (32 px, one fine-tuning epoch), trained once per process
    (`_trained_once`)."""

    def build(root: Path) -> None:
        from medcad.config import TrainConfig
        from medcad.engine.train import train_run

        cfg = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)
        train_run(_write_easy_set(root / "ds"), root / "run", cfg, progress=False)

    _trained_once("tiny_run", build, tmp_path, tmp_path_factory, ("run",))
    return tmp_path / "run"


@pytest.fixture
def tiny_segmenter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-fold U-Net segmenter on synthetic frames (32 px, one epoch; frames without a mask count empty),
    trained once per process (`_trained_once`); its frames are in `synth/`."""

    def build(root: Path) -> None:
        from medcad.config import TrainConfig
        from medcad.data.synthetic import generate_synthetic
        from medcad.engine.train import train_run

        data = generate_synthetic(root / "synth", n_patients=6, frames_per_patient=2, size=48, seed=1).parent
        cfg = TrainConfig(task="segment", arch="unet", image_size=32, epochs=1, batch_size=8, folds=2)
        train_run(data, root / "seg", cfg.replace(val_fraction=0.25, missing_masks="empty"), progress=False)

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    _trained_once("tiny_segmenter", build, tmp_path, tmp_path_factory, ("synth", "seg"))
    return tmp_path / "seg"


def assert_predict_reproduces_fold(run: Path, images: Path, device: str, atol: float) -> None:
    """`medcad predict` of fold 0's model file with torch-fp32 on `device` gives the fold's scored test
    probabilities (result.json, with its validation temperature) within `atol`, the same class on every image; the
    fold trained in bf16 autocast."""
    import json

    from typer.testing import CliRunner

    from medcad.cli import app

    result = json.loads((run / "fold_0" / "result.json").read_text())
    assert result.get("train_precision", "bf16-mixed") == "bf16-mixed"
    files = [str(images / key) for key in result["test_keys"]]
    args = ["--backend", "torch-fp32", "--device", device, "--json", "--out", str(run.parent / "predicted")]
    res = CliRunner().invoke(app, ["predict", str(run / "fold_0" / "model.pt"), *files, *args])
    assert res.exit_code == 0, res.output
    answers = json.loads(res.stdout)
    names = json.loads((run / "metrics.json").read_text())["confusion_matrix"]["labels"]  # test_probs' columns
    got = np.array([[a["probabilities"][c] for c in names] for a in answers])
    from medcad.metrics.calibration import apply_temperature

    expected = apply_temperature(np.array(result["test_probs"]), result["temperature"])
    np.testing.assert_allclose(got, expected, atol=atol)
    assert (got.argmax(1) == expected.argmax(1)).all()


def export_graph(net: torch.nn.Module, path: Path, size: int, outputs: list[str]) -> None:
    """`net` as medcad's export writes a graph: float32 (N, 3, S, S) "images" in, named outputs, with the
    description beside it (model.json) that the graph sessions read."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "n"} for n in ["images", *outputs]}
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(net, x, str(path), input_names=["images"], output_names=outputs, dynamic_axes=axes, dynamo=False)
    path.with_suffix(".json").write_text(json.dumps({"outputs": outputs}))
