"""A label-map model's masks as predict writes them and serve sends them, in the run's own mask values: 16-bit PNGs
where a value exceeds 255 (it had crashed on `--mask-labels 1000=benign,2000=malignant`), and `?mask=rle` one COCO
RLE per lesion class (it had sent the lesion of any class beside the class names, read as the first class)."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mu
from serving import answer
from typer.testing import CliRunner

from conftest import kidney_label_maps
from medcad.cli import app
from medcad.errors import MedcadError
from medcad.inference.prediction import Prediction
from medcad.inference.registry import load_predictor
from medcad.inference.responses import rle_decode
from medcad.inference.server import create_app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
VALUES = {"benign": 1000, "malignant": 2000}


@pytest.fixture(scope="module")
def sixteen_bit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real two-fold segment-multiclass run (32 px, one epoch) on 16-bit PNG label maps holding 1000 (benign) and
    2000 (malignant), and its data folder. Trained once for the module."""
    import torch

    from medcad.config import TrainConfig
    from medcad.engine.train import train_run

    root = tmp_path_factory.mktemp("label_maps_16_bit")
    data = kidney_label_maps(root / "data", n=12, labels_file=False, values=tuple(VALUES.values()))
    assert cv2.imread(str(data / "masks" / "case_000.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    cfg = TrainConfig(
        task="segment-multiclass",
        arch="unet",
        image_size=32,
        epochs=1,
        batch_size=4,
        folds=2,
        val_fraction=0.25,
        mask_labels=",".join(f"{v}={name}" for name, v in VALUES.items()),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the module's fixture is set up before the test's one_thread
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDCAD_CACHE_DIR", str(root / "cache"))
            mp.chdir(root)
            train_run(data, root / "run", cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run", data


def png_of(data: str) -> np.ndarray:
    """A served mask's base64 PNG, decoded as written (16-bit stays 16-bit)."""
    return cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_UNCHANGED)


def test_a_label_maps_png_is_8_bit_where_its_values_fit_and_16_bit_beyond() -> None:
    lesion = np.full((4, 6), 0.9, np.float32)
    lesion[0] = 0.1  # a row of background
    lesion_class = np.ones((4, 6), np.uint8)
    lesion_class[2:] = 2
    for values, dtype in (((1, 255), np.uint8), ((255, 256), np.uint16), ((1000, 65535), np.uint16)):
        p = Prediction.of("k.png", ["a", "b"], mask=lesion, lesion_class=lesion_class, class_values=values)
        image = p.mask.mask_image()
        assert image.dtype == dtype, values
        assert np.array_equal(image, np.array([0, *values])[np.where(lesion >= 0.5, lesion_class, 0)])
    p = Prediction.of("k.png", ["a", "b"], mask=lesion, lesion_class=lesion_class, class_values=(7, 70000))
    with pytest.raises(MedcadError, match=r"mask values 7, 70000 cannot all be written in a PNG mask.*0\.\.65535"):
        p.mask.mask_image()


def test_predict_and_serve_write_the_runs_16_bit_mask_values(sixteen_bit_run: tuple[Path, Path], tmp_path) -> None:
    """At threshold 0 every pixel is a lesion of one class: the mask file holds 1000 / 2000 as a 16-bit PNG, pixel
    for pixel the prediction's classes, each class's share as predictions.csv says; serve sends the same PNG."""
    run, data = sixteen_bit_run
    image = data / "images" / "case_000.png"
    out = tmp_path / "pred"
    args = ["--backend", "torch-fp32", "--threshold", "0", "--out", str(out)]
    res = runner.invoke(app, ["predict", str(run), str(image), *args])
    assert res.exit_code == 0, res.output
    written = cv2.imread(str(out / "case_000_mask.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == (64, 64)
    assert set(np.unique(written)) <= set(VALUES.values())  # no pixel of background at threshold 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    for name, value in VALUES.items():  # each value is its own class's pixels
        assert row[f"fraction_{name}"] == pytest.approx((written == value).mean())

    predictor = load_predictor(run, backend="torch-fp32", threshold=0.0)
    [pred] = predictor.predict([cv2.imread(str(image))[:, :, ::-1]], ["case_000.png"])
    assert np.array_equal(written, np.array([0, *VALUES.values()])[pred.mask.class_map])
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", content=image.read_bytes())
        answer(client, r)  # fraction_<class> per lesion class, the classes of the mask's values
    served = png_of(r.json()["mask"]["data"])
    assert served.dtype == np.uint16 and np.array_equal(served, written)
    assert r.json()["mask"]["classes"] == {"1000": "benign", "2000": "malignant"}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, NumPy 2
def test_serve_rle_gives_each_lesion_class_its_coco_rle(sixteen_bit_run: tuple[Path, Path]) -> None:
    """?mask=rle of a label-map model: per class (name, its mask value) a COCO RLE that pycocotools decodes to
    exactly the PNG's pixels of that value; the lesion of any class as `lesion_counts`, no bare `counts`."""
    run, data = sixteen_bit_run
    image = data / "images" / "case_000.png"
    rgb = cv2.imread(str(image))[:, :, ::-1]
    [first] = load_predictor(run, backend="torch-fp32").predict([rgb], ["case_000.png"])
    half = float(np.median(first.mask.prob))  # about half the image lesion, half background, whatever it learnt
    with TestClient(create_app(load_predictor(run, backend="torch-fp32", threshold=half))) as client:
        rle = answer(client, client.post("/predict?mask=rle", content=image.read_bytes()))["mask"]
        assert rle["format"] == "rle" and "counts" not in rle  # the lesion is no class: not under a class's name
        assert rle["classes"] == {"1000": "benign", "2000": "malignant"}
        assert list(rle["per_class"]) == list(VALUES)
        png = client.post("/predict?mask=png", content=image.read_bytes()).json()["mask"]
    mask = png_of(png["data"])
    assert (mask == 0).any() and (mask > 0).any()  # background and lesion both: a test of where each run falls
    assert (rle["height"], rle["width"]) == mask.shape == (64, 64)
    for name, value in VALUES.items():
        entry = rle["per_class"][name]
        assert entry["value"] == value and entry["coco_rle"]["size"] == [64, 64]
        decoded = mu.decode(entry["coco_rle"])  # as a client decodes it
        assert decoded.shape == mask.shape and np.array_equal(decoded == 1, mask == value), name
    lesion = rle_decode(rle["lesion_counts"], (rle["height"], rle["width"]))
    assert np.array_equal(lesion, mask > 0)


def test_mask_values_no_png_holds_are_refused_before_any_file_is_written(
    sixteen_bit_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run whose mask values leave 0..65535 stops predict before its first file (it had stopped at the first
    mask, after that image's overlay was written)."""
    from medcad.inference.files import predict_image_files

    run, data = sixteen_bit_run
    predictor = load_predictor(run, fold=0, backend="torch-fp32")
    predictor.class_values = (7, 70000)  # as a 32-bit TIFF label map's run would hold
    with pytest.raises(MedcadError, match="mask values 7, 70000 cannot all be written"):
        predict_image_files(predictor, [data / "images" / "case_000.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_serve_refuses_a_png_mask_its_values_do_not_fit_and_answers_rle(
    sixteen_bit_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run whose mask values leave 0..65535 (a signed or 32-bit TIFF label map): serve's PNG mask is refused with
    422 and the way that works (it had been a 500 after the prediction), ?mask=rle answers, the card says why."""
    run, data = sixteen_bit_run
    predictor = load_predictor(run, fold=0, backend="torch-fp32")
    predictor.class_values = (7, 70000)
    image = (data / "images" / "case_000.png").read_bytes()
    with TestClient(create_app(predictor)) as client:
        assert "cannot all be written in a PNG mask" in client.get("/model").json()["mask_png_refused"]
        res = client.post("/predict", files={"file": ("a.png", image, "image/png")})
        assert res.status_code == 422 and "ask ?mask=rle" in res.text
        res = client.post("/predict?mask=rle", files={"file": ("a.png", image, "image/png")})
        assert res.status_code == 200 and set(res.json()["mask"]["per_class"]) == {"benign", "malignant"}
