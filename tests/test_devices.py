"""What medcad reads of the machine, and how every default follows it (MEDCAD_CPU_FLAGS stands in for a CPU)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import export_graph
from medcad import devices
from medcad.config import TrainConfig
from medcad.data.transforms import Normalize
from medcad.models.card import model_card
from medcad.models.predict import run_batched


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch):
    """Set MEDCAD_CPU_FLAGS for one test; the machine is read again before and after."""

    def use(flags: str) -> devices.Machine:
        monkeypatch.setenv(devices.CPU_FLAGS_ENV, flags)
        devices.machine.cache_clear()
        return devices.machine()

    yield use
    monkeypatch.delenv(devices.CPU_FLAGS_ENV, raising=False)
    devices.machine.cache_clear()


def test_machine_reads_the_cpu_once() -> None:
    m = devices.machine()
    assert m is devices.machine() and m.cores >= 1 and m.cpu
    d = m.to_dict()
    assert set(d) >= {"cpu", "kind", "flags", "native_bf16", "vnni", "cores", "gpus", "torch_cpu_capability"}
    assert d["kind"] in ("avx512-bf16", "avx512", "avx2", "baseline")


@pytest.mark.parametrize(
    ("flags", "aten", "onednn"),
    [("avx2,fma", "AVX2", "AVX2"), ("avx2,avx512f,avx512_vnni", "AVX512", "AVX512_CORE_VNNI")],
)
def test_torch_kernels_follow_the_flags(flags: str, aten: str, onednn: str) -> None:
    """In a process started with MEDCAD_CPU_FLAGS, importing medcad caps torch's kernels to that CPU (an AVX-512
    machine then runs torch as the named CPU does: bf16 emulated, AVX2 convolutions)."""
    import os
    import subprocess
    import sys

    needed = {"AVX2": "avx2", "AVX512": "avx512f"}[aten]
    if needed not in devices._cpuinfo()[1]:
        pytest.skip(f"this CPU has no {needed}")
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    code = "import medcad, os, torch; print(torch.backends.cpu.get_cpu_capability(), os.environ['ONEDNN_MAX_CPU_ISA'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, devices.CPU_FLAGS_ENV: flags}, capture_output=True, text=True
    )
    assert out.stdout.split() == [aten, onednn], out.stderr


@pytest.mark.parametrize(
    ("flags", "kind", "bf16", "vnni"),
    [
        ("avx2,fma", "avx2", False, False),
        ("avx2,fma,avx_vnni", "avx2", False, True),
        ("avx2,avx512f,avx512_vnni", "avx512", False, True),
        ("avx2,avx512f,avx512_bf16,avx512_vnni,amx_bf16,amx_int8", "avx512-bf16", True, True),
        ("", "baseline", False, False),
    ],
)
def test_defaults_follow_the_cpu_kind(cpu_flags, flags: str, kind: str, bf16: bool, vnni: bool) -> None:
    m = cpu_flags(flags)
    assert (m.kind, m.native_bf16, m.vnni, m.flags_source) == (kind, bf16, vnni, devices.CPU_FLAGS_ENV)
    # training precision, prediction autocast and the model card's latency all follow the same reading
    assert devices.resolve_compute(TrainConfig()).precision == ("bf16-mixed" if bf16 else "32-true")
    assert devices.fast_autocast(torch.device("cpu")) is bf16
    card = model_card(torch.nn.Conv2d(3, 4, 3), 16)
    assert card["latency_precision"] == ("bf16" if bf16 else "fp32")
    from medcad.cli.system import system_report  # what `medcad checks` says training will use

    uses = system_report()["uses"]
    assert ("per model" in uses["training"]) is bf16 and ("precision 32-true" in uses["training"]) is (not bf16)
    assert "BatchNorm" in uses["training kernels"] and "depthwise" in uses["training kernels"]  # on every CPU kind


def test_backends_of_a_runtime_not_installed_are_not_candidates(cpu_flags, monkeypatch) -> None:
    """`auto` and `medcad checks` leave out the backends whose package is not installed here (as if it were not)."""
    from medcad.cli.system import system_report
    from medcad.inference.backends import generic_candidates

    cpu_flags("avx2,fma,avx512f,avx512_bf16,avx512_vnni")
    if importlib.util.find_spec("openvino") is not None:  # a dependency of medcad, but a machine may lack it
        assert {"openvino-fp32", "openvino-bf16", "openvino-int8", "onnx-fp32"} <= set(generic_candidates())
    monkeypatch.setitem(sys.modules, "openvino", None)  # an import of openvino fails, find_spec finds none
    assert generic_candidates() == ["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"]
    said = system_report()["uses"]["predict / serve / evaluate"]
    assert "openvino-fp32" not in said and "openvino not installed: its backends left out" in said


def test_prediction_autocasts_only_where_bf16_is_native(cpu_flags) -> None:
    """Without native bf16, the default prediction is plain fp32 (bit-identical to eager), not emulated bf16."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = np.random.default_rng(0).integers(0, 255, (4, 24, 24, 3), dtype=np.uint8)
    norm = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    fp32 = run_batched(net, norm, x, bf16=False, channels_last=False)[0]
    cpu_flags("avx2,fma")
    np.testing.assert_allclose(run_batched(net, norm, x, channels_last=False)[0], fp32, rtol=0, atol=1e-6)
    cpu_flags("avx2,avx512f,avx512_bf16")
    reduced = run_batched(net, norm, x, channels_last=False)[0]
    assert not np.allclose(reduced, fp32, rtol=0, atol=1e-6)  # bf16 rounding shows
    np.testing.assert_allclose(reduced, fp32, atol=0.1)


def test_freed_memory_is_kept_for_the_next_step() -> None:
    """After `keep_freed_memory`, a large block freed and allocated again is served from memory the process kept (no
    page faults); with MEDCAD_MALLOC=system, glibc maps it anew and its pages fault in again every time."""
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator setting is glibc's")
    code = (
        "import resource, numpy as np\n"
        "from medcad.allocator import keep_freed_memory\n"
        "print(keep_freed_memory())\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "a = np.ones(16 * 2**20, np.float32); del a\n"  # 64 MiB, above glibc's largest mmap threshold
        "before = faults()\n"
        "for _ in range(5):\n"
        "    a = np.ones(16 * 2**20, np.float32); del a\n"
        "print(faults() - before)\n"
    )
    seen = {}
    for setting in ("", "system"):
        env = {**os.environ, "MEDCAD_MALLOC": setting}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        seen[setting] = (applied, int(faults))
    assert seen[""][0] == "True" and seen["system"][0] == "False"
    assert seen["system"][1] >= 5 * 32  # at least one fault per 2 MiB huge page, every time
    assert seen[""][1] * 10 < seen["system"][1]


def test_openvino_runs_beside_torch_capped_to_avx2(tmp_path) -> None:
    """Under MEDCAD_CPU_FLAGS=avx2,fma, torch runs AVX2 convolutions and OpenVINO (whose own oneDNN would read the
    cap while its other kernels use the real CPU, and crash: seen with bf16) runs the same graph: both agree."""
    import os
    import subprocess
    import sys

    if "avx2" not in devices._cpuinfo()[1]:
        pytest.skip("this CPU has no avx2")
    # bf16 where the real CPU has it: OpenVINO asks its oneDNN for bf16 kernels that the cap would refuse
    backend = "openvino-bf16" if "avx512_bf16" in devices._cpuinfo()[1] else "openvino-fp32"
    code = f"""
import numpy as np, torch
from medcad.inference.onnx import GraphSession
nn = torch.nn
net = nn.Sequential(
    nn.Conv2d(3, 32, 3, 2), nn.BatchNorm2d(32), nn.ReLU6(), nn.Conv2d(32, 32, 3, groups=32),
    nn.Conv2d(32, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3)
).eval()
x = torch.rand(2, 3, 96, 96) * 255
with torch.no_grad():
    want = net(x.contiguous(memory_format=torch.channels_last)).numpy()
torch.onnx.export(net, (x,), {str(tmp_path / "net.onnx")!r}, input_names=["images"], output_names=["out"],
                  dynamo=False)
open({str(tmp_path / "net.json")!r}, "w").write('{{"outputs": ["out"]}}')  # the export's description
got = GraphSession({str(tmp_path / "net.onnx")!r}, {backend!r}).run(x.permute(0, 2, 3, 1).numpy(), 2)["out"]
print(torch.backends.cpu.get_cpu_capability(), float(np.abs(got - want).max() / np.abs(want).max()))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, devices.CPU_FLAGS_ENV: "avx2,fma"}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    capability, error = out.stdout.split()
    assert capability == "AVX2" and float(error) < (0.05 if backend.endswith("bf16") else 1e-4)


QUOTA_PROBE = """
import json, torch
from medcad.devices import machine, runtime_threads
from medcad.inference.onnx import GraphSession  # noqa: F401  (imports as predict does)
from medcad.inference.predictor import Predictor  # noqa: F401
from medcad.devices import fit_torch_threads
before = torch.get_num_threads()
fit_torch_threads()
print(json.dumps({"machine": machine().to_dict(), "runtime_threads": runtime_threads(), "torch_before": before,
                  "torch_after": torch.get_num_threads()}))
"""


def _probe(prefix: list[str], env: dict) -> dict:
    import json
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOKY_MAX_CPU_COUNT")}
    out = subprocess.run(
        [*prefix, sys.executable, "-c", QUOTA_PROBE], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def _one_cpu_container(tmp_path) -> list[str]:
    """A command prefix that runs a process as a container limited to one CPU does: in a cgroup v1 CPU group with a
    quota of 100 ms per 100 ms, mounted (in a mount namespace of its own) where a container sees its cgroup. Skips
    where this machine cannot (not root, no cgroup v1 CPU controller, no unshare)."""
    import os
    import shutil
    import subprocess

    group = "/sys/fs/cgroup/cpu/medcad-test"
    if os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/cpu") or shutil.which("unshare") is None:
        pytest.skip("needs root, a cgroup v1 CPU controller and unshare to make a CPU quota")
    try:
        os.makedirs(group, exist_ok=True)
        with open(f"{group}/cpu.cfs_quota_us", "w") as f:
            f.write("100000")
    except OSError as e:
        pytest.skip(f"cannot make a CPU quota here: {e}")
    script = tmp_path / "in_quota.sh"
    script.write_text(
        f'#!/bin/sh\nmount --bind {group} /sys/fs/cgroup/cpu && echo $$ > /sys/fs/cgroup/cpu/tasks && exec "$@"\n'
    )
    script.chmod(0o755)
    if subprocess.run(["unshare", "-m", str(script), "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m cannot run here")
    return ["unshare", "-m", str(script)]


@pytest.mark.heavy
def test_a_cpu_quota_sets_the_threads(tmp_path) -> None:
    """In a container whose CPU quota is one CPU while its affinity mask shows every core (`docker run --cpus 1`),
    medcad counts one core and torch (and the graph runtimes) get one thread, not one per core of the mask (which
    oversubscribes the quota: lite0 predicted up to 1.45x slower so on a 2-core machine, benchmarks/cpu_quota.py);
    OMP_NUM_THREADS stays the user's choice, for every runtime."""
    if devices.machine().affinity_cores < 2:
        pytest.skip("needs 2 cores or more")
    prefix = _one_cpu_container(tmp_path)
    got = _probe(prefix, {})
    m = got["machine"]
    assert (m["cores"], m["affinity_cores"]) == (1, devices.machine().affinity_cores)
    assert got["runtime_threads"] == 1 and got["torch_before"] > 1 and got["torch_after"] == 1
    mine = _probe(prefix, {"OMP_NUM_THREADS": "2"})
    assert mine["runtime_threads"] == 2 and mine["torch_after"] == 2
    free = _probe([], {})  # outside the quota: every core
    assert free["machine"]["cores"] == free["machine"]["affinity_cores"] == free["runtime_threads"]
    import os

    os.rmdir("/sys/fs/cgroup/cpu/medcad-test")  # empty again: its processes have ended


def test_joblibs_cpu_limit_counts_too() -> None:
    """LOKY_MAX_CPU_COUNT (joblib's limit, which medcad's core count goes through) lowers the cores like a quota."""
    if devices.machine().affinity_cores < 2:
        pytest.skip("needs 2 cores or more")
    got = _probe([], {"LOKY_MAX_CPU_COUNT": "1"})
    assert got["machine"]["cores"] == 1 and got["runtime_threads"] == 1 and got["torch_after"] == 1


def _tiny_onnx(path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    export_graph(net.eval(), path, 8, ["p"])


def test_every_runtime_gets_the_same_threads(tmp_path, monkeypatch) -> None:
    """OMP_NUM_THREADS (or medcad's own count) is the thread count of torch, ONNX Runtime and OpenVINO alike, the
    key of `auto`'s cached choice and what `medcad checks` prints: under OMP_NUM_THREADS=1 the graph runtimes had
    used every core (their default) while torch used 1, and the cache and `checks` said threads=2."""
    from medcad.cli.system import system_report
    from medcad.inference.onnx import GraphSession

    _tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ort = GraphSession(tmp_path / "m.onnx", "onnx-fp32")
    assert ort._ort.get_session_options().intra_op_num_threads == 1
    if importlib.util.find_spec("openvino") is not None:
        ov = GraphSession(tmp_path / "m.onnx", "openvino-fp32")
        assert int(ov._ov.get_property("INFERENCE_NUM_THREADS")) == 1
    assert system_report()["uses"]["threads"].startswith("1 for torch, ONNX Runtime and OpenVINO alike")
    assert "OMP_NUM_THREADS=1" in system_report()["uses"]["threads"]
    two = GraphSession(tmp_path / "m.onnx", "onnx-fp32", threads=2)
    assert two._ort.get_session_options().intra_op_num_threads == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    n = devices.machine().cores
    assert GraphSession(tmp_path / "m.onnx", "onnx-fp32")._ort.get_session_options().intra_op_num_threads == n


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 512), st.sampled_from(["", ",2", ",1,1"]))
def test_omp_num_threads_is_read_as_the_user_wrote_it(n: int, nested: str) -> None:
    import os

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = f"{n}{nested}"
    try:
        count, why = devices.thread_choice()
        assert count == n and why == f"OMP_NUM_THREADS={n}{nested}"
        assert devices.thread_choice(3) == (3, "asked for (--threads)")
    finally:
        os.environ.pop("OMP_NUM_THREADS") if old is None else os.environ.__setitem__("OMP_NUM_THREADS", old)


@pytest.mark.parametrize("value", ["0", "-1", "two", "", "1.5"])
def test_a_bad_thread_count_is_refused(monkeypatch, value: str) -> None:
    from medcad.errors import ConfigError

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        devices.thread_choice()
    from medcad.cli.system import system_report

    assert system_report()["uses"]["threads"].startswith("none: OMP_NUM_THREADS=")  # checks says so, no traceback
    monkeypatch.delenv("OMP_NUM_THREADS")
    with pytest.raises(ConfigError, match="threads 0"):
        devices.thread_choice(0)


def test_hyper_threads_get_one_thread_per_physical_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with two logical CPUs per core torch keeps one thread per physical core; ONNX Runtime and OpenVINO
    had been given every logical CPU (16 against torch's 8), so backends compared unevenly."""
    import medcad.devices as devices

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "TORCH_DEFAULT_THREADS", max(1, devices.machine().cores // 2))
    n, why = devices.thread_choice()
    if devices.machine().cores > 1 and not devices.machine().quota_limited:
        assert n == devices.machine().cores // 2 and "physical core" in why
    monkeypatch.setattr(devices, "TORCH_DEFAULT_THREADS", None)  # OMP_NUM_THREADS had set torch's at import
    assert devices.thread_choice()[0] == devices.machine().cores


@pytest.mark.parametrize("fails", [False, True])
def test_process_group_left_after_success_only(tmp_path: Path, fails: bool) -> None:
    """A process group is destroyed once the block finished (gloo's threads are not left to the interpreter's exit);
    after an error it is kept (another rank may still wait in a collective)."""
    import torch.distributed as dist

    from medcad.devices import process_group_left

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with contextlib.suppress(RuntimeError), process_group_left():
            dist.barrier()
            if fails:
                raise RuntimeError("a rank failed")
        assert dist.is_initialized() is fails
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
