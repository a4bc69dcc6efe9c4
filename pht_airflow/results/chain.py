"""The chain: which result artifacts of a train are accepted, hop by hop.

Implements PROTOCOL.md "The chain". :func:`find_results` collects the ``result-<k>``
candidates in a train's repository (untrusted); :func:`check_result` checks one against every
rule (subject, config, signature by the route's key, previous link) and raises
:class:`ChainError` naming the broken rule; :func:`accept_hop` requires exactly one passing
result per hop; :func:`verify_chain` walks the route and returns the :class:`AcceptedResult`
list; :func:`chain_status` reports each hop without raising (``pht train status``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import strictjson
from ..errors import ChainError, NotFoundError, PhtError, VerificationError
from ..keys import public_key_from_pem
from ..oci import Descriptor, Manifest, Reference, RegistryClient
from ..protocol import RESULT_ARTIFACT_TYPE, RESULT_MEDIA_TYPE, RESULT_TAG_CLAIM
from ..signing import verify
from ..spec import TrainSpec

__all__ = [
    "AcceptedResult",
    "HopStatus",
    "ResultCandidate",
    "accept_hop",
    "chain_status",
    "check_result",
    "find_results",
    "parse_result_config",
    "plaintext_length",
    "verify_chain",
]


@dataclass(frozen=True)
class ResultCandidate:
    """A manifest tagged ``result-<k>…`` in a train's repository, not yet trusted."""

    tag: str
    tag_hop: int
    manifest: Manifest
    config: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class AcceptedResult:
    """A result that passed every check of PROTOCOL.md "The chain"."""

    hop: int
    station: str
    reference: Reference
    digest: str
    layer: Descriptor
    config: dict[str, Any]
    signer_key_id: str

    @property
    def recipients(self) -> list[str]:
        return list(self.config.get("recipients", []))


#: Largest result config read from a registry.
MAX_CONFIG_BYTES = 1 << 20
#: Largest ``plaintext_bytes`` a config may name (the reader's limit is lower in practice).
MAX_PLAINTEXT_BYTES = 1 << 50

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def plaintext_length(config: dict[str, Any]) -> int:
    """The config's ``plaintext_bytes``: an integer (not a bool) in 0..2**50, or refused."""
    value = config.get("plaintext_bytes")
    if type(value) is not int or not 0 <= value <= MAX_PLAINTEXT_BYTES:
        raise PhtError(
            f"result config: plaintext_bytes must be a whole number of bytes from 0 to "
            f"{MAX_PLAINTEXT_BYTES}, not {_shown(value)}"
        )
    return value


def parse_result_config(raw: bytes) -> dict[str, Any]:
    """Parse and check a result config (PROTOCOL.md "A result"); raise :class:`PhtError`.

    Untrusted input: UTF-8 JSON of at most :data:`MAX_CONFIG_BYTES`, one object with unique
    keys and no ``NaN``/``Infinity``. Every field of the protocol must be there with its type:
    ``train`` an object of ``id`` (string) and ``digest`` (a sha256 digest), ``hop`` a
    non-negative integer, ``station`` and ``created`` strings, ``previous`` null or a digest,
    ``recipients`` a non-empty list of strings, ``plaintext_bytes`` an integer in range.
    Booleans are not integers here (JSON ``true`` would otherwise equal hop 1). Other keys
    are kept and ignored. The chain rules (:func:`check_result`) compare the values.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise PhtError(f"result config is over {MAX_CONFIG_BYTES} bytes")
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise PhtError(f"result config is {exc}") from None
    if not isinstance(data, dict):
        raise PhtError("result config is not a JSON object")

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise PhtError(f"result config: {key} must be {what}, not {_shown(data.get(key))}")

    train = data.get("train")
    need(isinstance(train, dict), "train", "an object with id and digest")
    assert isinstance(train, dict)
    if not isinstance(train.get("id"), str) or not isinstance(train.get("digest"), str):
        raise PhtError(f"result config: train must hold id and digest strings, not {_shown(train)}")
    hop = data.get("hop")
    need(type(hop) is int and 0 <= hop < 1 << 31, "hop", "a non-negative integer")
    need(isinstance(data.get("station"), str) and bool(data["station"]), "station", "a name")
    previous = data.get("previous")
    need(
        "previous" in data
        and (previous is None or (isinstance(previous, str) and bool(_DIGEST.fullmatch(previous)))),
        "previous",
        "null or a sha256 digest",
    )
    need(isinstance(data.get("created"), str), "created", "a timestamp string")
    recipients = data.get("recipients")
    need(
        isinstance(recipients, list)
        and bool(recipients)
        and all(isinstance(r, str) for r in recipients),
        "recipients",
        "a non-empty list of age recipients",
    )
    plaintext_length(data)
    return data


def find_results(client: RegistryClient, train: Reference) -> list[ResultCandidate]:
    """Collect every ``result-<k>`` artifact in the train's repository (unverified)."""
    try:
        tags = client.list_tags(train.repository)
    except NotFoundError:
        return []
    found = []
    for tag in sorted(tags):
        m = RESULT_TAG_CLAIM.match(tag)
        if not m:
            continue
        manifest = client.get_manifest(train.repository, tag)
        config: dict[str, Any] | None = None
        problem = None
        raw = None
        if manifest.config is None:
            problem = "the result manifest has no config"
        else:
            try:
                raw = client.get_blob(
                    train.repository, manifest.config.digest, max_bytes=MAX_CONFIG_BYTES
                )
            except PhtError as exc:
                problem = f"unreadable result config: {exc}"
        if raw is not None:
            try:
                config = parse_result_config(raw)
            except PhtError as exc:
                problem = str(exc)
        found.append(ResultCandidate(tag, int(m.group(1)), manifest, config, problem))
    return found


def check_result(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    candidate: ResultCandidate,
    hop: int,
    previous: str | None,
    *,
    chained: bool,
) -> AcceptedResult:
    """Check one candidate for ``hop``; raise :class:`ChainError` naming the broken rule."""
    station = spec.route[hop].station
    m = candidate.manifest

    def fail(reason: str, key_id: str | None = None) -> ChainError:
        return ChainError(reason, hop=hop, station=station, digest=m.digest, key_id=key_id)

    if candidate.problem or candidate.config is None:
        raise fail(candidate.problem or "result has no config")
    if m.artifact_type != RESULT_ARTIFACT_TYPE or len(m.layers) != 1:
        raise fail(f"{candidate.tag} is not a PHT result artifact")
    if m.layers[0].media_type != RESULT_MEDIA_TYPE:
        raise fail(f"result layer has media type {m.layers[0].media_type}")
    if m.subject is None or m.subject.digest != train.digest:
        subject = m.subject.digest if m.subject else "none"
        raise fail(f"result is for another train: its subject is {subject}, not {train.digest}")
    cfg = candidate.config
    named_value = cfg.get("train")
    named: dict[str, Any] = named_value if isinstance(named_value, dict) else {}
    if named.get("id") != spec.id or named.get("digest") != train.digest:
        raise fail(
            f"result config names another train ({named.get('id')}@{named.get('digest')}), "
            f"not {spec.id}@{train.digest}"
        )
    if cfg.get("hop") != hop:
        raise fail(f"result config is for hop {cfg.get('hop')!r}, not hop {hop}")
    if cfg.get("station") != station:
        raise fail(f"result config names station {cfg.get('station')!r}, not {station!r}")
    route_key = public_key_from_pem(spec.route[hop].key)
    try:
        signers = verify(
            client, Reference(train.registry, train.repository, digest=m.digest), [route_key]
        )
    except VerificationError as exc:
        raise fail(
            f"result is not signed by {station}'s key from the train spec: {exc.reason}",
            key_id=route_key.key_id,
        ) from exc
    if chained and cfg.get("previous") != previous:
        raise fail(
            f"result's previous link is {cfg.get('previous')!r}, but the accepted result of "
            f"hop {hop - 1} is {previous!r}"
        )
    if not chained and cfg.get("previous") is not None:
        raise fail("a parallel result must not name a previous result")
    return AcceptedResult(
        hop=hop,
        station=station,
        reference=Reference(train.registry, train.repository, digest=m.digest),
        digest=m.digest,
        layer=m.layers[0],
        config=cfg,
        signer_key_id=signers[0].key_id,
    )


def accept_hop(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    candidates: Sequence[ResultCandidate],
    hop: int,
    previous: str | None,
) -> AcceptedResult | None:
    """The one result of ``hop`` that passes, None if there is none at all.

    Raises :class:`ChainError` if candidates exist and none passes (with each one's reason)
    or if more than one passes.
    """
    station = spec.route[hop].station
    mine = [c for c in candidates if c.tag_hop == hop]
    if not mine:
        return None
    chained = spec.mode == "sequential"
    accepted: list[AcceptedResult] = []
    failures: list[ChainError] = []
    for c in mine:
        try:
            accepted.append(check_result(client, train, spec, c, hop, previous, chained=chained))
        except ChainError as exc:
            failures.append(exc)
    if len(accepted) > 1:
        raise ChainError(
            f"{len(accepted)} valid results for one hop: " + ", ".join(a.digest for a in accepted),
            hop=hop,
            station=station,
            digest=train.digest,
        )
    if accepted:
        return accepted[0]
    if len(failures) == 1:
        raise failures[0]
    raise ChainError(
        f"none of {len(failures)} results passes",
        hop=hop,
        station=station,
        digest=train.digest,
        details=[str(f) for f in failures],
    )


def verify_chain(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    *,
    upto: int | None = None,
    candidates: Sequence[ResultCandidate] | None = None,
) -> list[AcceptedResult]:
    """Verify the results of hops ``0..upto-1`` (default: the whole route), in hop order.

    Sequential trains: every hop in range must have exactly one passing result, linked to
    the previous one. Parallel trains: each present result is checked on its own; missing
    hops are left out (a station may have failed). Raises :class:`ChainError` naming the
    hop, the station and the reason.
    """
    if train.digest is None:
        raise PhtError("verify_chain needs the train reference pinned to its digest")
    upto = len(spec.route) if upto is None else upto
    if candidates is None:
        candidates = find_results(client, train)
    accepted: list[AcceptedResult] = []
    previous: str | None = None
    for hop in range(upto):
        result = accept_hop(client, train, spec, candidates, hop, previous)
        if result is None:
            if spec.mode == "sequential":
                raise ChainError(
                    "no result for this hop",
                    hop=hop,
                    station=spec.route[hop].station,
                    digest=train.digest,
                )
            continue
        accepted.append(result)
        previous = result.digest
    return accepted


# --- the researcher's view ----------------------------------------------------------------


@dataclass(frozen=True)
class HopStatus:
    """One hop of a train as ``pht train status`` shows it."""

    hop: int
    station: str
    state: str  # "accepted", "missing", "rejected", "unchecked"
    digest: str | None = None
    signer_key_id: str | None = None
    reason: str | None = None


def chain_status(client: RegistryClient, train: Reference, spec: TrainSpec) -> list[HopStatus]:
    """Check each hop in order without raising: what exists, who signed it, where it breaks."""
    candidates = find_results(client, train)
    rows: list[HopStatus] = []
    previous: str | None = None
    broken = False
    for hop, entry in enumerate(spec.route):
        if broken:
            rows.append(HopStatus(hop, entry.station, "unchecked", reason="chain broken earlier"))
            continue
        try:
            result = accept_hop(client, train, spec, candidates, hop, previous)
        except ChainError as exc:
            rows.append(HopStatus(hop, entry.station, "rejected", reason=exc.reason))
            broken = spec.mode == "sequential"
            continue
        if result is None:
            rows.append(HopStatus(hop, entry.station, "missing"))
            broken = spec.mode == "sequential"
            continue
        rows.append(HopStatus(hop, entry.station, "accepted", result.digest, result.signer_key_id))
        previous = result.digest
    return rows
