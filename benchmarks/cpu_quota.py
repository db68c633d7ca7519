"""Prediction speed in a container with a CPU quota: `medcad bench` of a run inside a real cgroup v1 CPU quota of
one CPU (as `docker run --cpus 1` sets), once as medcad runs there (the quota's cores: one thread per runtime) and
once with the runtimes sized by the affinity mask, as they size themselves (OMP_NUM_THREADS set to the mask's cores,
which medcad leaves to the user, so torch, ONNX Runtime and OpenVINO get their own defaults). Needs root, a cgroup v1
CPU controller and `unshare` (the cgroup is mounted where a container sees its own); run it alone.

    .venv/bin/python benchmarks/cpu_quota.py RUN [--backends torch-fp32,onnx-fp32,...] [--out FILE]

Writes benchmarks/results/cpu_quota.json: images/s per backend both ways and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_result

HERE = Path(__file__).resolve().parent
GROUP = "/sys/fs/cgroup/cpu/medcad-bench"


def in_quota(cmd: list[str], env: dict) -> str:
    """stdout of `cmd` run in a one-CPU quota (100 ms per 100 ms), the cgroup mounted as the process's own."""
    os.makedirs(GROUP, exist_ok=True)
    Path(GROUP, "cpu.cfs_quota_us").write_text("100000")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        mount = f"mount --bind {GROUP} /sys/fs/cgroup/cpu"
        f.write(f'#!/bin/sh\n{mount} && echo $$ > /sys/fs/cgroup/cpu/tasks && exec "$@"\n')
    os.chmod(f.name, 0o755)
    out = subprocess.run(["unshare", "-m", f.name, *cmd], env=env, capture_output=True, text=True, check=True)
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--backends", default="torch-fp32,torch-bf16,onnx-fp32,openvino-fp32,openvino-bf16")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_quota.json"))
    args = ap.parse_args()
    medcad = str(Path(sys.executable).with_name("medcad"))
    cmd = [medcad, "bench", args.run, "--backends", args.backends, "--json"]
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    affinity = len(os.sched_getaffinity(0))
    figures = {}
    sized_by_mask = {**base, "OMP_NUM_THREADS": str(affinity)}
    for how, env in (("medcad (quota's cores)", base), ("runtimes' defaults", sized_by_mask)):
        bench = json.loads(in_quota(cmd, env))
        figures[how] = {k: round(v["images_per_s"], 1) for k, v in bench["backends"].items() if "images_per_s" in v}
        print(how, figures[how], flush=True)
    medcad_ips, default_ips = figures["medcad (quota's cores)"], figures["runtimes' defaults"]
    ratio = {k: round(medcad_ips[k] / default_ips[k], 2) for k in medcad_ips if k in default_ips}
    print("ratio", ratio)
    os.rmdir(GROUP)  # empty again: its processes have ended
    result = {"run": args.run, "quota_cpus": 1, "affinity_cores": affinity, "images_per_s": figures, "ratio": ratio}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
