"""A real headless Chromium for the dashboard tests, driven from a trio test.

Debian's ``chromium`` (``/usr/bin/chromium``) driven by the ``playwright`` package (never a
downloaded browser build). Playwright's sync API belongs to the thread that started it, so
one dedicated thread owns the browser and runs the steps the test hands it, one at a time.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any

import trio

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Browser:
    """One Chromium, owned by one thread; ``await browser.run(step, *args)`` runs a step there.

    A step is ``step(browser, *args)``; it may keep pages on ``browser.pages`` between steps.
    ``browser.dialogs`` collects every JavaScript dialog any page opened (each is dismissed),
    ``page_errors`` uncaught exceptions and ``console_errors`` console errors (CSP reports).
    """

    def __init__(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise RuntimeError(
                f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/apt-packages)"
            )
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.pages: dict[str, Any] = {}
        self.dialogs: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []  # CSP violations land here too
        self.context: Any = None
        self._thread = threading.Thread(target=self._loop, name="chromium", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    self.context = browser.new_context(viewport={"width": 1100, "height": 800})
                    self.context.set_default_timeout(10_000)
                    self._ready.set_result(None)
                    while True:
                        item = self._queue.get()
                        if item is None:
                            return
                        step, future = item
                        try:
                            future.set_result(step(self))
                        except BaseException as exc:  # handed to the trio side
                            future.set_exception(exc)
                finally:
                    browser.close()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            while True:  # fail every step still coming
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                if item is not None:
                    item[1].set_exception(exc)

    def new_page(self, name: str) -> Any:
        """A new tab (in the one context: it shares the cookie), watched for dialogs."""
        page = self.context.new_page()

        def dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        self.pages[name] = page
        return page

    async def run(self, step: Callable[..., Any], *args: Any) -> Any:
        await trio.to_thread.run_sync(self._ready.result, abandon_on_cancel=True)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((lambda b: step(b, *args), future))
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    async def aclose(self) -> None:
        self._queue.put(None)
        await trio.to_thread.run_sync(self._thread.join, 30, abandon_on_cancel=True)


_PIXEL_STATS = """async (b64) => {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, img.width, img.height).data;
  const colours = new Set();
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < d.length; i += 4 * 7) {
    const grey = (d[i] * 3 + d[i + 1] * 6 + d[i + 2]) / 10;
    n += 1; sum += grey; sq += grey * grey;
    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  const mean = sum / n;
  return {width: img.width, height: img.height, std: Math.sqrt(sq / n - mean * mean),
          colours: colours.size};
}"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack("!II", data[16:24])
    return width, height


def pixel_stats(browser: Browser, data: bytes) -> dict[str, float]:
    """Decode a screenshot (in a blank tab's canvas): its size, grey-level spread, colours."""
    # A blank tab of its own context, so that no dashboard tab goes to the background.
    probe = browser.pages.get("probe")
    if probe is None:
        probe = browser.pages["probe"] = browser.context.browser.new_page()
    stats: dict[str, float] = probe.evaluate(_PIXEL_STATS, base64.b64encode(data).decode())
    assert (stats["width"], stats["height"]) == png_size(data)
    return stats
