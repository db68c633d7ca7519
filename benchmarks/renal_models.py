"""The renal-tumour design's models (reference design 4): parameters, GFLOPs and CPU ms per image at 64/128/256 px.

    PYTHONPATH=src .venv/bin/python benchmarks/renal_models.py [--sizes 64 128 256] [--archs renal-joint ...]

Every arch is built as for `--task multitask` with the design's 2 classes (benign / malignant; "dsconv-resnet" is
its class-only arm), random init (weights do not change the figures). GFLOPs count convolutions and matrix
products of one eval-mode forward pass (torch's FlopCounterMode; multiply-add = 2). Latency: `latency_ms` of one
batch-1 pass after a warm-up pass, channels_last, with bf16 autocast where the CPU has it natively and in fp32, at the
torch threads given; the least of `--rounds` rounds in which the models take turns, since on a shared machine other
work only ever adds time (the 1-minute load average before and after is recorded).
Writes benchmarks/results/renal_models.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch
from common import write_result

from medcad.devices import cpu_has_bf16
from medcad.models.card import count_flops, latency_ms
from medcad.models.segmentation import create_segmenter

HERE = Path(__file__).resolve().parent
ARCHS = ("renal-joint", "attention-unetpp", "unet-scratch", "stunet-s", "unet", "unet-vgg11", "dsconv-resnet")
NOTES = {
    "renal-joint": "depthwise-separable attention UNet++ (CBAM, residual, deep supervision) + DSConvResNet on the "
    "lesion-gated image",
    "attention-unetpp": "attention UNet++ (full 3x3 convs) + JointSegClassifier head on its bottleneck",
    "unet-scratch": "original 4-level U-Net (64-1024 filters, BN), from scratch, + JointSegClassifier head",
    "stunet-s": "2D STU-Net-S-like residual U-Net, from scratch, + JointSegClassifier head",
    "unet": "smp U-Net, tf_efficientnet_lite0 encoder (ImageNet offline), + JointSegClassifier head",
    "unet-vgg11": "smp U-Net, VGG11 encoder (TernausNet-like), + JointSegClassifier head",
    "dsconv-resnet": "depthwise-separable ResNet classifier alone (class only)",
}


def build(arch: str, n_classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no offline weights for unet-vgg11: random init is all this needs
        return create_segmenter(arch, n_classes=n_classes, weights="none").eval()


def measure(archs: list[str], size: int, rounds: int) -> dict[str, dict]:
    """Parameters, GFLOPs and the least ms per image over `rounds` rounds that each time every model once (after a
    warm-up pass): models take turns, so a burst of other work on the machine slows each model in some rounds only."""
    models = {arch: build(arch) for arch in archs}
    rows = {
        arch: {"parameters_m": sum(p.numel() for p in m.parameters()) / 1e6, "gflops": count_flops(m, size) / 1e9}
        for arch, m in models.items()
    }
    precisions = {"ms_fp32": False, **({"ms_bf16": True} if cpu_has_bf16() else {})}
    times: dict[tuple[str, str], list[float]] = {(a, k): [] for a in archs for k in precisions}
    for _ in range(rounds):
        for arch, model in models.items():
            for key, bf16 in precisions.items():
                times[arch, key].append(latency_ms(model, size, repeats=1, bf16=bf16))
    for (arch, key), ts in times.items():
        rows[arch][key] = min(ts)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "renal_models.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    models = {arch: {"note": NOTES[arch], "sizes": {}} for arch in args.archs}
    for size in args.sizes:
        for arch, row in measure(args.archs, size, args.rounds).items():
            models[arch]["sizes"][str(size)] = row
            print(arch, size, {k: round(v, 3) for k, v in row.items()}, flush=True)
    result = {
        "models": models,
        "n_classes": 2,
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "method": "parameters incl. depthwise convs; GFLOPs of convs + matmuls (FlopCounterMode, eval mode); "
        "least of `rounds` batch-1 passes (models taking turns, each after a warm-up pass), channels_last",
    }
    write_result(args.out, result)
    print(table(models, args.sizes))


def table(models: dict, sizes: list[int]) -> str:
    head = "| arch | params (M) | " + " | ".join(f"GFLOPs / ms fp32 / ms bf16 @{s}" for s in sizes) + " |"
    lines = [head, "|" + "---|" * (2 + len(sizes))]
    for arch, m in models.items():
        cells = []
        for s in sizes:
            r = m["sizes"][str(s)]
            cells.append(f"{r['gflops']:.2f} / {r['ms_fp32']:.1f} / {r.get('ms_bf16', float('nan')):.1f}")
        params = m["sizes"][str(sizes[0])]["parameters_m"]
        lines.append(f"| {arch} | {params:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
