"""DAG integrity: every DAG file imports in a real ``DagBag``, for one station and for several.

A deployment runs one station (``PHT_STATION_CONFIG``: ``pht_run_train``,
``pht_station_selftest``) or hosts several (``PHT_STATION_CONFIG_DIR``: a pair of DAGs per
``<station>.yaml``, each bound to its config, and one webhook receiver per station). The
hosted DAG is also run once with ``dag.test()`` to show it uses its own station's config.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.errors import ConfigError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.config import (
    CONFIG_DIR_ENV,
    DEFAULT_TASK_TIMEOUT,
    hosted_station_configs,
    load_config,
    policy_task_timeout,
)

pytestmark = [pytest.mark.airflow]


def _dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def _hosted(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "stations"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.yaml").write_text(f"station: {{id: {name}}}\n")
    return folder


def test_single_station_dag_files_import_cleanly(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DagBag.get_dag reads Airflow's metadata database: this test needs it migrated, and says
    # so instead of relying on an earlier test to have done it.
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    bag = _dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"pht_run_train", "pht_station_selftest"}
    run = bag.get_dag("pht_run_train")
    assert {t.task_id for t in run.tasks} == {
        "preflight", "verify", "approve", "run", "check_output", "release", "seal", "record",
    }  # fmt: skip
    # A fresh deployment runs what is triggered: the hop DAG is not created paused.
    assert run.is_paused_upon_creation is False
    assert all(getattr(t, "config_path", None) is None for t in run.tasks)


def test_hosted_stations_get_a_dag_pair_each_bound_to_their_config(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _hosted(tmp_path, ["station-a", "station-b"])
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    bag = _dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "pht_run_train__station-a",
        "pht_run_train__station-b",
        "pht_station_selftest__station-a",
        "pht_station_selftest__station-b",
    }
    for name in ("station-a", "station-b"):
        for dag_id in (f"pht_run_train__{name}", f"pht_station_selftest__{name}"):
            bound = {
                getattr(t, "config_path", None)
                for t in bag.get_dag(dag_id).tasks
                # Airflow's approval operators read no config
                if t.task_id not in ("approve", "release")
            }
            assert bound == {str((folder / f"{name}.yaml").resolve())}, dag_id


def test_hosted_stations_get_one_webhook_receiver_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pht_airflow.airflow.plugin import receiver_apps

    monkeypatch.setenv(CONFIG_DIR_ENV, str(_hosted(tmp_path, ["station-a", "station-b"])))
    assert [a["url_prefix"] for a in receiver_apps()] == ["/pht/station-a", "/pht/station-b"]
    monkeypatch.delenv(CONFIG_DIR_ENV)
    assert [a["url_prefix"] for a in receiver_apps()] == ["/pht"]


def test_hosted_config_names_must_be_station_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _hosted(tmp_path, ["Station_A"])
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    with pytest.raises(ConfigError, match=r"Station_A\.yaml: a hosted station config is named"):
        hosted_station_configs()
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not a folder"):
        hosted_station_configs()


@pytest.mark.docker
@pytest.mark.registry
def test_hosted_dag_runs_with_its_own_station_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    airflow_db: Path,
    docker_client: Any,
    registry: Any,
    parties: Any,
) -> None:
    """No PHT_STATION_CONFIG at all: the hosted DAG must find station-b's config itself."""
    folder = tmp_path / "stations"
    folder.mkdir()
    for name in ("station-a", "station-b"):
        station = make_station(
            tmp_path / name,
            parties[name],
            registry.host,
            creators=[parties["alice"].public.pem],
            approvers=[parties["reviewer"].public.pem],
        )
        (folder / f"{name}.yaml").symlink_to(station.config_path)
    monkeypatch.delenv("PHT_STATION_CONFIG", raising=False)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))

    spec = make_train_spec(parties, ["station-b"])
    ref = Reference(registry.host, f"station-b/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    with RegistryClient(registry.host) as client:
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
        dag = _dagbag().get_dag("pht_run_train__station-b")
        run = dag.test(run_conf={"train": str(ref), "rerun": False})
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success", states
        assert states["run"] == "success" and states["seal"] == "success"
        assert "result-0" in client.list_tags(ref.repository)


def test_hop_tasks_carry_the_station_policy_task_timeout(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """station-a sets policy.task_timeout: 3h; station-b leaves it out (the default, 6h).
    Every task gets it as its execution_timeout, except the person's approval, which waits
    up to its own response_timeout."""
    folder = _hosted(tmp_path, ["station-a", "station-b"])
    (folder / "station-a.yaml").write_text(
        "station: {id: station-a}\npolicy: {require_approval: true, task_timeout: 3h}\n"
    )
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    bag = _dagbag()
    assert bag.import_errors == {}
    for name, timeout in (("station-a", timedelta(hours=3)), ("station-b", DEFAULT_TASK_TIMEOUT)):
        run = bag.get_dag(f"pht_run_train__{name}")
        timeouts = {t.task_id: t.execution_timeout for t in run.tasks}
        assert timeouts == {
            "preflight": timeout,
            "verify": timeout,
            "approve": None,
            "run": timeout,
            "check_output": timeout,
            "release": None,
            "seal": timeout,
            "record": timeout,
        }, name
        selftest = bag.get_dag(f"pht_station_selftest__{name}")
        assert {t.execution_timeout for t in selftest.tasks} == {timeout}, name
    assert timedelta(hours=6) == DEFAULT_TASK_TIMEOUT


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", r"policy\.task_timeout: not a duration: 'soon'"),
        (90, r"policy\.task_timeout: not a duration: 90"),
        ("1m", r"policy\.task_timeout: must be longer than sandbox\.wall_time \(60 s\)"),
    ],
)
def test_a_bad_policy_task_timeout_is_refused(
    tmp_path: Path, parties: Any, value: Any, message: str
) -> None:
    station = make_station(
        tmp_path, parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"task_timeout": value}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        load_config(station.config_path)


def test_policy_task_timeout_is_loaded(tmp_path: Path, parties: Any) -> None:
    station = make_station(
        tmp_path, parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"task_timeout": "2h"}},
    )  # fmt: skip
    assert load_config(station.config_path).policy.task_timeout == timedelta(hours=2)
    assert policy_task_timeout(station.config_path) == timedelta(hours=2)


@pytest.mark.parametrize(
    "text",
    [
        "policy: &p {task_timeout: 2h, again: *p}\n",  # an alias inside itself
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\npolicy: {task_timeout: 2h}\n",
        "policy: {task_timeout: 2h}\n" + "x: " + "[" * 5000 + "]" * 5000 + "\n",
        "policy: {task_timeout: 2h}\n# " + "x" * (1024 * 1024) + "\n",
    ],
    ids=["self-alias", "alias-bomb", "nested-too-deep", "over-1-MiB"],
)
def test_policy_task_timeout_reads_a_hostile_config_as_load_config_does(
    tmp_path: Path, text: str
) -> None:
    """The DAG file's parse-time read of policy.task_timeout goes through the same bounded,
    alias-refusing reader as load_config: a hostile file gives the default (the task then
    fails on load_config's message), never a hang, a recursion or a memory blow-up."""
    path = tmp_path / "station.yaml"
    path.write_text(text)
    assert policy_task_timeout(path) == DEFAULT_TASK_TIMEOUT
    with pytest.raises(ConfigError):
        load_config(path)


def test_seal_retries_registry_outages_with_backoff_for_up_to_fifteen_minutes(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pht_airflow.airflow.dags import DEFAULT_RETRY_TOTAL, retry_args

    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    args = retry_args()
    waits, delay = [], args["retry_delay"].total_seconds()
    for _ in range(args["retries"]):
        waits.append(delay)
        delay = min(delay * args["retry_exponential_backoff"], 300)
    # Each wait at its shortest: 15 s doubling to at most 5 min, as many as fit in 15 min.
    assert waits == [15, 30, 60, 120, 240, 300]
    assert sum(waits) <= DEFAULT_RETRY_TOTAL.total_seconds() < sum(waits) + delay
    seal = _dagbag().get_dag("pht_run_train").get_task("seal")
    assert seal.retries == 6 and seal.max_retry_delay == timedelta(minutes=5)
    assert retry_args(timedelta(seconds=10))["retries"] == 0
