"""Training-step speed of two recipe choices: a pretrained encoder's early stages frozen (`freeze_early_stages`), per
output stride, and the U-Net's decoder widths (`models.segmentation.decoder_widths`).

    .venv/bin/python benchmarks/freeze_speed.py [--cases freeze,decoder] [--steps 6] [--warmup 2] [--out FILE]

One step = forward, loss, backward, AdamW on random tensors (channels_last), each configuration on a fresh model in
this process. freeze: the lite0 classifier at 96 px fp32, 160 px fp32 and 224 px bf16 (batch 32; BatchNorm of the
backbone in eval mode, as medcad's stage 2), the U-Net / lite0 at 256 px bf16 (batch 16; frozen BatchNorm in eval
mode). decoder: the U-Net / lite0 at 256 px (batch 16, every layer trained) with smp's decoder widths and narrower
ones, in bf16 where the CPU has it in hardware, else fp32. `speedup` is against the same model, size and precision
with nothing frozen and smp's widths. Speed does not depend on the weights, so models start from random init.
Writes benchmarks/results/freeze_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from common import write_result

from medcad.devices import cpu_has_bf16
from medcad.models.backbones import freeze_early_stages, set_bn_eval
from medcad.models.classifier import Classifier
from medcad.models.segmentation import SMP_DECODER_CHANNELS, create_segmenter, pretrained_encoder

HERE = Path(__file__).parent
STRIDES = (0, 4, 8)
DECODERS = (SMP_DECODER_CHANNELS, (128, 64, 32, 16, 16), (256, 128, 32, 16, 8))


def images_per_s(model, batch: int, size: int, bf16: bool, mask: bool, steps: int, warmup: int) -> float:
    model = model.to(memory_format=torch.channels_last).train()
    set_bn_eval(model, frozen_only=True)
    if not mask:
        set_bn_eval(model.backbone)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size) > 0.5).float() if mask else torch.randint(0, 2, (batch,))
    seconds = 0.0
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x)
            out = out["mask"] if mask else out
            loss = F.binary_cross_entropy_with_logits(out.float(), y) if mask else F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += (time.perf_counter() - t) * (i >= warmup)
    return batch * steps / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="freeze,decoder")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "freeze_speed.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    cases = [("classifier", 96, False), ("classifier", 160, False), ("classifier", 224, True), ("unet", 256, True)]
    configs = [(kind, size, bf16, stride, SMP_DECODER_CHANNELS) for kind, size, bf16 in cases for stride in STRIDES]
    chosen = set(args.cases.split(","))
    configs = (configs if "freeze" in chosen else []) + (
        [("unet", 256, cpu_has_bf16(), 0, widths) for widths in DECODERS] if "decoder" in chosen else []
    )
    for kind, size, bf16, stride, widths in configs:
        if kind == "classifier":
            model = Classifier("tf_efficientnet_lite0", 2, weights="none")
            freeze_early_stages(model.backbone, stride)
        else:
            model = create_segmenter("unet", weights="none", decoder_channels=widths)
            freeze_early_stages(pretrained_encoder(model), stride)
        ips = images_per_s(
            model, 32 if kind == "classifier" else 16, size, bf16, kind == "unet", args.steps, args.warmup
        )
        rows.append(
            {
                "model": f"{kind} / tf_efficientnet_lite0",
                "image_size": size,
                "precision": "bf16" if bf16 else "fp32",
                "freeze_stride": stride,
                "decoder_channels": list(widths) if kind == "unet" else None,
                "images_per_s": round(ips, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        base = next(
            b
            for b in rows
            if (b["model"], b["image_size"], b["precision"]) == (r["model"], r["image_size"], r["precision"])
            and b["freeze_stride"] == 0
            and b["decoder_channels"] in (None, list(SMP_DECODER_CHANNELS))
        )
        r["speedup"] = round(r["images_per_s"] / base["images_per_s"], 2)
    out = {
        "date": datetime.now().isoformat(timespec="minutes"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
