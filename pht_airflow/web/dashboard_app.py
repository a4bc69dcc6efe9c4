"""The station dashboard: a small FastAPI app of HTML pages and a JSON API, for signed-in users.

The Airflow plugin mounts it in the API server (``/pht-dashboard``) and adds a "PHT station"
entry to Airflow's navigation that shows it inside the Airflow UI. It knows nothing of
Airflow: the plugin passes in how to authenticate a request (Airflow's own JWT check) and
where the data comes from.

Routes (every one needs a signed-in user; anonymous: 401, a bad token: 403)::

    GET /                                            HTML: the station (or a list of stations)
    GET /stations/{station}                          HTML: the station overview
    GET /stations/{station}/releases/{run_key}       HTML: a pending release's review
    GET /api/stations                                {"stations": [id, ...], "user": name}
    GET /api/stations/{station}/overview             the overview (station.overview.overview)
    GET /api/stations/{station}/releases/{run_key}   the review (station.overview.release_review)

Nothing here changes state: there is no POST (approving and rejecting stay Airflow's HITL
REST calls and buttons). Every page is rendered by Jinja with autoescaping on, from data
whose strings already went through :func:`~pht_airflow.text.safe_text`; pages carry no
script and a Content-Security-Policy that allows none, and may be framed only by the same
origin (the Airflow UI).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape
from starlette.concurrency import run_in_threadpool

from ..errors import PhtError
from ..protocol import STATION_ID
from ..station.overview import ReviewError, release_review
from ..text import safe_text

log = logging.getLogger(__name__)

Authenticate = Callable[[Request], Awaitable[str]]
"""Returns the signed-in user's name, or raises ``HTTPException`` (401 or 403)."""

RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+~-]{0,249}")
"""A release's key in a URL (an Airflow run id, as ``pht__sha256_<hex>``)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% block title %}PHT station{% endblock %}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #1b1f24; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .4rem 0; }
th, td { border: 1px solid #ccd; padding: .25rem .5rem; text-align: left; vertical-align: top;
  font-size: .9rem; }
th { background: #eef1f6; }
code, .mono { font-family: ui-monospace, monospace; font-size: .85rem; }
.ok { color: #116329; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; }
td.flagged { background: #ffd7d5; outline: 2px solid #b42318; }
.muted { color: #57606a; }
</style></head><body>
<p class="muted">Signed in as <span id="user">{{ user }}</span>
{% if stations|length > 1 %} · stations:
{% for s in stations %}<a href="{{ root }}/stations/{{ s }}">{{ s }}</a> {% endfor %}{% endif %}
</p>
{% block body %}{% endblock %}
</body></html>
"""

_INDEX = """{% extends "base.html" %}
{% block body %}<h1>PHT stations</h1>
{% if not stations %}<p>This Airflow hosts no station config.</p>{% endif %}
<ul>{% for s in stations %}<li><a href="{{ root }}/stations/{{ s }}">{{ s }}</a></li>
{% endfor %}</ul>{% endblock %}
"""

_STATION = """{% extends "base.html" %}
{% block title %}PHT station {{ o.station }}{% endblock %}
{% block body %}
<h1>Station <span id="station">{{ o.station }}</span></h1>
{% if error %}<p class="bad" id="error">{{ error }}</p>{% else %}
<h2>Trains seen</h2>
{% if o.trains_error %}<p class="bad">{{ o.trains_error }}</p>{% endif %}
{% if not o.trains %}<p id="no-trains">No train has run here yet.</p>{% else %}
<table id="trains"><thead><tr><th>when</th><th>train</th><th>creator</th><th>hop</th>
<th>outcome</th><th>approved / rejected</th><th>result</th><th>recipients</th></tr></thead>
<tbody>{% for t in o.trains %}
<tr class="train" data-train-id="{{ t.train_id or '' }}">
<td class="mono">{{ t.time or '' }}</td>
<td>{% if t.train_name %}<b>{{ t.train_name }}</b><br>{% endif %}
<span class="mono">{{ t.train_id or '(unknown)' }}</span><br>
<span class="mono muted digest" title="{{ t.train_digest or '' }}">{{ t.train_digest|short }}</span>
{% if t.dataset %}<br>data set {{ t.dataset }}{% endif %}</td>
<td>{% for c in t.creators %}{{ c.name or '' }}
<span class="mono muted" title="{{ c.key_id }}">{{ c.key_id|short }}</span>
{% if not loop.last %}<br>{% endif %}{% endfor %}</td>
<td>{{ t.hop if t.hop is not none else '' }}</td>
<td class="outcome {{ 'ok' if t.outcome == 'success' else 'warn'
 if t.outcome in ('rejected', 'withheld') else 'bad' }}">{{ t.outcome or '' }}
{% if t.failure %}<br><span class="muted">{{ t.failure.error }}: {{ t.failure.message }}</span>
{% endif %}</td>
<td>{% if t.approved_by %}approved by {{ t.approved_by }}<br>{% endif %}
{% if t.released_by %}released by {{ t.released_by }}<br>{% endif %}
{% if t.rejected_by %}{{ 'withheld' if t.outcome == 'withheld' else 'rejected' -}}
{{ ' by ' }}{{ t.rejected_by }}{% if t.reason %}: {{ t.reason }}{% endif %}{% endif %}</td>
<td class="mono" title="{{ t.result_digest or '' }}">{{ t.result_digest|short }}</td>
<td>{% for r in t.recipients %}{% if r.name %}{{ r.name }} {% endif %}
<span class="mono muted" title="{{ r.recipient }}">{{ r.recipient|short }}</span><br>
{% endfor %}</td>
</tr>{% endfor %}</tbody></table>{% endif %}

<h2>Audit log</h2>
<p id="audit" class="{{ 'ok' if o.audit.ok else 'bad' }}">{{ o.audit.message }}</p>

<h2>Last self-test</h2>
{% if o.self_test %}<p id="selftest">
<span class="{{ 'ok' if o.self_test.state == 'success' else 'bad' }}">{{ o.self_test.state }}</span>
{{ o.self_test.when or '' }}</p>
<table><tbody>{% for name, state in o.self_test.checks.items() %}
<tr><td>{{ name }}</td><td class="{{ 'ok' if state == 'success' else 'bad' }}">{{ state }}</td>
</tr>{% endfor %}</tbody></table>
{% else %}<p id="selftest" class="warn">The self-test has not run
(trigger the pht_station_selftest DAG).</p>{% endif %}

<h2>Trust store</h2>
<table id="trust"><thead><tr><th>role</th><th>name</th><th>key id</th></tr></thead><tbody>
{% for k in o.trust.creators %}<tr><td>creator</td><td>{{ k.name or '' }}</td>
<td class="mono">{{ k.key_id }}</td></tr>{% endfor %}
{% for k in o.trust.approvers %}<tr><td>approver</td><td>{{ k.name or '' }}</td>
<td class="mono">{{ k.key_id }}</td></tr>{% endfor %}
<tr><td>this station</td><td>{{ o.trust.station_key.name }}</td>
<td class="mono">{{ o.trust.station_key.key_id }}</td></tr>
</tbody></table>
<p>Approvals required: {{ o.trust.required_approvals }}. A person approves each run:
{{ 'yes' if o.policy.require_approval else 'no' }}; each release:
{{ 'yes' if o.policy.require_release_approval else 'no' }}; smallest count shown:
{{ o.policy.min_cell_count }}.</p>

<h2>Data sets</h2>
<table id="datasets"><thead><tr><th>name</th><th>kind</th><th>tables</th><th>formats</th></tr>
</thead><tbody>{% for d in o.datasets %}<tr><td>{{ d.name }}</td><td>{{ d.kind }}</td>
<td>{{ d.tables|join(', ') }}</td><td>{{ d.formats|join(', ') }}</td></tr>{% endfor %}
</tbody></table>
{% endif %}{% endblock %}
"""

_REVIEW = """{% extends "base.html" %}
{% block title %}Release review {{ run_key }}{% endblock %}
{% block body %}
<h1>Release review</h1>
<p>Station <b>{{ station }}</b>, run <span class="mono">{{ run_key }}</span></p>
{% if error %}<p class="bad" id="error">{{ error }}</p>{% else %}
<p id="verdict">Overall verdict: <span class="verdict-{{ r.verdict }}
{{ 'ok' if r.verdict == 'pass' else 'bad' if r.verdict == 'block' else 'warn' }}">{{ r.verdict
}}</span>. Approve or reject this release in Airflow (the run's Required Actions).</p>
<table id="files"><thead><tr><th>file</th><th>bytes</th><th>verdict</th><th>reasons</th></tr>
</thead><tbody>{% for f in r.files %}<tr class="file">
<td class="mono">{{ f.path }}</td><td>{{ f.bytes if f.bytes is not none else '' }}</td>
<td class="{{ 'ok' if f.verdict == 'pass' else 'bad' if f.verdict == 'block' else 'warn' }}">
{{ f.verdict }}</td><td>{% for reason in f.reasons %}{{ reason }}<br>{% endfor %}</td>
</tr>{% endfor %}</tbody></table>
{% if r.files_total > r.files|length %}<p class="warn">{{ r.files_total - r.files|length }}
more file(s) not listed.</p>{% endif %}
{% for f in r.files %}{% if f.preview %}
<h2>Preview of <span class="mono">{{ f.path }}</span></h2>
<p class="muted">{{ f.preview.flagged_cells }} flagged cell(s) marked
{%- if f.preview.flagged_hidden %} ({{ f.preview.flagged_hidden }} outside the preview)
{%- endif %}{% if f.preview.truncated %}; first {{ f.preview.rows|length }} of
{{ f.preview.rows_total }} rows, {{ f.preview.columns|length }} of
{{ f.preview.columns_total }} columns{% endif %}.</p>
<table class="preview"><thead><tr>{% for c in f.preview.columns %}<th>{{ c }}</th>
{% endfor %}</tr></thead><tbody>{% for row in f.preview.rows %}<tr>{% for cell in row %}
<td{% if cell.flagged %} class="flagged" title="flagged"{% endif %}>{{ cell.value }}</td>
{% endfor %}</tr>{% endfor %}</tbody></table>
{% endif %}{% endfor %}
{% endif %}{% endblock %}
"""

_UNAUTHORIZED = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign in</title></head><body><p>{{ message }}.
<a href="{{ login_url }}">Sign in to Airflow</a>, then open this page again.</p></body></html>
"""


def _short(value: Any, keep: int = 19) -> str:
    """A long id (``sha256:…``, ``age1…``) cut for a table cell; the page keeps it whole in a
    ``title``."""
    text = "" if value is None else str(value)
    return text if len(text) <= keep + 1 else text[:keep] + "\u2026"


_TEMPLATES = Environment(
    loader=DictLoader(
        {
            "base.html": _BASE,
            "index.html": _INDEX,
            "station.html": _STATION,
            "review.html": _REVIEW,
            "unauthorized.html": _UNAUTHORIZED,
        }
    ),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_TEMPLATES.filters["short"] = _short


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _TEMPLATES.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=SECURITY_HEADERS)


def create_app(
    *,
    authenticate: Authenticate,
    stations: Callable[[], Sequence[str]],
    overview: Callable[[str], Mapping[str, Any]],
    review: Callable[[str, str], Mapping[str, Any] | None],
    login_url: str = "/auth/login",
    root_path: str = "",
) -> FastAPI:
    """The dashboard as an ASGI app.

    :param authenticate: the signed-in user's name for a request, or ``HTTPException``.
    :param stations: the station ids this deployment hosts.
    :param overview: a station's overview (:func:`pht_airflow.station.overview.overview`);
        may raise :class:`PhtError` (a broken config), shown as 503 with the reason.
    :param review: a pending release's review dict (``release.review``), None if the run has
        no pending release (404).
    :param login_url: where an anonymous person is sent to sign in.
    :param root_path: the prefix the app is mounted under (for links in pages).
    """
    app = FastAPI(
        title="pht-airflow station dashboard", docs_url=None, redoc_url=None, openapi_url=None
    )

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/")

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> Response:
        message = safe_text(exc.detail, limit=200)
        if exc.status_code in (401, 403) and wants_html(request):
            return _render("unauthorized.html", exc.status_code, message=message,
                           login_url=login_url)  # fmt: skip
        return _json({"error": message}, exc.status_code)

    async def user(request: Request) -> str:
        try:
            name = await authenticate(request)
        except HTTPException:
            client = request.client.host if request.client else "?"
            log.info("dashboard: refused an unauthenticated request from %s", client)
            raise
        return safe_text(name, limit=120)

    async def known(station: str) -> str:
        if not STATION_ID.fullmatch(station):
            raise HTTPException(404, "no such station")
        if station not in await run_in_threadpool(stations):
            raise HTTPException(404, "no such station")
        return station

    async def load_overview(station: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return dict(await run_in_threadpool(overview, station)), None
        except PhtError as exc:
            log.error("dashboard: station %s cannot be shown: %s", station, exc)
            return None, safe_text(str(exc), limit=1000, multiline=True)

    async def load_review(station: str, run_key: str) -> tuple[dict[str, Any] | None, str | None]:
        if not RUN_KEY.fullmatch(run_key):
            raise HTTPException(404, "no such release")
        try:
            raw = await run_in_threadpool(review, station, run_key)
        except PhtError as exc:
            log.error("dashboard: release %s at %s cannot be shown: %s", run_key, station, exc)
            return None, safe_text(str(exc), limit=1000, multiline=True)
        if raw is None:
            raise HTTPException(404, "no pending release for this run")
        try:
            return release_review(raw), None
        except ReviewError as exc:
            log.error("dashboard: the review of %s is malformed: %s", run_key, exc)
            return None, f"the release review is malformed: {safe_text(str(exc), limit=300)}"

    def page(request: Request, name: str, who: str, status: int = 200, **ctx: Any) -> Response:
        root = request.scope.get("root_path", "") or root_path
        return _render(name, status, user=who, stations=ctx.pop("all_stations", []),
                       root=root, **ctx)  # fmt: skip

    @app.get("/api/stations")
    async def api_stations(who: str = Depends(user)) -> Response:
        return _json({"stations": list(await run_in_threadpool(stations)), "user": who})

    @app.get("/api/stations/{station}/overview")
    async def api_overview(station: str, who: str = Depends(user)) -> Response:
        found, error = await load_overview(await known(station))
        return _json({"error": error}, 503) if error else _json(found)

    @app.get("/api/stations/{station}/releases/{run_key}")
    async def api_review(station: str, run_key: str, who: str = Depends(user)) -> Response:
        found, error = await load_review(await known(station), run_key)
        return _json({"error": error}, 503) if error else _json(found)

    @app.get("/")
    async def index(request: Request, who: str = Depends(user)) -> Response:
        ids = list(await run_in_threadpool(stations))
        if len(ids) == 1:
            return await station_page(request, ids[0], who)
        return page(request, "index.html", who, all_stations=ids)

    @app.get("/stations/{station}")
    async def station_page(request: Request, station: str, who: str = Depends(user)) -> Response:
        await known(station)
        found, error = await load_overview(station)
        ids = list(await run_in_threadpool(stations))
        return page(request, "station.html", who, 503 if error else 200, all_stations=ids,
                    o=found or {"station": station}, error=error)  # fmt: skip

    @app.get("/stations/{station}/releases/{run_key}")
    async def review_page(
        request: Request, station: str, run_key: str, who: str = Depends(user)
    ) -> Response:
        found, error = await load_review(await known(station), run_key)
        ids = list(await run_in_threadpool(stations))
        return page(request, "review.html", who, 503 if error else 200, all_stations=ids,
                    station=station, run_key=run_key, r=found, error=error)  # fmt: skip

    return app
