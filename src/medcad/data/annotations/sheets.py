"""Excel .xlsx manifests, read as the CSV reader reads a CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pandas as pd

from medcad.config import DataOptions
from medcad.data.manifest import Manifest
from medcad.errors import DataError


def _cell_text(v: object) -> str:
    """A cell as the text a CSV export of the sheet would hold."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    return str(v)


def read_sheet(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The first worksheet of an .xlsx workbook as a table of strings, as `layouts._read_table` gives a CSV: the
    first non-empty row is the header, empty rows are skipped, formulas give their saved values."""
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, InvalidFileException ... for files it cannot open
        raise DataError(path, f"cannot open as an Excel .xlsx workbook ({type(e).__name__}: {e})") from e
    try:
        names = wb.sheetnames
        rows = [[_cell_text(v) for v in r] for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, f"sheet {names[0]!r} is empty: the first sheet must hold the manifest")
    width = max(i + 1 for r in rows for i, c in enumerate(r) if c.strip())
    buf = io.StringIO()
    csv.writer(buf).writerows(r[:width] + [""] * (width - len(r)) for r in rows)
    buf.seek(0)
    df = pd.read_csv(buf, dtype=str, keep_default_na=False)
    notes = (
        [f"{path.name}: sheet {names[0]!r} read; sheets {', '.join(map(repr, names[1:]))} not"]
        if len(names) > 1
        else []
    )
    return df, notes


def read_xlsx(path: Path, options: DataOptions) -> Manifest:
    """An Excel .xlsx manifest (a file, or `manifest.xlsx` in a folder), read like a CSV manifest (`read_csv`: same
    column names, path checks and notes)."""
    from medcad.data.layouts import read_csv

    if path.is_dir():
        path = path / "manifest.xlsx"
    if path.suffix.lower() != ".xlsx":
        raise DataError(path, "not an .xlsx file (older .xls workbooks: save as .xlsx or CSV)")
    manifest = read_csv(path, options)
    manifest.layout = "xlsx"
    return manifest
