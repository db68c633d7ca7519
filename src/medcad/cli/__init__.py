"""The `medcad` command line. Heavy modules are imported inside commands so that `--help` stays fast."""
# ruff: noqa: I001, F401  (the command modules register on `app` when imported, in the order --help lists them)

import sys

from medcad.cli.common import app
from medcad.cli import runs
from medcad.cli import predict
from medcad.cli import studies
from medcad.cli import deploy
from medcad.cli import data
from medcad.cli import system

__all__ = ["app", "main"]


def main() -> None:
    """The `medcad` console script: the app, with a full disk said in one line (a training run stops mid-way when
    its disk fills; what it finished is kept and the same command resumes it)."""
    import errno

    from medcad.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        app()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(
            f"error: no space left on device{where}: free disk space and rerun the same command "
            "(finished folds and runs are kept and skipped)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
