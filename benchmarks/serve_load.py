"""Load test of `medcad serve` on loopback: 32 concurrent clients, 1,000 requests per model, real images.

    nice -n 19 .venv/bin/python benchmarks/serve_load.py --cls runs/serve_cls --seg runs/serve_seg

Each run is served by `medcad serve` in its own process on 127.0.0.1 (default options: torch-bf16 backend, one
inference thread, batches of up to 8, queue of 64, 30 s timeout); an async httpx client keeps 32 requests in
flight, each a real image file (BUSI for the classifier, Kvasir-SEG for the segmenter) posted to /predict as
multipart. A request counts as an error unless it is a 200 or a designed 503 (queue full). Bounded: stops
issuing after --max-seconds. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from common import write_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data"
IMAGES = {
    "classify": sorted((DATA / "busi" / "Dataset_BUSI_with_GT").glob("*/*).jpg"))[::13],
    "segment": sorted((DATA / "kvasir-seg" / "images").glob("*.jpg"))[::20],
}


async def _client(base: str, files: list[bytes], todo: list[int], stats: dict, deadline: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        while todo and time.perf_counter() < deadline:
            i = todo.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", files={"file": ("image.jpg", files[i % len(files)], "image/jpeg")})
                code = r.status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            stats["codes"][str(code)] = stats["codes"].get(str(code), 0) + 1
            if code == 200:
                stats["latency"].append(time.perf_counter() - t0)
            elif code == 503:
                await asyncio.sleep(float(r.headers.get("Retry-After", 1)))


async def load(base: str, files: list[bytes], requests: int, clients: int, max_seconds: float) -> dict:
    stats: dict = {"codes": {}, "latency": []}
    todo = list(range(requests))
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(base, files, todo, stats, t0 + max_seconds) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(stats["latency"]) * 1000
    ok = stats["codes"].get("200", 0)
    return {
        "requests": sum(stats["codes"].values()),
        "clients": clients,
        "status_codes": stats["codes"],
        "errors": sum(n for c, n in stats["codes"].items() if c not in ("200", "503")),
        "seconds": round(wall, 2),
        "requests_per_s": round(ok / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if ok else None,
        "max_ms": round(float(lat.max()), 1) if ok else None,
    }


def serve(run: Path, port: int, queue: int = 64) -> subprocess.Popen:
    """`medcad serve RUN` in its own process on loopback; returns when /health answers."""
    code = "import sys; from medcad.cli import app; sys.argv[0] = 'medcad'; app()"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(run), "--port", str(port), "--queue", str(queue)], env=env
    )
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"medcad serve {run} exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"medcad serve {run} did not start within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cls", type=Path, default=ROOT / "runs" / "serve_cls")
    ap.add_argument("--seg", type=Path, default=ROOT / "runs" / "serve_seg")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=420)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--tasks", default="classify,segment", help="Which of the two runs to load.")
    ap.add_argument("--queue", type=int, default=64, help="medcad serve --queue (smaller: see the designed 503s).")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = ap.parse_args()
    results = {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} vCPU, no GPU",
        "load_average_at_start": os.getloadavg()[0],
        "command": "nice -n 19 .venv/bin/python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "server": f"medcad serve RUN --queue {args.queue} (torch-bf16, 1 inference thread, batch <= 8, timeout 30 s)",
        "models": {},
    }
    for task, run in (("classify", args.cls), ("segment", args.seg)):
        if task not in args.tasks.split(","):
            continue
        files = [p.read_bytes() for p in IMAGES[task]]
        proc = serve(run, args.port, args.queue)
        try:
            card = httpx.get(f"http://127.0.0.1:{args.port}/model", timeout=10).json()
            r = asyncio.run(load(f"http://127.0.0.1:{args.port}", files, args.requests, args.clients, args.max_seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        r |= {
            "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
            "task": card["task"],
            "backend": card["model"]["backend"],
            "model": card["model"],
            "input": card["preprocessing"]["resize"],
            "images": f"{len(files)} distinct real images, cycled",
        }
        results["models"][task] = r
        print(json.dumps(r, indent=1))
    out = args.out
    tmp = out.with_suffix(".tmp")
    write_result(tmp, results)
    tmp.replace(out)


if __name__ == "__main__":
    main()
