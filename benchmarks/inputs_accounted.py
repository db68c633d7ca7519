"""Issue 21's situations, each run by a medcad tree as a user would (its own `python -m medcad` process), so that
what an older checkout did and what this one does can be put side by side.

    PYTHONPATH=src .venv/bin/python benchmarks/inputs_accounted.py                      # this tree
    PYTHONPATH=src .venv/bin/python benchmarks/inputs_accounted.py --tree /tmp/old/src  # another checkout

Writes benchmarks/results/inputs_accounted[_<label>].json: per situation the exit code and what the user saw
(counts, labels, the first line of an error).
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

import numpy as np
import pandas as pd
from common import write_result
from PIL import Image

SMALL = ["--image-size", "32", "--epochs", "1", "--head-epochs", "3", "--batch-size", "8", "--unfreeze", "1"]


def _img(path: Path, seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
    if seed % 2:
        arr[10:25, 10:25] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def medcad(tree: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": tree, "MEDCAD_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "medcad", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def _first_error(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (p.stderr + p.stdout).splitlines() if "error" in ln.lower()]
    return lines[-1][:300] if lines else ""


def _inspect(tree: str, root: Path, cwd: Path) -> dict:
    p = medcad(tree, "data", "inspect", str(root), "--json", "--out", str(cwd / "m.csv"), cwd=cwd)
    if p.returncode:
        return {"rc": p.returncode, "error": _first_error(p)}
    s = json.loads(p.stdout)
    return {"rc": 0, "n_images": s["n_images"], "labels": s["labels"], "ledger": (s.get("ledger") or {}).get("summary")}


def csv_paths(tree: str, work: Path, style: str) -> dict:
    root = work / f"csv_{style}"
    rows = []
    for i in range(20):
        label = ("benign", "malignant")[i % 2]
        rel = f"images/{label}/b{i:02d}.png"
        _img(root / rel, i)
        written = {"windows": rel.replace("/", "\\"), "absolute": f"/home/someone/release/{rel}"}[style]
        rows.append({"image": rel if i < 8 else written, "label": label})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return _inspect(tree, root, work)


def symlinked_class(tree: str, work: Path) -> dict:
    root = work / "linked"
    for label in ("benign", "malignant"):
        for k in range(4):
            _img(root / label / f"{k}.png", k + 10 * len(label))
    for k in range(4):
        _img(work / "elsewhere" / "normal" / f"{k}.png", 90 + k)
    os.symlink(work / "elsewhere" / "normal", root / "normal")
    return _inspect(tree, root, work)


def label_case(tree: str, work: Path) -> dict:
    root = work / "case"
    rows = []
    for i, label in enumerate(["Benign", "benign", "benign", "MALIGNANT", "malignant", "malignant"] * 2):
        _img(root / f"{i}.png", i)
        rows.append({"image": f"{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return _inspect(tree, root, work)


def study_file(tree: str, work: Path, text: str) -> dict:
    data = work / "sdata"
    for label in ("a", "b"):
        for k in range(3):
            _img(data / label / f"{k}.png", k)
    path = work / "study.yaml"
    path.write_text(text.format(data=data))
    code = (
        "import sys; from medcad.study.spec import load_study; s = load_study(sys.argv[1]); "
        "print(s.base.group_by, type(s.base.lr).__name__, s.base.lr)"
    )
    env = {**os.environ, "PYTHONPATH": tree}
    p = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    return {"rc": p.returncode, "read": p.stdout.strip(), "error": _first_error(p)}


def bomb(tree: str, work: Path) -> dict:
    root = work / "bomb"
    for label in ("a", "b"):
        for k in range(3):
            _img(root / label / f"{k}.png", k)
    Image.new("L", (13000, 14000)).save(root / "a" / "huge.png")  # 182 megapixels, a small file
    return _inspect(tree, root, work)


def _tiny_run(tree: str, root: Path, out: Path, work: Path) -> subprocess.CompletedProcess:
    """12 + 12 images in two class folders under `root`, and a tiny two-fold run of them in `out`."""
    for k in range(12):
        _img(root / "malignant" / f"m{k:02d}.png", 2 * k + 1)
        _img(root / "benign" / f"b{k:02d}.png", 2 * k)
    return medcad(tree, "train", str(root), "--out", str(out), "--folds", "2", *SMALL, "--no-report", cwd=work)


def added_images(tree: str, work: Path) -> dict:
    """Train a tiny run, add images that sort first, and evaluate it again."""
    root = work / "grow"
    p = _tiny_run(tree, root, work / "run", work)
    if p.returncode:
        return {"rc": p.returncode, "error": _first_error(p)}
    before = json.loads((work / "run" / "metrics.json").read_text())["accuracy"]["value"]
    for k in range(6):
        _img(root / "benign" / f"a{k:02d}.png", 100 + 2 * k)
    p = medcad(tree, "evaluate", str(work / "run"), "--json", cwd=work)
    if p.returncode:
        return {"rc": p.returncode, "accuracy_before": before, "error": _first_error(p)}
    after = json.loads(p.stdout)["accuracy"]["value"]
    notes = [ln for ln in p.stderr.splitlines() if "added" in ln]
    return {"rc": 0, "accuracy_before": before, "accuracy_after_adding": after, "said": notes[:2]}


def truncated_predict(tree: str, work: Path) -> dict:
    p = _tiny_run(tree, work / "trunc", work / "trun", work)
    if p.returncode:
        return {"rc": p.returncode, "error": _first_error(p)}
    folder = work / "to_predict"
    for k in range(10):
        _img(folder / f"g{k}.png", 50 + k)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "g9_bad.jpg")
    (folder / "g9_bad.jpg").write_bytes((folder / "g9_bad.jpg").read_bytes()[:300])
    p = medcad(tree, "predict", str(work / "trun"), str(folder), "-o", str(work / "pred"), "--json", cwd=work)
    rows = json.loads(p.stdout) if p.stdout.strip().startswith("[") else []
    return {"rc": p.returncode, "predicted": sum(1 for r in rows if "error" not in r), "error": _first_error(p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tree", default="src", help="the medcad source folder to run (its PYTHONPATH)")
    ap.add_argument("--label", default="", help="suffix of the JSON file name")
    args = ap.parse_args()
    tree = str(Path(args.tree).resolve())
    cases = {
        "csv_windows_paths": lambda w: csv_paths(tree, w, "windows"),
        "csv_absolute_paths_other_machine": lambda w: csv_paths(tree, w, "absolute"),
        "symlinked_class_folder": lambda w: symlinked_class(tree, w),
        "labels_in_two_cases": lambda w: label_case(tree, w),
        "study_key_given_twice": lambda w: study_file(
            tree, w, "data: {data}\ngroup_by: patient\nfolds: 2\ngroup_by: none\n"
        ),
        "study_lr_1e-4": lambda w: study_file(tree, w, "data: {data}\nsettings:\n  lr: 1e-4\n"),
        "image_of_182_megapixels": lambda w: bomb(tree, w),
        "images_added_then_evaluate": lambda w: added_images(tree, w),
        "predict_folder_with_truncated_jpeg": lambda w: truncated_predict(tree, w),
    }
    out = {}
    for name, case in cases.items():
        work = Path(tempfile.mkdtemp(prefix=f"medcad_{name}_"))
        try:
            out[name] = case(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(name, json.dumps(out[name]), flush=True)
    dest = Path(__file__).parent / "results" / f"inputs_accounted{'_' + args.label if args.label else ''}.json"
    write_result(dest, {"tree": tree, "cases": out})
    print(dest)


if __name__ == "__main__":
    main()
