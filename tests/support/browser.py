"""Real-browser helpers: Debian's chromium driven by Playwright, and screenshots for the README.

The browser is the ``chromium`` that ``scripts/bootstrap.sh`` installs from Debian, started by
Playwright with ``executable_path`` (Playwright never downloads a browser here), headless,
with no proxy (everything it opens is on 127.0.0.1). Tests wait on page conditions
(selectors, URLs, responses), never on time.

``PHT_SCREENSHOTS=1`` (``make screenshots``) makes :func:`screenshot` write
``docs/screenshots/<name>.png``; otherwise it does nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
#: Playwright's own waits (milliseconds): generous for a loaded 2-core machine. They bound a
#: wait for a page condition; nothing sleeps for this long.
WAIT_MS = 120_000


def chromium_path() -> str | None:
    """Debian's chromium (``/usr/bin/chromium``), or None if it is not installed."""
    return shutil.which("chromium")


@contextmanager
def launch(executable: str) -> Iterator[Any]:
    """A headless chromium under Playwright; closed (and its processes gone) on exit."""
    from playwright.sync_api import sync_playwright

    args = ["--no-proxy-server", "--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to start as root with its sandbox
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=args, timeout=WAIT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A page in a fresh context (no cookies) with the long waits set."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    return context.new_page()


def sign_in(page: Any, base_url: str, username: str, password: str) -> None:
    """Sign in through Airflow's own login page (the simple auth manager's form)."""
    page.goto(f"{base_url}/auth/login")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in").click()
    # Signed in: the login page sets the _token cookie and leaves for the Airflow UI.
    page.wait_for_url(lambda url: "/auth/login" not in url)
    assert any(c["name"] == "_token" for c in page.context.cookies()), "no _token cookie"


def screenshot(page: Any, name: str, **kwargs: Any) -> Path | None:
    """With ``PHT_SCREENSHOTS=1``: save ``docs/screenshots/<name>.png`` and return its path."""
    if os.environ.get("PHT_SCREENSHOTS") != "1":
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), **kwargs)
    return path
