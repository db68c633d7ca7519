"""Depthwise weight gradients on maps smaller than the kernel: oneDNN's against `medcad.models.depthwise`, per layer
and in a whole training step, on this CPU.

    .venv/bin/python benchmarks/depthwise_grad.py [--rounds 9] [--threads 1]

Per layer: the weight gradient of the depthwise convolutions of tf_efficientnet_lite0's last stages at the input sizes
medcad trains small images at (batch 32, channels_last, fp32), best of 5 calls each way (oneDNN: `aten::
convolution_backward`, as autograd calls it; medcad: `depthwise_weight_grad`), and the largest relative difference.
Per step: a lite0 classifier's stage-2 training step (medcad's recipe: stem and stages to stride 8 frozen, BatchNorm
statistics kept and folded, channels_last) with and without `fast_depthwise_grads`, alternating, `--rounds` rounds of
two steps each way; the median of the paired ratios is what to read (this VM's speed drifts between rounds).
Writes benchmarks/results/depthwise_grad.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result
from train_speed import synthetic

from medcad.config import TrainConfig
from medcad.engine.train import fold_hooks
from medcad.models.backbones import set_bn_eval
from medcad.models.bnfold import fold_eval_batchnorm
from medcad.models.depthwise import depthwise_weight_grad, fast_depthwise_grads
from medcad.run import Run

HERE = Path(__file__).resolve().parent
# (channels, map side, stride, kernel): lite0's 5x5 depthwise layers of its last stages at 64, 96 and 128 px
LAYERS = [(1152, 2, 1, 5), (1152, 3, 1, 5), (1152, 4, 1, 5), (1152, 5, 1, 5), (672, 4, 1, 5), (480, 2, 1, 3)]


def _best_ms(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def layer_times() -> list[dict]:
    rows = []
    for c, side, stride, k in LAYERS:
        pad = k // 2
        cl = torch.channels_last
        x = torch.randn(32, c, side, side).contiguous(memory_format=cl)
        w = torch.randn(c, 1, k, k).contiguous(memory_format=cl)
        out = (side + 2 * pad - k) // stride + 1
        g = torch.randn(32, c, out, out).contiguous(memory_format=cl)
        conf = [stride] * 2, [pad] * 2, [1, 1]

        def onednn(g=g, x=x, w=w, c=c, conf=conf):
            return torch.ops.aten.convolution_backward(g, x, w, None, *conf, False, [0, 0], c, [False, True, False])[1]

        def ours(g=g, x=x, k=k, conf=conf):
            return depthwise_weight_grad(x, g, (k, k), *conf)

        ref = onednn()
        rows.append(
            {
                "channels": c,
                "map": side,
                "kernel": k,
                "stride": stride,
                "onednn_ms": round(_best_ms(onednn), 2),
                "medcad_ms": round(_best_ms(ours), 2),
                "max_rel_diff": float((ours() - ref).abs().max() / ref.abs().max()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def step_ratio(size: int, rounds: int) -> dict:
    cfg = TrainConfig(task="classify", image_size=size, batch_size=32, epochs=1, freeze_stride=8)
    hooks = fold_hooks("classify")(Run.resolve(cfg, tempfile.mkdtemp()))
    data = synthetic(48, size)
    model, _ = hooks.build(data, {"train": np.arange(32), "val": np.arange(32, 48), "test": np.arange(0)}, None, None)
    model.train()
    set_bn_eval(model.backbone)
    folds = fold_eval_batchnorm(model.backbone)
    model.to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (32,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def two_steps() -> float:
        t = time.perf_counter()
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return 64 / (time.perf_counter() - t)

    two_steps()
    plain, routed = [], []
    for _ in range(rounds):
        plain.append(two_steps())
        with fast_depthwise_grads(model):
            routed.append(two_steps())
    folds.remove()
    return {
        "image_size": size,
        "onednn_images_per_s": [round(v, 1) for v in plain],
        "medcad_images_per_s": [round(v, 1) for v in routed],
        "median_paired_ratio": round(statistics.median(b / a for a, b in zip(plain, routed, strict=True)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "depthwise_grad.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = layer_times()
    steps = []
    for size in (96, 128):
        steps.append(step_ratio(size, args.rounds))
        print(steps[-1], flush=True)
    write_result(args.out, {"threads": args.threads, "batch_size": 32, "layers": layers, "training_step": steps})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
