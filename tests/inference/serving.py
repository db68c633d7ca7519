"""A real uvicorn server on a free loopback port, in a thread, and its page driven in headless Chromium (for the
browser test and benchmarks/serve_page.py)."""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
import weakref
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from browser import CHROMEDRIVER, CHROMIUM, _call, chromium_page  # noqa: E402

__all__ = ["CHROMEDRIVER", "CHROMIUM", "answer", "call", "chromium_page", "drive", "running", "upload"]
call = _call  # a WebDriver command: call(page.base, method, path, body)


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # each test client's /openapi.json


def answer(client, response, route: tuple[str, str] = ("post", "/predict")) -> dict:
    """A JSON answer of `route` (method, path as the spec names it), checked against the schema that the server
    publishes for its status in /openapi.json (`medcad.inference.answers`): a field the answer has and the schema
    lacks, one of another type or a missing required one fails, as a client generated from the schema would."""
    import jsonschema

    assert response.status_code in (200, 202), response.text
    if client not in _SPECS:  # one fetch per client: the video tests poll a job up to 100 times
        _SPECS[client] = client.get("/openapi.json").json()
    spec = _SPECS[client]
    declared = spec["paths"][route[1]][route[0]]["responses"][str(response.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    body = response.json()
    jsonschema.validate(body, {**schema, "components": spec["components"]}, cls=jsonschema.Draft202012Validator)
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """Serve `app` with uvicorn on 127.0.0.1 until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


STATE = """
const r = document.querySelector('#results li');
return {
  decision: r ? r.querySelector('.decision').textContent : '',
  img: r && r.querySelector('img') ? r.querySelector('img').src.slice(0, 22) : '',
  loaded: r && r.querySelector('img') ? r.querySelector('img').naturalWidth : 0,
  probs: r ? r.querySelectorAll('.probs tr').length : 0,
  bars: r ? [...r.querySelectorAll('.bar')].map((b) => parseFloat(b.style.width)) : [],
  toggle: r ? !r.querySelector('.toggle').hidden : false,
  card: document.querySelector('#cardbody').textContent,
};
"""


def upload(page, path: Path) -> None:
    """Send a file to the page's file input, as a user picking it would."""
    base, sid = page.base, page.session
    el = _call(base, "POST", f"/session/{sid}/element", {"using": "css selector", "value": "#files"})["value"]
    eid = next(iter(el.values()))
    _call(base, "POST", f"/session/{sid}/element/{eid}/value", {"text": str(path)})


def drive(url: str, image: Path, tmp: Path, screenshot: Path) -> dict:
    """Open the page, upload `image`, wait for its result; returns the page state and saves a screenshot."""
    with chromium_page(tmp) as page:
        page.open(url)
        state: dict = {}
        for _ in range(100):
            state = page.js(STATE)
            if state["card"] and "loading" not in state["card"]:
                break
            time.sleep(0.1)
        page.js("document.querySelector('#files').focus(); return null;")
        state["focus"] = page.js("return document.activeElement.id;")
        upload(page, image)
        for _ in range(300):
            state |= page.js(STATE)
            if state["loaded"] and "predicting" not in state["decision"]:
                break
            time.sleep(0.1)
        page.screenshot(screenshot)
    return state
