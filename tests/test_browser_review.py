"""The release review page in a real browser (issue 12 item 3), with review data of the shape
``station.release.review`` returns.

The dashboard app is served by uvicorn on 127.0.0.1 over a real station and audit log; the
sign-in hook accepts a cookie set in the browser (Airflow's own check is tested in
``test_browser_dashboard.py``). Chromium shows the flagged cell marked, the hostile file
name and cell text as text (no script runs: a dialog would be caught), and the station page
with a rejection's reviewer and reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException, Request
from support.browser import new_page, screenshot
from support.dashboard import dashboard_station, review_data
from test_web_webhook_app import Served

from pht_airflow.station.overview import overview
from pht_airflow.web.dashboard_app import create_app

pytestmark = [pytest.mark.browser]

RUN = "pht__sha256_" + "a" * 64
COOKIE = "signed-in-cookie"


async def _authenticate(request: Request) -> str:
    if request.cookies.get("_token") == COOKIE:
        return "dr-house"
    raise HTTPException(401, "Not authenticated")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, parties: Any) -> Iterator[str]:
    station = dashboard_station(tmp_path_factory.mktemp("review"), parties)
    review = review_data()
    review["files"][0]["preview"]["rows"].append(['<img src=x onerror="alert(1)">', 99])
    app = create_app(
        authenticate=_authenticate,
        stations=lambda: ["station-a"],
        overview=lambda _s: overview(station.config()),
        review=lambda _s, run: review if run == RUN else None,
    )
    server = Served(app).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _signed_in_page(browser: Any, url: str) -> Any:
    page = new_page(browser)
    page.context.add_cookies([{"name": "_token", "value": COOKIE, "url": url}])
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    return page


def test_review_page_shows_verdicts_and_marks_flagged_cells(served: str, browser: Any) -> None:
    page = _signed_in_page(browser, served)
    try:
        response = page.goto(f"{served}/stations/station-a/releases/{RUN}")
        assert response is not None and response.status == 200
        files = page.locator("#files tr.file")
        assert files.count() == 2
        assert files.nth(0).inner_text().split("\t")[:3] == ["counts.csv", "120", "review"]
        assert "below min_cell_count 10" in files.nth(0).inner_text()
        assert files.nth(1).locator("td").first.inner_text() == "notes\\x1b[2J.txt"
        flagged = page.locator("table.preview td.flagged")
        assert flagged.count() == 1 and flagged.inner_text() == "3"
        # The mark is visible: the flagged cell has its own background.
        colour = flagged.evaluate("e => getComputedStyle(e).backgroundColor")
        plain = page.locator("table.preview td:not(.flagged)").first
        assert colour != plain.evaluate("e => getComputedStyle(e).backgroundColor")
        assert page.locator("table.preview img").count() == 0  # shown as text
        assert page.get_by_text('<img src=x onerror="alert(1)">').count() == 1
        assert page.dialogs == []
        screenshot(page, "release-review", full_page=True)
    finally:
        page.context.close()


def test_station_page_shows_who_rejected_and_why(served: str, browser: Any) -> None:
    page = _signed_in_page(browser, served)
    try:
        page.goto(f"{served}/stations/station-a")
        row = page.locator('tr.train[data-train-id="train-2"]')
        row.wait_for()
        assert "rejected by dr-house: cell <b>3</b> is below 10\\x07" in row.inner_text()
        assert page.locator("tr.train b").filter(has_text="<script>").count() == 1
        assert page.dialogs == []
    finally:
        page.context.close()


def test_anonymous_browser_is_refused(served: str, browser: Any) -> None:
    page = new_page(browser)
    try:
        response = page.goto(f"{served}/stations/station-a/releases/{RUN}")
        assert response is not None and response.status == 401
        assert page.locator("#files").count() == 0
    finally:
        page.context.close()
