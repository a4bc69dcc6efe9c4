"""Trains with their own files for approval-card tests: built by the real engine on
``pht-local/python:3.11`` (labelled as ``pht train build`` labels them, unless asked not to),
pushed to the real registry, signed, and verified the way a station verifies them."""

from __future__ import annotations

import io
import tarfile
from typing import Any

from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import TRAIN_LABEL
from pht_airflow.researcher.train import base_labels, push_image
from pht_airflow.station.verify import Trust, VerifiedTrain, verify_train
from support.stationkit import Station, make_train_spec, sign_train

BASE = "pht-local/python:3.11"

README = b"""# Row count

Counts the rows of each table at every station and adds them up.
"""

SCRIPT = b"""import json
from pathlib import Path

rows = sum(1 for p in Path("/pht/data").glob("*.csv") for _ in p.open())
Path("/pht/output/state.json").write_text(json.dumps({"rows": rows}))
"""


def build_code_train(
    docker_client: Any,
    ref: Reference,
    spec: Any,
    files: dict[str, bytes],
    *,
    labels: dict[str, str] | None = None,
    extra_steps: str = "",
) -> str:
    """Build ``FROM pht-local/python:3.11`` + ``COPY src/ /opt/train/`` of ``files`` (+
    ``extra_steps`` Dockerfile lines); ``labels`` replace the base labels; push; digest."""
    dockerfile = (
        f"FROM {BASE}\nCOPY src/ /opt/train/\n{extra_steps}"
        'ENTRYPOINT ["python3", "/opt/train/analysis.py"]\n'
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = {"Dockerfile": dockerfile, **{f"src/{k}": v for k, v in files.items()}}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    chosen = base_labels(docker_client, BASE) if labels is None else labels
    stream = docker_client.api.build(
        fileobj=context, custom_context=True, tag=str(ref), pull=False, rm=True, forcerm=True,
        labels={**chosen, TRAIN_LABEL: spec.to_canonical_json()}, decode=True,
    )  # fmt: skip
    for line in stream:
        if "error" in line:
            raise RuntimeError(f"docker build failed: {line['error']}")
    try:
        return push_image(docker_client, ref)
    finally:
        docker_client.images.remove(str(ref))


def code_train(
    docker_client: Any,
    client: RegistryClient,
    registry: Any,
    parties: Any,
    project: str,
    route: list[str],
    files: dict[str, bytes] | None = None,
    *,
    signers: tuple[str, ...] = ("alice", "reviewer"),
    **kwargs: Any,
) -> tuple[Reference, Any]:
    """A signed train in ``project`` for ``route`` with ``files`` (default: the analysis
    script and a README); ``kwargs`` go to :func:`make_train_spec` and
    :func:`build_code_train`."""
    build_args = {k: kwargs.pop(k) for k in ("labels", "extra_steps") if k in kwargs}
    spec = make_train_spec(parties, route, **kwargs)
    ref = Reference(registry.host, f"{project}/{spec.id}", tag="train")
    chosen = files if files is not None else {"analysis.py": SCRIPT, "README.md": README}
    digest = build_code_train(docker_client, ref, spec, chosen, **build_args)
    pinned = ref.with_digest(digest)
    sign_train(client, pinned, parties, *signers)
    return pinned, spec


def verified_at(station: Station, client: RegistryClient, ref: Reference) -> VerifiedTrain:
    """``ref`` verified as ``station`` verifies it (its trust store and key)."""
    config = station.config()
    trust = Trust(config.trust.creators, config.trust.approvers, config.trust.required_approvals)
    return verify_train(
        client, ref, station_id=config.station_id, station_key=config.public_key, trust=trust
    )
