"""medcad end to end on a CUDA GPU, as a user with one runs it: `checks`, the GPU's own tests (tests/test_gpu.py), then
train (classify on BUSI, segment and detect on Kvasir-SEG, small subsets), predict, bench, export, serve, evaluate on
an external set and explain on the GPU, then the CPU's engine tests on the GPU machine. Each step is one CLI command
(or pytest) with its own time limit; a failed step is recorded and the next runs. For a lent GPU machine's short
lease: everything in one call.

    python benchmarks/gpu_check.py --busi BUSI_FOLDER --kvasir KVASIR_FOLDER [--out DIR] [--budget SECONDS]
        [--steps checks,classify,...] [--folds K] [--quick]

`--quick` (tiny images, one epoch) rehearses the script on a CPU. Writes DIR/gpu_check.json (every step: command,
exit code, seconds, the tail of its output, parsed JSON where the command prints it) and DIR/gpu_check.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import write_result

HERE = Path(__file__).resolve().parent


class Steps:
    """Runs commands one after another within a time budget, logging each."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline, self.results = out, time.monotonic() + budget, []
        self.log = (out / "gpu_check.log").open("w")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], timeout: float, parse_json: bool = False, env: dict | None = None):
        timeout = min(timeout, self.left())
        if timeout < 10:
            self.results.append({"step": name, "skipped": "time budget spent"})
            print(f"{name:<24} skipped (time budget)", flush=True)
            return None
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = "timeout", _text(e.stdout), _text(e.stderr)
        seconds = round(time.monotonic() - t0, 1)
        self.log.write(f"\n===== {name} (rc {rc}, {seconds} s): {' '.join(argv)}\n{stdout}\n----- stderr\n{stderr}\n")
        self.log.flush()
        row = {"step": name, "argv": argv, "rc": rc, "seconds": seconds, "tail": (stdout + stderr)[-1500:]}
        # a network whose BatchNorms stay unfolded (models.bnfold's check failed) trains and predicts slower
        row["batchnorm_left_unfolded"] = (stdout + stderr).count("left unfolded")
        if parse_json and rc == 0:
            try:
                row["json"] = json.loads(stdout)
            except json.JSONDecodeError as e:
                row["json_error"] = str(e)
        self.results.append(row)
        print(f"{name:<24} rc {rc!s:<8} {seconds:7.1f} s", flush=True)
        return row


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def serve_check(steps: Steps, medcad: list[str], run: Path, image: Path, port: int = 8765) -> None:
    """`medcad serve RUN --device cuda` on loopback, one image to /predict (with Grad-CAM), the answer recorded."""
    t0 = time.monotonic()
    log = (steps.out / "serve.log").open("w")
    argv = [*medcad, "serve", str(run), "--port", str(port), "--device", "cuda"]
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    row = {"step": "serve cls (cuda)", "argv": argv}
    try:
        for _ in range(int(min(120, steps.left()))):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited with {server.returncode}") from None
                time.sleep(1)
        body, boundary = image.read_bytes(), "medcadcheck"
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{image.name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        for query in ("", "?gradcam=true"):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict{query}",
                data=data,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
            row["predict" + query] = {k: v for k, v in answer.items() if k not in ("heatmap", "overlay", "mask")}
            row["keys" + query] = sorted(answer)
        row["model"] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=10).read())
        row["rc"] = 0
    except Exception as e:  # noqa: BLE001 - a check script records every failure and goes on
        row["rc"], row["error"] = 1, f"{type(e).__name__}: {e}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()
    row["seconds"] = round(time.monotonic() - t0, 1)
    row["tail"] = (steps.out / "serve.log").read_text()[-1500:]
    steps.results.append(row)
    print(f"{row['step']:<24} rc {row['rc']!s:<8} {row['seconds']:7.1f} s", flush=True)


STEPS = (
    "checks,gpu-tests,classify,predict-cls,bench-cls,serve,segment,predict-seg,detect,predict-det,export,evaluate,"
    "explain,report,engine-tests"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--busi", required=True, help="BUSI-like class folders with _mask.png masks")
    ap.add_argument("--kvasir", required=True, help="Kvasir-SEG-like images/ + masks/ (+ kavsir_bboxes.json)")
    ap.add_argument("--out", default=os.environ.get("OUT", str(HERE / "out" / "gpu_check")))
    ap.add_argument("--runs", default="runs/gpu_check")
    ap.add_argument("--budget", type=float, default=480, help="seconds for every step together")
    ap.add_argument("--quick", action="store_true", help="tiny images and one epoch (a CPU rehearsal)")
    ap.add_argument("--steps", default=STEPS, help=f"comma-separated, in this order: {STEPS}")
    ap.add_argument("--folds", default="3")
    ap.add_argument("--cpu-tests", default="tests/engine", help="the CPU's tests run there (engine-tests step)")
    args = ap.parse_args()
    out, runs, want = Path(args.out), Path(args.runs), set(args.steps.split(","))
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    steps = Steps(out, args.budget)
    medcad = [sys.executable, "-m", "medcad"]
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    size = (lambda n: 64) if args.quick else (lambda n: n)
    ep = (lambda n: 1) if args.quick else (lambda n: n)
    busi, kvasir = Path(args.busi), Path(args.kvasir)
    image = next(p for p in sorted(busi.rglob("*.jpg")))
    cls, seg, det = runs / "cls", runs / "seg", runs / "det"
    train = [*medcad, "train", "--folds", args.folds, "--no-report"]

    if "checks" in want:
        steps.run("checks", [*medcad, "checks", "--json"], 60, parse_json=True)
    if "gpu-tests" in want:
        gpu_env = {**os.environ, "MEDCAD_TEST_GPU": "1"}
        steps.run("pytest -m gpu", [*pytest, "-m", "gpu", "tests/test_gpu.py"], 180, env=gpu_env)
    if "classify" in want:
        epochs = ["--head-epochs", str(ep(5)), "--epochs", str(ep(3))]
        steps.run("train classify", [*train, str(busi), "--task", "classify", "--image-size", str(size(224)),
                                     *epochs, "-o", str(cls)], 240)  # fmt: skip
    if "predict-cls" in want:
        predict_cls = [*medcad, "predict", str(cls), str(busi), "-o", str(runs / "p"), "--json"]
        steps.run("predict cls (auto)", predict_cls, 90, True)
    if "bench-cls" in want:
        backends = "torch-fp32,torch-bf16,onnx-fp32"
        steps.run("bench cls (cuda)", [*medcad, "bench", str(cls), "--device", "cuda", "--backends", backends,
                                       "--json"], 120, True)  # fmt: skip
    if "serve" in want:
        serve_check(steps, medcad, cls, image)
    for task, run, pixels in (("segment", seg, 256), ("detect", det, 320)):  # Kvasir-SEG's masks, then its boxes
        short = task[:3]
        if task in want:
            steps.run(f"train {task}", [*train, str(kvasir), "--task", task, "--image-size", str(size(pixels)),
                                        "--epochs", str(ep(4)), "-o", str(run)], 180)  # fmt: skip
        if f"predict-{short}" in want:
            steps.run(f"predict {short} (cuda)", [*medcad, "predict", str(run), str(kvasir / "images"), "--device",
                                                  "cuda", "-o", str(runs / f"p{task[0]}"), "--no-overlays", "--json"],
                      90, True)  # fmt: skip
    if "export" in want:
        steps.run("export cls (cuda ref)", [*medcad, "export", str(cls), "--device", "cuda", "--json"], 120, True)
    if "evaluate" in want:
        steps.run("evaluate cls --data", [*medcad, "evaluate", str(cls), "--data", str(busi), "--json"], 90, True)
    if "explain" in want:
        steps.run("explain cls", [*medcad, "explain", str(cls), str(image), "-o", str(out / "gradcam.png")], 60)
    if "report" in want:
        steps.run("report cls", [*medcad, "report", str(cls)], 90)
    if "engine-tests" in want:  # the CPU's suite on a GPU machine (tests/conftest.py hides the GPU)
        workers = str(min(8, os.cpu_count() or 1))
        steps.run("pytest " + args.cpu_tests, [*pytest, "-n", workers, *args.cpu_tests.split()], 300)
    failed = [r["step"] for r in steps.results if r.get("rc") not in (0, None)]
    write_result(out / "gpu_check.json", {"steps": steps.results, "failed": failed, "quick": args.quick})
    print("failed:", ", ".join(failed) or "none")


if __name__ == "__main__":
    main()
