"""The station's Verify step (PROTOCOL.md "A station's hop", step 2).

Reads only the manifest, the config and signature artifacts: no layer is pulled and no
container starts before every check here has passed. Each failing check raises its own
:class:`~pht_airflow.errors.VerificationError` subclass naming the check, the train digest
and the key involved, so the audit log and the Airflow task log say exactly what failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import (
    AlreadyDoneError,
    ExpiredError,
    InvalidSpecError,
    NotOnRouteError,
    RouteKeyMismatchError,
    SpecError,
    TooFewApprovalsError,
    UntrustedCreatorError,
    VerificationError,
)
from ..keys import PublicKey, public_key_from_pem
from ..oci import Manifest, Reference, RegistryClient
from ..results import AcceptedResult, verify_chain
from ..signing import Signer, verify
from ..spec import TrainSpec, format_time, read_spec

CHECKS = (
    "resolve",
    "spec",
    "signed",
    "creator",
    "approvals",
    "route",
    "route-key",
    "expired",
    "already-done",
    "chain",
)
"""Every check, in the order they run (the audit log records which passed)."""

CHECK_STATEMENTS = {
    "resolve": "pinned to its digest",
    "spec": "train spec valid",
    "signed": "signatures valid",
    "creator": "creator trusted",
    "approvals": "enough trusted approvals",
    "route": "this station is on the route",
    "route-key": "route names this station's key",
    "expired": "not expired",
    "already-done": "not run here before",
    "chain": "earlier hops' results verified",
}
"""What a passed check means, as people read it (cards, the CLI, logs). The ids in
:data:`CHECKS` stay what the audit log and tests use."""


def check_statement(check: str) -> str:
    """The passed ``check`` as a statement ("not expired" for ``expired``); an unknown id is
    returned as it is."""
    return CHECK_STATEMENTS.get(check, check)


@dataclass(frozen=True)
class Trust:
    """What a station trusts: creator keys, approver keys, and how many approvals it wants."""

    creators: Sequence[PublicKey]
    approvers: Sequence[PublicKey]
    required_approvals: int = 1


@dataclass
class VerifiedTrain:
    """A train that passed every check, pinned to its digest."""

    ref: Reference
    spec: TrainSpec
    manifest: Manifest
    hop: int
    creator: Signer
    approvers: list[Signer]
    previous: AcceptedResult | None
    chain: list[AcceptedResult] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        assert self.ref.digest is not None  # noqa: S101 - pinned by construction
        return self.ref.digest

    def summary(self) -> dict[str, Any]:
        """JSON-safe facts for XCom and the audit log (no secrets, no data)."""
        return {
            "reference": str(self.ref),
            "digest": self.digest,
            "train_id": self.spec.id,
            "train_name": self.spec.name,
            "hop": self.hop,
            "route_length": len(self.spec.route),
            "mode": self.spec.mode,
            "dataset": self.spec.dataset,
            "expires": format_time(self.spec.expires),
            "signers": [
                {"key_id": s.key_id, "role": r, "signer": s.signer}
                for s, r in [(self.creator, "creator"), *((a, "approver") for a in self.approvers)]
            ],
            "previous": self.previous.digest if self.previous else None,
            "checks_passed": list(self.passed),
        }


def verify_train(
    client: RegistryClient,
    reference: Reference,
    *,
    station_id: str,
    station_key: PublicKey,
    trust: Trust,
    already_done: Callable[[str], bool] | None = None,
    rerun: bool = False,
    retry: tuple[str, int] | None = None,
    now: datetime | None = None,
    on_check: Callable[[str], None] | None = None,
) -> VerifiedTrain:
    """Run every check of the Verify step on ``reference``; return the pinned, verified train.

    ``already_done(digest)`` says whether this station completed the digest before (from its
    audit log); ``rerun`` lets staff run it again on purpose. ``retry`` is an explicit retry
    the central service announced (its ``retry-<k>-<n>`` tag and ``k``): the hop must be hop
    ``k``, and ``already_done`` then says whether this retry tag ran before (each runs once).
    """
    passed: list[str] = []

    def ok(check: str) -> None:
        passed.append(check)
        if on_check is not None:
            on_check(check)

    # 1. Resolve: everything after this uses the digest.
    digest = client.resolve(reference.repository, reference.reference)
    if reference.digest is not None and reference.digest != digest:
        raise VerificationError(
            f"{reference} resolves to another digest", digest=digest, check="resolve"
        )
    ref = reference.with_digest(digest)
    ok("resolve")

    # 2. The spec (expiry is its own check below).
    try:
        spec, _ = read_spec(client, ref, check_expiry=False)
    except SpecError as exc:
        raise InvalidSpecError(str(exc), digest=digest, details=exc.problems) from None
    manifest = client.get_manifest(ref.repository, digest)
    ok("spec")

    # 3. Signatures: creator by a trusted creator key that is the spec's creator key.
    keys = {k.key_id: k for k in [*trust.creators, *trust.approvers]}
    creator_ids = {k.key_id for k in trust.creators}
    signers = verify(client, ref, list(keys.values()))  # UnsignedError / Untrusted… if none
    ok("signed")
    creator = next(
        (s for s in signers if s.key_id in creator_ids and s.key_id == spec.creator.key), None
    )
    if creator is None:
        named = spec.creator.key
        why = (
            "the spec's creator key is not in trusted_creators"
            if named not in creator_ids
            else "the spec's creator has not signed it"
        )
        raise UntrustedCreatorError(
            f"no creator signature by a trusted key: {why}", digest=digest, key_id=named
        )
    ok("creator")

    # 4. Approvals: distinct trusted approver keys, the creator's own key not counted.
    approver_ids = {k.key_id for k in trust.approvers} - {creator.key_id}
    approvals: dict[str, Signer] = {}
    for s in signers:
        if s.key_id in approver_ids:
            approvals.setdefault(s.key_id, s)
    if len(approvals) < trust.required_approvals:
        raise TooFewApprovalsError(
            f"{len(approvals)} approval(s) by trusted approver keys, "
            f"{trust.required_approvals} required",
            digest=digest,
            key_id=next(iter(approvals), None),
        )
    ok("approvals")

    # 5. This station is on the route, once, with its own key.
    positions = [i for i, r in enumerate(spec.route) if r.station == station_id]
    if len(positions) != 1:
        raise NotOnRouteError(
            f"station {station_id!r} is not on the route "
            f"({', '.join(r.station for r in spec.route)})",
            digest=digest,
            key_id=station_key.key_id,
        )
    hop = positions[0]
    ok("route")
    route_key = public_key_from_pem(spec.route[hop].key, f"route[{hop}].key")
    if route_key.key_id != station_key.key_id:
        raise RouteKeyMismatchError(
            f"the route names key {route_key.key_id} for {station_id}, "
            f"but this station's key is {station_key.key_id}",
            digest=digest,
            key_id=route_key.key_id,
        )
    ok("route-key")

    # 6. Not expired; not already done here.
    moment = now or datetime.now(UTC)
    if spec.is_expired(moment):
        raise ExpiredError(
            f"the train expired at {format_time(spec.expires)}", digest=digest, key_id=None
        )
    ok("expired")
    if retry is not None:
        tag, retry_hop = retry
        if retry_hop != hop:
            raise AlreadyDoneError(
                f"{tag} retries hop {retry_hop}, but station {station_id} is hop {hop}",
                digest=digest,
            )
        if already_done is not None and already_done(digest):
            raise AlreadyDoneError(
                f"station {station_id} already ran {tag} of this train (each retry runs once)",
                digest=digest,
            )
    elif already_done is not None and not rerun and already_done(digest):
        raise AlreadyDoneError(
            f"station {station_id} already completed this train (rerun it on purpose to repeat)",
            digest=digest,
        )
    ok("already-done")

    # 7. Sequential, k > 0: the previous hops form a chain.
    chain: list[AcceptedResult] = []
    previous = None
    if spec.mode == "sequential" and hop > 0:
        chain = verify_chain(client, ref, spec, upto=hop)
        previous = chain[-1]
    ok("chain")
    return VerifiedTrain(
        ref=ref,
        spec=spec,
        manifest=manifest,
        hop=hop,
        creator=creator,
        approvers=list(approvals.values()),
        previous=previous,
        chain=chain,
        passed=passed,
    )
