"""The facts of an approval card: what a station's staff decide when they approve a train.

:func:`card_facts` gathers them from the verified train only (never from unverified input):
the spec read from the signed image config, the signers whose signatures verified, the
station's own config (trust store names, data set, sandbox limits) and the image's layers by
the digests in the verified manifest. The result is JSON-safe (an XCom, an audit record, a
web page); every string that came from the train, a signature or the registry is passed
through :func:`~pht_airflow.text.safe_text`, so nothing in it can hide or reorder what a
person reads. Rendering is the edges' job: Markdown for Airflow's approval step
(``pht_airflow.airflow.card``), rich for the CLI.

The facts (``CARD_VERSION`` 1)::

    version         1
    train           name, id, digest, reference, created, expires
    creator         id (the spec's), key_id, name (the trust store's), signed_as (the signature's)
    approvers       [{key_id, name, signed_as}], required (the station's required_approvals)
    route           mode, hop (0-based, the protocol's), length, stations, position (for people)
    recipients      who can decrypt this hop's result: [{recipient, parties: [text]}], why
    data            dataset, kind, source (folder, file or Airflow Connection), tables, mounted
    sandbox         memory, cpus, pids, wall_time, output, tmp, user, network, gpus (text)
    policy          require_approval, require_release_approval
    checks          [{id, text}] of the checks that passed (text: a statement, "not expired")
    previous        the previous hop's result digest (sequential, hop > 0) or None
    code            traincode.TrainCode.to_dict(), or {"error": why it cannot be shown}
"""

from __future__ import annotations

from typing import Any

from ..errors import DigestMismatchError, InvalidManifestError, ResponseTooLargeError
from ..oci import RegistryClient
from ..spec import format_time
from ..text import safe_text
from ..traincode import read_train_code
from .config import StationConfig
from .sandbox import describe_gpus
from .verify import VerifiedTrain, check_statement

CARD_VERSION = 1
#: Longest name (train, station, signer, key name) shown on a card.
NAME_LIMIT = 200


def _s(value: object, limit: int = NAME_LIMIT) -> str | None:
    return None if value is None else safe_text(value, limit=limit)


def size_text(n: int) -> str:
    """Bytes as people read them: ``256 MiB``, ``1.5 GiB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def seconds_text(seconds: float) -> str:
    """A duration as people read it: ``90 s``, ``30 min``, ``6 h``."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def position_text(stations: list[str], hop: int, mode: str) -> str:
    """This station's place on the route: ``hop 2 of 3: a → [b] → c`` (sequential) or
    ``1 of 3 stations in parallel: [a], b, c``; ``stations`` already made safe."""
    marked = [f"[{s}]" if i == hop else s for i, s in enumerate(stations)]
    if mode == "parallel":
        return f"{hop + 1} of {len(stations)} stations in parallel: {', '.join(marked)}"
    return f"hop {hop + 1} of {len(stations)}: {' → '.join(marked)}"


def _signer(config: StationConfig, key_id: str, signed_as: str | None) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "name": _s(config.trust.name_of(key_id)),
        "signed_as": _s(signed_as),
    }


def _recipients(config: StationConfig, verified: VerifiedTrain) -> dict[str, Any]:
    """Who can decrypt this hop's result (the spec's rule, :meth:`recipients_for_hop`), each
    named from the spec: the next station, the creator (with the trust store's name)."""
    spec, hop = verified.spec, verified.hop
    creator_name = config.trust.name_of(verified.creator.key_id)
    parties: list[dict[str, Any]] = []
    for recipient in spec.recipients_for_hop(hop):
        named: list[str] = []
        for i, stop in enumerate(spec.route):
            if stop.recipient == recipient:
                where = "the next station" if i == hop + 1 else f"hop {i + 1} of the route"
                if i == hop:
                    where = "this station"
                named.append(f"station {safe_text(stop.station, limit=NAME_LIMIT)} ({where})")
        if spec.creator.recipient == recipient:
            who = safe_text(spec.creator.id, limit=NAME_LIMIT)
            named.append(
                f"the creator {who}" + (f" ({safe_text(creator_name)})" if creator_name else "")
            )
        if not named:
            named.append("a further result recipient the spec names (not a route station)")
        parties.append({"recipient": safe_text(recipient, limit=NAME_LIMIT), "parties": named})
    if spec.mode == "sequential" and not spec.is_last_hop(hop):
        why = "the next station on the route, which continues the train"
        if spec.results_visibility == "all":
            why += ", and the train's result recipients (results_visibility: all)"
    else:
        why = "the train's result recipients" + (
            " (the last hop)" if spec.mode == "sequential" else " (parallel: every hop)"
        )
    return {"parties": parties, "why": why}


def _data(config: StationConfig, name: str) -> dict[str, Any]:
    """The data set the train asks for and what it maps to at this station."""
    ds = config.datasets.get(name)
    if ds is None:
        return {"dataset": _s(name), "offered": False}
    facts: dict[str, Any] = {"dataset": _s(name), "offered": True, "kind": ds.kind}
    if ds.kind == "sql":
        facts["source"] = f"Airflow Connection {ds.connection}"
    else:
        facts["source"] = str(ds.path)
    facts["tables"] = list(ds.tables())
    facts["mounted"] = (
        "the folder itself, read-only at /pht/data"
        if ds.mounted_as_is
        else "extracted just before the run into /pht/data (" + ", ".join(ds.formats) + ")"
    )
    return facts


def _sandbox(config: StationConfig) -> dict[str, Any]:
    limits = config.limits
    return {
        "memory": size_text(limits.memory_bytes),
        "cpus": limits.cpus,
        "pids": limits.pids,
        "wall_time": seconds_text(limits.wall_seconds),
        "output": size_text(limits.output_bytes),
        "tmp": size_text(limits.tmp_bytes),
        "user": limits.user,
        "network": "none",
        "gpus": describe_gpus(limits.gpus),
    }


def code_facts(client: RegistryClient, verified: VerifiedTrain) -> dict[str, Any]:
    """What the train adds on top of its base image (:mod:`pht_airflow.traincode`), read by
    the verified manifest's digests; a train whose layers cannot be listed (not a tar, an
    over-size header, altered blobs) gets ``{"error": why}`` for the card to show. A registry
    that cannot be reached raises (the verify task retries)."""
    try:
        code = read_train_code(client, verified.ref, verified.manifest)
    except (InvalidManifestError, DigestMismatchError, ResponseTooLargeError) as exc:
        return {"error": safe_text(str(exc), limit=1000)}
    return code.to_dict()


def card_facts(
    config: StationConfig, verified: VerifiedTrain, client: RegistryClient
) -> dict[str, Any]:
    """The approval card's facts for ``verified`` at this station (see the module docstring).

    ``client`` reads the image's config and layers from the station's registry; call it in
    the verify task, after :func:`~pht_airflow.station.verify.verify_train` succeeded."""
    spec, hop = verified.spec, verified.hop
    stations = [safe_text(r.station, limit=NAME_LIMIT) for r in spec.route]
    return {
        "version": CARD_VERSION,
        "train": {
            "name": _s(spec.name),
            "id": _s(spec.id),
            "digest": verified.digest,
            "reference": _s(str(verified.ref), 1000),
            "created": format_time(spec.created),
            "expires": format_time(spec.expires),
        },
        "creator": {
            "id": _s(spec.creator.id),
            **_signer(config, verified.creator.key_id, verified.creator.signer),
        },
        "approvers": [_signer(config, a.key_id, a.signer) for a in verified.approvers],
        "required_approvals": config.trust.required_approvals,
        "route": {
            "mode": spec.mode,
            "hop": hop,
            "length": len(spec.route),
            "stations": stations,
            "position": position_text(stations, hop, spec.mode),
        },
        "recipients": _recipients(config, verified),
        "data": _data(config, spec.dataset),
        "sandbox": _sandbox(config),
        "policy": {
            "require_approval": config.policy.require_approval,
            "require_release_approval": config.policy.require_release_approval,
        },
        "checks": [{"id": c, "text": check_statement(c)} for c in verified.passed],
        "previous": verified.previous.digest if verified.previous else None,
        "code": code_facts(client, verified),
    }
