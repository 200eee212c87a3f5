"""Open a page danlu wrote in headless Chromium, as a reader would, and record what went wrong.

Chromium is Debian's (`apt-get install chromium`, done by `make setup`), driven by Playwright for
Python with `executable_path` (never `playwright install`, which downloads a browser build). Any test
of a page (reports, explain/attack pages) can use it:

    with open_page(folder / "report.html", tmp_path / "report.png") as visit:
        assert visit.problems() == []
        assert "0.8384" in visit.texts(".headline .value")

Without Chromium or Playwright the test is skipped with the reason, except under CI (CI=true), where
a missing browser is a broken setup and fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

INSTALL = "apt-get install -y chromium && pip install playwright (make setup does both)"


def chromium_path() -> str:
    """Debian's chromium, or skip (fail under CI) saying how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = f"headless Chromium is not available: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Visit:
    """A loaded page and what happened while it loaded."""

    page: object                      # playwright.sync_api.Page, live inside `open_page`
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs fetched besides the page and data: URIs
    screenshot: Path | None = None

    def texts(self, selector: str) -> list[str]:
        """The visible text of every element matching a CSS selector."""
        return [t.strip() for t in self.page.locator(selector).all_inner_texts()]

    def broken_images(self) -> int:
        return self.page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, network requests and images that did not load."""
        found = [f"console error: {m}" for m in self.console_errors]
        found += [f"page error: {m}" for m in self.page_errors]
        found += [f"network request: {u}" for u in self.requests]
        if broken := self.broken_images():
            found.append(f"{broken} image(s) did not load")
        return found


@contextlib.contextmanager
def open_page(path: Path, screenshot: Path, width: int = 1200, height: int = 900) -> Iterator[Visit]:
    """Load `path` (offline: a page that needs the network shows it) and write a full-page screenshot."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    url = Path(path).absolute().as_uri()
    with sync_playwright() as playwright:
        # --no-sandbox: tests and CI run as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
            page = context.new_page()
            visit = Visit(page, url)
            page.on("console", lambda m: visit.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
            page.on("request", lambda r: None if r.url == url or r.url.startswith("data:")
                    else visit.requests.append(r.url))
            page.goto(url, wait_until="load")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            visit.screenshot = screenshot
            yield visit
        finally:
            browser.close()
