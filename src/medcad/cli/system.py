"""`medcad checks`: what this machine has and what medcad will use on it (as `yolo checks` or torch's
collect_env do), so that a slow or surprising default can be traced to the hardware reading behind it."""

from __future__ import annotations

import json

import typer

from medcad.allocator import keep_freed_memory
from medcad.cli.common import JsonOpt, app


def _threads() -> str:
    """The CPU threads of every runtime and why (`medcad.devices.thread_choice`), or why none can be chosen."""
    from medcad.devices import thread_choice
    from medcad.errors import ConfigError

    try:
        n, why = thread_choice()
    except ConfigError as e:
        return f"none: {e}"
    return f"{n} for torch, ONNX Runtime and OpenVINO alike ({why}; --threads overrides)"


def system_report() -> dict:
    """{"machine", "versions", "uses"}: the reading of `medcad.devices.machine` and the defaults that follow it."""
    import torch

    from medcad.devices import auto_precision, machine, version
    from medcad.inference.backends import generic_candidates, missing_runtimes, static_choice

    m = machine()
    accelerator = "gpu" if m.gpus else "cpu"
    device = "cuda" if m.gpus else "cpu"  # predict / serve / evaluate --device auto
    precision = auto_precision(accelerator)
    training = f"{accelerator}, precision {precision}"
    if accelerator == "cpu" and m.native_bf16:  # engine.precision
        training = (
            "cpu, fp32 or bf16 autocast per model: each fit times a few steps of its model in both and trains in "
            "the faster (kept per model and CPU in the cache folder)"
        )
    uses = {"training": training}
    if accelerator == "cpu":  # engine.common: FrozenBatchNormFit, train_stage; models.bnfold, models.depthwise
        uses["training kernels"] = (
            "channels_last; each BatchNorm in eval mode folded into the convolution before it (fine-tuning with the "
            "pretrained statistics, feature caching); the weight gradient of a depthwise convolution on a map smaller "
            "than its kernel summed per kernel offset in fp32 (oneDNN falls back to a GEMM per channel there)"
        )
    return {
        "machine": m.to_dict(),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(m.gpus)],
        "versions": {p: version(p) for p in ("medcad", "torch", "onnxruntime", "openvino", "timm", "lightning")},
        "uses": {
            **uses,
            "cached features and fold predictions": "fp32 (the reference predict's backends are checked against)",
            "predict / serve / evaluate": (
                f"--device auto: the {'GPU' if m.gpus else 'CPU'}; --backend auto: the fastest of "
                + ", ".join(generic_candidates(device))
                + " that agrees >= 0.99 with torch-fp32, measured once per model on its held-out images "
                f"(without a run folder or its images: {static_choice()})"
                + "".join(f"; {pkg} not installed: its backends left out" for pkg in missing_runtimes())
            ),
            "threads": _threads(),
            "allocator": (
                "glibc, freed memory kept for the next step (mallopt; MEDCAD_MALLOC=system leaves it as it is)"
                if keep_freed_memory()
                else "the C library's, as it is"
            ),
        },
    }


@app.command()
def checks(as_json: JsonOpt = False) -> None:
    """What this machine has (CPU kind and flags, native bf16, VNNI, cores, GPUs, runtimes) and what medcad will use
    on it: training precision, prediction backend candidates. MEDCAD_CPU_FLAGS=avx2,fma shows another CPU's choice."""
    report = system_report()
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    m = report["machine"]
    quota = f" of the {m['affinity_cores']} its affinity shows: a CPU quota" if m["cores"] < m["affinity_cores"] else ""
    cores = f"{m['cores']} core{'s' * (m['cores'] != 1)}{quota}"
    typer.echo(f"CPU: {m['cpu']} ({m['kind']}; {cores}; flags from {m['flags_source']})")
    typer.echo(f"  native bf16: {m['native_bf16']}, VNNI: {m['vnni']}, torch kernels: {m['torch_cpu_capability']}")
    typer.echo(f"  flags: {', '.join(m['flags']) or 'none of those medcad looks at'}")
    if m["flags_source"] != "cpuinfo":
        typer.echo(
            f"  torch's kernels are capped to these flags by {m['flags_source']} (ATEN_CPU_CAPABILITY, "
            "ONEDNN_MAX_CPU_ISA); ONNX Runtime and OpenVINO still use every instruction the real CPU has"
        )
    typer.echo(f"GPUs: {m['gpus']}" + "".join(f"; {i}: {name}" for i, name in enumerate(report["gpu_names"])))
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    for what, choice in report["uses"].items():
        typer.echo(f"{what}: {choice}")
