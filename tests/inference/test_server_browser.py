"""The real server on loopback, its page driven in headless Chromium: upload an image, see the overlay, the
probabilities, the decision and the model card; keyboard focus reaches the file picker; on a narrow window, a
clip's timeline, a DICOM cine sent as a clip, a heat-map at a readable size."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from serving import CHROMEDRIVER, CHROMIUM, call, chromium_page, drive, running, upload

from conftest import write_dicom
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
    assert "calibration" in state["card"] and "p_lesion: intercept" in state["card"], state  # nulls drawn as —
    assert (tmp_path / "page.png").stat().st_size > 10_000


TIMELINE = """
const li = [...document.querySelectorAll('#results li.video')].find((x) => x.querySelector('.strip'));
if (!li) return null;
return {
  heading: li.querySelector('.decision').textContent,
  cells: [...li.querySelectorAll('.strip .cell')].map((c) => [+c.dataset.frame, c.dataset.decision]),
  hatched: [...li.querySelectorAll('.strip .cell.dropped')].map((c) => +c.dataset.frame),
  intervals: [...li.querySelectorAll('.intervals li')].map((x) => x.textContent),
  legend: [...li.querySelectorAll('.legend li')].map((x) => x.textContent),
  extra: li.querySelector('.extra').textContent,
  info: li.querySelector('.frameinfo').textContent,
  strip: li.querySelector('.strip').getBoundingClientRect().width,
  page: document.documentElement.scrollWidth,
};
"""


def _wait(page, script: str, tries: int = 300):
    for _ in range(tries):
        got = page.js(script)
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"the page never showed: {script}")


def _click(page, css: str) -> None:
    """A real click (chromedriver moves the pointer to the element's centre and presses)."""
    el = call(page.base, "POST", f"/session/{page.session}/element", {"using": "css selector", "value": css})
    call(page.base, "POST", f"/session/{page.session}/element/{next(iter(el['value'].values()))}/click", {})


def _video_job(base: str, clip: Path) -> dict:
    """The state of a clip's job posted to the server at `base`, once done or failed (30 s at most)."""
    import httpx

    job = httpx.post(base + "/predict/video", files={"file": ("c.mp4", clip.read_bytes())}).json()
    for _ in range(300):
        said = httpx.get(base + job["status_url"]).json()
        if said["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    return said


def _expected_intervals(frames: list[dict], fps: float, finding: str = "normal") -> list[str]:
    """The page's list: runs of a finding (any smoothed decision but `finding`) from the first frame's time to the
    next predicted frame's (the last frame: one source frame later), in s with 2 decimals (a clip under 10 s)."""
    out, i = [], 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1]["smoothed"] == frames[i]["smoothed"]:
            j += 1
        if frames[i]["smoothed"] != finding:
            end = frames[j + 1]["time_s"] if j + 1 < len(frames) else frames[j]["time_s"] + 1 / fps
            which = f"frame {frames[i]['frame']}" if i == j else f"frames {frames[i]['frame']}–{frames[j]['frame']}"
            out.append(f"{frames[i]['smoothed']} {frames[i]['time_s']:.2f}–{end:.2f} s ({which})")
        i = j + 1
    return out


@pytest.mark.heavy
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver not installed")
def test_video_timeline_heatmap_and_a_narrow_screen(
    tiny_run: Path, easy_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a 420 px wide window: a clip with an undecodable frame gets a timeline (a cell per frame, coloured by the
    smoothed decision, the dropped one hatched), the intervals of findings and a word per frame on click; a DICOM
    cine is offered as a clip; a heat-map is shown at the figure's width; percentages stay on one line; the icon is
    served (no 404)."""
    from test_video import make_damaged_vfr_video, make_video

    caplog.set_level(logging.INFO, logger="medcad.serve")
    read = lambda p: cv2.imread(str(p))[:, :, ::-1]  # noqa: E731
    normal = [read(p) for p in sorted((easy_set / "normal").glob("*.png"))[:6]]
    lesion = [read(p) for p in sorted((easy_set / "lesion").glob("*.png"))[:6]]
    times = [0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2200]
    clip = make_damaged_vfr_video(tmp_path / "clip.mp4", normal[:4] + lesion + normal[4:6], times, damaged=5)
    app = create_app(load_predictor(tiny_run), explain=lambda rgb, prediction: (rgb, "identity"))
    with running(app) as base, chromium_page(tmp_path) as page:
        # what the API says of the clip, for the page to show
        said = _video_job(base, clip)
        assert said["status"] == "done" and said["summary"]["dropped_frames"][0]["frame"] == 5, said
        # the frames decoded from frame 5 up to the next key frame are dropped too (concealed by the decoder)
        dropped = [d["frame"] for d in said["summary"]["dropped_frames"]]
        concealed = [d["frame"] for d in said["summary"]["dropped_frames"] if d["concealed"]]
        assert dropped == [5, *concealed] and concealed == list(range(6, 6 + len(concealed))), said
        assert said["summary"]["smooth"] == 5

        call(page.base, "POST", f"/session/{page.session}/window/rect", {"width": 420, "height": 900})
        page.open(base + "/")
        _wait(page, "return !/loading/.test(document.querySelector('#cardbody').textContent);")
        upload(page, clip)
        got = _wait(page, TIMELINE)
        expected = sorted([(f["frame"], f["smoothed"]) for f in said["frames"]] + [(d, "no decision") for d in dropped])
        assert [tuple(c) for c in got["cells"]] == expected and got["hatched"] == dropped, got
        assert got["intervals"] == _expected_intervals(said["frames"], said["summary"]["source_fps"]), (got, said)
        assert "1 frame could not be decoded (frame 5)" in got["extra"], got
        if concealed:
            n = len(concealed)
            what = "decoded from a lost, damaged or missing frame (concealed"
            assert f"{n} frame{'s' * (n > 1)} {what}" in got["extra"], got
        assert any(t.startswith(f"no decision: {len(dropped)} frame") for t in got["legend"]), got
        assert got["page"] <= 420 and got["strip"] > 300, got  # the strip spans the card, nothing scrolls sideways
        _click(page, ".strip .cell:nth-child(3)")
        third = said["frames"][2]
        assert page.js(TIMELINE)["info"].startswith(f"frame 2 at 0.40 s: {third['smoothed']}"), page.js(TIMELINE)
        _click(page, ".strip .cell.dropped")
        assert page.js(TIMELINE)["info"] == "frame 5 at 1.00 s: no decision (could not be decoded)"

        # a multi-frame DICOM goes to /predict (its first frame), which offers the whole loop as a clip
        grey = np.stack([f.mean(axis=2) for f in lesion[:3]]).astype(np.uint16) * 16
        upload(page, write_dicom(tmp_path / "loop.dcm", grey, FrameTime=100))
        _wait(page, "return document.querySelector('#results li button.cine');")
        _click(page, "#results li button.cine")
        _wait(page, "return document.querySelectorAll('#results li.video .strip').length === 2;")
        cine = page.js(TIMELINE)  # the newest timeline
        assert [c[0] for c in cine["cells"]] == [0, 1, 2] and cine["heading"].startswith("loop.dcm"), cine

        # a 2-page TIFF is a multi-page image, not a cine (it had been offered as one, and the clip was refused):
        # its other page is predicted as an image of its own, named as predict names it
        from PIL import Image

        first, second = (Image.fromarray(f) for f in (lesion[0], normal[0]))
        first.save(tmp_path / "stack.tif", save_all=True, append_images=[second])
        upload(page, tmp_path / "stack.tif")
        pages = "document.querySelector('#results li button.pages')"
        _wait(page, f"return {pages};")
        assert page.js(f"return {pages}.closest('li').querySelector('.extra').textContent;").startswith(
            "a TIFF of 2 pages; shown: page 0"
        )
        assert not page.js("return document.querySelector('#results li button.cine:not([disabled])');")
        _click(page, "#results li button.pages")
        other = _wait(
            page,
            """const li = [...document.querySelectorAll('#results li')].find(
                (x) => x.querySelector('figcaption').textContent === 'stack.tif#1');
            const said = li && li.querySelector('.decision').textContent;
            return said && said !== 'predicting…' ? said : null;""",
        )
        assert other.split(" — ")[0] in ("lesion", "normal"), other

        # a clip with a packet left out of the file (no error anywhere): its time gap is told beside the timeline
        made = make_video(tmp_path / "whole.mp4", (lesion + normal)[:10])
        with av.open(str(made)) as src, av.open(str(tmp_path / "lost.mp4"), "w") as out:
            stream = out.add_stream_from_template(src.streams.video[0])
            for i, packet in enumerate(p for p in src.demux(video=0) if p.size):
                if i != 3:
                    packet.stream = stream
                    out.mux(packet)
        upload(page, tmp_path / "lost.mp4")
        _wait(page, "return document.querySelectorAll('#results li.video .strip').length === 3;")
        lost = page.js(TIMELINE)
        assert lost["heading"].startswith("lost.mp4"), lost
        assert "1 frame's time with no frame in the file (before frame 3): lost from the file" in lost["extra"], lost

        # a heat-map as wide as its figure (a 40 px picture scaled up, its pixels kept sharp); "51.7 %" on one line
        page.js("document.querySelector('#heat').checked = true; return null;")
        upload(page, easy_set / "lesion" / "0.png")
        _wait(page, "const b = document.querySelector('#results li .toggle'); return b && !b.hidden;")
        _click(page, "#results li .toggle")
        heat = _wait(
            page,
            """const img = document.querySelector('#results li img');
            // its sharpness is set by its load event, which can follow img.complete: wait for it (a race had failed
            // this under load)
            if (!img.classList.contains('heat') || !img.complete || !img.classList.contains('pixelated')) return null;
            const lines = [...document.querySelectorAll('#results li .probs td:last-child')].map((td) => {
              const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; });
            return {natural: img.naturalWidth, shown: img.clientWidth, figure: img.parentElement.clientWidth,
                    sharp: img.classList.contains('pixelated'), lines, page: document.documentElement.scrollWidth};""",
        )
        assert heat["natural"] == 40 and heat["shown"] >= 0.95 * heat["figure"] > 300 and heat["sharp"], heat
        assert len(heat["lines"]) >= 2 and set(heat["lines"]) == {1} and heat["page"] <= 420, heat
        page.screenshot(tmp_path / "narrow.png")
        icon = page.js("return document.querySelector('link[rel=icon]').href;")
    assert icon == base + "/static/favicon.svg"
    served = [r.getMessage() for r in caplog.records if r.name == "medcad.serve"]
    assert not [s for s in served if " 404 " in s], served  # the page asks for nothing the server lacks


@pytest.mark.heavy
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver not installed")
def test_a_segmenters_timeline_says_the_same_figure_smoothed_and_alone(
    tiny_segmenter: Path, easy_set: Path, tmp_path: Path
) -> None:
    """A mask model's frame is told by its lesion area, smoothed and alone (the frame alone had shown its top pixel
    probability beside the smoothed area: "lesion 0.1 % (smoothed) · this frame alone: lesion 72.9 %")."""
    from test_video import make_video

    frames = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))[:4]]
    clip = make_video(tmp_path / "clip.mp4", frames)
    app = create_app(load_predictor(tiny_segmenter, threshold=0.3))
    with running(app) as base, chromium_page(tmp_path) as page:
        said = _video_job(base, clip)
        assert said["summary"]["smoothed_score_means"] == "lesion area", said
        page.open(base + "/")
        upload(page, clip)
        _wait(page, "return document.querySelector('#results li.video .strip .cell');")
        _click(page, ".strip .cell")
        info = page.js(TIMELINE)["info"]
        first = said["frames"][0]
        alone = f"{100 * first['lesion_fraction']:.1f}\u00a0%"  # as the page's pct writes it
        assert "lesion area" in info and f"this frame alone: {first['label']} lesion area {alone}" in info, info


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver not installed")
def test_a_token_typed_into_the_page_loads_the_model_card(tiny_run: Path, tmp_path: Path) -> None:
    """A server with a token: the page asks for it where the card was refused, and the card loads once it is typed
    in (it had stayed "model card unavailable" until the page was reloaded)."""
    from medcad.inference.server import ServeOptions

    app = create_app(load_predictor(tiny_run), ServeOptions(token="s3cret"))
    card = "return document.querySelector('#cardbody').textContent;"
    with running(app) as base, chromium_page(tmp_path) as page:
        page.open(base + "/")
        refused = _wait(
            page, "const t = document.querySelector('#cardbody').textContent; return t.includes('unavailable') && t;"
        )
        assert "type it in the token box above" in refused and not page.js(
            "return document.querySelector('#tokenbox').hidden;"
        )
        page.js(
            "const t = document.querySelector('#token'); t.value = 's3cret'; t.dispatchEvent(new Event('change'));"
            " return null;"
        )
        loaded = _wait(
            page, "const t = document.querySelector('#cardbody').textContent; return t.includes('task') && t;"
        )
        assert "classify" in loaded and "unavailable" not in page.js(card)
