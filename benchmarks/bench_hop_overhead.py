"""Airflow's overhead per hop, before and after the hop became separately retryable tasks.

Run:  .venv/bin/python benchmarks/bench_hop_overhead.py [--repeat 5] [--warmup 1]
      [--before 761c828] [--only before|after] [--markdown]

"before" is the code of commit ``--before`` (761c828: the DAG verify → approval_gate →
approve → execute → record, whose DAG and hop code are those of 31b1522, the parent of the
split); "after" is ``--after`` (default HEAD, also checked out into a worktree, so uncommitted
edits in this tree are not measured: preflight → verify → approval_gate → approve → run →
check_output → release_gate → release → seal → record). The before code is checked out with
``git worktree add --detach`` into a temporary folder and used for everything of its run:
its ``pht`` command line keys, builds and approves its trains, and its own local Airflow
(API server, scheduler with the LocalExecutor, DAG processor, triggerer; SQLite) runs with
that folder first on ``PYTHONPATH`` and its ``dags/`` and ``plugins/`` folders. The script
checks that ``pht_airflow`` imports from the right folder in each case.

The station's age identity is passphrase-protected, as in the demo (opening it runs
scrypt); ``--plain-age-identity`` gives it one without a passphrase. One station (``bench``: a CSV
data set of the demo's cologne cohort, 1800 patients; the
demo's policy: no approval asked, min_cell_count 10, and for "after" the demo's
``policy.disclosure``) and the demo's trivial train (``pht_airflow.dev.demo.ANALYSIS``: an age
histogram and stage counts, with its output manifest). Every hop is a fresh train (built,
pushed and approved before Airflow starts, so building does not compete with the
measurement), triggered through the REST API (``POST /api/v2/dags/pht_run_train/dagRuns``)
one at a time; the registry sends no notifications, so nothing else starts a run.

Per hop: ``total`` = from just before the trigger request to the ``record`` task's end
(Airflow's end_date); ``container`` = the sandbox container's own run time
(``container_seconds`` in the XCom of the task that ran it: ``execute`` before, ``run``
after); ``overhead`` = total − container. ``tasks`` is how many task instances ran (not
skipped); ``in tasks`` is the sum of their run times minus the container's (work inside task
processes: interpreter, imports, DAG parse, verification, extraction, sealing, pushing);
``between`` is the rest (the scheduler queuing and starting task processes). Both deployments run at
the same time and their hops alternate (before, after, before, …), so the machine's other
load falls on both alike; each idles while the other's hop runs. The first ``--warmup`` hops
of each deployment are not counted. Median, min and max of ``--repeat``
hops. No time is asserted anywhere.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyrage  # noqa: E402
import yaml  # noqa: E402

from pht_airflow.dev import demo  # noqa: E402
from pht_airflow.dev.localairflow import LocalAirflow, start_airflow  # noqa: E402
from pht_airflow.dev.localregistry import start_registry  # noqa: E402

DAG_ID = "pht_run_train"
STATION = "bench"
PROJECT = f"station-{STATION}"
PASSPHRASE = "bench passphrase"
RUN_TIMEOUT = 900.0


@dataclass
class Hop:
    total: float
    container: float
    tasks: int
    in_tasks: float
    per_task: dict[str, float]

    @property
    def overhead(self) -> float:
        return self.total - self.container

    @property
    def between(self) -> float:
        return self.total - self.container - self.in_tasks


def _when(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Variant:
    """One side of the comparison: its code folder and its own keys, station and trains."""

    def __init__(
        self, name: str, src: Path, work: Path, registry_host: str, plain_age: bool = False
    ) -> None:
        self.name = name
        self.plain_age = plain_age
        self.src = src
        self.work = work
        self.registry_host = registry_host
        self.keys = work / "keys"
        self.passfile = work / "passphrase"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PHT_", "AIRFLOW"))},
            "PYTHONPATH": str(src),
            "AIRFLOW_HOME": str(work / "airflow-cli"),
        }

    def pht(self, *args: str) -> str:
        proc = subprocess.run(  # noqa: S603 - the variant's own CLI
            [sys.executable, "-m", "pht_airflow.cli", *args],
            env=self.env,
            cwd=self.work,
            text=True,
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise SystemExit(f"[{self.name}] pht {' '.join(args[:2])} failed:\n{proc.stderr}")
        return proc.stdout

    def python(self, code: str) -> str:
        return subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", code],
            env=self.env,
            cwd=self.work,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()

    def prepare(self) -> Path:
        """Keys, the station's data set and config; returns the config's path."""
        self.work.mkdir(parents=True)
        where = self.python("import pht_airflow; print(pht_airflow.__file__)")
        if not Path(where).is_relative_to(self.src):
            raise SystemExit(f"[{self.name}] pht_airflow imports from {where}, not {self.src}")
        self.keys.mkdir()
        self.passfile.write_text(PASSPHRASE + "\n")
        self.passfile.chmod(0o600)
        for name in ("alice", "reviewer", STATION):
            self.pht("keys", "generate", "--name", name, "--out", str(self.keys),
                     "--passphrase-file", str(self.passfile))  # fmt: skip
        if self.plain_age:  # an age identity without a passphrase (no scrypt to open it)
            identity = pyrage.x25519.Identity.generate()
            (self.keys / f"{STATION}.age").write_text(f"{identity}\n")
            (self.keys / f"{STATION}.age.pub").write_text(f"{identity.to_public()}\n")
        data = self.work / "data" / "patients.csv"
        demo.write_cohort(data, demo.cohort("cologne", demo.STATIONS["cologne"]))
        policy: dict[str, Any] = {"require_approval": False, "min_cell_count": demo.MIN_CELL_COUNT}
        if self.name == "after":
            policy["disclosure"] = demo.DISCLOSURE
        config = {
            "station": {"id": STATION},
            "keys": {
                "public_key": f"keys/{STATION}.pub",
                "signing_key": {"file": f"keys/{STATION}.key"},
                "signing_passphrase": {"file": "passphrase"},
                "age_identity": {"file": f"keys/{STATION}.age"},
                **({} if self.plain_age else {"age_passphrase": {"file": "passphrase"}}),
                # The station's own recipient (new after the split): run encrypts the
                # resting output to it without opening the identity.
                **({"age_recipient": f"keys/{STATION}.age.pub"} if self.name == "after" else {}),
            },
            "registry": {"host": self.registry_host, "project": PROJECT},
            "trust": {
                "trusted_creators": ["keys/alice.pub"],
                "trusted_approvers": ["keys/reviewer.pub"],
                "required_approvals": 1,
            },
            "datasets": {
                demo.DATASET: {
                    "kind": "file",
                    "path": str(data),
                    "formats": ["parquet", "csv"],
                    "identifier_columns": ["id"],
                },  # fmt: skip
            },
            "sandbox": {
                "memory": "256MiB",
                "cpus": 1,
                "pids": 64,
                "wall_time": "120s",
                "output_bytes": "1MiB",
            },  # fmt: skip
            "policy": policy,
            "audit_log": "audit.jsonl",
            "work_dir": "station-work",
        }
        path = self.work / "station.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.python(
            "import sys; from pht_airflow.station.config import load_config; "
            f"load_config({str(path)!r})"
        )
        directory = {"stations": {STATION: {"key": f"keys/{STATION}.pub",
                                            "recipient_file": f"keys/{STATION}.age.pub",
                                            "project": PROJECT}}}  # fmt: skip
        (self.work / "stations.yaml").write_text(yaml.safe_dump(directory))
        return path

    def build_train(self, n: int) -> str:
        """A fresh train (its own id, so its own digest), approved; its reference."""
        folder = self.work / f"train-{n}"
        self.pht("train", "init", str(folder))
        (folder / "analysis.py").write_text(demo.ANALYSIS)
        out = self.pht(
            "train", "build", str(folder), "--route", STATION, "--dataset", demo.DATASET,
            "--creator-key", str(self.keys / "alice.key"),
            "--stations", str(self.work / "stations.yaml"),
            "--push", f"{self.registry_host}/{PROJECT}",
            "--passphrase-file", str(self.passfile), "--json",
        )  # fmt: skip
        train = json.loads(out)
        ref = f"{train['reference'].rsplit(':', 1)[0]}@{train['digest']}"
        self.pht("train", "approve", ref, "--key", str(self.keys / "reviewer.key"), "--yes",
                 "--max-files", "5", "--passphrase-file", str(self.passfile))  # fmt: skip
        return str(train["reference"])

    def start_airflow(self, config: Path) -> LocalAirflow:
        return start_airflow(
            self.work / "airflow",
            env={
                "PHT_STATION_CONFIG": str(config),
                "PYTHONPATH": str(self.src),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.src / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.src / "plugins"),
            },
        )


def _xcom(airflow: LocalAirflow, run_id: str, task_id: str) -> dict[str, Any]:
    with airflow.client() as http:
        resp = http.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/xcomEntries/return_value"
        )
        resp.raise_for_status()
        value = resp.json()["value"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
    return dict(value)


def run_hop(airflow: LocalAirflow, reference: str, container_task: str) -> Hop:
    with airflow.client() as http:
        started = time.time()
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"train": reference}},
        )
        if resp.status_code not in (200, 201):
            raise SystemExit(f"trigger failed ({resp.status_code}): {resp.text}")
        run_id = resp.json()["dag_run_id"]
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            state = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}").json()
            if state["state"] in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run_id} did not finish in {RUN_TIMEOUT:.0f} s")
            airflow.check_alive()
            time.sleep(0.5)
        tis = http.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        ).json()["task_instances"]
    by_id = {t["task_id"]: t for t in tis}
    if state["state"] != "success" or by_id["record"]["state"] != "success":
        states = {t["task_id"]: t["state"] for t in tis}
        raise SystemExit(f"run {run_id} {state['state']}: {states}\n{airflow.diagnostics(30)}")
    ran = [t for t in tis if t["state"] == "success" and t["start_date"] and t["end_date"]]
    container = float(_xcom(airflow, run_id, container_task)["container_seconds"])
    in_tasks = sum(_when(t["end_date"]) - _when(t["start_date"]) for t in ran) - container
    total = _when(by_id["record"]["end_date"]) - started
    per_task = {t["task_id"]: _when(t["end_date"]) - _when(t["start_date"]) for t in ran}
    return Hop(total, container, len(ran), in_tasks, per_task)


def measure(variants: list[Variant], repeat: int, warmup: int) -> dict[str, list[Hop]]:
    """Both deployments run side by side (both idle but for the hop being measured); their
    hops alternate, so a change in the machine's other load falls on both alike."""
    configs = {v.name: v.prepare() for v in variants}
    refs: dict[str, list[str]] = {}
    for v in variants:
        print(f"[{v.name}] building {warmup + repeat} trains with {v.src}", flush=True)
        refs[v.name] = [v.build_train(n) for n in range(warmup + repeat)]
    airflows: dict[str, LocalAirflow] = {}
    hops: dict[str, list[Hop]] = {v.name: [] for v in variants}
    try:
        for v in variants:
            print(f"[{v.name}] starting Airflow", flush=True)
            airflows[v.name] = v.start_airflow(configs[v.name])
        for v in variants:
            airflows[v.name].wait_for_dag(DAG_ID)
        for n in range(warmup + repeat):
            for v in variants:
                task = "execute" if v.name == "before" else "run"
                hop = run_hop(airflows[v.name], refs[v.name][n], task)
                counted = n >= warmup
                print(f"[{v.name}] hop {n}{'' if counted else ' (warm-up)'}: total "
                      f"{hop.total:.1f} s, container {hop.container:.1f} s, overhead "
                      f"{hop.overhead:.1f} s ({hop.tasks} tasks, {hop.in_tasks:.1f} s in "
                      f"tasks, {hop.between:.1f} s between; "
                      + ", ".join(f"{t} {d:.1f}" for t, d in hop.per_task.items())
                      + ")", flush=True)  # fmt: skip
                if counted:
                    hops[v.name].append(hop)
    finally:
        for airflow in airflows.values():
            airflow.stop()
    return hops


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def table(results: dict[str, list[Hop]]) -> str:
    lines = [
        "| code | hops | tasks run | total s | container s | overhead s | in tasks s | between s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, hops in results.items():
        lines.append(
            f"| {name} | {len(hops)} | {statistics.median(h.tasks for h in hops):g} | "
            f"{_stats([h.total for h in hops])} | {_stats([h.container for h in hops])} | "
            f"{_stats([h.overhead for h in hops])} | {_stats([h.in_tasks for h in hops])} | "
            f"{_stats([h.between for h in hops])} |"
        )
    lines.append("")
    lines.append("| code | each task's run time, median s (container included) |")
    lines.append("|---|---|")
    for name, hops in results.items():
        names = list(dict.fromkeys(t for h in hops for t in h.per_task))
        each = ", ".join(
            f"{t} {statistics.median(h.per_task.get(t, 0.0) for h in hops):.1f}" for t in names
        )
        lines.append(f"| {name} | {each} |")
    if {"before", "after"} <= set(results):
        cost = statistics.median(h.overhead for h in results["after"]) - statistics.median(
            h.overhead for h in results["before"]
        )
        lines.append("")
        lines.append(
            f"The split costs {cost:+.1f} s per hop (median overhead after − before; "
            f"target < 3 s: {'met' if cost < 3 else 'NOT met'})."
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="hops measured per side")
    parser.add_argument("--warmup", type=int, default=1, help="hops not counted per side")
    parser.add_argument("--before", default="761c828", help="commit of the 'before' code")
    parser.add_argument(
        "--after",
        default="HEAD",
        help="commit of the 'after' code (a worktree of it, so other "
        "people's uncommitted edits in this tree are not measured)",
    )
    parser.add_argument("--only", choices=["before", "after"], help="measure one side only")
    parser.add_argument(
        "--plain-age-identity",
        action="store_true",
        help="give the station an age identity without a passphrase (as the demo's is not)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table")
    args = parser.parse_args()
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be at least 1 and --warmup at least 0")

    after_commit = subprocess.run(  # noqa: S603, S607 - git on our own repository
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.after],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="pht-bench-hop-"))
    worktree = tmp / "before-src"
    after_tree = tmp / "after-src"
    registry = None
    results: dict[str, list[Hop]] = {}
    try:
        for tree, commit in ((worktree, args.before), (after_tree, args.after)):
            subprocess.run(  # noqa: S603, S607 - git on our own repository
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit],
                check=True,
            )
        registry = start_registry(tmp / "registry")
        sides = {"before": worktree, "after": after_tree}
        variants = [
            Variant(name, src, tmp / name, registry.host, args.plain_age_identity)
            for name, src in sides.items()
            if args.only in (None, name)
        ]
        results = measure(variants, args.repeat, args.warmup)
    finally:
        if registry is not None:
            with contextlib.suppress(Exception):
                demo._remove_images_of(registry.host)
            registry.stop()
        for tree in (worktree, after_tree):
            subprocess.run(  # noqa: S603, S607 - git on our own repository
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                stderr=subprocess.DEVNULL,
            )
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()
    print()
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}; before = {args.before}, after = {args.after} ({after_commit}); "
          f"station age identity "
          f"{'without' if args.plain_age_identity else 'with'} a passphrase")  # fmt: skip
    print(table(results) if args.markdown else table(results).replace("|", " "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
