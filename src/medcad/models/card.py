"""Model card figures: parameters, file size, FLOPs per image and measured CPU latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medcad.devices import cpu_has_bf16


def count_flops(model: nn.Module, size: int) -> float:
    """Floating-point operations of one forward pass on a (1, 3, size, size) input (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def latency_ms(model: nn.Module, size: int, batch: int = 1, repeats: int = 10, bf16: bool | None = None) -> float:
    """Median milliseconds per image on this CPU, channels_last, bf16 autocast where the CPU has it natively
    (`bf16=None`), else fp32."""
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) / batch)
    return float(np.median(times) * 1000)


def model_card(model: nn.Module, size: int, file: str | Path | None = None) -> dict:
    """Parameters (millions), file size (MB), GFLOPs per image, ms per image (batch 1; bf16 where the CPU has it
    natively, else fp32: `latency_precision`) on this machine."""
    card = {
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": count_flops(model, size) / 1e9,
        "ms_per_image": latency_ms(model, size),
        "latency_precision": "bf16" if cpu_has_bf16() else "fp32",
        "input_size": size,
        "threads": torch.get_num_threads(),
    }
    if file is not None and Path(file).is_file():
        card["file_mb"] = Path(file).stat().st_size / 1e6
    return card


def machine_info() -> dict:
    """What the timings were measured on: CPU count, torch threads, processor, torch version."""
    import os
    import platform

    return {
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
