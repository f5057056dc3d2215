"""A real headless Chromium (Debian's `chromium`, driven by Playwright) for the dashboard.

browser      (session)  the launched Chromium; skipped where it is not installed, but a
                        failure under CI=true (.ci/run installs it with apt-get).
page         (function) a fresh context and page; uncaught errors of the page's scripts
                        and console errors fail the test (but those matching a pattern of
                        `expected_console_errors`); a screenshot of the end state is kept.
screenshots  (function) `await screenshots(page, "name")`: a full-page PNG kept as a test
                        artifact, under $TOKEX_TEST_ARTIFACTS if set, else pytest's tmp dir.

Playwright's own browser download is never used (`executable_path`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, Error, Page, async_playwright

CHROMIUM = Path(os.environ.get("TOKEX_CHROMIUM", "/usr/bin/chromium"))

Screenshot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":  # .ci/run installs it there
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("TOKEX_TEST_ARTIFACTS")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    if base:
        path = Path(base) / "dashboard" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp(f"screenshots-{name}"[:60])


@pytest.fixture
def screenshots(artifacts_dir: Path) -> Screenshot:
    async def take(page: Page, name: str) -> Path:
        path = artifacts_dir / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def expected_console_errors() -> list[str]:
    """Patterns (regular expressions) of console errors a test expects, e.g. the browser's
    own report of a refused websocket while the test has the server down."""
    return []


@pytest.fixture
async def page(
    browser: Browser, screenshots: Screenshot, expected_console_errors: list[str]
) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    try:
        yield opened
        errors = [e for e in errors if not any(re.search(p, e) for p in expected_console_errors)]
        assert errors == [], f"the page's scripts failed: {errors}"
    finally:
        with contextlib.suppress(Error):  # a page that crashed has nothing to show
            await screenshots(opened, "end")
        await context.close()
