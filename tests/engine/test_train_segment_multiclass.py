"""segment-multiclass: label-map masks of several lesion classes, read, trained, scored per class, predicted,
exported and reported end to end on a tiny synthetic set (dark round cysts = 1, bright square stones = 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import kidney_label_maps, save
from medcad.checkpoint import fold_model_files, load_model_file
from medcad.cli import app
from medcad.config import TrainConfig
from medcad.data.labelmaps import parse_mask_labels, read_label_map, read_labels_file, resolve_mask_labels
from medcad.engine.train import train_run
from medcad.errors import ConfigError, DataError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = TrainConfig(
    task="segment-multiclass", arch="unet", image_size=64, epochs=4, batch_size=4, lr=2e-3, folds=2, val_fraction=0.25
)


def test_mask_labels_read_as_users_write_them(tmp_path: Path) -> None:
    assert parse_mask_labels("1=cyst, 2=stone").names == ("cyst", "stone")
    # the background named as dataset.json lists it is taken as said (it had been refused)
    assert parse_mask_labels("0=background,1=cyst,2=stone") == parse_mask_labels("1=cyst,2=stone")
    assert parse_mask_labels("0=bg,1=cyst").values == (1,)
    for bad in ("cyst,stone", "0=cyst,1=stone", "0=background", "1=cyst,1=stone", "1=cyst,2=cyst", ""):
        with pytest.raises(ConfigError):
            parse_mask_labels(bad)
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "stone": 2, "cyst": 1}}))
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "cyst", "2": "stone"}}))
    assert read_labels_file(v2).values == (2, 1) and read_labels_file(msd).names == ("cyst", "stone")
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"labels": {"background": 0, "kidney": [1, 2], "tumour": 2}}))
    with pytest.raises(DataError, match="region labels"):
        read_labels_file(regions)

    root = kidney_label_maps(tmp_path / "set", n=4, labels_file=False)
    masks = sorted((root / "masks").glob("*.png"))
    with pytest.raises(ConfigError, match="values found in the masks: 1, 2"):
        resolve_mask_labels(None, root, masks)
    classes = parse_mask_labels("2=stone,1=cyst")
    index = read_label_map([masks[0]], classes)  # class order decides the index: stone 1, cyst 2
    raw = np.asarray(Image.open(masks[0]))
    assert np.array_equal(index == 1, raw == 2) and np.array_equal(index == 2, raw == 1)
    with pytest.raises(DataError, match=r"value\(s\) 2 that no class names") as e:
        read_label_map([masks[0]], parse_mask_labels("1=cyst"))
    assert str(masks[0]) in str(e.value) and "classes from --mask-labels" in str(e.value)
    from_run = resolve_mask_labels("1=cyst", root, masks, "the run's classes (its --mask-labels)")
    with pytest.raises(DataError, match=r"classes from the run's classes \(its --mask-labels\): 1=cyst"):
        read_label_map([masks[0]], from_run)  # evaluating a run on a set: not the user's --mask-labels
    jpeg = tmp_path / "m.jpg"
    Image.fromarray(raw).save(jpeg)
    with pytest.raises(DataError, match="lossless"):
        read_label_map([jpeg], classes)


def _voc_palette() -> list[int]:
    """Pascal VOC's colour map (index 1 dark red, 2 dark green, ...), as VOC, CVAT and labelme write label PNGs."""
    out = []
    for i in range(256):
        rgb, c = [0, 0, 0], i
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out += rgb
    return out


def _save_as(tool: str, values: np.ndarray, path: Path) -> Path:
    """A label map of integer `values` (H, W) written as `tool` writes one."""
    if tool == "palette png":  # VOC / CVAT / labelme label.png: indices under a colour palette
        im = Image.fromarray(values.astype(np.uint8), mode="L").convert("P")
        im.putpalette(_voc_palette())
        im.save(path.with_suffix(".png"))
    elif tool == "16-bit png":  # ITK / SimpleITK exports
        Image.fromarray(values.astype(np.uint16)).save(path.with_suffix(".png"))
    elif tool == "16-bit tiff":
        Image.fromarray(values.astype(np.uint16)).save(path.with_suffix(".tif"))
    elif tool == "float tiff":
        Image.fromarray(values.astype(np.float32)).save(path.with_suffix(".tif"))
    elif tool == "grey as rgb":
        Image.fromarray(np.repeat(values.astype(np.uint8)[..., None], 3, 2)).save(path.with_suffix(".png"))
    elif tool == "exif-rotated png":  # stored turned, with an orientation tag that turns it back
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(np.rot90(values.astype(np.uint8), 1).copy()).save(path.with_suffix(".png"), exif=exif)
    else:
        Image.fromarray(values.astype(np.uint8)).save(path.with_suffix(".png"))
    return next(path.parent.glob(path.name + ".*"))


TOOLS = ("grey png", "palette png", "16-bit png", "16-bit tiff", "float tiff", "grey as rgb", "exif-rotated png")


@settings(max_examples=30, deadline=None)
@given(
    tool=st.sampled_from(TOOLS),
    values=st.lists(st.integers(1, 200), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**16),
)
def test_label_maps_as_tools_write_them_read_exactly(tool: str, values: list[int], seed: int, tmp_path_factory) -> None:
    """Every class pixel comes back as its class, whatever tool wrote the file (values, not just that it ran)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values) + 1, (12, 17))  # 0 background, i + 1 class i
    raw = np.array([0, *values])[index]
    path = _save_as(tool, raw, tmp_path_factory.mktemp("lm") / "mask")
    classes = parse_mask_labels(",".join(f"{v}=c{v}" for v in values))
    assert np.array_equal(read_label_map([path], classes), index)


def test_colour_label_maps_and_labels_files_as_others_write_them(tmp_path: Path) -> None:
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:4, :4], colour[4:, 4:] = (255, 0, 0), (0, 255, 0)  # red and green: one value each if channels merged
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"RGB colours \(3: .*\(255, 0, 0\)"):
        read_label_map([tmp_path / "colour.png"], parse_mask_labels("1=cyst,2=stone"))
    text = json.dumps({"labels": {"background": 0, "cyst": 1, "stone": 2}})
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):  # Windows editors save "Unicode" as UTF-16
        (tmp_path / "dataset.json").write_bytes(text.encode(encoding))
        assert read_labels_file(tmp_path / "dataset.json").names == ("cyst", "stone")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cyst": 1, "ignore": 3}}))
    with pytest.raises(DataError, match="'ignore' label"):
        read_labels_file(tmp_path / "dataset.json")


@pytest.mark.heavy
def test_segment_multiclass_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data = kidney_label_maps(tmp_path / "kidney")
    run = tmp_path / "run"
    m = train_run(data, run, FAST.replace(epochs=8), progress=False)  # 4 epochs: 0.36-0.78 between runs
    saved = json.loads((run / "config.json").read_text())
    assert saved["mask_labels"] == "1=cyst,2=stone"  # from dataset.json
    made = load_model_file(fold_model_files(run, None)[0])[1]["config"]  # the model files keep the settled settings
    assert [(c["decoder_channels"], c["freeze_stride"]) for c in (saved, made)] == [("128,64,32,16,16", 0)] * 2
    assert set(m["segmentation"]["per_class"]) == {"cyst", "stone"}
    for name in ("cyst", "stone"):
        c = m["segmentation"]["per_class"][name]
        assert 0 <= c["dice"]["value"] <= 1 and c["dice"]["ci95"][0] <= c["dice"]["value"] <= c["dice"]["ci95"][1]
        assert "hd95" in c and "nsd" in c
    mean = np.mean([m["segmentation"]["per_class"][n]["dice"]["value"] for n in ("cyst", "stone")])
    assert m["class_dice"]["value"] == pytest.approx(mean)
    assert m["class_dice"]["value"] > 0.4  # the two classes are easy to tell apart: learnt, not chance
    table = (run / "predictions.csv").read_text().splitlines()[0].split(",")
    assert {"dice_cyst", "dice_stone"} <= set(table)
    with np.load(run / "fold_0" / "test_masks.npz") as z:
        assert z["lesion_classes"].shape[1:] == (2, 64, 64) and z["probs"].shape[1:] == (64, 64)

    image = data / "images" / "case_000.png"  # a cyst and a stone
    out = tmp_path / "pred"
    # one backend for predict and serve: `auto` runs one image on torch-fp32 unmeasured and serve on what it measures
    # fastest (openvino-fp32 on an AVX2 EPYC: Dice agreement 0.9998, one boundary pixel of 4096 another class)
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(out), "--backend", "torch-fp32"])
    assert res.exit_code == 0, res.output
    mask = np.asarray(Image.open(out / "case_000_mask.png"))
    assert set(np.unique(mask)) <= {0, 1, 2} and mask.shape == (64, 64)
    import pandas as pd

    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert {"fraction_cyst", "fraction_stone"} <= set(row.index)
    assert set(str(row["label"]).split("|")) <= {"cyst", "stone", "no lesion"}

    res = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--json"])  # as an external set
    assert res.exit_code == 0, res.output
    ext = json.loads(res.stdout)
    assert set(ext["segmentation"]["per_class"]) == {"cyst", "stone"} and "class_dice" in ext
    assert ext["segmentation"]["resolution"].startswith("each image's own size") and "class_iou" in ext

    res = runner.invoke(app, ["export", str(run), "--fold", "0", "--json"])
    assert res.exit_code == 0, res.output
    agreement = json.loads(res.stdout)["agreement"]["model.onnx"]
    assert agreement["mask_dice"] >= 0.99 and agreement["lesion_class_agreement"] >= 0.99

    import base64
    import io

    from fastapi.testclient import TestClient

    from medcad.inference.registry import load_predictor
    from medcad.inference.server import create_app

    with TestClient(create_app(load_predictor(run, backend="torch-fp32"))) as client:
        body = client.post("/predict", content=image.read_bytes()).json()
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
    assert body["mask"]["classes"] == {"1": "cyst", "2": "stone"} and np.array_equal(served, mask)

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    assert "Lesion classes" in html and "stone" in html
    # the audit reads the masks as the run did: label maps of its classes, not binary masks thresholded
    assert "label maps, classes 1=cyst,2=stone" in html and "non-binary masks (thresholded)" not in html


def test_a_mask_class_that_no_mask_holds_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--mask-labels 1=cyst,2=stone,3=polyp on masks without value 3: a warning names it (its Dice had pulled the
    mean over lesion classes down without a word)."""
    from medcad.data.layouts import load_manifest
    from medcad.targets import load_targets

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data = kidney_label_maps(tmp_path / "kidney", n=4, labels_file=False)
    cfg = FAST.replace(mask_labels="1=cyst,2=stone,3=polyp")
    with pytest.warns(UserWarning, match=r"mask class\(es\) 3=polyp occur in none of the 4 masks"):
        load_targets(load_manifest(data), cfg)


def test_an_nnunet_dataset_is_read_as_nnunet_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's raw layout (imagesTr/<case>_0000.png, labelsTr/<case>.png, dataset.json, imagesTs/ without labels)
    is read as image/mask pairs with the classes of dataset.json; further channel files and the test images are
    named as not read. It had been read as two class folders ('imagesTr', 'labelsTr') without a mask, and the
    `_0000` suffix kept any image from pairing with its label."""
    from medcad.data.layouts import load_manifest
    from medcad.targets import load_targets

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    flat = kidney_label_maps(tmp_path / "flat", n=8)
    root = tmp_path / "Dataset001_Kidney"
    for f in sorted((flat / "images").iterdir()):
        save(root / "imagesTr" / f"{f.stem}_0000.png", np.asarray(Image.open(f)))
        save(root / "labelsTr" / f.name, np.asarray(Image.open(flat / "masks" / f.name)))
    save(root / "imagesTr" / "case_000_0001.png", np.zeros((64, 64), np.uint8))  # a second channel of case_000
    save(root / "imagesTs" / "case_100_0000.png", np.zeros((64, 64, 3), np.uint8))
    (root / "dataset.json").write_text((flat / "dataset.json").read_text())
    m = load_manifest(root)
    assert m.layout == "images-masks" and len(m) == 8 and (m.table["mask"] != "").all()
    assert all(Path(i).stem.endswith("_0000") and Path(k).stem == Path(i).stem[:-5] for i, k in
               zip(m.table["image"], m.table["mask"], strict=True))  # fmt: skip
    unread = dict(m.ledger.unread)
    assert "(channel 0001 of case 'case_000')" in unread["imagesTr/case_000_0001.png"]
    assert "nnU-Net test image" in unread["imagesTs/case_100_0000.png"]
    targets = load_targets(m, FAST)
    assert targets.labels == ["cyst", "stone"] and targets.masks.max() == 2
    frames = tmp_path / "frames"  # frames numbered from 0000 outside nnU-Net's folders are frames, not channels
    for i in range(4):
        save(frames / "images" / f"clip_{i:04d}.png", np.full((16, 16, 3), 40 * i, np.uint8))
        save(frames / "masks" / f"clip_{i:04d}.png", np.eye(16, dtype=np.uint8) * 255)
    assert len(load_manifest(frames)) == 4


def test_a_set_without_any_lesion_trains_nothing_and_evaluates_false_positives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images read as lesion-free because none has a mask file (e.g. label maps read as images) are refused for
    training before anything is written (it had trained, then crashed writing its frame decision); a lesion-free
    set is a fair test of a trained run's false positives: `evaluate --data` scores it with a note (it had been
    refused as if it were to train; and a set of blank frames had crashed its duplicate check)."""
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    lesion_free = tmp_path / "normal"
    for i in range(6):
        save(lesion_free / "images" / f"n{i}.png", np.full((64, 64, 3), 120 + i, np.uint8))
    cfg = TrainConfig(task="segment", image_size=32, epochs=1, batch_size=4, folds=2, missing_masks="empty")
    with pytest.raises(DataError, match="none of the 6 images has a mask file"):
        train_run(lesion_free, tmp_path / "refused", cfg, progress=False)
    assert not (tmp_path / "refused").exists()
    run = tmp_path / "run"
    train_run(kidney_label_maps(tmp_path / "kidney", n=8), run, FAST.replace(epochs=1), progress=False)
    for i in range(6):
        save(lesion_free / "masks" / f"n{i}.png", np.zeros((64, 64), np.uint8))
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(lesion_free)])
    assert res.exit_code == 0, res.output
    assert "no image has a lesion pixel" in res.output and "false positives alone" in res.output
    m = json.loads((run / "evaluations" / "normal" / "metrics.json").read_text())
    assert m["segmentation"]["n_images"] == 6


def test_the_audit_reads_label_maps_as_a_run_reads_them(tmp_path: Path) -> None:
    """`data audit` of a label-map set (dataset.json beside the masks, or --mask-labels) reads every mask as
    segment-multiclass does: a value no class names, a JPEG label map and a class no mask holds are named, the first
    two as blocking (the audit had said "No blocking problems found" of masks a run stops on)."""
    root = kidney_label_maps(tmp_path / "set", n=8)
    raw = np.asarray(Image.open(root / "masks" / "case_001.png")).copy()
    raw[:3, :3] = 7  # a value dataset.json does not declare
    save(root / "masks" / "case_001.png", raw)
    Image.open(root / "masks" / "case_002.png").convert("L").save(root / "masks" / "case_002.jpg", quality=95)
    (root / "masks" / "case_002.png").unlink()
    out = runner.invoke(app, ["data", "audit", str(root), "--json"])
    assert out.exit_code == 0, out.output
    maps = json.loads(out.stdout)["label_maps"]
    assert maps["classes"] == "1=cyst,2=stone" and maps["source"].endswith("dataset.json")
    named = {Path(mask).name: what for _, mask, what in maps["problems"]}
    assert set(named) == {"case_001.png", "case_002.jpg"}
    assert "value(s) 7 that no class names" in named["case_001.png"] and "lossless" in named["case_002.jpg"]
    assert maps["images_with_class"] == {"cyst": 4, "stone": 3} and maps["absent_classes"] == []  # of 6 read
    said = runner.invoke(app, ["data", "audit", str(root)]).output
    assert "Label maps a segment-multiclass run stops on: 2" in said and "No blocking problems" not in said

    (root / "dataset.json").unlink()  # the classes given: one no mask holds is named
    given = ["--mask-labels", "0=background,1=cyst,2=stone,3=tumour,7=x"]
    assert "class(es) in no mask: tumour" in runner.invoke(app, ["data", "audit", str(root), *given]).output
    maps = json.loads(runner.invoke(app, ["data", "audit", str(root), "--json", *given]).stdout)["label_maps"]
    assert maps["absent_classes"] == ["tumour"] and len(maps["problems"]) == 1  # the JPEG
    assert "label_maps" not in json.loads(runner.invoke(app, ["data", "audit", str(root), "--json"]).stdout)
    (root / "dataset.json").write_text(json.dumps({"name": "a dataset.json of another tool"}))  # no "labels"
    assert "label_maps" not in json.loads(runner.invoke(app, ["data", "audit", str(root), "--json"]).stdout)
    from medcad.data.audit import audit
    from medcad.data.layouts import load_manifest

    kept = audit(load_manifest(root), interface="none", mask_labels="1=cyst", label_maps=False)  # a binary run's
    assert "label_maps" not in kept
