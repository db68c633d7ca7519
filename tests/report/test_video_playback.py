"""The annotated video that `medcad predict VIDEO` writes plays in a browser (headless Chromium): it had been MPEG-4
Part 2, which Chromium refuses (MEDIA_ERR_SRC_NOT_SUPPORTED); now H.264."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMEDRIVER, CHROMIUM, chromium_page

from medcad.inference.video import _AnnotatedVideo, annotated_codec

STATE = """const v = document.querySelector('video');
return {ready: v.readyState, width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code,
        duration: v.duration};"""


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver not installed (apt-get install chromium chromium-driver; .ci/run installs them)",
)
def test_the_annotated_video_plays_in_chromium(tmp_path: Path) -> None:
    assert annotated_codec() == "libx264"  # PyAV's wheels carry it
    rng = np.random.default_rng(0)
    video = _AnnotatedVideo(tmp_path / "annotated.mp4", fps=25)
    for k in range(20):  # odd sides, padded to even ones
        video.write(rng.integers(0, 255, (77, 101, 3), dtype=np.uint8), time_s=k / 25)
    video.close()
    (tmp_path / "page.html").write_text('<video src="annotated.mp4" muted></video>')
    with chromium_page(tmp_path) as page:
        page.open((tmp_path / "page.html").as_uri())
        for _ in range(300):  # up to 30 s: a loaded 2-core machine took over 5 s (the test failed 2 runs in 3)
            state = page.js(STATE)
            if state["ready"] >= 2 or state["error"]:
                break
            time.sleep(0.1)
    assert state["error"] is None and state["ready"] >= 2, state
    assert (state["width"], state["height"]) == (102, 78) and abs(state["duration"] - 0.8) < 0.1
