"""The `medcad` command line. Heavy modules are imported inside commands so that `--help` stays fast."""
# ruff: noqa: I001, F401  (the command modules register on `app` when imported, in the order --help lists them)

from medcad.cli.common import app
from medcad.cli import runs
from medcad.cli import studies
from medcad.cli import deploy
from medcad.cli import data

__all__ = ["app"]
