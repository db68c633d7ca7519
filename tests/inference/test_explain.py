"""Explanations and export checks as the model sees its images: a run that crops ultrasound frames to their
imaging area, and serve's Grad-CAM beside predictions in other threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import save
from medcad.data.io import read_image
from medcad.inference.registry import load_predictor

pytestmark = pytest.mark.usefixtures("one_thread")

SURROUND = 16  # black columns left of each frame's imaging area


@pytest.fixture
def cropped_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A two-fold classifier trained with interface="crop" on 48 x 64 frames whose left 16 columns are black (a
    scanner's surround), the imaging area noise with a bright disc or not."""
    from medcad.config import TrainConfig
    from medcad.engine.train import train_run

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for label in ("lesion", "normal"):
        for k in range(10):
            frame = np.zeros((48, 64, 3), np.uint8)
            area = rng.integers(60, 140, (48, 48, 3), dtype=np.uint8)
            if label == "lesion":
                cy, cx = rng.integers(12, 36, 2)
                area[(yy - cy) ** 2 + (xx - cx) ** 2 < 50] = 240
            frame[:, SURROUND:] = area
            save(tmp_path / "frames" / label / f"{k}.png", frame)
    cfg = TrainConfig(
        image_size=32, epochs=1, head_epochs=1, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25, interface="crop"
    )
    train_run(tmp_path / "frames", tmp_path / "run", cfg, progress=False)
    return tmp_path / "run"


def test_export_checks_see_the_run_cropped_as_predict_does(cropped_run: Path) -> None:
    """The images an export, `bench` and `auto` check agreement and accuracy on are prepared as the run prepares
    them (cropped to the imaging area): they had been uncropped (the black surround in the first columns)."""
    import json

    from medcad.data.splits import fold_indices, load_splits
    from medcad.inference.export import check_images
    from medcad.runfolder import RunFolder
    from medcad.targets import run_dataset

    predictor = load_predictor(cropped_run, fold=0, backend="torch-fp32")
    checked = check_images(cropped_run, predictor)
    data = json.loads(RunFolder(cropped_run).config.read_text())["data"]
    manifest = run_dataset(data, predictor.config, cropped_run)
    split = load_splits(RunFolder(cropped_run).splits, manifest)["folds"][0]
    test = fold_indices(manifest, split)["test"]
    prepared = np.stack([predictor.prepare(read_image(manifest.image_path(i))) for i in test])
    np.testing.assert_array_equal(checked.images, prepared)
    assert checked.images[:, :, :4].mean() > 40  # imaging area, not the black surround


def test_grad_cam_of_a_cropped_run_lies_over_the_imaging_area(cropped_run: Path, tmp_path: Path) -> None:
    """A run that crops frames to their imaging area is explained over that area: the heat-map is laid on the
    columns the model saw and the surround is left as it is (the map had been stretched over the whole frame, a
    lesion's heat drawn 80 px left of it on a 320 px frame)."""
    from medcad.data.interface import find_interface
    from medcad.explain.explainers import explain_classes

    predictor = load_predictor(cropped_run, backend="torch-fp32")
    rgb = read_image(tmp_path / "frames" / "lesion" / "0.png")
    picture, caption = explain_classes(predictor, rgb)
    bar = picture.shape[0] - rgb.shape[0]  # the caption bar on top
    shown = picture[bar:]
    x0, y0, x1, y1 = find_interface(rgb, "crop").box  # the area with a margin of a few pixels
    assert SURROUND - 4 <= x0 <= SURROUND and (y0, x1, y1) == (0, 64, 48)
    np.testing.assert_array_equal(shown[:, :x0], rgb[:, :x0])  # the surround: not coloured
    assert np.abs(shown[:, SURROUND:].astype(int) - rgb[:, SURROUND:]).mean() > 10  # the imaging area: coloured
    assert "Grad-CAM" in caption


def test_serves_grad_cam_is_the_same_beside_predictions_in_other_threads(tiny_run: Path, easy_set: Path) -> None:
    """serve's explainer (`bound_explainer`) gives an image the same Grad-CAM while other threads predict with the
    same predictor (a video job, a second batcher worker): the CAM hooks networks of its own (6 of 40 maps had
    taken in other images' activations)."""
    from medcad.explain.explainers import bound_explainer

    predictor = load_predictor(tiny_run, backend="torch-fp32")
    explain = bound_explainer(predictor)
    rgb = read_image(easy_set / "lesion" / "0.png")
    others = [read_image(easy_set / "normal" / f"{k}.png") for k in range(8)]
    prediction = predictor.predict([rgb], ["a"])[0]
    alone, caption = explain(rgb, prediction)
    stop = threading.Event()

    def predicting() -> None:
        while not stop.is_set():
            predictor.predict(others, [str(k) for k in range(8)])

    thread = threading.Thread(target=predicting)
    thread.start()
    try:
        beside = [explain(rgb, prediction) for _ in range(15)]
    finally:
        stop.set()
        thread.join()
    assert all(np.array_equal(picture, alone) and said == caption for picture, said in beside)
    assert not set(map(id, predictor.models)) & set(map(id, predictor.with_own_networks().models))


def test_an_overlay_writes_the_decision_above_the_image_and_hides_none_of_it(tiny_run: Path, easy_set: Path) -> None:
    """predict's and serve's overlay: the decision on a band above the image, wrapped where long, the image whole
    below it (the band had covered the top rows: half of a 40 px high image and its mask); an annotated video frame
    keeps its size; explain's caption is wrapped, not cut at the image's edge."""
    from medcad.drawing import draw_label
    from medcad.explain.gradcam import with_caption

    predictor = load_predictor(tiny_run, backend="torch-fp32")
    rgb = read_image(easy_set / "lesion" / "0.png")  # 40 x 40
    picture = predictor.predict([rgb], ["a"])[0].draw(rgb)
    band = picture.shape[0] - rgb.shape[0]
    assert band >= 18 and picture.shape[1:] == rgb.shape[1:]
    np.testing.assert_array_equal(picture[band:], rgb)  # a classifier draws nothing on the image itself
    assert picture[:band].max() == 255  # the text
    assert draw_label(rgb, "lesion", 0.5, above=False).shape == rgb.shape  # a video frame
    long = "a caption " * 40
    assert with_caption(rgb, long, 14).shape[0] > 40 + 14 * 5  # several lines
    assert with_caption(rgb, long, 14, wrap=False).shape[0] == 40 + 14  # tiles side by side keep one height


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=400),
    width=st.integers(1, 600),
    line=st.integers(8, 40),
)
def test_a_caption_band_holds_its_text_within_its_width_and_a_bounded_height(text: str, width: int, line: int) -> None:
    """`text_band`: as wide as asked, whole lines of one height, at most MAX_BAND_LINES of them; text that is there
    is drawn (a word wider than the band had been shrunk until nothing showed)."""
    from medcad.drawing import MAX_BAND_LINES, MIN_TEXT_SCALE, text_band

    band = text_band(text, width, line)
    height = max(line, round(32 * max(MIN_TEXT_SCALE, line / 32)))
    assert band.shape[1:] == (width, 3) and band.shape[0] % height == 0
    assert 1 <= band.shape[0] // height <= MAX_BAND_LINES
    if text.strip() and width >= 24 and any(c.isalnum() for c in text):
        assert band.max() > 100  # drawn (anti-aliased: a thin glyph at a small scale may not reach full white)
