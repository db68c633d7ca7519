"""The benchmark scripts keep up with the code they measure: each imports (a renamed or moved name fails here, not
when someone reruns a benchmark months later)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their shared `common` module
    importlib.import_module(script)  # ImportError / NameError at module level fail the test
    sys.modules.pop(script, None)
