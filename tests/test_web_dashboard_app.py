"""The dashboard app (web.dashboard_app): who may see it, what it shows, and how it escapes.

The app runs in-process (Starlette's test client, the real ASGI app) over a real station
config and audit log (:mod:`support.dashboard`). Authentication is the app's hook: here a
stand-in that knows one bearer token; Airflow's own check behind it is tested on the real
Airflow in ``test_browser_dashboard.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from support.dashboard import dashboard_station, review_data

from pht_airflow.errors import ConfigError
from pht_airflow.station.overview import overview
from pht_airflow.web.dashboard_app import create_app

TOKEN = "good-token"
FORGED = "forged-token"
SIGNED_IN = {"Authorization": f"Bearer {TOKEN}"}
RUN = "pht__sha256_" + "a" * 64


async def _authenticate(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header == f"Bearer {TOKEN}":
        return "nurse\x1b[2J"
    if header == f"Bearer {FORGED}":
        raise HTTPException(403, "Invalid JWT token")
    raise HTTPException(401, "Not authenticated")


class Source:
    """What the plugin passes the app, over a real station; can be made to fail."""

    def __init__(self, station: Any) -> None:
        self.station = station
        self.broken = False
        self.review: dict[str, Any] | None = review_data()
        self.calls = 0

    def overview(self, station_id: str) -> dict[str, Any]:
        self.calls += 1
        if self.broken:
            raise ConfigError("invalid station config station.yaml:3: keys.signing_key: missing")
        return overview(self.station.config())

    def get_review(self, station_id: str, run_key: str) -> dict[str, Any] | None:
        if self.broken:
            raise ConfigError("the station config is broken")
        return self.review if run_key == RUN else None


@pytest.fixture()
def source(tmp_path: Path, parties: Any) -> Source:
    return Source(dashboard_station(tmp_path, parties))


@pytest.fixture()
def http(source: Source) -> Iterator[TestClient]:
    app = create_app(
        authenticate=_authenticate,
        stations=lambda: ["station-a"],
        overview=source.overview,
        review=source.get_review,
        root_path="/pht-dashboard",
    )
    with TestClient(app) as client:
        yield client


ROUTES = [
    "/",
    "/stations/station-a",
    f"/stations/station-a/releases/{RUN}",
    "/api/stations",
    "/api/stations/station-a/overview",
    f"/api/stations/station-a/releases/{RUN}",
]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_anonymous_and_forged(
    http: TestClient, source: Source, route: str
) -> None:
    anonymous = http.get(route)
    assert anonymous.status_code == 401, anonymous.text
    forged = http.get(route, headers={"Authorization": f"Bearer {FORGED}"})
    assert forged.status_code == 403
    for resp in (anonymous, forged):
        assert "train-1" not in resp.text and "counts.csv" not in resp.text
        if route.startswith("/api/"):
            assert resp.json()["error"] in ("Not authenticated", "Invalid JWT token")
        else:
            assert 'href="/auth/login"' in resp.text and "Sign in to Airflow" in resp.text
    assert source.calls == 0  # nothing was read for them
    assert http.get(route, headers=SIGNED_IN).status_code == 200


def test_station_page_escapes_everything_and_runs_no_script(http: TestClient) -> None:
    resp = http.get("/stations/station-a", headers=SIGNED_IN)
    assert resp.status_code == 200
    body = resp.text
    assert "<script" not in body  # the hostile train name is text, and the page has no script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31mred\\u202eevil" in body
    assert "\x1b" not in body and "\u202e" not in body and "\x07" not in body
    assert "cell &lt;b&gt;3&lt;/b&gt; is below 10\\x07" in body
    assert "rejected by dr-house: cell &lt;b&gt;3&lt;/b&gt; is below 10\\x07" in body
    assert "released by dr-release" in body
    assert "approved by nurse\\x1b]0;x\\x07" in body
    assert 'Signed in as <span id="user">nurse\\x1b[2J</span>' in body
    assert "3 record" not in body and "4 record(s), hash chain intact" in body
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'self'" in csp
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_index_of_one_station_is_its_page(http: TestClient) -> None:
    resp = http.get("/", headers=SIGNED_IN)
    assert resp.status_code == 200 and 'id="station">station-a<' in resp.text


def test_index_of_several_stations_links_each(source: Source) -> None:
    app = create_app(
        authenticate=_authenticate,
        stations=lambda: ["station-a", "station-b"],
        overview=source.overview,
        review=source.get_review,
        root_path="/pht-dashboard",
    )
    with TestClient(app) as client:
        body = client.get("/", headers=SIGNED_IN).text
    assert 'href="/pht-dashboard/stations/station-a"' in body
    assert 'href="/pht-dashboard/stations/station-b"' in body


def test_api_overview_is_the_cleaned_overview(http: TestClient) -> None:
    resp = http.get("/api/stations/station-a/overview", headers=SIGNED_IN)
    assert resp.status_code == 200
    found = resp.json()
    assert [t["train_id"] for t in found["trains"]] == ["train-3", "train-2", "train-1"]
    assert found["trains"][2]["creators"][0]["name"] == "alice"
    assert http.get("/api/stations", headers=SIGNED_IN).json() == {
        "stations": ["station-a"],
        "user": "nurse\\x1b[2J",
    }


def test_review_page_marks_flagged_cells_and_escapes(http: TestClient) -> None:
    resp = http.get(f"/stations/station-a/releases/{RUN}", headers=SIGNED_IN)
    assert resp.status_code == 200
    body = resp.text
    assert body.count('class="flagged"') == 1
    assert '<td class="flagged" title="flagged">3</td>' in body
    assert "&lt;i&gt;s0&lt;/i&gt;" in body and "<i>" not in body
    assert "notes\\x1b[2J.txt" in body and "\x1b" not in body
    assert "cell (1, stage=III) is 3, below min_cell_count 10" in body
    api = http.get(f"/api/stations/station-a/releases/{RUN}", headers=SIGNED_IN).json()
    assert api["verdict"] == "review" and api["files"][0]["preview"]["flagged_cells"] == 1


@pytest.mark.parametrize(
    ("route", "status", "message"),
    [
        ("/stations/station-z", 404, "no such station"),
        ("/api/stations/Station_A/overview", 404, "no such station"),
        ("/api/stations/station-a/releases/" + "b" * 300, 404, "no such release"),
        ("/api/stations/station-a/releases/-x", 404, "no such release"),
        (f"/api/stations/station-a/releases/{RUN}x", 404, "no pending release for this run"),
    ],
)
def test_unknown_station_or_release_is_404(
    http: TestClient, route: str, status: int, message: str
) -> None:
    resp = http.get(route, headers=SIGNED_IN)
    assert resp.status_code == status
    assert resp.json()["error"] == message


def test_broken_config_is_503_with_the_reason(http: TestClient, source: Source) -> None:
    source.broken = True
    api = http.get("/api/stations/station-a/overview", headers=SIGNED_IN)
    assert api.status_code == 503
    assert api.json()["error"].endswith("keys.signing_key: missing")
    page = http.get("/stations/station-a", headers=SIGNED_IN)
    assert page.status_code == 503 and "keys.signing_key: missing" in page.text
    review = http.get(f"/api/stations/station-a/releases/{RUN}", headers=SIGNED_IN)
    assert review.status_code == 503 and review.json()["error"] == "the station config is broken"


def test_malformed_review_is_503_not_a_crash(http: TestClient, source: Source) -> None:
    source.review = {"files": [{"path": "x", "preview": {"flagged": ["zz"]}}]}
    resp = http.get(f"/stations/station-a/releases/{RUN}", headers=SIGNED_IN)
    assert resp.status_code == 503
    assert "the release review is malformed: files[0].preview.flagged holds" in resp.text


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory, parties: Any) -> Iterator[TestClient]:
    source = Source(dashboard_station(tmp_path_factory.mktemp("dashboard"), parties))
    app = create_app(
        authenticate=_authenticate,
        stations=lambda: ["station-a"],
        overview=source.overview,
        review=source.get_review,
    )
    with TestClient(app) as client:
        yield client


@settings(max_examples=150, deadline=None)
@given(station=st.text(max_size=40), run_key=st.text(max_size=300))
def test_any_path_is_answered_without_a_server_error(
    shared_client: TestClient, station: str, run_key: str
) -> None:
    s, r = quote(station, safe=""), quote(run_key, safe="")
    for route in (f"/api/stations/{s}/overview", f"/api/stations/{s}/releases/{r}"):
        resp = shared_client.get(route, headers=SIGNED_IN)
        assert resp.status_code in (200, 404), (route, resp.text)
        if resp.status_code == 200:
            assert station == "station-a"
            assert "releases" not in route or run_key == RUN
