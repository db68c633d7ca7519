"""How many kinds of TIFF medcad reads to the samples written, names as unreadable, or misreads without a word: every
sample type (8- to 32-bit integers, signed or not; 16-, 32-, 64-bit floats) x grey / grey + alpha / RGB / RGBA x
interleaved or planar x little- or big-endian x uncompressed or Deflate, written by tifffile (as scientific tools
write them) and read by `medcad.data.io.read_image`; "right" when it equals medcad's bit-depth policy applied to the
array written (within 1 grey level).

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/tiff_kinds.py [--out benchmarks/results/tiff_kinds.json]

Also times a 500-page stack: listing its pages and reading every page (`stack`). Run it with another tree's src
first on PYTHONPATH to count that tree's reading.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
from common import scratch, write_result

from medcad.data.io import image_pages, read_image
from medcad.data.pixels import integer_scale, to_rgb
from medcad.errors import DataError

HERE = Path(__file__).resolve().parent
DTYPES = ["u1", "u2", "u4", "i1", "i2", "i4", "f2", "f4", "f8"]
SAMPLES = {"grey": 1, "grey+alpha": 2, "rgb": 3, "rgba": 4}


def expected(data: np.ndarray, path: Path) -> np.ndarray:
    colour = data[..., :3] if data.shape[2] >= 3 else data[..., :1]
    scale = integer_scale(colour, path, "TIFF")
    return to_rgb(colour) if scale is None else to_rgb(colour, scale[1], scale[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tiff_kinds.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    kinds: dict[str, list[str]] = {"right": [], "named": [], "misread": [], "crashed": []}
    with scratch() as tmp:
        grid = itertools.product(DTYPES, SAMPLES.items(), ["contig", "planar"], "<>", [None, "zlib"])
        for dt, (name, c), layout, order, compression in grid:
            if c == 1 and layout == "planar":
                continue
            dtype = np.dtype(dt).newbyteorder(order)
            if dtype.kind == "f":
                data = rng.random((24, 20, c)).astype(dtype)
            else:
                info = np.iinfo(dtype)
                data = rng.integers(info.min, info.max, (24, 20, c), endpoint=True).astype(dtype)
            kw = {"photometric": "rgb" if c >= 3 else "minisblack", "compression": compression, "byteorder": order}
            kw |= {"extrasamples": ["unassalpha"]} if c in (2, 4) else {}
            stored = data if c > 1 else data[..., 0]
            if layout == "planar":
                stored, kw["planarconfig"] = np.ascontiguousarray(np.moveaxis(data, -1, 0)), "separate"
            kind = f"{dt} {name} {layout} {'big' if order == '>' else 'little'}-endian {compression or 'none'}"
            path = Path(tmp) / "x.tif"
            tifffile.imwrite(path, stored, **kw)
            try:
                got = read_image(path)
            except DataError:
                kinds["named"].append(kind)
                continue
            except Exception as e:  # noqa: BLE001 (counted: a traceback a user would meet)
                kinds["crashed"].append(f"{kind}: {type(e).__name__}")
                continue
            want = expected(data, path)
            ok = got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
            kinds["right" if ok else "misread"].append(kind)
    counts = {k: len(v) for k, v in kinds.items()}
    stack = time_stack()
    print(counts, kinds["misread"], stack)
    named = {k: v for k, v in kinds.items() if k != "right"}
    write_result(args.out, {"counts": counts, "kinds": named, "stack": stack})


def time_stack(pages: int = 500) -> dict:
    """Seconds to list the pages of a `pages`-page 64x64 grey stack (as ImageJ and tifffile write sequences) and to
    read every page of it, one `read_image` call per page as a run's decoding does."""
    with scratch() as tmp:
        path = Path(tmp) / "stack.tif"
        tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (pages, 64, 64), dtype=np.uint8))
        t0 = time.perf_counter()
        found = image_pages(path)[0]
        listed = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in found:
            read_image(path, k)
        return {"pages": len(found), "list_s": round(listed, 3), "read_all_s": round(time.perf_counter() - t0, 3)}


if __name__ == "__main__":
    main()
