"""Ultrasound interface removal: crop to the imaging area, inpaint burned-in marks; 'none' leaves frames alone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import save
from medcad.config import TrainConfig
from medcad.data.audit import audit
from medcad.data.datasets import cached_images, cached_masks, image_cache_key, preprocess, resize_square
from medcad.data.interface import apply_cut, check_interface, find_interface, imaging_box, mark_mask, remove_interface
from medcad.data.layouts import load_manifest
from medcad.errors import ConfigError

H, W = 240, 320
APEX = (W // 2, 30)
TEXT_TOP = H - 16  # the burned-in text band: rows TEXT_TOP .. H
LESION = (W // 2, 120, 25)  # centre x, y, radius


def ultrasound_frame(seed: int = 0, lesion: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sector scan: a speckled fan on black, a text band below it, a logo in a corner, two '+' calipers joined by
    a dotted line and a coloured annotation. Returns (frame, sector mask, caliper mask)."""
    rng = np.random.default_rng(seed)
    sector = np.zeros((H, W), np.uint8)
    cv2.ellipse(sector, APEX, (190, 190), 0, 55, 125, 1, -1)
    tissue = np.clip(cv2.GaussianBlur(rng.rayleigh(45, (H, W)).astype(np.float32), (3, 3), 0) + 30, 0, 255)
    tissue = tissue.astype(np.uint8)
    if lesion:
        cv2.circle(tissue, LESION[:2], LESION[2], 20, -1)
    img = np.repeat(np.where(sector > 0, tissue, 0)[..., None], 3, axis=2).astype(np.uint8)
    white = (255, 255, 255)
    cv2.putText(img, "L12-5 38Hz MI 0.9 TIS 0.4", (8, H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, white, 1)
    cv2.putText(img, "GE", (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, white, 1)
    calipers = np.zeros((H, W), np.uint8)
    cx, cy = LESION[:2]
    for x in (cx - 28, cx + 28):
        for target in (img, calipers):
            colour = white if target is img else 1
            cv2.line(target, (x - 4, cy), (x + 4, cy), colour, 1)
            cv2.line(target, (x, cy - 4), (x, cy + 4), colour, 1)
    for x in range(cx - 22, cx + 23, 4):  # dotted measurement line
        img[cy, x], calipers[cy, x] = 255, 1
    cv2.line(img, (cx - 10, 90), (cx + 10, 90), (255, 255, 0), 1)  # a yellow annotation
    cv2.line(calipers, (cx - 10, 90), (cx + 10, 90), 1, 1)
    return img, sector.astype(bool), calipers.astype(bool)


def endoscopy_frame(seed: int = 0) -> np.ndarray:
    """A round field of view of reddish mucosa on black, with white text at the left: what 'none' must leave."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    fov = np.zeros((H, W), np.uint8)
    cv2.circle(fov, (W // 2 + 30, H // 2), 110, 1, -1)
    mucosa = np.stack([rng.integers(150, 230, (H, W)), rng.integers(60, 110, (H, W)), rng.integers(50, 90, (H, W))], 2)
    img[fov > 0] = mucosa[fov > 0]
    cv2.putText(img, "CV-190 12/03", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return img


def test_crop_box_holds_the_sector_and_leaves_out_the_text() -> None:
    img, sector, _ = ultrasound_frame()
    x0, y0, x1, y1 = imaging_box(img)
    ys, xs = np.nonzero(sector)
    assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() + 1 and y1 >= ys.max() + 1  # the whole sector
    assert y1 <= TEXT_TOP and y0 > 14  # not the text band below, not the logo above
    assert (x1 - x0) * (y1 - y0) < 0.75 * H * W  # the surround is gone
    cropped = remove_interface(img, "crop")
    assert cropped.shape == (y1 - y0, x1 - x0, 3)
    assert np.array_equal(cropped, img[y0:y1, x0:x1])  # "crop" changes no pixel inside the box


def test_marks_are_masked_and_inpainted_and_tissue_is_left() -> None:
    img, sector, calipers = ultrasound_frame()
    marks = mark_mask(img)
    assert marks[calipers].mean() > 0.95  # every caliper, dot and the coloured line
    tissue = sector & ~cv2.dilate(calipers.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert marks[tissue].mean() < 0.005  # speckle is not a mark
    cut = find_interface(img, "crop+marks")
    x0, y0, x1, y1 = cut.box
    assert 0 < cut.masked_fraction < 0.03 and cut.kept_fraction < 0.75
    out = apply_cut(img, cut)
    inside = calipers[y0:y1, x0:x1]
    assert out[inside].max() < 200  # no white glyph left: inpainted from the lesion and tissue around it
    assert img[y0:y1, x0:x1][inside].max() == 255
    untouched = ~cut.marks
    assert np.array_equal(out[untouched], img[y0:y1, x0:x1][untouched])


def test_none_leaves_an_endoscopy_frame_untouched() -> None:
    img = endoscopy_frame()
    assert remove_interface(img, "none") is img
    assert np.array_equal(preprocess(img, 64), resize_square(img, 64))
    assert np.array_equal(preprocess(img, 64, interface="none"), resize_square(img, 64))
    cut = find_interface(img, "none")
    assert cut.box == (0, 0, W, H) and cut.marks is None and cut.masked_fraction == 0


def test_a_frame_without_a_surround_is_kept_whole() -> None:
    rng = np.random.default_rng(1)
    img = np.repeat(rng.integers(30, 200, (H, W), dtype=np.uint8)[..., None], 3, axis=2)
    assert imaging_box(img) == (0, 0, W, H)
    assert imaging_box(np.zeros((H, W, 3), np.uint8)) == (0, 0, W, H)  # nothing found: nothing cut


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="crop\\+marks"):
        check_interface("crop+text")
    with pytest.raises(ConfigError, match="segment"):
        check_interface("crop", task="segment")
    assert check_interface("none", task="detect") == "none"
    assert TrainConfig().interface == "none"
    assert TrainConfig.from_saved({"image_size": 64}).interface == "none"  # runs made before the option
    assert TrainConfig.from_saved(TrainConfig(interface="crop").to_dict()).interface == "crop"


@pytest.fixture
def scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Eight synthetic sector scans in two classes, with lesion masks (normal ones empty)."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "scans"
    for k in range(8):
        label = "lesion" if k % 2 == 0 else "normal"
        img, _, _ = ultrasound_frame(k, lesion=label == "lesion")
        mask = np.zeros((H, W), np.uint8)
        if label == "lesion":
            cv2.circle(mask, LESION[:2], LESION[2], 255, -1)
        save(root / label / f"{k}.png", img)
        save(root / label / f"{k}_mask.png", mask)
    return root


def test_cache_keys_images_and_masks_follow_the_option(scans: Path) -> None:
    m = load_manifest(scans)
    assert image_cache_key(m, 64, False) == image_cache_key(m, 64, False, "none")  # old caches stay valid
    keys = {image_cache_key(m, 64, False, i) for i in ("none", "crop", "crop+marks")}
    assert len(keys) == 3
    plain = np.asarray(cached_images(m, 64, progress=False))
    cropped = np.asarray(cached_images(m, 64, interface="crop+marks", progress=False))
    assert plain.shape == cropped.shape == (8, 64, 64, 3) and not np.array_equal(plain, cropped)
    for i in range(len(m)):
        img = cv2.imread(str(m.image_path(i)))[..., ::-1]
        assert np.array_equal(cropped[i], preprocess(img, 64, interface="crop+marks"))  # = what predict does
    masks = np.asarray(cached_masks(m, 64, missing="empty", interface="crop", progress=False))
    plain_masks = np.asarray(cached_masks(m, 64, missing="empty", progress=False))
    i = m.keys.index("lesion/0.png")
    x0, y0, x1, y1 = imaging_box(cv2.imread(str(m.image_path(i)))[..., ::-1])
    assert masks[i].sum() > plain_masks[i].sum()  # the lesion fills more of the smaller crop ...
    ys, xs = np.nonzero(masks[i])  # ... and still sits on the dark disc, cut and scaled as the image was
    cx, cy = (LESION[0] - x0) * 64 / (x1 - x0), (LESION[1] - y0) * 64 / (y1 - y0)
    assert abs(xs.mean() + 0.5 - cx) < 1 and abs(ys.mean() + 0.5 - cy) < 1
    assert cropped[i][masks[i].astype(bool)].mean() < 45


def test_audit_reports_boxes_masked_fractions_and_thumbnails(scans: Path, tmp_path: Path) -> None:
    r = audit(load_manifest(scans), thumbnails=tmp_path / "thumbs")
    f = r["interface"]
    assert f["option"] == "crop+marks" and len(f["images"]) == 8
    row = next(x for x in f["images"] if x["image"] == "lesion/0.png")
    x0, y0, x1, y1 = row["box"]
    assert y1 <= TEXT_TOP and row["kept"] < 0.75 and 0 < row["masked"] < 0.03
    assert f["n_cropped"] == 8 and f["n_marked"] == 8
    thumbs = sorted((tmp_path / "thumbs").glob("*.jpg"))
    assert 1 <= len(thumbs) <= 6 and f["thumbnails"] == str(tmp_path / "thumbs")
    assert "interface" not in audit(load_manifest(scans), interface="none")
    # each image's answer is kept per file (a second audit of BUSI: 11.7 -> 3.4 s): the same again, and where a file
    # changes, its own answer again (a frame without interface now: kept whole, nothing masked)
    assert audit(load_manifest(scans), thumbnails=tmp_path / "thumbs")["interface"] == f
    save(scans / "lesion" / "0.png", np.full((H, W, 3), 120, np.uint8))
    again = audit(load_manifest(scans), thumbnails=tmp_path / "thumbs")["interface"]
    row = next(x for x in again["images"] if x["image"] == "lesion/0.png")
    assert (row["box"], row["kept"], row["masked"]) == ([0, 0, W, H], 1.0, 0.0) and again["n_cropped"] == 7
    assert [x for x in again["images"] if x["image"] != "lesion/0.png"] == [
        x for x in f["images"] if x["image"] != "lesion/0.png"
    ]


def test_a_run_records_the_option_and_its_predictor_applies_it(scans: Path, tmp_path: Path, one_thread) -> None:
    from medcad.engine.train import train_run
    from medcad.inference.registry import load_predictor

    cfg = TrainConfig(
        image_size=32,
        epochs=0,
        head_epochs=2,
        batch_size=4,
        folds=2,
        val_fraction=0.25,
        group_by="none",
        interface="crop+marks",
    )
    train_run(scans, tmp_path / "run", cfg, progress=False)
    predictor = load_predictor(tmp_path / "run", 0)
    assert predictor.config.interface == "crop+marks"
    m = load_manifest(scans)
    cached = np.asarray(cached_images(m, 32, interface="crop+marks", progress=False))
    img = cv2.imread(str(m.image_path(0)))[..., ::-1]
    assert np.array_equal(predictor.prepare(img), cached[0])
    with pytest.raises(ConfigError, match="segment"):
        train_run(scans, tmp_path / "seg", TrainConfig(task="segment", interface="crop"), progress=False)


def test_filling_caches_writes_nothing_where_output_is_not_a_terminal(
    scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Progress bars show on a terminal only: in a log file, Rich's transient bar had left an empty line for each cache
    filled (two between a run's notes)."""
    from medcad.data.fingerprints import fingerprints

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "fresh"))
    m = load_manifest(scans)
    assert len(cached_images(m, 48, progress=True)) == len(fingerprints(m, progress=True)) == len(m)
    assert capsys.readouterr().out == ""
