"""medcad: computer-aided diagnosis studies on endoscopy and ultrasound images."""

import functools
import os

__version__ = "0.1.0"
CPU_FLAGS_ENV = "MEDCAD_CPU_FLAGS"  # e.g. "avx2,fma": run as if the CPU had only these (tests, what-if checks)


def _cap_torch_kernels() -> None:
    """Under `MEDCAD_CPU_FLAGS` (run as if the CPU had only these flags), make torch's kernels follow the same CPU:
    ATen's vectorised kernels (`ATEN_CPU_CAPABILITY`) and oneDNN's convolutions (`ONEDNN_MAX_CPU_ISA`), so that a
    machine with AVX-512 BF16 runs torch as an AVX2-only CPU does (bf16 emulated there: a 64-channel 3x3
    convolution at 56 px, batch 16, measured 34 ms native bf16 -> 288 ms capped to AVX2, fp32 38 -> 50 ms). Both
    variables are read at torch's first operation, so this runs on import of medcad, and what the user set wins.
    ONNX Runtime and OpenVINO choose their kernels from the CPU itself and are not capped."""
    flags = os.environ.get(CPU_FLAGS_ENV)
    if flags is None:
        return
    have = {f.strip().lower() for f in flags.split(",")}
    if "avx512f" in have:
        onednn = "AVX512_CORE_AMX" if "amx_bf16" in have else "AVX512_CORE_BF16" if "avx512_bf16" in have else None
        aten, onednn = "avx512", onednn or ("AVX512_CORE_VNNI" if "avx512_vnni" in have else "AVX512_CORE")
    elif "avx2" in have:
        aten, onednn = "avx2", "AVX2_VNNI" if "avx_vnni" in have else "AVX2"
    else:
        aten, onednn = "default", "SSE41"
    os.environ.setdefault("ATEN_CPU_CAPABILITY", aten)
    if "ONEDNN_MAX_CPU_ISA" not in os.environ:
        os.environ["ONEDNN_MAX_CPU_ISA"] = onednn
        os.environ[_CAPPED] = "1"  # set by medcad, not by the user: released for OpenVINO (below)


_CAPPED = "MEDCAD_CAPPED_ONEDNN"


@functools.cache
def usable_cores() -> int:
    """CPU cores this process may use: those of its affinity mask, fewer under a container's CPU quota (cgroup v1 /
    v2 CPU bandwidth, e.g. `docker run --cpus 2` on a 64-core host, where os.cpu_count() says 64) or under
    LOKY_MAX_CPU_COUNT: joblib's count (`joblib.cpu_count`, which reads the quota), never more than the mask."""
    from joblib import cpu_count

    return min(affinity_cores(), cpu_count())


def affinity_cores() -> int:
    """The cores of this process's affinity mask (what torch and ONNX Runtime size their thread pools by)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def release_onednn_cap() -> None:
    """Before OpenVINO loads: its own copy of oneDNN reads ONEDNN_MAX_CPU_ISA too while its other kernels follow the
    real CPU, and that mix crashes it (a segmentation fault in `infer`, seen under MEDCAD_CPU_FLAGS=avx2,fma on an
    AVX-512 machine). torch's oneDNN reads the variable once, at its first primitive: make one now (a channels_last
    convolution always goes through oneDNN), then drop the variable that medcad set. A variable the user set stays."""
    if os.environ.get(_CAPPED) != "1" or "ONEDNN_MAX_CPU_ISA" not in os.environ:
        return
    import torch

    x = torch.zeros(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.conv2d(x, torch.zeros(8, 8, 3, 3).contiguous(memory_format=torch.channels_last))
    del os.environ["ONEDNN_MAX_CPU_ISA"]


_cap_torch_kernels()
