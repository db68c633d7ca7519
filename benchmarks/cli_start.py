"""Start-up as users meet it: `medcad predict RUN IMAGE` of one image, and `medcad serve RUN` until GET /health
answers, each in a fresh process, for every source tree given (e.g. before and after a change), alternated round by
round so that both see the same machine.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/cli_start.py --run RUN --image IMAGE \\
        [--src OLD/src --src NEW/src] [--rounds 5] [--out benchmarks/results/cli_start.json]

The run's backend choice (`auto`, RUN/backends.json) is made once before timing, so every call reads it. Seconds are
wall-clock from the process start to its exit (predict) or to the first 200 of /health (serve; a predictor on a
graph builds no torch networks, one on a torch backend builds them before /health answers). With `--first`, also a
run's first predict (`first_predict`): `auto`'s measurement, with the ONNX export it needs, RUN/backends.json and
RUN/export* deleted before each (give it a copy of a run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import scratch, write_result

HERE = Path(__file__).resolve().parent


def _env(src: str) -> dict:
    return {**os.environ, "PYTHONPATH": src}


def time_predict(src: str, run: Path, image: Path) -> float:
    with scratch() as out:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "medcad", "predict", str(run), str(image), "--out", out]
        subprocess.run(cmd, env=_env(src), check=True, capture_output=True)
        return time.perf_counter() - t0


def time_first_predict(src: str, run: Path, image: Path) -> float:
    (run / "backends.json").unlink(missing_ok=True)
    for folder in run.glob("export*"):
        shutil.rmtree(folder)
    return time_predict(src, run, image)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_serve(src: str, run: Path, limit_s: float = 120.0) -> float:
    port = _free_port()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "medcad", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < limit_s:
            if server.poll() is not None:
                raise RuntimeError(f"medcad serve exited with {server.returncode} before /health answered")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"/health did not answer within {limit_s} s")
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--src", action="append", help="a source tree's src folder (default: this checkout's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli_start.json")
    ap.add_argument("--first", action="store_true", help="also time the first predict (deletes RUN's exports)")
    args = ap.parse_args()
    trees = args.src or [str(HERE.parent / "src")]
    time_predict(trees[-1], args.run, args.image)  # the backend choice made (and exports built) before timing
    kinds = ["predict", "serve"] + ["first_predict"] * args.first
    seconds: dict[str, dict[str, list[float]]] = {t: {k: [] for k in kinds} for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            if args.first:  # first: the choice it makes is what the round's other calls read
                seconds[tree]["first_predict"].append(round(time_first_predict(tree, args.run, args.image), 3))
            seconds[tree]["predict"].append(round(time_predict(tree, args.run, args.image), 3))
            seconds[tree]["serve"].append(round(time_serve(tree, args.run), 3))
    chosen = json.loads((args.run / "backends.json").read_text()) if (args.run / "backends.json").is_file() else {}
    result = {
        "run": str(args.run),
        "auto_backend": {key: c["backend"] for key, c in chosen.items()},  # what predict and serve ran here
        "image": str(args.image),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_s": {t: {k: statistics.median(v) for k, v in s.items()} for t, s in seconds.items()},
    }
    print(result["median_s"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
