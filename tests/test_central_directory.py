"""The station directory's removal: a removed station keeps its row, takes no new trains, and
can be added back; a database made before the ``removed`` column gains it.

Over both databases the central service runs on (a SQLite file; PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from pht_airflow.central.db import StationRow, make_engine, make_sessionmaker
from pht_airflow.central.directory import Directory, RouterError


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_a_removed_station_keeps_its_entry_and_can_be_added_back(db_url: str, parties: Any) -> None:
    engine = make_engine(db_url)
    directory = Directory(make_sessionmaker(engine))
    a = parties["station-a"]
    directory.add_station("station-a", a.public.pem, a.age.recipient)
    assert directory.station("station-a")["removed"] is None

    removed = directory.remove_station("station-a")
    assert removed["removed"] and removed["removed"].endswith("Z")
    assert removed["project"] == "station-station-a" and removed["key_id"] == a.public.key_id
    again = directory.remove_station("station-a")  # idempotent: the first time stays
    assert again["removed"] == removed["removed"]
    assert [s["id"] for s in directory.stations()] == ["station-a"]  # the row stays

    with pytest.raises(RouterError) as unknown:
        directory.remove_station("station-x")
    assert unknown.value.status == 404 and "'station-x'" in str(unknown.value)

    back = directory.add_station("station-a", a.public.pem, a.age.recipient)
    assert back["removed"] is None and directory.station("station-a")["removed"] is None
    engine.dispose()


def test_a_database_made_before_removal_existed_gains_the_column(db_url: str, parties: Any) -> None:
    old = create_engine(db_url)
    with old.begin() as conn:  # the stations table as it was before `removed`
        conn.execute(
            text(
                "CREATE TABLE stations (id VARCHAR(63) PRIMARY KEY, key_pem TEXT NOT NULL, "
                "key_id VARCHAR(80) NOT NULL, recipient VARCHAR(120) NOT NULL, project "
                "VARCHAR(255) NOT NULL, webhook_url VARCHAR(500), created TIMESTAMP NOT NULL)"
            )
        )
        a = parties["station-a"]
        conn.execute(
            text(
                "INSERT INTO stations VALUES ('station-a', :pem, :kid, :rcpt, 'station-a', "
                "NULL, CURRENT_TIMESTAMP)"
            ),
            {"pem": a.public.pem, "kid": a.public.key_id, "rcpt": a.age.recipient},
        )
    assert "removed" not in {c["name"] for c in inspect(old).get_columns("stations")}
    old.dispose()

    engine = make_engine(db_url)
    assert "removed" in {c["name"] for c in inspect(engine).get_columns("stations")}
    directory = Directory(make_sessionmaker(engine))
    assert directory.station("station-a")["removed"] is None  # an old row: active
    assert directory.remove_station("station-a")["removed"]
    make_engine(db_url).dispose()  # a second start adds nothing and fails nothing
    with make_sessionmaker(engine)() as s:
        row = s.get(StationRow, "station-a")
        assert row is not None and row.removed is not None
    engine.dispose()
