"""A station's described schema: signed by the station, checked by the central service against
its directory before it is stored, shown by ``pht central stations show``; shapes and rounded
counts only, never values.

The real central app (FastAPI under uvicorn on 127.0.0.1) over SQLite and PostgreSQL, spoken
to by the real client and CLI.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router, RouterError
from pht_airflow.central_client import CentralClient, CentralError
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import free_port
from pht_airflow.errors import VerificationError
from pht_airflow.keys import SigningKey
from pht_airflow.oci import RegistryClient
from pht_airflow.schemadoc import (
    Column,
    DataSetShape,
    TableShape,
    _payload,
    check_document,
    make_document,
    round_count,
)
from pht_airflow.web.central_app import create_app

pytestmark = [pytest.mark.registry]

TOKEN = "schema-test-token"

PERSON = TableShape(
    "person",
    (
        Column("person_id", "int64", identifier=True),
        Column("year_of_birth", "int64"),
        Column("gender_source_value", "string"),
    ),
    rows=2403,
    files=("person.parquet", "person.csv"),
)
MEASUREMENT = TableShape(
    "measurement",
    (Column("person_id", "int64", True), Column("value_source_value", "string")),
    rows=7,
    files=("measurement.parquet",),
)
OMOP = DataSetShape("omop", "sql", (PERSON, MEASUREMENT))
REGISTRY = DataSetShape("registry", "file", (TableShape("registry", (Column("age", "int64"),)),))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def router(db_url: str, registry: Any, parties: Any) -> Iterator[Router]:
    with RegistryClient(registry.host) as client:
        r = Router(make_sessionmaker(make_engine(db_url)), client, PlainRegistryAdmin(client))
        for name in ("station-a", "station-b"):
            r.add_station(name, parties[name].public.pem, parties[name].age.recipient)
        yield r


@pytest.fixture()
def served(router: Router) -> Iterator[str]:
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: "unused",
                     reconcile_seconds=0)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start the central app", pytrace=False)
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _sign(document: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """Re-sign a hand-made document, as a station (or a forger with ``key``) would."""
    document = {k: v for k, v in document.items() if k != "signature"}
    document["signature"] = base64.b64encode(key.sign(_payload(document))).decode()
    return document


def _post(url: str, station: str, document: Any) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(f"{url}/stations/{station}/schema", json=document, timeout=30)


# --- rounding ------------------------------------------------------------------------------


def test_row_counts_are_rounded_down_to_the_disclosure_threshold() -> None:
    assert round_count(2403, 10) == 2400
    assert round_count(2400, 10) == 2400
    assert round_count(9, 10) == 0  # fewer than the threshold: shown as "< 10"
    assert round_count(12345, 1000) == 12000
    assert round_count(17, 1) == 17
    with pytest.raises(ValueError, match="at least 1"):
        round_count(5, 0)


def test_the_document_a_station_signs_carries_rounded_counts_only(parties: Any) -> None:
    key = parties["station-a"].key
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10, key=key)
    tables = {t["name"]: t for t in doc["datasets"][0]["tables"]}
    assert tables["person"]["rows"] == 2400
    assert tables["measurement"]["rows"] == 0
    assert "2403" not in json.dumps(doc)
    checked = check_document(doc, key.public, station="station-a")
    assert checked.datasets[0].tables[0] == TableShape(
        "person", PERSON.columns, 2400, ("person.parquet", "person.csv")
    )


def test_an_unrounded_count_is_refused_even_when_signed(parties: Any) -> None:
    key = parties["station-a"].key
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10, key=key)
    doc["datasets"][0]["tables"][0]["rows"] = 2403
    with pytest.raises(VerificationError, match=r"rows \(2403\) is not rounded to the disclo"):
        check_document(_sign(doc, key), key.public, station="station-a")


# --- publishing over the API, shown by the CLI ---------------------------------------------


def test_a_published_schema_is_stored_and_shown_by_the_cli(served: str, parties: Any) -> None:
    key = parties["station-a"].key
    doc = make_document(station="station-a", datasets=[OMOP, REGISTRY], min_cell_count=10,
                        key=key)  # fmt: skip
    answer = CentralClient(served).publish_schema(doc)
    assert answer == {"station": "station-a", "time": doc["time"],
                      "datasets": ["omop", "registry"]}  # fmt: skip
    entry = CentralClient(served).station("station-a")
    assert entry["schema"] == doc  # stored as signed: anyone can check it again
    assert CentralClient(served).station("station-b")["schema"] is None

    runner = CliRunner()
    result = runner.invoke(main, ["central", "stations", "show", "station-a", "--central", served])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"2 data set(s) published {doc['time']}" in out
    assert f"signed by the station's key {key.key_id}" in out
    assert "rounded down to a multiple of 10" in out
    assert "table person: 2400 rows; /pht/data/{person.parquet, person.csv}" in out
    for word in ("data set omop (sql)", "person", "year_of_birth", "gender_source_value",
                 "measurement", "fewer than 10 rows", "data set registry (file)",
                 "rows not counted", "person_id            int64 (identifier)"):  # fmt: skip
        assert word in out, word
    assert "2403" not in out

    result = runner.invoke(main, ["central", "stations", "show", "station-b", "--central", served])
    assert result.exit_code == 0, result.output
    assert "no data sets published" in result.stdout
    result = runner.invoke(
        main, ["central", "stations", "show", "station-a", "--central", served, "--json"]
    )
    assert json.loads(result.stdout)["schema"] == doc


def test_a_newer_schema_replaces_the_old_one_and_an_older_one_is_refused(
    served: str, parties: Any
) -> None:
    key = parties["station-a"].key
    now = datetime.now(UTC)
    old = make_document(station="station-a", datasets=[OMOP, REGISTRY], min_cell_count=10,
                        key=key, now=now - timedelta(hours=1))  # fmt: skip
    new = make_document(station="station-a", datasets=[REGISTRY], min_cell_count=10, key=key,
                        now=now)  # fmt: skip
    client = CentralClient(served)
    client.publish_schema(old)
    client.publish_schema(new)
    assert client.station("station-a")["schema"] == new
    resp = _post(served, "station-a", old)  # a replay of the withdrawn description
    assert resp.status_code == 409
    assert "already published a schema made at" in resp.json()["detail"]
    assert "this one is not newer" in resp.json()["detail"]
    assert client.station("station-a")["schema"] == new


def test_of_schemas_published_at_once_the_newest_stays(router: Router, parties: Any) -> None:
    """Each publish replaces the stored schema only if it is newer, in one statement, so no
    interleaving of concurrent publishes leaves an older document stored."""
    key = parties["station-a"].key
    base = datetime.now(UTC) - timedelta(hours=1)
    router.publish_schema("station-a", make_document(
        station="station-a", datasets=[], min_cell_count=10, key=key, now=base))  # fmt: skip
    docs = [
        make_document(station="station-a", datasets=[REGISTRY], min_cell_count=10, key=key,
                      now=base + timedelta(seconds=i + 1))
        for i in range(8)
    ]  # fmt: skip
    answers: list[str] = []
    start = threading.Barrier(len(docs))

    def publish(doc: dict[str, Any]) -> None:
        start.wait()
        try:
            router.publish_schema("station-a", doc)
            answers.append("stored")
        except RouterError as exc:
            assert exc.status == 409, exc
            answers.append("older")

    threads = [threading.Thread(target=publish, args=(d,)) for d in reversed(docs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == len(docs)
    assert router.station("station-a")["schema"] == docs[-1]


def test_a_schema_signed_by_another_key_is_refused(served: str, parties: Any) -> None:
    mallory = parties["mallory"].key
    forged = make_document(station="station-a", datasets=[OMOP], min_cell_count=10, key=mallory)
    resp = _post(served, "station-a", forged)
    assert resp.status_code == 422
    assert f"signed by key '{mallory.key_id}', not by station-a's key" in resp.json()["detail"]
    # Claiming the station's key id does not help: the signature does not verify.
    forged["key_id"] = parties["station-a"].key.key_id
    resp = _post(served, "station-a", _sign(forged, mallory))
    assert resp.status_code == 422
    assert "signature does not verify with station-a's key" in resp.json()["detail"]
    # Another station's genuine document cannot be filed under station-a.
    other = make_document(station="station-b", datasets=[OMOP], min_cell_count=10,
                          key=parties["station-b"].key)  # fmt: skip
    resp = _post(served, "station-a", other)
    assert resp.status_code == 422
    assert "describes 'station-b', not 'station-a'" in resp.json()["detail"]
    assert CentralClient(served).station("station-a")["schema"] is None


def test_a_schema_changed_after_signing_is_refused(served: str, parties: Any) -> None:
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10,
                        key=parties["station-a"].key)  # fmt: skip
    tampered = copy.deepcopy(doc)
    tampered["datasets"][0]["tables"][0]["columns"].append(
        {"name": "ssn", "type": "string", "identifier": False}
    )
    resp = _post(served, "station-a", tampered)
    assert resp.status_code == 422
    assert "[dataset-schema]" in resp.json()["detail"]
    assert "signature does not verify" in resp.json()["detail"]
    with pytest.raises(CentralError, match=r"failed \(404\): no station 'station-z'"):
        CentralClient(served).publish_schema({**doc, "station": "station-z"})


def test_values_cannot_ride_along_in_a_schema(served: str, parties: Any) -> None:
    """A field the format does not have (rows of data, sample values) is refused, signed or
    not, so nothing but names, types and rounded counts can reach the directory."""
    key = parties["station-a"].key
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10, key=key)
    with_values = copy.deepcopy(doc)
    with_values["datasets"][0]["tables"][0]["sample"] = [[1, 1961, "F"]]
    resp = _post(served, "station-a", _sign(with_values, key))
    assert resp.status_code == 422
    assert "has unknown field(s): sample" in resp.json()["detail"]
    top = _sign({**doc, "values": [1, 2]}, key)
    resp = _post(served, "station-a", top)
    assert resp.status_code == 422
    assert "unknown field(s): values" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["datasets"][0]["tables"][0]["columns"][0].update(name="a\x1b[31mb"),
         "holds a control or format character"),
        (lambda d: d["datasets"][0]["tables"][0]["columns"][0].update(name="x" * 129),
         "must be a string of 1 to 128 characters"),
        (lambda d: d["datasets"][0]["tables"][0]["columns"].extend(
            {"name": f"c{i}", "type": "int64", "identifier": False} for i in range(1025)),
         "at most 1024 are accepted"),
        (lambda d: d["datasets"][0]["tables"].append(copy.deepcopy(d["datasets"][0]["tables"][0])),
         "lists table 'person' twice"),
        (lambda d: d["datasets"][0]["tables"][0].update(rows=-10), "must be a whole number ≥ 0"),
        (lambda d: d["datasets"][0]["tables"][0]["columns"][0].update(identifier="yes"),
         "person.person_id.identifier must be true or false"),
        (lambda d: d["datasets"][0]["tables"][0].update(files=["a"] * 9),
         "omop.person.files has 9 entries; at most 8"),
        (lambda d: d.update(min_cell_count=0), "min_cell_count must be a whole number from 1"),
        (lambda d: d.update(time="yesterday"), "time is not an ISO-8601 UTC time"),
        (lambda d: d.update(time=(datetime.now(UTC) + timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")), "dated in the future"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.update(type="org.pht.failure-report"),
         "the document's type is not 'org.pht.dataset-schema'"),
    ],
)  # fmt: skip
def test_a_malformed_schema_is_refused_with_its_reason(
    served: str, parties: Any, change: Any, message: str
) -> None:
    key = parties["station-a"].key
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10, key=key)
    change(doc)
    resp = _post(served, "station-a", _sign(doc, key))
    assert resp.status_code == 422, resp.text
    assert message in resp.json()["detail"]
    assert CentralClient(served).station("station-a")["schema"] is None


def test_a_lone_surrogate_or_an_oversized_document_is_refused_not_a_server_error(
    served: str, parties: Any
) -> None:
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10,
                        key=parties["station-a"].key)  # fmt: skip
    body = json.dumps(doc).replace('"person"', '"\\ud800"', 1).encode()
    session = requests.Session()
    session.trust_env = False
    resp = session.post(f"{served}/stations/station-a/schema", data=body,
                        headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
    assert resp.status_code == 422
    assert "a string that is not valid Unicode" in resp.json()["detail"]
    big = copy.deepcopy(doc)
    big["datasets"] = [
        {"name": f"d{i}", "kind": "sql", "tables": [
            {"name": f"t{j}", "rows": 0, "files": [],
             "columns": [{"name": "c" * 100, "type": "x", "identifier": False}]}
            for j in range(40)]}
        for i in range(64)
    ]  # fmt: skip
    resp = _post(served, "station-a", big)
    assert resp.status_code == 422
    assert "larger than 256 KiB" in resp.json()["detail"]


def test_a_new_station_key_drops_the_schema_signed_by_the_old_one(
    served: str, router: Router, parties: Any
) -> None:
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10,
                        key=parties["station-a"].key)  # fmt: skip
    CentralClient(served).publish_schema(doc)
    router.add_station("station-a", parties["station-a"].public.pem,
                       parties["station-a"].age.recipient)  # same key: kept  # fmt: skip
    assert router.station("station-a")["schema"] == doc
    router.add_station("station-a", parties["station-c"].public.pem,
                       parties["station-a"].age.recipient)  # fmt: skip
    assert router.station("station-a")["schema"] is None


def test_the_cli_refuses_a_stored_schema_that_does_not_verify(
    served: str, router: Router, parties: Any
) -> None:
    """What the central database hands out is checked again with the station's key."""
    doc = make_document(station="station-a", datasets=[OMOP], min_cell_count=10,
                        key=parties["station-a"].key)  # fmt: skip
    CentralClient(served).publish_schema(doc)
    doc["datasets"][0]["tables"][0]["rows"] = 2000
    with router.sessions.begin() as s:
        s.execute(text("UPDATE station_schemas SET document = :d WHERE station_id = 'station-a'"),
                  {"d": json.dumps(doc)})  # fmt: skip
    result = CliRunner().invoke(
        main, ["central", "stations", "show", "station-a", "--central", served]
    )
    assert result.exit_code == 3
    assert "signature does not verify with station-a's key" in result.output
    assert "2000" not in result.stdout
    result = CliRunner().invoke(
        main, ["central", "stations", "show", "station-a", "--central", served, "--json"]
    )
    assert result.exit_code == 3
    assert result.stdout == ""


# --- the parser against arbitrary input -----------------------------------------------------


def _json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=20,
    )


_json = _json_values(st.text(max_size=20))
# Any text, lone surrogates included (what a JSON "\\udXXX" escape decodes to): such a
# document cannot even be signed, but it can be sent.
_json_any = _json_values(st.text(st.characters(exclude_categories=()), max_size=20))


@settings(max_examples=300, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            k: _json_any
            for k in (
                "type",
                "version",
                "station",
                "time",
                "key_id",
                "min_cell_count",
                "datasets",
                "signature",
            )
        },  # fmt: skip
    )
    | _json_any
)
def test_any_json_is_either_a_valid_schema_or_a_verification_error(body: Any) -> None:
    key = SigningKey.generate()
    with pytest.raises(VerificationError):
        check_document(body, key.public, station="station-a")


@settings(max_examples=100, deadline=None)
@given(
    datasets=st.lists(_json, max_size=3),
    threshold=st.integers(min_value=-2, max_value=30),
)
def test_any_signed_document_shape_is_checked_not_crashed_on(datasets: Any, threshold: int) -> None:
    """Correctly signed but arbitrary contents: a parsed document or a VerificationError."""
    key = SigningKey.generate()
    doc = _sign({"type": "org.pht.dataset-schema", "version": 1, "station": "station-a",
                 "time": "2026-01-01T00:00:00.000000Z", "key_id": key.key_id,
                 "min_cell_count": threshold, "datasets": datasets},
                key)  # fmt: skip
    try:
        checked = check_document(doc, key.public, station="station-a")
    except VerificationError:
        return
    assert checked.min_cell_count == threshold >= 1
