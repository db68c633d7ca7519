"""What every benchmark JSON carries: the machine it was measured on (CPU model, kind and flags, cores, GPUs, runtime
versions) and the date, beside the figures."""

from __future__ import annotations

import json
import tempfile
from datetime import date
from importlib import metadata
from pathlib import Path

from medcad.devices import machine


def write_result(path: str | Path, result: dict) -> Path:
    """Write `result` as JSON with `machine` (medcad.devices.machine().to_dict() + versions) and `date` added."""
    versions = {}
    for package in ("torch", "onnxruntime", "openvino", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    out = {**result, "machine": {**machine().to_dict(), "versions": versions}, "date": date.today().isoformat()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary folder in memory (/dev/shm) where the machine has one, so that file writes time the code, not
    the disk; removed on exit."""
    return tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
