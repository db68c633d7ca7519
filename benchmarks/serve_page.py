"""A screenshot of the `medcad serve` page for docs/: the real server on loopback serving a run, one image
uploaded through the page in headless Chromium.

    .venv/bin/python benchmarks/serve_page.py [--run runs/serve_cls] [--image PATH] [--out docs/serve_page.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "inference"))

from serving import drive, running  # noqa: E402

from medcad.explain.explainers import EXPLAINERS  # noqa: E402
from medcad.inference.registry import load_predictor  # noqa: E402
from medcad.inference.server import create_app  # noqa: E402

BUSI = ROOT.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "serve_cls")
    ap.add_argument("--image", type=Path, default=BUSI / "malignant" / "malignant (12).jpg")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve_page.png")
    args = ap.parse_args()
    predictor = load_predictor(args.run)
    app = create_app(predictor, explain=lambda rgb: EXPLAINERS[predictor.task](predictor, rgb))
    with running(app) as base, tempfile.TemporaryDirectory() as tmp:
        state = drive(base + "/", args.image, Path(tmp), args.out)
    print({k: v for k, v in state.items() if k != "card"}, "->", args.out)


if __name__ == "__main__":
    main()
