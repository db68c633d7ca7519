"""`predict RUN DIR` streams files through a DataLoader with workers and writes as it goes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcad.errors import DataError
from medcad.inference.files import predict_image_files
from medcad.inference.registry import load_predictor


def test_workers_give_the_same_rows_in_order_and_a_bad_file_keeps_what_was_written(
    tiny_run: Path, easy_set: Path, tmp_path: Path
) -> None:
    paths = sorted(easy_set.rglob("*.png"))
    predictor = load_predictor(tiny_run, device="cpu")
    plain, _ = predict_image_files(predictor, paths, tmp_path / "a", batch=4, overlays=False, workers=0)
    streamed, _ = predict_image_files(predictor, paths, tmp_path / "b", batch=4, overlays=False, workers=2)
    assert list(streamed["image"]) == [str(p) for p in paths]
    np.testing.assert_allclose(streamed["p_lesion"], plain["p_lesion"], atol=1e-6)
    assert len(pd.read_csv(tmp_path / "b" / "predictions.csv")) == len(paths)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    table, _ = predict_image_files(predictor, [*paths[:8], broken], tmp_path / "d", batch=4, overlays=False, workers=2)
    assert list(table["status"]) == ["ok"] * 8 + ["failed"] and "broken.png" in table["image"].iloc[-1]
    with pytest.raises(DataError, match="broken.png"):  # errors="raise": stop, keeping what was written
        predict_image_files(
            predictor, [*paths[:8], broken], tmp_path / "c", batch=4, overlays=False, workers=2, errors="raise"
        )
    assert len(pd.read_csv(tmp_path / "c" / "predictions.csv.partial")) == 8  # the two batches before it
