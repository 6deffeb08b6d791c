"""A gallery app served on 127.0.0.1 in a thread, and Debian's Chromium driven by Playwright: what
every browser test needs, once.

>>> with serving(create_app(atlas_dir)) as base, chromium() as browser:
...     browser.new_page().goto(base + "/")
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time

CHROMIUM = "/usr/bin/chromium"
#: The flags the brief asks for: no sandbox (root in a container), no GPU, no network of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, timeout: float = 20.0):
    """``app`` under uvicorn on a free loopback port; yields its base URL; stopped on exit."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gallery server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium():
    """Headless Chromium from /usr/bin/chromium (never Playwright's own download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
