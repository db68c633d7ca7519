"""The real server on loopback, its page driven in headless Chromium: upload an image, see the overlay, the
probabilities, the decision and the model card; keyboard focus reaches the file picker."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import CHROMEDRIVER, CHROMIUM, drive, running

from medcad.inference.registry import load_predictor
from medcad.inference.server import create_app


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver not installed (apt-get install chromium chromium-driver; .ci/run installs them)",
)
def test_page_in_chromium(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    app = create_app(load_predictor(tiny_run))
    with running(app) as base:
        state = drive(base + "/", easy_set / "lesion" / "0.png", tmp_path, tmp_path / "page.png")
    assert state["focus"] == "files"  # the file picker is reachable by keyboard
    assert state["img"] == "data:image/png;base64," and state["loaded"] == 40, state
    assert state["decision"].split(" — ")[0] in ("lesion", "normal") and state["probs"] == 2, state
    assert abs(sum(state["bars"]) - 100) < 1 and not state["toggle"], state  # bars as wide as the probabilities
    assert "macro_auc" in state["card"] and "95 % CI" in state["card"], state
    assert (tmp_path / "page.png").stat().st_size > 10_000
