"""``make demo``: the researcher's side of a train's journey, with real parts only.

What runs today: a local CNCF distribution registry on 127.0.0.1, key generation for a
researcher, a reviewer and three stations, ``pht train init`` / ``pht train build`` (a real
image build on ``pht-local/python:3.11`` and a push through the Docker engine), the creator
signature, ``pht train approve`` (an approver signature), ``pht verify`` and
``pht train status``. The stations' Airflow hops and the central router are the next
milestones (issues 4 and 5); until then the demo stops after the train is signed and
approved and says so.

Everything lives under ``.pht/demo`` and every process the demo starts is stopped by PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from .localregistry import start_registry

console = Console(highlight=False)
STATIONS = ("station-a", "station-b", "station-c")


def _pht(*args: str, env: dict[str, str]) -> str:
    """Run the ``pht`` command line as a user would, echoing the command."""
    console.print(f"[bold cyan]$ pht {' '.join(args)}[/bold cyan]")
    proc = subprocess.run(
        [sys.executable, "-m", "pht_airflow.cli", *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.stdout:
        console.print(proc.stdout.rstrip(), markup=False)
    if proc.returncode != 0:
        console.print(proc.stderr.rstrip(), markup=False)
        raise SystemExit(f"demo step failed: pht {args[0]} exited {proc.returncode}")
    return proc.stdout


def main() -> int:
    root = Path(".pht/demo").resolve()
    shutil.rmtree(root, ignore_errors=True)
    keys = root / "keys"
    keys.mkdir(parents=True)
    os.chmod(root, 0o700)
    passfile = keys / "demo-passphrase"
    passfile.write_text(secrets.token_urlsafe(24) + "\n")
    passfile.chmod(0o600)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PHT_PASSPHRASE", None)
    started = time.monotonic()

    console.rule("1. a local registry on 127.0.0.1")
    registry = start_registry(root / "registry")
    try:
        console.print(f"registry at {registry.url} (pid {registry.process.pid})")
        console.rule("2. keys for the researcher, a reviewer and three stations")
        for name in ("alice", "reviewer", *STATIONS):
            _pht(
                "keys", "generate", "--name", name, "--out", str(keys),
                "--passphrase-file", str(passfile), env=env,
            )  # fmt: skip
        directory = root / "stations.yaml"
        lines = ["stations:"]
        for s in STATIONS:
            lines += [f"  {s}:", f"    key: keys/{s}.pub", f"    recipient_file: keys/{s}.age.pub"]
        directory.write_text("\n".join(lines) + "\n")

        console.rule("3. build, push and sign a train")
        folder = root / "age-histogram"
        _pht("train", "init", str(folder), env=env)
        out = _pht(
            "train", "build", str(folder), "--route", ",".join(STATIONS),
            "--mode", "sequential", "--dataset", "cohort", "--creator-key",
            str(keys / "alice.key"), "--stations", str(directory),
            "--push", f"{registry.host}/pht-incoming", "--passphrase-file", str(passfile),
            "--json", env=env,
        )  # fmt: skip
        import json

        train = json.loads(out)
        ref = f"{train['reference'].rsplit(':', 1)[0]}@{train['digest']}"

        console.rule("4. a reviewer approves it")
        _pht(
            "train", "approve", ref, "--key", str(keys / "reviewer.key"), "--yes",
            "--max-files", "10", "--passphrase-file", str(passfile), env=env,
        )  # fmt: skip
        _pht(
            "verify", ref, "--key", str(keys / "alice.pub"), "--key",
            str(keys / "reviewer.pub"), env=env,
        )  # fmt: skip
        _pht("train", "status", ref, "--key", str(keys / "alice.pub"), env=env)
        console.rule("done")
        console.print(
            f"train {train['id']} is built, signed by its creator and approved "
            f"({time.monotonic() - started:.0f} s). The station hops (Airflow) and the "
            "central router are not part of this build yet: see the README's status section."
        )
    finally:
        registry.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
