"""A real (tiny) detection fold: train, result.json, model file round trip, resume from last.ckpt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcad.checkpoint import load_model_file
from medcad.config import TrainConfig
from medcad.data.datasets import DetectionDataset
from medcad.data.transforms import box_augmentation
from medcad.engine.detect import DetectHooks
from medcad.engine.fold import FoldData, train_fold
from medcad.errors import ConfigError
from medcad.models.predict import predict_detections
from medcad.run import Run

SIZE = 64


def _data(images, boxes) -> FoldData:
    return FoldData(images, np.zeros(len(images), int), ["square", "disc"], boxes=boxes)


pytestmark = pytest.mark.usefixtures("one_thread")


FAST = TrainConfig(task="detect", image_size=SIZE, epochs=2, batch_size=8, lr=1e-3, patience=5, augment="light")


def _frames(n: int = 16, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise frames with a bright square (class 0) or disc (class 1); frames 0 and 1 have no object."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    boxes = []
    for i in range(n):
        if i < 2:
            boxes.append(np.zeros((0, 5), np.float32))
            continue
        cls, r = i % 2, int(rng.integers(8, 16))
        cx, cy = rng.integers(r, SIZE - r, 2)
        inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r) if cls == 0 else (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        images[i][inside] = (230, 220, 90) if cls == 0 else (90, 220, 230)
        boxes.append(np.array([[cx - r, cy - r, cx + r, cy + r, cls]], np.float32))
    images.setflags(write=False)  # like the memory-mapped image cache
    return images, boxes


PARTS = {"train": np.arange(0, 10), "val": np.arange(10, 13), "test": np.arange(13, 16)}


def test_dataset_augments_image_and_boxes_together() -> None:
    images, boxes = _frames()
    ds = DetectionDataset(images, boxes, np.array([0, 2]), box_augmentation("light"))
    img, target = ds[0]
    assert img.shape == (3, SIZE, SIZE) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    for _ in range(5):
        img, target = ds[1]
        (x0, y0, x1, y1), label = target["boxes"][0].tolist(), int(target["labels"][0])
        assert label == 1 and 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        inside = img[:, int(y0) + 3 : int(y1) - 3, int(x0) + 3 : int(x1) - 3].float().mean()
        assert inside > img.float().mean()  # the bright object moved with its box


def test_train_detect_fold_reload_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    images, boxes = _frames()
    run = Run.resolve(FAST.replace(keep_checkpoints=True), tmp_path)  # kept: as a kill before result.json left them
    fold = tmp_path / "fold_0"
    r = train_fold(0, PARTS, _data(images, boxes), DetectHooks(run), progress=False)
    saved = json.loads((fold / "result.json").read_text())
    assert set(saved) >= {"fold", "n_train", "n_val", "n_test", "test_rows", "test_detections", "val_ap50", "speed"}
    assert (saved["n_train"], saved["n_val"], saved["n_test"]) == (10, 3, 3) and saved["test_rows"] == [13, 14, 15]
    assert set(saved["speed"]) == {"train_seconds", "train_images_per_s", "predict_images_per_s", "seconds"}
    assert 0 <= saved["val_ap50"] <= 1
    dets = saved["test_detections"]
    assert len(dets) == 3 and all(len(d) <= 50 and all(len(row) == 6 for row in d) for d in dets)

    model, meta = load_model_file(fold / "model.pt", "detect")
    assert meta["format"] == "medcad-detector-1" and meta["labels"] == ["square", "disc"]
    assert meta["data_config"]["input_size"] == [3, SIZE, SIZE] and meta["config"]["epochs"] == 2
    again = predict_detections(model, images, PARTS["test"], bf16=False)  # as the fold predicted: fp32
    for a, b in zip(again, r["test_detections"], strict=True):
        np.testing.assert_allclose(a, np.asarray(b, dtype=np.float32).reshape(-1, 6), atol=1e-4)

    # interrupted after training: result.json gone, last.ckpt present -> resumes without training again
    assert (fold / "checkpoints" / "detect" / "last.ckpt").is_file()
    (fold / "result.json").unlink()
    r2 = train_fold(0, PARTS, _data(images, boxes), DetectHooks(run), progress=False)
    assert r2["val_ap50"] == pytest.approx(r["val_ap50"])

    # sequential transfer: continue from the saved model (one more epoch)
    one_more = DetectHooks(Run.resolve(FAST.replace(epochs=1), tmp_path))
    r3 = train_fold(1, PARTS, _data(images, boxes), one_more, False, fold / "model.pt")
    assert r3["fold"] == 1


def test_validation_without_boxes_is_refused(tmp_path: Path) -> None:
    images, boxes = _frames()
    parts = {"train": np.arange(2, 16), "val": np.arange(0, 2), "test": np.arange(0, 0)}
    with pytest.raises(ConfigError, match=r"validation part \(\d+ images\) has no boxes.*--val-fraction"):
        train_fold(0, parts, _data(images, boxes), DetectHooks(Run.resolve(FAST, tmp_path)), progress=False)


@pytest.mark.parametrize(("n_train", "batches"), [(10, 2), (9, 1), (17, 2), (16, 2), (8, 1)])
def test_every_training_image_is_in_an_epoch_but_a_lone_last_one(n_train: int, batches: int, tmp_path: Path) -> None:
    """41 images at batch 32 had left 9 out of every epoch (drop_last for any remainder); only a last batch of one
    image is left out (BatchNorm), as the other tasks' loaders do."""
    images, boxes = _frames(20)
    parts = {"train": np.arange(n_train), "val": np.arange(18, 20), "test": np.arange(0, 0)}
    train_dl, _ = DetectHooks(Run.resolve(FAST, tmp_path)).loaders(_data(images, boxes), parts)
    assert len(train_dl) == batches
    assert sum(len(b[0]) for b in train_dl) == n_train - (n_train > 8 and n_train % 8 == 1)


def test_a_fold_whose_kept_model_scores_0_on_validation_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector fold whose validation AP50 stayed 0 at every epoch had been kept and pooled without a word (a new
    user's Kvasir run: fold 2 at AP50 0.0 throughout). Validation boxes where no object is: nothing found there."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    images, boxes = _frames()
    for i in PARTS["val"]:
        boxes[i] = np.array([[0, 0, 3, 3, 0]], np.float32)
    with pytest.warns(UserWarning, match=r"fold 0: the model kept scores 0 on its validation part \(val_ap50 of 3"):
        result = train_fold(0, PARTS, _data(images, boxes), DetectHooks(Run.resolve(FAST.replace(epochs=1), tmp_path)))
    assert result["val_score"] == 0.0
