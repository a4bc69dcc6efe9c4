"""Test helpers for station tests: a station's files and config, trains, and registry copies.

Everything is real: key files written with the library, a YAML config validated by
``load_config``, images built by the Docker engine, artifacts in the real registry.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import TRAIN_LABEL
from pht_airflow.researcher.train import StationInfo, base_labels, make_spec, push_image
from pht_airflow.signing import sign
from pht_airflow.spec import TrainSpec
from pht_airflow.station.config import StationConfig, load_config

PASSPHRASE = "station passphrase for tests"

ANALYSIS = r"""
import csv, json, os
from pathlib import Path
state_file = Path("/pht/input/state.json")
state = json.loads(state_file.read_text()) if state_file.exists() else {"rows": 0, "hops": []}
rows = 0
for path in sorted(Path("/pht/data").glob("*.csv")):
    with open(path, newline="") as f:
        rows += sum(1 for _ in csv.DictReader(f))
state["rows"] += rows
state["hops"].append({"station": os.environ["PHT_STATION_ID"], "hop": os.environ["PHT_HOP"],
                      "rows": rows})
Path("/pht/output/state.json").write_text(json.dumps(state, sort_keys=True))
# Declares the counts for the station's disclosure control (policy.disclosure).
Path("/pht/output/pht-output.json").write_text(json.dumps(
    {"version": 1, "tables": {"state.json": {"kind": "frequency", "count_fields": ["rows"]}}}))
print("counted", rows, "rows at", os.environ["PHT_STATION_ID"])
"""


@dataclass
class Station:
    id: str
    root: Path
    config_path: Path
    party: Any

    def config(self) -> StationConfig:
        return load_config(self.config_path)

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.jsonl"


def make_station(
    root: Path,
    party: Any,
    registry_host: str,
    *,
    creators: list[str],
    approvers: list[str],
    required_approvals: int = 1,
    rows: int = 5,
    overrides: dict[str, Any] | None = None,
) -> Station:
    """Write a station's key files, data set and config under ``root``."""
    keys = root / "keys"
    keys.mkdir(parents=True)
    (keys / "station.key").write_bytes(party.key.private_pem(PASSPHRASE.encode()))
    (keys / "station.key").chmod(0o600)
    (keys / "station.pub").write_text(party.public.pem)
    (keys / "station.age").write_text(party.age.secret_text() + "\n")
    (keys / "station.age").chmod(0o600)
    (keys / "passphrase").write_text(PASSPHRASE + "\n")
    data = root / "data" / "cohort"
    data.mkdir(parents=True)
    lines = ["id,age,stage"] + [f"{i},{40 + i},II" for i in range(rows)]
    (data / "patients.csv").write_text("\n".join(lines) + "\n")
    os.chmod(root / "data", 0o755)
    os.chmod(data, 0o755)
    os.chmod(data / "patients.csv", 0o644)
    config: dict[str, Any] = {
        "station": {"id": party.name},
        "keys": {
            "public_key": "keys/station.pub",
            "signing_key": {"file": "keys/station.key"},
            "signing_passphrase": {"file": "keys/passphrase"},
            "age_identity": {"file": "keys/station.age"},
        },
        "registry": {"host": registry_host, "project": party.name},
        "trust": {
            "trusted_creators": creators,
            "trusted_approvers": approvers,
            "required_approvals": required_approvals,
        },
        "datasets": {"cohort": "data/cohort"},
        "sandbox": {
            "memory": "256MiB",
            "cpus": 1,
            "pids": 64,
            "wall_time": "60s",
            "output_bytes": "10MiB",
        },  # fmt: skip
        # Test data sets have a handful of rows: a threshold of 1 lets their counts pass.
        "policy": {"require_approval": False, "min_cell_count": 1},
        "audit_log": "audit.jsonl",
        "work_dir": "work",
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = root / "station.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Station(party.name, root, path, party)


def make_train_spec(parties: Any, route: list[str], **kwargs: Any) -> TrainSpec:
    args: dict[str, Any] = {
        "name": "row-count",
        "creator_id": "alice",
        "creator_key_id": parties["alice"].key.key_id,
        "creator_recipient": parties["alice"].age.recipient,
        "route": [StationInfo(s, parties[s].public.pem, parties[s].age.recipient) for s in route],
        "mode": "sequential",
        "dataset": "cohort",
    }
    args.update(kwargs)
    return make_spec(**args)


def build_train(
    docker_client: Any,
    ref: Reference,
    spec: TrainSpec,
    script: str = ANALYSIS,
    auth: tuple[str, str] | None = None,
) -> str:
    """Build a Python train on pht-local/python:3.11 running ``script``; push (with ``auth``,
    a username and password, if given); return digest."""
    import tarfile

    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (
            ("Dockerfile", b'FROM pht-local/python:3.11\nCOPY analysis.py /opt/analysis.py\n'
             b'ENTRYPOINT ["python3", "/opt/analysis.py"]\n'),
            ("analysis.py", script.encode()),
        ):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    stream = docker_client.api.build(
        fileobj=context,
        custom_context=True,
        tag=str(ref),
        # As `pht train build` labels it: which layers are the base image's (traincode).
        labels={
            **base_labels(docker_client, "pht-local/python:3.11"),
            TRAIN_LABEL: spec.to_canonical_json(),
        },
        pull=False,
        rm=True,
        forcerm=True,
        decode=True,
    )
    for line in stream:
        if "error" in line:
            raise RuntimeError(f"docker build failed: {line['error']}")
    username, password = auth or (None, None)
    return push_image(docker_client, ref, username=username, password=password)


def sign_train(client: RegistryClient, ref: Reference, parties: Any, *signers: str) -> None:
    for name in signers:
        role = "creator" if name == "alice" else "approver"
        sign(client, ref, parties[name].key, role=role, signer=name)


def copy_repository(client: RegistryClient, src: str, dst: str) -> None:
    """Copy every tagged manifest of ``src`` into ``dst`` by mounting blobs (no bytes move)."""
    for tag in client.list_tags(src):
        manifest = client.get_manifest(src, tag)
        for d in [manifest.config, *manifest.layers]:
            if d is not None:
                client.mount_blob(dst, d.digest, src)
        client.put_manifest(dst, tag, manifest.raw, manifest.media_type)


def repository_tags(client: RegistryClient, repository: str) -> list[str]:
    return sorted(client.list_tags(repository))


def sandbox_containers(docker_client: Any) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": "org.pht.sandbox"})


def signed_train(docker_client: Any, client: Any, registry: Any, parties: Any, project: str,
                 route: list[str], *, signers: tuple[str, ...] = ("alice", "reviewer"),
                 change: Any = None) -> tuple[Reference, Any]:  # fmt: skip
    """A train for ``route`` built in ``project`` and signed by ``signers`` (``change`` edits
    the spec's fields first)."""
    spec = make_train_spec(parties, route)
    if change is not None:
        spec = dataclasses.replace(spec, **change(spec))
    ref = Reference(registry.host, f"{project}/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, *signers)
    return ref, spec
