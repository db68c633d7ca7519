"""The largest image medcad decodes (a guard against decompression bombs): `max_pixels`, from `MEDCAD_MAX_PIXELS`
(megapixels) or Pillow's own threshold, and the error that names the file and the variable."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from medcad.errors import ConfigError, DataError

MAX_PIXELS_ENV = "MEDCAD_MAX_PIXELS"  # megapixels, like `medcad serve --max-pixels`
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), ~89.5 MP


def max_pixels() -> int:
    """The largest image (width x height) medcad decodes: `MEDCAD_MAX_PIXELS` megapixels, else DEFAULT_MAX_PIXELS.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        mp = float(raw)
    except ValueError:
        mp = math.nan
    if not (math.isfinite(mp) and mp > 0):
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r}: give the largest image to decode in megapixels, e.g. 250")
    return int(mp * 1e6)


def allow_pixels(pixels: int) -> None:
    """Let medcad's decoder (`max_pixels`) take images of up to `pixels`, in this process: a server's own limit above
    the default applies to its decoding too (`medcad serve --max-pixels 120` had still refused 100 megapixels, telling
    the client of an environment variable only the server's operator can set). Never lowers it."""
    if pixels > max_pixels():
        os.environ[MAX_PIXELS_ENV] = f"{pixels / 1e6:.6f}"


def _megapixels(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{round(mp, 1):g}" if mp >= 1 else f"{mp:.2g}"


def bomb_pixels(error: Image.DecompressionBombError) -> int | None:
    """The pixel count (width x height) an image declares, from the message of the DecompressionBombError Pillow's
    `Image.open` raises beyond twice its own limit, before it gives the size; None when the message does not hold it."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def too_large(path: Path, pixels: int, limit: int, size: str = "") -> DataError:
    wanted = max(math.ceil(pixels / 1e6), math.floor(limit / 1e6) + 1)
    return DataError(
        path,
        f"image {size}has {_megapixels(pixels)} megapixels, more than medcad decodes ({_megapixels(limit)} "
        f"megapixels, a guard against decompression bombs); if the image is genuine, raise the limit with the "
        f"environment variable {MAX_PIXELS_ENV} (in megapixels), e.g. {MAX_PIXELS_ENV}={wanted}",
    )


def open_checked(path: Path) -> Image.Image:
    """`Image.open` (header only) with medcad's pixel limit in place of Pillow's decompression-bomb warning and
    error: an image over `max_pixels()` is a DataError naming the file and `MEDCAD_MAX_PIXELS`."""
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # only ever raised, so Pillow never refuses what the limit allows
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # medcad's own check follows
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # beyond twice Pillow's limit: the size is only in its message
        raise too_large(path, bomb_pixels(e) or 2 * limit + 1, limit) from e
    w, h = im.size
    if w * h > limit:
        im.close()
        raise too_large(path, w * h, limit, f"{w}x{h} ")
    return im


@contextmanager
def pil_image(path: Path) -> Iterator[Image.Image]:
    """`open_checked`, closed when the block ends."""
    with open_checked(path) as im:
        yield im
