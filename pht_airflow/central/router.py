"""The router: moves a train between station projects as results arrive.

A train enters by ``pht train submit`` (an API call with the creator's public key) or by a
push to the incoming project once keys are registered with :meth:`Router.add_trusted_key`:
the push is submitted when the creator the spec names and ``incoming_approvals`` registered
approvers have signed it (approvals are signature tags that webhooks do not announce, so
reconciliation rechecks waiting pushes).

It holds no key that can read a result and cannot forge a station's signature: it only
checks signatures (the creator's at submission, each station's on its result, against the
route keys inside the signed spec) and copies artifacts (mounts, no layer bytes move).

Every input may arrive twice, late or never: registry events are deduplicated on
repository + tag + digest, each action checks the state it expects first, and
:meth:`Router.reconcile` compares the registry with the database to resume whatever a lost
webhook stalled and to fail hops that took too long. A station reports a hop's
final outcome at once, signed with its key (:meth:`Router.station_failure`): ``failed``,
``rejected`` (a person at the station refused to run the train) or ``withheld`` (a person
refused to release its output). Such a hop ends a sequential train with that outcome as its
status (``rejected at station X by Y: reason`` / ``withheld by the station X: reason`` in
the timeline), earlier hops' results staying where they are; a parallel train goes on, and
its delivered results reach the outbox once every station has delivered or ended (the train
ends ``rejected``/``withheld``/``failed`` only if none delivered). A station removed from
the directory (:meth:`Router.remove_station`) takes no new trains: a route naming it is
refused, and a hop about to be sent to it or in flight at it fails, saying so.

Our stations push a result by digest, sign it, and tag it ``result-<k>`` last, so the
announcement of the tag finds the signature in place. A result from a producer that tags
before signing may be announced before its signature, so an unsigned result is "not yet",
never a failure: the router waits a moment for the
signature (``signature_wait``) and otherwise leaves the hop to reconciliation, without
recording the event as handled. A result whose signatures are there but wrong fails the
train at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import (
    ChainError,
    ConfigError,
    NotFoundError,
    PhtError,
    RegistryError,
    VerificationError,
)
from ..hopreport import DECISIONS, MAX_BY, MAX_REASON, HopReport, Outcome, read_report
from ..keys import public_key_from_pem
from ..oci import Reference, RegistryClient
from ..protocol import (
    INCOMING_PROJECT,
    OUTBOX_PROJECT,
    RESULT_TAG,
    RETRY_TAG,
    TRAIN_TAG,
    result_tag,
    retry_tag,
)
from ..results import accept_hop, find_results
from ..signing import signature_tag, verify
from ..spec import TrainSpec, read_spec
from ..text import safe_text
from ..webhooks import PushEvent
from .db import EventRow, HopRow, IncomingRow, StationRow, TrainRow, TrustedKeyRow, utcnow
from .directory import Directory, RouterError

log = logging.getLogger(__name__)

HOP_ENDED = ("done", "failed", "rejected", "withheld")
"""Hop states after which a hop is not in flight (a parallel train ends when all are)."""


class Copier(Protocol):
    """What the router needs from a registry admin (see :mod:`.registry`)."""

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> Any: ...


class Router(Directory):
    """Routing logic over a database session factory, a registry client and a copier.

    It is the station directory too (:class:`.directory.Directory`): routing reads the route's
    stations from it.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: RegistryClient,
        copier: Copier,
        *,
        incoming_project: str = INCOMING_PROJECT,
        outbox_project: str = OUTBOX_PROJECT,
        hop_timeout: timedelta = timedelta(hours=24),
        signature_wait: float = 2.0,
        incoming_approvals: int = 1,
    ) -> None:
        super().__init__(sessions)
        self.client = client
        self.copier = copier
        self.incoming = incoming_project
        self.outbox = outbox_project
        self.hop_timeout = hop_timeout
        self.signature_wait = signature_wait
        self.incoming_approvals = incoming_approvals
        self._lock = threading.RLock()  # one routing decision at a time

    def incoming_pushes(self) -> dict[str, Any]:
        """Pushes waiting for signatures, and the latest refused pushes with the reason."""
        with self.sessions() as s:
            waiting = s.scalars(select(IncomingRow).order_by(IncomingRow.first_seen)).all()
            refused = s.scalars(
                select(EventRow)
                .where(EventRow.kind == "refused")
                .order_by(EventRow.id.desc())
                .limit(50)
            ).all()
            return {
                "waiting": [r.to_dict() for r in waiting],
                "refused": [e.to_dict() for e in refused],
            }

    # --- trains ---------------------------------------------------------------------

    def submit(self, reference: str, creator_key_pem: str) -> dict[str, Any]:
        """Register a train after verifying its creator signature; send it on its way."""
        return self._submit(reference, creator_key_pem)[0]

    def _submit(self, reference: str, creator_key_pem: str) -> tuple[dict[str, Any], bool]:
        """:meth:`submit`, and whether this call registered the train (False: submitted
        before with the same digest, by a duplicate or concurrent request)."""
        ref = Reference.parse(reference)
        if not ref.repository.startswith(self.incoming + "/"):
            raise RouterError(f"submit trains from the {self.incoming!r} project, not {ref}")
        digest = self.client.resolve(ref.repository, ref.reference)
        pinned = ref.with_digest(digest)
        spec, _ = read_spec(self.client, pinned)
        creator = public_key_from_pem(creator_key_pem, "creator key")
        if creator.key_id != spec.creator.key:
            raise RouterError(
                f"the creator key {creator.key_id} is not the key the spec names "
                f"({spec.creator.key})"
            )
        verify(self.client, pinned, [creator])  # raises if the creator did not sign it
        if ref.repository != f"{self.incoming}/{spec.id}":
            raise RouterError(f"the train {spec.id} must be pushed as {self.incoming}/{spec.id}")
        try:
            with self._lock, self.sessions.begin() as s:
                stations = {r.id: r for r in s.scalars(select(StationRow))}
                _check_route(spec, stations)
                existing = s.get(TrainRow, spec.id)
                if existing is not None:
                    if existing.digest != digest:
                        raise RouterError(f"train {spec.id} was submitted with another digest", 409)
                    return existing.to_dict(), False
                train = TrainRow(
                    id=spec.id,
                    digest=digest,
                    name=spec.name,
                    mode=spec.mode,
                    route=[e.station for e in spec.route],
                    spec=spec.to_dict(),
                    source_repository=ref.repository,
                    status="routing",
                )
                train.hops = [
                    HopRow(hop=i, station=e.station, state="pending")
                    for i, e in enumerate(spec.route)
                ]
                s.add(train)
                self._event(
                    s, train, "submitted", f"verified creator signature by {creator.key_id}"
                )
                # Insert before any copy: the train's primary key decides, in the database,
                # which of several concurrent submissions (other processes too) registers it,
                # and only that one copies (two copies of one train at once can collide in
                # the registry). The losers wait here and get the IntegrityError below.
                s.flush()
                first = [0] if spec.mode == "sequential" else list(range(len(spec.route)))
                for hop in first:
                    self._send(s, train, hop, ref.repository)
                s.flush()  # column defaults (created, updated) are filled in at flush
                return train.to_dict(), True
        except IntegrityError:
            # Another process registered the same train between our look and our insert.
            with self.sessions() as s:
                existing = s.get(TrainRow, spec.id)
                if existing is None:
                    raise
                log.info("train %s was registered by another request meanwhile", spec.id)
                if existing.digest != digest:
                    raise RouterError(
                        f"train {spec.id} was submitted with another digest", 409
                    ) from None
                return existing.to_dict(), False

    def train(self, train_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(TrainRow, train_id)
            if row is not None:
                return row.to_dict()
            repository = f"{self.incoming}/{train_id}"
            waiting = s.scalars(
                select(IncomingRow).where(IncomingRow.repository == repository)
            ).first()
            if waiting is not None:
                raise RouterError(
                    f"no train {train_id!r} yet: {repository} was pushed and is waiting for "
                    f"{waiting.waiting_for}",
                    404,
                )
            refusal = s.scalars(
                select(EventRow)
                .where(EventRow.kind == "refused", EventRow.message.startswith(repository + "@"))
                .order_by(EventRow.id.desc())
            ).first()
            if refusal is not None:
                raise RouterError(
                    f"no train {train_id!r}: the push was refused: {refusal.message}", 404
                )
            raise RouterError(f"no train {train_id!r}", 404)

    def trains(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(TrainRow).order_by(TrainRow.created.desc()))
            return [{k: v for k, v in r.to_dict().items() if k != "events"} for r in rows.all()]

    def retry(self, train_id: str, hop: int) -> dict[str, Any]:
        """Send hop ``hop`` again (after a failure or a lost copy)."""
        with self._lock, self.sessions.begin() as s:
            train = s.get(TrainRow, train_id)
            if train is None:
                raise RouterError(f"no train {train_id!r}", 404)
            if not 0 <= hop < len(train.route):
                raise RouterError(f"hop {hop} is not on the route")
            if train.mode == "sequential" and hop > 0 and train.hops[hop - 1].state != "done":
                raise RouterError(f"hop {hop - 1} has no accepted result yet; retry that first")
            source = self._source_for(s, train, hop)
            train.status, train.reason = "routing", None
            self._event(s, train, "retry", f"hop {hop} sent again on request")
            self._send(s, train, hop, source)
            if train.status == "routing":
                self._announce_retry(s, train, hop)
            s.flush()
            return train.to_dict()

    def _announce_retry(self, s: Session, train: TrainRow, hop: int) -> None:
        """Tag the train ``retry-<hop>-<n>`` in the station's project (the next free ``n``).

        The copy of a train already in the project writes nothing, so neither the registry's
        webhook nor a polling station would see anything new; the retry tag is a push they
        both see, and the station runs the hop once per retry tag (``protocol.RETRY_TAG``).
        """
        target = f"{self._project(s, train.hops[hop].station)}/{train.id}"
        try:
            used = [RETRY_TAG.match(t) for t in self.client.list_tags(target)]
            n = 1 + max((int(m.group(2)) for m in used if m and int(m.group(1)) == hop), default=0)
            manifest = self.client.get_manifest(target, train.digest)
            tag = retry_tag(hop, n)
            self.client.put_manifest(target, tag, manifest.raw, manifest.media_type)
        except PhtError as exc:
            self._fail(s, train, f"tagging the retry of hop {hop} in {target} failed: {exc}")
            return
        self._event(s, train, "retry", f"hop {hop} announced as {target}:{tag}")

    def remove_station(self, station_id: str) -> dict[str, Any]:
        """Mark a station removed (:meth:`Directory.remove_station`) and fail its hops in
        flight: its robot is revoked, so it could not deliver them. A sequential train fails;
        a parallel one goes on without it."""
        with self._lock, self.sessions.begin() as s:
            station = self._mark_removed(s, station_id)
            routing = s.scalars(select(TrainRow).where(TrainRow.status == "routing")).all()
            for train in routing:
                for row in train.hops:
                    if row.station == station.id and row.state == "sent":
                        row.state = "failed"
                        self._hop_failed(s, train, row.hop, _removed_reason(row.hop, station))
                        break
            s.flush()
            return station.to_dict()

    def station_failure(self, train_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A station's signed report of its hop's final outcome (:mod:`pht_airflow.hopreport`):
        failed, rejected by a person at the station, or output withheld by one.

        Checked against the station's key in the directory. A report for a hop that is not
        in flight (already done, ended, or sent again after the report was made) changes
        nothing, so a duplicated or replayed report is harmless. What each outcome does to
        the train: :meth:`_hop_ended`.
        """
        if report.get("train_id") != train_id:
            raise RouterError("the report names another train than the URL", 422)
        with self._lock, self.sessions.begin() as s:
            train = s.get(TrainRow, train_id)
            if train is None:
                raise RouterError(f"no train {train_id!r}", 404)
            station_id = report.get("station")
            station = s.get(StationRow, station_id) if isinstance(station_id, str) else None
            if station is None or station_id not in train.route:
                raise RouterError(f"station {station_id!r} is not on the route of {train_id}", 422)
            said = read_report(report, public_key_from_pem(station.key_pem))
            if said.train_digest not in (None, train.digest):
                raise RouterError(f"the report is about another digest than {train_id}'s", 422)
            hop = train.route.index(station.id)
            if said.hop not in (None, hop):
                raise RouterError(f"{station.id} is hop {hop}, not hop {said.hop}", 422)
            row = train.hops[hop]
            if train.status != "routing" or row.state != "sent":
                return {"accepted": False, "why": f"hop {hop} is {row.state}, not in flight"}
            if row.sent_at is not None and said.made < row.sent_at:
                return {"accepted": False, "why": f"the report predates hop {hop}'s last send"}
            self._hop_ended(s, train, hop, said.outcome, _outcome_reason(hop, station.id, said))
            s.flush()  # column defaults (event times) are filled in at flush
            return {"accepted": True, "train": train.to_dict()}

    # --- registry events -------------------------------------------------------------

    def handle_push(self, event: PushEvent) -> str | None:
        """Act on a manifest push; returns what was done, None for duplicates and noise."""
        project, _, rest = event.repository.partition("/")
        tag = event.tag or ""
        if project == self.incoming and tag == TRAIN_TAG and rest and "/" not in rest:
            return self._on_incoming(event.repository, event.digest, wait=True)
        m = RESULT_TAG.match(tag)
        if m is None or not rest:
            return None
        hop = int(m.group(1))
        with self.sessions() as s:  # a duplicate is answered by one indexed read, no lock
            if s.scalar(select(EventRow.id).where(EventRow.dedup_key == event.event_id)):
                return None
        if self._awaits(rest, project, hop) and not self._signature_arrives(
            event.repository, event.digest
        ):
            # Not recorded as handled: a redelivery or reconciliation routes it once signed.
            log.info("%s has no signature yet; left to reconciliation", safe_text(event.event_id))
            return "waiting for the station's signature"
        with self._lock, self.sessions.begin() as s:
            try:
                with s.begin_nested():
                    s.add(EventRow(kind="push", message=event.event_id, dedup_key=event.event_id))
            except IntegrityError:
                return None  # delivered before
            return self._on_result(s, rest, project, hop, event.digest, "webhook")

    def _on_incoming(self, repository: str, digest: str, *, wait: bool) -> str | None:
        """A train pushed to the incoming project: submit it once it is signed.

        Submitted when the creator the spec names (a ``creator`` key registered here; keys
        come from this directory, never from the train) and ``incoming_approvals`` distinct
        ``approver`` keys registered here have signed it. Until then it waits in the
        ``incoming`` table, rechecked by reconciliation (approver signatures are tags the
        webhooks do not announce), until the train expires.
        """
        train_id = repository.rsplit("/", 1)[-1]
        with self.sessions() as s:
            rows = [(r.role, r.key_id, r.key_pem) for r in s.scalars(select(TrustedKeyRow))]
            if not any(role == "creator" for role, _, _ in rows):
                return None  # submission by push is off until a creator key is registered
            existing = s.get(TrainRow, train_id)
            submitted = existing is not None and existing.digest == digest
        if submitted:
            self._forget_incoming(repository, digest)
            return None  # submitted before
        pinned = Reference(self.client.registry, repository, digest=digest)
        try:
            spec, _ = read_spec(self.client, pinned)
        except NotFoundError:
            self._forget_incoming(repository, digest)
            return None  # deleted since the push
        except RegistryError:
            raise  # the registry is unwell: the delivery or the next pass tries again
        except PhtError as exc:
            return self._refuse(repository, digest, f"no valid train spec: {exc}")
        creator_pem = next(
            (pem for role, kid, pem in rows if role == "creator" and kid == spec.creator.key),
            None,
        )
        if creator_pem is None:
            return self._refuse(
                repository,
                digest,
                f"the creator key {spec.creator.key} is not registered with the central "
                "service (pht central keys add --role creator), so a push cannot submit it",
            )
        creator = public_key_from_pem(creator_pem)
        approvers = [
            public_key_from_pem(pem)
            for role, kid, pem in rows
            if role == "approver" and kid != creator.key_id
        ]
        if wait:
            self._signature_arrives(repository, digest)
        try:
            signers = verify(self.client, pinned, [creator, *approvers])
        except VerificationError:
            signers = []  # unsigned, or only by keys this directory does not know
        approvals = {x.key_id for x in signers} & {k.key_id for k in approvers}
        missing = []
        if not any(x.key_id == creator.key_id for x in signers):
            missing.append("its creator's signature")
        if len(approvals) < self.incoming_approvals:
            missing.append(f"approvals ({len(approvals)} of {self.incoming_approvals})")
        if missing:
            return self._wait_incoming(repository, digest, " and ".join(missing))
        try:
            _, created = self._submit(f"{self.client.registry}/{repository}@{digest}", creator_pem)
        except (RouterError, VerificationError) as exc:
            return self._refuse(repository, digest, str(exc))
        self._forget_incoming(repository, digest)
        return "submitted" if created else None  # None: a concurrent delivery submitted it

    @staticmethod
    def _waiting_row(s: Session, repository: str, digest: str) -> IncomingRow | None:
        return s.scalars(
            select(IncomingRow).where(
                IncomingRow.repository == repository, IncomingRow.digest == digest
            )
        ).first()

    def _wait_incoming(self, repository: str, digest: str, waiting_for: str) -> str:
        with self._lock, self.sessions.begin() as s:
            row = self._waiting_row(s, repository, digest)
            if row is None:
                try:
                    with s.begin_nested():  # another process may have added it meanwhile
                        row = IncomingRow(repository=repository, digest=digest)
                        s.add(row)
                except IntegrityError:
                    row = self._waiting_row(s, repository, digest)
            if row is not None:
                row.waiting_for = waiting_for
        return f"waiting for {waiting_for}"

    def _refuse(self, repository: str, digest: str, reason: str) -> str:
        log.warning(
            "refused %s@%s: %s", safe_text(repository), safe_text(digest), safe_text(reason)
        )
        message = f"{repository}@{digest}: {reason}"
        with self._lock, self.sessions.begin() as s:
            try:
                with s.begin_nested():  # one refusal event per push and reason
                    key = "refused:" + hashlib.sha256(message.encode()).hexdigest()
                    s.add(EventRow(kind="refused", message=message, dedup_key=key))
            except IntegrityError:
                pass
        self._forget_incoming(repository, digest)
        return "refused"

    def _forget_incoming(self, repository: str, digest: str) -> None:
        with self.sessions.begin() as s:
            row = self._waiting_row(s, repository, digest)
            if row is not None:
                s.delete(row)

    def _reconcile_incoming(self) -> int:
        """Submit waiting pushes that are signed by now; refuse those whose train expired."""
        actions = 0
        with self.sessions() as s:
            waiting = [(r.repository, r.digest) for r in s.scalars(select(IncomingRow))]
        for repository, digest in waiting:
            try:
                outcome = self._on_incoming(repository, digest, wait=False)
            except PhtError as exc:
                log.warning(
                    "reconcile: cannot check %s@%s: %s",
                    safe_text(repository),
                    safe_text(digest),
                    safe_text(exc),
                )
                continue
            if outcome in ("submitted", "refused"):
                actions += 1
        return actions

    def _awaits(self, train_id: str, project: str, hop: int) -> bool:
        """True if ``hop`` of a routing train was sent to ``project`` and is not done."""
        with self.sessions() as s:
            train = s.get(TrainRow, train_id)
            if train is None or train.status != "routing" or not 0 <= hop < len(train.hops):
                return False
            row = train.hops[hop]
            station = s.get(StationRow, row.station)
            return row.state == "sent" and station is not None and station.project == project

    def _signed(self, repository: str, digest: str) -> bool:
        """True if ``digest`` has a signature manifest in ``repository`` (valid or not)."""
        try:
            self.client.resolve(repository, signature_tag(digest))
        except NotFoundError:
            return False
        return True

    def _signature_arrives(self, repository: str, digest: str) -> bool:
        """Wait up to ``signature_wait`` seconds for the station to sign its result.

        A station signs a few requests after its push, so the first looks come quickly
        (10 ms, doubling to 200 ms). A retryable registry error while looking counts as "not
        yet": distribution answers 500 to a tag read while it writes that tag.
        """
        deadline = time.monotonic() + self.signature_wait
        pause = 0.01
        while True:
            try:
                if self._signed(repository, digest):
                    return True
            except RegistryError as exc:
                if not exc.retryable:
                    raise
                log.debug("looking for the signature of %s: %s", safe_text(digest), safe_text(exc))
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)

    def _on_result(
        self, s: Session, train_id: str, project: str, hop: int, digest: str, via: str
    ) -> str | None:
        train = s.get(TrainRow, train_id)
        if train is None or train.status not in ("routing",):
            return None
        if not 0 <= hop < len(train.hops):
            return None
        row = train.hops[hop]
        station = s.get(StationRow, row.station)
        if station is None or station.project != project or row.state == "done":
            return None
        spec = TrainSpec.from_dict(train.spec, check_expiry=False)
        repo = f"{project}/{train.id}"
        if not self._signed(repo, digest):
            return None  # pushed, not signed yet: the hop is still running (see module doc)
        pinned = Reference(self.client.registry, repo, digest=train.digest)
        previous = train.hops[hop - 1].result_digest if train.mode == "sequential" and hop else None
        try:
            candidates = [c for c in find_results(self.client, pinned) if c.tag_hop == hop]
            accepted = accept_hop(self.client, pinned, spec, candidates, hop, previous)
        except VerificationError as exc:
            # A ChainError's reason already names the hop and the station.
            where = "" if isinstance(exc, ChainError) else f"hop {hop} ({row.station}): "
            self._fail(s, train, where + exc.reason)
            return "failed"
        if accepted is None:
            return None
        row.state, row.result_digest, row.done_at = "done", accepted.digest, utcnow()
        self._event(
            s, train, "result", f"hop {hop} ({row.station}) delivered {accepted.digest} ({via})"
        )
        if train.mode == "sequential":
            if hop + 1 < len(train.hops):
                self._send(s, train, hop + 1, repo)
                return f"sent hop {hop + 1}"
            self._to_outbox(s, train, [repo])
            return "done"
        if all(h.state in HOP_ENDED for h in train.hops):
            done = [h for h in train.hops if h.state == "done"]
            repos = [f"{self._project(s, h.station)}/{train.id}" for h in done]
            self._to_outbox(s, train, repos)
            return "done"
        return "collected"

    # --- reconciliation --------------------------------------------------------------

    def reconcile(self) -> int:
        """Resume what lost webhooks stalled and fail hops over time; return actions taken."""
        actions = self._reconcile_incoming()
        with self._lock, self.sessions.begin() as s:
            for train in s.scalars(select(TrainRow).where(TrainRow.status == "routing")).all():
                for row in train.hops:
                    if row.state != "sent":
                        continue
                    project = self._project(s, row.station)
                    try:
                        tags = self.client.list_tags(f"{project}/{train.id}")
                    except PhtError as exc:
                        log.warning(
                            "reconcile: cannot list %s/%s: %s",
                            safe_text(project),
                            train.id,
                            safe_text(exc),
                        )
                        continue
                    if result_tag(row.hop) in tags:
                        digest = self.client.resolve(f"{project}/{train.id}", result_tag(row.hop))
                        if self._on_result(s, train.id, project, row.hop, digest, "reconcile"):
                            actions += 1
                        if train.status != "routing":
                            break
                        continue
                    if row.sent_at and utcnow() - row.sent_at > self.hop_timeout:
                        self._hop_failed(
                            s, train, row.hop, f"hop {row.hop} ({row.station}) timed out"
                        )
                        actions += 1
                        if train.status != "routing":
                            break
        return actions

    # --- helpers --------------------------------------------------------------------

    def _project(self, s: Session, station_id: str) -> str:
        row = s.get(StationRow, station_id)
        if row is None:
            raise ConfigError(f"station {station_id} is no longer in the directory")
        return row.project

    def _source_for(self, s: Session, train: TrainRow, hop: int) -> str:
        if train.mode == "sequential" and hop > 0:
            return f"{self._project(s, train.hops[hop - 1].station)}/{train.id}"
        return train.source_repository

    def _send(self, s: Session, train: TrainRow, hop: int, source: str) -> None:
        row = train.hops[hop]
        station = s.get(StationRow, row.station)
        if station is not None and station.removed is not None:
            row.state = "failed"
            self._hop_failed(s, train, hop, _removed_reason(hop, station))
            return
        target = f"{self._project(s, row.station)}/{train.id}"
        try:
            report = self.copier.copy_train(source, target, train.digest)
        except (PhtError, NotFoundError) as exc:
            self._fail(s, train, f"copy to {target} failed: {exc}")
            return
        row.state, row.sent_at, row.note = "sent", utcnow(), None
        self._event(s, train, "sent", f"hop {hop} -> {target} ({_describe(report)})")

    def _to_outbox(self, s: Session, train: TrainRow, sources: Sequence[str]) -> None:
        target = f"{self.outbox}/{train.id}"
        for source in sources:
            report = self.copier.copy_train(source, target, train.digest)
            self._event(s, train, "outbox", f"{source} -> {target} ({_describe(report)})")
        train.status = "done"
        self._event(s, train, "done", f"every result is in {target}")

    def _hop_failed(self, s: Session, train: TrainRow, hop: int, reason: str) -> None:
        """One hop failed (:meth:`_hop_ended` with the outcome ``failed``)."""
        self._hop_ended(s, train, hop, "failed", reason)

    def _hop_ended(
        self, s: Session, train: TrainRow, hop: int, outcome: Outcome, reason: str
    ) -> None:
        """One hop ended without a result: ``failed``, ``rejected`` (a person at the station
        refused to run it) or ``withheld`` (a person refused to release its output).

        Sequential: the train ends with the hop's outcome as its status; earlier hops'
        results stay in their stations' projects and nothing reaches the outbox. Parallel:
        the hop ends in that state and the others go on; once every hop has delivered or
        ended, the delivered results go to the outbox (status ``done``, ``reason`` naming
        each hop that did not deliver). If none delivered, the train ends ``rejected`` if a
        station rejected it, else ``withheld`` if one withheld its output, else ``failed``.
        """
        row = train.hops[hop]
        row.state, row.note = outcome, reason
        if train.mode == "sequential":
            self._end(s, train, outcome, reason)
            return
        self._event(s, train, "hop-failed" if outcome == "failed" else outcome, reason)
        train.reason = f"{train.reason}; {reason}" if train.reason else reason
        if any(h.state not in HOP_ENDED for h in train.hops):
            return
        done = [h for h in train.hops if h.state == "done"]
        if not done:
            states = {h.state for h in train.hops}
            status: Outcome = next((o for o in DECISIONS if o in states), "failed")
            why = "every hop failed: " if status == "failed" else "no hop delivered a result: "
            self._end(s, train, status, why + train.reason)
            return
        self._to_outbox(s, train, [f"{self._project(s, h.station)}/{train.id}" for h in done])

    def _fail(self, s: Session, train: TrainRow, reason: str) -> None:
        self._end(s, train, "failed", reason)

    def _end(self, s: Session, train: TrainRow, status: Outcome, reason: str) -> None:
        """The train ends without reaching the outbox; hops still in flight fail."""
        train.status, train.reason = status, reason
        for row in train.hops:
            if row.state == "sent":
                row.state, row.note = "failed", reason
        self._event(s, train, status, reason)

    @staticmethod
    def _event(s: Session, train: TrainRow, kind: str, message: str) -> None:
        log.info("train %s: %s: %s", train.id, kind, safe_text(message, limit=2000))
        s.add(EventRow(train=train, kind=kind, message=message))


def _outcome_reason(hop: int, station: str, said: HopReport) -> str:
    """The timeline's line for a station's report: who rejected or withheld and why (as
    safe one-line text), or what failed."""
    if said.outcome == "failed":
        what = f"[{said.check}] " if said.check else ""
        detail = said.message or said.error or "no reason given"
        return f"hop {hop} ({station}) failed at the station: {what}{detail}"
    by = safe_text(said.by, limit=MAX_BY)
    reason = safe_text(said.reason, limit=MAX_REASON)
    if said.outcome == "rejected":
        return f"hop {hop}: rejected at station {station} by {by}: {reason}"
    return f"hop {hop}: withheld by the station {station}: {reason} (decided by {by})"


def _removed_reason(hop: int, station: StationRow) -> str:
    when = station.removed.isoformat(timespec="seconds") + "Z" if station.removed else "?"
    return (
        f"hop {hop} ({station.id}): the station was removed from the directory at {when} "
        "and takes no new trains"
    )


def _check_route(spec: TrainSpec, stations: dict[str, StationRow]) -> None:
    """Every route entry must be the directory's entry for its station: the same signing key
    and the same age recipient. A route that lists a station with another recipient would
    have that station encrypt its result for someone else (the researcher, say), so the
    submission is refused, naming the station and the field."""
    missing = [e.station for e in spec.route if e.station not in stations]
    if missing:
        raise RouterError(f"route station(s) not in the directory: {', '.join(missing)}", 422)
    removed = [e.station for e in spec.route if stations[e.station].removed is not None]
    if removed:
        raise RouterError(
            f"route station(s) removed from the directory, taking no new trains: "
            f"{', '.join(removed)}; rebuild the train without them",
            422,
        )
    for i, entry in enumerate(spec.route):
        known = stations[entry.station]
        where = f"route[{i}] ({entry.station})"
        if public_key_from_pem(entry.key, f"{where} key").key_id != known.key_id:
            raise RouterError(
                f"{where}: the route key for {entry.station} differs from the directory's "
                f"(key {known.key_id}); rebuild the train from the directory",
                422,
            )
        if entry.recipient.strip() != known.recipient.strip():
            raise RouterError(
                f"{where}: the route recipient for {entry.station} differs from the "
                f"directory's ({known.recipient}); rebuild the train from the directory",
                422,
            )


def _describe(report: Any) -> str:
    if report is None:
        return "copied"
    parts = []
    for name in ("manifests", "blobs_mounted", "blobs_streamed", "bytes_streamed"):
        value = getattr(report, name, None)
        if value is not None:
            parts.append(f"{name.replace('_', ' ')} {value}")
    return ", ".join(parts) or "copied"
