"""The console script in a fresh process: `medcad --help` is fast (heavy modules are imported inside commands).

It runs first in the suite (tests/cli sorts before the others): a fork of the pytest process after later tests have
loaded OpenVINO / ONNX Runtime crashed it (signal 11) now and then.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_console_script_help_is_fast_and_lists_commands() -> None:
    exe = Path(sys.executable).parent / "medcad"
    out = subprocess.run(
        [str(exe if exe.exists() else shutil.which("medcad")), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for cmd in ("data", "demo"):
        assert cmd in out.stdout
