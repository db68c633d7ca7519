"""Real images exported the way annotation tools and users lay them out, read by a medcad tree and checked row by
row against what was written: label, patient, mask (Dice >= 0.97 to the source mask; polygons >= 0.9) and boxes
(within 1 px). Built from small subsets of ../shared/data (Kvasir-SEG, BUSI), so that what an older checkout did and
what this one does can be put side by side.

    PYTHONPATH=src .venv/bin/python benchmarks/tool_exports.py                      # this tree
    PYTHONPATH=src .venv/bin/python benchmarks/tool_exports.py --tree /tmp/old/src  # another checkout

Per layout: rows read right, read wrong (a wrong label, patient, mask or boxes; or a row that is no image, such as
a mask read as an image of a class), left out and named, dropped without a word, or the error that stopped the read.
Writes benchmarks/results/tool_exports[_<label>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import write_result
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KVASIR, BUSI = DATA / "kvasir-seg", DATA / "busi" / "Dataset_BUSI_with_GT"
RED = (250, 50, 83)


class Layout:
    """One dataset folder being written, and the truth about each of its images (relative path -> fields)."""

    def __init__(self, work: Path, name: str) -> None:
        self.root, self.truth, self.arrays = work / name, {}, work / "truth" / name
        self.arrays.mkdir(parents=True)

    def image(self, rel: str, src: Path, **fields) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, self.root / rel)
        self.truth[rel] = fields

    def mask(self, rel: str, mask: np.ndarray) -> None:
        np.save(self.arrays / f"{len(self.truth)}.npy", mask)
        self.truth[rel]["mask"] = str(self.arrays / f"{len(self.truth)}.npy")


def _kvasir(k: int, start: int) -> list[str]:
    return sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[start : start + k]


def _kmask(i: str) -> np.ndarray:
    return np.asarray(Image.open(KVASIR / "masks" / f"{i}.jpg").convert("L")) > 127


def _busi(label: str, k: int) -> list[Path]:
    return [BUSI / label / f"{label} ({n}).jpg" for n in range(1, k + 1)]


def _bmask(img: Path) -> np.ndarray:
    return np.asarray(Image.open(img.with_name(img.stem + "_mask.png")).convert("L")) > 127


def _save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _colour(mask: np.ndarray, colour=RED) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[mask] = colour
    return out


def _boxes(i: str) -> list[list]:
    entry = json.loads((KVASIR / "kavsir_bboxes.json").read_text())[i]
    return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"], "polyp"] for b in entry["bbox"]]


def build(work: Path) -> list[Layout]:
    out = []
    lay = Layout(work, "cvat_segmentation_mask")  # CVAT "Segmentation mask 1.1"
    for i in _kvasir(8, 0):
        lay.image(f"JPEGImages/{i}.jpg", KVASIR / "images" / f"{i}.jpg")
        lay.mask(f"JPEGImages/{i}.jpg", _kmask(i))
        _save(lay.root / "SegmentationClass" / f"{i}.png", _colour(_kmask(i)))
        _save(lay.root / "SegmentationObject" / f"{i}.png", _colour(_kmask(i), (128, 0, 0)))
    (lay.root / "labelmap.txt").write_text("background:0,0,0::\npolyp:250,50,83::\n")
    out.append(lay)
    lay = Layout(work, "colour_masks_any_names")
    for i in _kvasir(6, 8):
        lay.image(f"frames/{i}.jpg", KVASIR / "images" / f"{i}.jpg")
        lay.mask(f"frames/{i}.jpg", _kmask(i))
        _save(lay.root / "annotations_png" / f"{i}.png", _colour(_kmask(i)))
    out.append(lay)
    lay = Layout(work, "busi_masks_named_gt_segmentation")
    for label, word in (("benign", "_gt"), ("malignant", "_segmentation")):
        for img in _busi(label, 5):
            rel = f"{label}/{img.stem}.jpg"
            lay.image(rel, img, label=label)
            lay.mask(rel, _bmask(img))
            shutil.copy(img.with_name(img.stem + "_mask.png"), lay.root / label / f"{img.stem}{word}.png")
    out.append(lay)
    lay = Layout(work, "busi_class_then_patient_folders")
    for label in ("benign", "malignant"):
        for n, img in enumerate(_busi(label, 6)):
            patient = f"{label[0]}{n // 2:03d}"
            lay.image(f"{label}/{patient}/{img.name}", img, label=label, patient=patient)
    out.append(lay)
    lay = Layout(work, "busi_csv_image_listed_twice")
    rows = []
    for label in ("benign", "malignant"):
        for img in _busi(label, 5):
            lay.image(f"data/{img.name}", img, label=label)
            rows.append(f"data/{img.name},{label}")
    rows.append("data/benign (1).jpg,malignant")  # a second reader's label
    lay.truth["data/benign (1).jpg"] = {"left_out": True}
    (lay.root / "manifest.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    out.append(lay)
    lay = Layout(work, "roboflow_coco_splits")
    for split, ids in (("train", _kvasir(4, 14)), ("valid", _kvasir(2, 18)), ("test", _kvasir(2, 20))):
        _coco(lay, split, ids, f"{split}/_annotations.coco.json")
    out.append(lay)
    lay = Layout(work, "cvat_coco_annotations_folder")
    _coco(lay, "images", _kvasir(5, 22), "annotations/instances_default.json")
    out.append(lay)
    lay = Layout(work, "busi_folders_with_metadata_json")
    for label in ("benign", "normal"):
        for img in _busi(label, 4):
            lay.image(f"{label}/{img.name}", img, label=label)
    (lay.root / "info.json").write_text(json.dumps({"description": "pilot", "images": 8}))
    out.append(lay)
    lay = Layout(work, "yolo_ultralytics")
    for split, ids in (("train", _kvasir(4, 27)), ("valid", _kvasir(2, 31))):
        for i in ids:
            rel = f"{split}/images/{i}.jpg"
            lay.image(rel, KVASIR / "images" / f"{i}.jpg", label="polyp", boxes=_boxes(i))
            w, h = Image.open(KVASIR / "images" / f"{i}.jpg").size
            lines = [
                f"0 {(a + c) / 2 / w} {(b + d) / 2 / h} {(c - a) / w} {(d - b) / h}" for a, b, c, d, _ in _boxes(i)
            ]
            _text(lay.root / split / "labels" / f"{i}.txt", "\n".join(lines))
    _text(lay.root / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['polyp']\n")
    out.append(lay)
    for name, beside in (("pascal_voc", False), ("labelimg_voc", True)):
        lay = Layout(work, name)
        for i in _kvasir(5, 33 + 5 * beside):
            rel = f"{'imgs' if beside else 'JPEGImages'}/{i}.jpg"
            lay.image(rel, KVASIR / "images" / f"{i}.jpg", label="polyp", boxes=_boxes(i))
            objects = "".join(
                f"<object><name>polyp</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
                "</bndbox></object>"
                for a, b, c, d, _ in _boxes(i)
            )
            xml = lay.root / ("imgs" if beside else "Annotations") / f"{i}.xml"
            _text(xml, f"<annotation><filename>{i}.jpg</filename>{objects}</annotation>")
        out.append(lay)
    lay = Layout(work, "rgba_and_jpeg01_masks")
    for n, i in enumerate(_kvasir(6, 43)):
        lay.image(f"images/{i}.jpg", KVASIR / "images" / f"{i}.jpg")
        lay.mask(f"images/{i}.jpg", _kmask(i))
        if n % 2:
            _save(lay.root / "masks" / f"{i}.jpg", _kmask(i).astype(np.uint8), quality=90)  # 0/1 as JPEG
        else:
            rgba = np.dstack([_colour(np.ones_like(_kmask(i)), (255, 0, 0)), _kmask(i).astype(np.uint8) * 255])
            _save(lay.root / "masks" / f"{i}.png", rgba)  # an editor's red layer, the lesion in alpha
    out.append(lay)
    lay = Layout(work, "two_images_one_mask_name")
    for n, i in enumerate(_kvasir(4, 49)):
        lay.image(f"images/{i}.jpg", KVASIR / "images" / f"{i}.jpg")
        lay.mask(f"images/{i}.jpg", _kmask(i))
        _save(lay.root / "masks" / f"{i}.png", _kmask(i).astype(np.uint8) * 255)
        if n == 0:  # another frame under the same name
            twin = np.asarray(Image.open(KVASIR / "images" / f"{_kvasir(1, 60)[0]}.jpg"))
            _save(lay.root / "images" / f"{i}.png", twin)
            lay.truth[f"images/{i}.jpg"] = lay.truth[f"images/{i}.png"] = {"left_out": True}
    out.append(lay)
    return out


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _coco(lay: Layout, folder: str, ids: list[str], json_rel: str) -> None:
    images, anns = [], []
    for k, i in enumerate(ids, 1):
        rel = f"{folder}/{i}.jpg"
        lay.image(rel, KVASIR / "images" / f"{i}.jpg", label="polyp")
        mask = _kmask(i)
        lay.mask(rel, mask)
        lay.truth[rel]["polygon"] = True
        contours, _h = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        seg = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        images.append({"id": k, "file_name": f"{i}.jpg", "width": mask.shape[1], "height": mask.shape[0]})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [x, y, w, h], "segmentation": seg})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "polyp"}]}
    _text(lay.root / json_rel, json.dumps(coco))


CHECK = r"""
import json, sys
import numpy as np
from pathlib import Path
from medcad.data.layouts import load_manifest
from medcad.data.masks import read_mask
root, truth = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
try:
    m = load_manifest(root)
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {str(e)[:300]}"})); sys.exit()
named = {p for p, _ in m.ledger.left_out}
right, wrong, examples = 0, 0, []
for i, rel in enumerate(m.table["image"]):
    want, bad = truth.get(rel), []
    if want is None or want.get("left_out"):
        bad.append("not an image of the set" if want is None else "read, though it cannot be told right")
    else:
        for col in ("label", "patient"):
            if col in want and m.table[col].iat[i] != want[col]:
                bad.append(f"{col} {m.table[col].iat[i]!r} != {want[col]!r}")
        if "mask" in want:
            gt = np.load(want["mask"])
            got = read_mask(m.mask_paths(i)) if m.mask_paths(i) else np.zeros_like(gt)
            dice = 2 * (got & gt).sum() / max(1, got.sum() + gt.sum()) if got.shape == gt.shape else 0.0
            if dice < (0.9 if want.get("polygon") else 0.97):
                bad.append(f"mask Dice {dice:.3f}")
        if "boxes" in want:
            got = json.loads(m.table["boxes"].iat[i] or "[]")
            if len(got) != len(want["boxes"]) or any(
                abs(a - b) > 1 for g, w in zip(got, want["boxes"]) for a, b in zip(g[:4], w[:4])
            ):
                bad.append(f"boxes {got} != {want['boxes']}")
    right += not bad
    wrong += bool(bad)
    examples += [f"{rel}: {'; '.join(bad)}"] if bad else []
present = set(m.table["image"])
absent = [r for r in truth if r not in present]
named_out = [r for r in absent if r in named]
print(json.dumps({
    "layout": m.layout, "right": right + sum(truth[r].get("left_out", False) for r in named_out),
    "wrong": wrong, "left_out_named": sum(not truth[r].get("left_out") for r in named_out),
    "dropped_silently": len(absent) - len(named_out), "expected": len(truth), "examples": examples[:3],
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for lay in build(work):
            truth = work / "truth" / f"{lay.root.name}.json"
            truth.write_text(json.dumps(lay.truth))
            env = {**os.environ, "PYTHONPATH": args.tree, "MEDCAD_CACHE_DIR": str(work / "cache")}
            p = subprocess.run(
                [sys.executable, "-c", CHECK, str(lay.root), str(truth)], env=env, capture_output=True, text=True
            )
            results[lay.root.name] = (
                json.loads(p.stdout.strip().splitlines()[-1])
                if p.stdout.strip()
                else {"error": p.stderr.strip().splitlines()[-1]}
            )
            results[lay.root.name]["expected"] = len(lay.truth)
            print(lay.root.name, results[lay.root.name], flush=True)
    total = {k: sum(r.get(k, 0) for r in results.values()) for k in ("expected", "right", "wrong", "dropped_silently")}
    total["stopped"] = sum("error" in r for r in results.values())
    print("total", total)
    name = f"tool_exports_{args.label}.json" if args.label else "tool_exports.json"
    write_result(Path(__file__).resolve().parent / "results" / name, {"tree": args.tree, "total": total, **results})


if __name__ == "__main__":
    main()
