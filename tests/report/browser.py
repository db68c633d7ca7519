"""A real headless Chromium driven through chromedriver's WebDriver protocol (plain HTTP on loopback)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class Page:
    def __init__(self, base: str, session: str) -> None:
        self.base, self.session = base, session

    def open(self, url: str) -> None:
        _call(self.base, "POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str):
        return _call(self.base, "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})[
            "value"
        ]

    def screenshot(self, path: Path) -> Path:
        png = _call(self.base, "GET", f"/session/{self.session}/screenshot")["value"]
        path.write_bytes(base64.b64decode(png))
        return path


@contextmanager
def chromium_page(tmp: Path):
    """Start chromedriver on a free loopback port and yield a Page; stop both afterwards."""
    port = _free_port()
    # Its own session and process group: chromedriver and the Chromium processes it starts are signalled as a group
    # when they stop, and in pytest's group that signal reached pytest itself (a SIGSEGV delivered inside
    # `proc.terminate()`'s kill(2), seen under gdb, ended two CI runs with "Segmentation fault").
    proc = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [*ARGS, f"--user-data-dir={tmp / 'chromium-profile'}"],
                    },
                }
            }
        }
        session = _call(base, "POST", "/session", caps)["value"]["sessionId"]
        try:
            yield Page(base, session)
        finally:
            _call(base, "DELETE", f"/session/{session}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # chromedriver and any Chromium process left behind
        proc.wait(timeout=10)
