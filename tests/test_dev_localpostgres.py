"""The private PostgreSQL of the demo and the tests: loopback only, and nothing left behind.

A real server (Debian's ``postgresql``), started in a temporary folder: it listens on
127.0.0.1 only, stopping it removes the process and the folder, and a cluster an interrupted
run left behind is stopped and removed by :func:`stop_leftover`.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from pht_airflow.dev.localpostgres import postgres_bindir, start_postgres, stop_leftover

pytestmark = pytest.mark.skipif(postgres_bindir() is None, reason="no PostgreSQL installed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_server_listens_on_loopback_only_and_stop_leaves_nothing() -> None:
    server = start_postgres()
    try:
        pid = server.pid
        assert pid is not None and _alive(pid)
        with psycopg.connect(f"{server.url}/postgres") as conn:
            listen = conn.execute("SHOW listen_addresses").fetchone()
            assert listen == ("127.0.0.1",)
            assert conn.execute("SELECT current_user").fetchone() == ("pht",)
    finally:
        server.stop()
    assert not server.root.exists()
    assert not _alive(pid)


def test_a_cluster_left_by_an_interrupted_run_is_stopped_and_removed(tmp_path: Path) -> None:
    server = start_postgres(prefix="pht-leftover-")
    pid = server.pid
    assert pid is not None
    try:
        # The run that started it is gone; only its folder is known.
        assert stop_leftover(server.root) is True
        assert not server.root.exists()
        assert not _alive(pid)
    finally:
        if server.root.exists():
            server.stop()
    assert stop_leftover(tmp_path) is False  # not a cluster: nothing touched
    assert tmp_path.exists()
