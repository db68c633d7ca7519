"""Where work runs: the compute of a training run (accelerator, devices, nodes, strategy, precision) resolved and
checked once, before anything is written; the torch device of prediction; and the rank of this process when several
processes share one run (DDP launched by Lightning, torchrun or SLURM's srun).

Used by the engine (trainer factory, rank-0-only writes) and by inference (`--device`), so it sits below both.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from medcad import CPU_FLAGS_ENV, affinity_cores, usable_cores  # CPU_FLAGS_ENV: medcad's import reads it too
from medcad.config import TrainConfig
from medcad.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true", "bf16-true")


@dataclass(frozen=True)
class Compute:
    """A run's resolved compute: what Lightning's Trainer gets.

    Attributes:
        accelerator: "cpu" or "gpu".
        devices: processes per node (GPUs per node on "gpu"; CPU processes on "cpu").
        num_nodes: machines.
        strategy: a Lightning strategy name ("auto" for one process, "ddp" for several, or what the user named).
        precision: a Lightning precision ("bf16-mixed", "16-mixed", "32-true", ...).
    """

    accelerator: str
    devices: int
    num_nodes: int
    strategy: str
    precision: str

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def gpu_count() -> int:
    """CUDA GPUs visible to torch (0 without a CUDA build or driver)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# CPU flags that decide medcad's defaults (names as /proc/cpuinfo spells them)
KNOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Machine:
    """What this machine offers to medcad's defaults, read once (`machine()`).

    Attributes:
        cpu: the CPU model name (/proc/cpuinfo "model name", else platform.processor()).
        flags: the CPU flags of KNOWN_FLAGS that it has; `MEDCAD_CPU_FLAGS` (comma-separated) replaces them.
        flags_source: "cpuinfo", or the environment variable's name when it set them.
        cores: CPU cores this process may use (`medcad.usable_cores`: fewer than the affinity mask under a
            container's CPU quota).
        gpus: CUDA GPUs torch sees.
        affinity_cores: the cores of the affinity mask alone (what torch and ONNX Runtime size their thread pools by).
    """

    cpu: str
    flags: frozenset[str]
    flags_source: str
    cores: int
    gpus: int
    affinity_cores: int = 0

    @property
    def quota_limited(self) -> bool:
        """A CPU quota leaves fewer cores than the affinity mask shows: runtimes sized by the mask oversubscribe."""
        return 0 < self.cores < self.affinity_cores

    @property
    def native_bf16(self) -> bool:
        """bfloat16 in hardware (AVX-512 BF16 or AMX): bf16 autocast runs ~2-3x fp32. Elsewhere it is emulated,
        ~10x slower than fp32 (measured on an AVX2-only CPU: lite0 at 224 px, 2.5 against 27.7 images/s)."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    @property
    def vnni(self) -> bool:
        """int8 dot products in hardware (AVX-512 VNNI, AVX-VNNI or AMX int8), where int8 inference pays off."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def kind(self) -> str:
        """A short name of the CPU kind for tables and caches: "avx512-bf16", "avx512", "avx2" or "baseline"."""
        if self.native_bf16:
            return "avx512-bf16"
        if "avx512f" in self.flags:
            return "avx512"
        return "avx2" if "avx2" in self.flags else "baseline"

    def to_dict(self) -> dict:
        return {
            "cpu": self.cpu,
            "kind": self.kind,
            "flags": sorted(self.flags),
            "flags_source": self.flags_source,
            "native_bf16": self.native_bf16,
            "vnni": self.vnni,
            "cores": self.cores,
            "affinity_cores": self.affinity_cores,
            "gpus": self.gpus,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "all the CPU has"),
        }


PACKAGES = (
    "medcad",
    "torch",
    "torchvision",
    "timm",
    "segmentation-models-pytorch",
    "lightning",
    "numpy",
    "scipy",
    "scikit-learn",
    "opencv-python-headless",
    "onnxruntime",
    "openvino",
)  # what a run's figures rest on


def version(package: str) -> str | None:
    """The installed version of `package`, None where it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """What a run was made with, for its config.json and report (a paper's software and hardware): Python and the
    installed `PACKAGES` versions, the CPU (model, medcad's kind, cores) and the GPUs by name."""
    import platform

    m = machine()
    return {
        "python": platform.python_version(),
        "packages": {p: v for p in PACKAGES if (v := version(p)) is not None},
        "cpu": f"{m.cpu} ({m.kind}, {m.cores} cores)",
        "gpus": [torch.cuda.get_device_name(i) for i in range(m.gpus)],
        "os": platform.platform(terse=True),
    }


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on ARM)."""
    import platform

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    return model, set((fields.get("flags") or fields.get("Features") or "").split())


@functools.cache
def machine() -> Machine:
    """This machine, read once per process; `MEDCAD_CPU_FLAGS=avx2,fma` makes medcad choose as on such a CPU."""
    cpu, flags = _cpuinfo()
    source = "cpuinfo"
    if os.environ.get(CPU_FLAGS_ENV) is not None:
        flags, source = {f.strip().lower() for f in os.environ[CPU_FLAGS_ENV].split(",") if f.strip()}, CPU_FLAGS_ENV
    cores = usable_cores()
    return Machine(cpu, frozenset(flags & set(KNOWN_FLAGS)), source, cores, gpu_count(), affinity_cores())


# torch's own thread count at import, one per physical core (None when OMP_NUM_THREADS had set it)
TORCH_DEFAULT_THREADS = None if "OMP_NUM_THREADS" in os.environ else torch.get_num_threads()


def thread_choice(threads: int | None = None) -> tuple[int, str]:
    """The CPU threads every runtime (torch, ONNX Runtime, OpenVINO) gets, and why: `threads` when asked for; else
    OMP_NUM_THREADS when set (its first number: "4,2" means 4), the user's choice for every runtime, not torch's
    alone; else medcad's: the usable cores (`Machine.cores`: a CPU quota's cores where it leaves fewer than the
    affinity mask, whose one thread per core oversubscribes it: under a 1-CPU quota on a 2-core machine lite0
    predicted 32.1 images/s in torch fp32 with 2 threads, 46.4 with 1; benchmarks/cpu_quota.py).

    Raises:
        ConfigError: `threads` or OMP_NUM_THREADS is not a whole number >= 1.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads {threads!r}: give a whole number of CPU threads >= 1")
        return threads, "asked for (--threads)"
    env = os.environ.get("OMP_NUM_THREADS")
    if env is not None:
        first = env.split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            raise ConfigError(f"OMP_NUM_THREADS={env!r}: give a whole number of CPU threads >= 1, or unset it")
        return int(first), f"OMP_NUM_THREADS={env}"
    m = machine()
    if m.quota_limited:
        return m.cores, f"a CPU quota leaves {m.cores} of the {m.affinity_cores} cores of the affinity mask"
    if TORCH_DEFAULT_THREADS and TORCH_DEFAULT_THREADS < m.cores:  # hyper-threads: one per physical core, as torch
        return TORCH_DEFAULT_THREADS, f"one per physical core (torch's default; {m.cores} logical CPUs)"
    return m.cores, "one per core this process may use"


def runtime_threads(threads: int | None = None) -> int:
    """The CPU threads every runtime gets (`thread_choice` says why); the same number for torch, ONNX Runtime and
    OpenVINO, so that backends compare evenly and `--backend auto`'s choice is kept per thread count."""
    return thread_choice(threads)[0]


def fit_torch_threads(threads: int | None = None) -> None:
    """Set torch's intra-op threads to `runtime_threads(threads)` when asked for; else lower them to it, never
    raise them (a `--jobs` worker keeps its share of the cores)."""
    n = runtime_threads(threads)
    if threads or n < torch.get_num_threads():
        torch.set_num_threads(n)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    return machine().native_bf16


def fast_autocast(device: torch.device) -> bool:
    """Whether reduced-precision autocast speeds up inference on `device`: on GPUs, and on CPUs with native bf16
    (the default of every prediction medcad makes without a backend named)."""
    return device.type == "cuda" or cpu_has_bf16()


def auto_precision(accelerator: str) -> str:
    """bf16 mixed where the hardware has it, else fp16 mixed on GPUs, fp32 otherwise."""
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def resolve_compute(cfg: TrainConfig) -> Compute:
    """The run's compute from its settings, checked against this machine.

    Raises:
        ConfigError: an unknown accelerator, strategy or precision; `gpu` without a visible GPU; more devices than
            the machine has (GPUs, or CPU cores for CPU processes); fp16 on a CPU.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    if cfg.accelerator not in ACCELERATORS:
        raise ConfigError(f"unknown accelerator {cfg.accelerator!r}; choose one of {', '.join(ACCELERATORS)}")
    gpus = gpu_count()
    if cfg.accelerator == "gpu" and gpus == 0:
        raise ConfigError(
            "--accelerator gpu: torch sees no CUDA GPU here (torch.cuda.is_available() is False); use "
            "--accelerator auto or cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    accelerator = "gpu" if cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and gpus > 0) else "cpu"
    if cfg.devices < 1 or cfg.num_nodes < 1:
        raise ConfigError(f"--devices and --num-nodes must be 1 or more (got {cfg.devices}, {cfg.num_nodes})")
    have = gpus if accelerator == "gpu" else usable_cores()
    if cfg.devices > have:
        what = f"{have} GPU(s)" if accelerator == "gpu" else f"{have} CPU core(s) (one per CPU process)"
        raise ConfigError(f"--devices {cfg.devices}: this machine has {what}; ask for {have} or fewer per node")
    strategies = {"auto", *StrategyRegistry.available_strategies()}
    if cfg.strategy not in strategies:
        raise ConfigError(f"unknown strategy {cfg.strategy!r}; use auto, ddp, or another Lightning strategy name")
    strategy = cfg.strategy
    if strategy == "auto" and cfg.devices * cfg.num_nodes > 1:
        strategy = "ddp"  # one process per device; launched by Lightning, torchrun or srun
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    precision = auto_precision(accelerator) if cfg.precision == "auto" else cfg.precision
    if accelerator == "cpu" and precision.startswith("16"):
        raise ConfigError(f"precision {precision} needs a GPU; on a CPU use bf16-mixed or 32-true")
    return Compute(accelerator, cfg.devices, cfg.num_nodes, strategy, precision)


def torch_device(name: str = "auto") -> torch.device:
    """The torch device of prediction: "auto" (the first GPU if any, else the CPU), "cpu", "cuda" or "cuda:N".

    Raises:
        ConfigError: a GPU asked for where torch sees none (or fewer), or a name torch does not know.
    """
    if name == "auto":
        return torch.device("cuda" if gpu_count() else "cpu")
    try:
        dev = torch.device("cuda" if name == "gpu" else name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and (dev.index or 0) >= gpu_count():
        raise ConfigError(f"--device {name}: torch sees {gpu_count()} CUDA GPU(s) here; use --device auto or cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced-precision type of autocast on a device: bf16 on CPUs and GPUs that have it, else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's rank among the processes of a run: from the process group once it exists, else from what
    the launcher set (torchrun's RANK, srun's SLURM_PROCID, Lightning's NODE_RANK and LOCAL_RANK); 0 alone."""
    if _dist_ready():
        return torch.distributed.get_rank()
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0)) + int(os.environ.get("LOCAL_RANK", 0))


def is_primary() -> bool:
    """True in the process that writes the run folder (rank 0)."""
    return global_rank() == 0


def join_launched_processes(compute: Compute) -> None:
    """When torchrun or srun started this run's processes together, join them into one process group now, before
    any of them reads or writes the run folder, so that rank 0 prepares (splits, caches) and the others wait for it.
    Lightning's strategy reuses the group. Processes that Lightning itself starts join at the first fit instead
    (rank 0 has prepared everything by then)."""
    if compute.world_size == 1 or _dist_ready():
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for env_class in (TorchElasticEnvironment, SLURMEnvironment):
        if env_class.detect():
            env = env_class()
            if env.world_size() != compute.world_size:
                raise ConfigError(
                    f"the launcher started {env.world_size()} processes but the run asks for --devices "
                    f"{compute.devices} x --num-nodes {compute.num_nodes}; make them agree"
                )
            torch.distributed.init_process_group(
                "nccl" if compute.accelerator == "gpu" else "gloo",
                init_method=f"tcp://{env.main_address}:{env.main_port}",
                rank=env.global_rank(),
                world_size=env.world_size(),
            )
            return


@contextlib.contextmanager
def process_group_left() -> Iterator[None]:
    """Destroy this process's process group once the block has finished without an error (PyTorch's advice, "call
    destroy_process_group near the end of main"): left to the interpreter's exit, gloo's threads can be torn down
    with it and the process abort ("terminate called without an active exception") after its results are written.
    Not after an error: another rank may still wait in a collective (torchtitan's pull request 1342)."""
    yield
    if _dist_ready():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (it writes caches); the other ranks wait for it, then run the block (they read
    what rank 0 wrote). A plain block where one process runs or the processes have not joined a group yet."""
    joined = _dist_ready() and torch.distributed.get_world_size() > 1
    if joined and not is_primary():
        torch.distributed.barrier()
    yield
    if joined and is_primary():
        torch.distributed.barrier()
