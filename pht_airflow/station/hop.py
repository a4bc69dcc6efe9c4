"""A station's hop as plain Python: verify → approve? → run → check_output → release? → seal →
record.

The same functions back the Airflow tasks (``pht_airflow.airflow.operators``) and
``pht station run`` (for operators debugging a train without the scheduler). Each step
returns a JSON-safe summary (no secrets, no data) that the next step takes as input, so an
Airflow XCom never carries anything sensitive.

``run_step`` decrypts the input, runs the sandbox, checks the output against the station's
disclosure control (:mod:`.disclosure`) while it has the plaintext, and leaves it only
encrypted in its work folder (:mod:`.rest`): to the station's own age recipient, and (unless
blocked) to the hop's recipients as the result's layer. ``check_step`` applies the verdicts;
``seal_step`` pushes that layer, signs and attests. Neither decrypts anything (unless the
disclosure policy changed since the run), so the station's age identity is opened at most once
per hop. Plaintext exists only inside one step's private, wiped folder.
Every step is idempotent: a valid result of this hop already in the registry is returned
instead of running or pushing again, and an output already resting is not made again, so a
retried push never re-runs the train.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..central_client import CentralClient
from ..errors import (
    AlreadyDoneError,
    AuditLogError,
    ConfigError,
    KeyFileError,
    PhtError,
    PolicyError,
    RegistryAuthError,
    RegistryError,
    VerificationError,
)
from ..hopreport import report_from_record
from ..oci import Reference, RegistryClient
from ..protocol import RETRY_TAG
from ..results import accept_hop, find_results, open_result, seal
from ..text import safe_text
from . import rest
from .active import DuplicateRunError
from .audit import AuditLog, hop_record
from .card import card_facts
from .config import StationConfig
from .data import data_view
from .disclosure import DisclosureReport, block_message, check_output
from .sandbox import run_train
from .sweep import HOP_PREFIX, open_work, sweep
from .sweep import wipe_folder as _wipe
from .verify import Trust, VerifiedTrain, check_statement, verify_train

log = logging.getLogger(__name__)

Log = Callable[[str], None]


def _say(logger: Log | None, message: str) -> None:
    message = safe_text(message, limit=4000)  # names and errors from the train or registry
    if logger is not None:
        logger(message)
    else:
        log.info("%s", message)


def registry_client(config: StationConfig) -> RegistryClient:
    """A client for the station's registry with its credentials."""
    username, password = config.registry.credentials()
    return RegistryClient(
        config.registry.host,
        username=username,
        password=password,
        insecure=config.registry.insecure,
    )


def audit_log(config: StationConfig) -> AuditLog:
    """The station's audit log."""
    return AuditLog(config.audit_log)


class WrongProjectError(PolicyError):
    """A run names a train outside this station's registry project (a station's mistake)."""


def parse_train_reference(config: StationConfig, text: str) -> Reference:
    """Parse a train reference and check it is in this station's own project."""
    ref = Reference.parse(text.strip())
    if ref.registry != config.registry.host:
        raise WrongProjectError(
            f"{text} is not in this station's registry {config.registry.host}; "
            "a station runs only trains copied into its own project"
        )
    if not ref.repository.startswith(config.registry.project + "/"):
        raise WrongProjectError(
            f"{text} is not in this station's project {config.registry.project!r}; "
            "a station runs only trains copied into its own project"
        )
    return ref


def _verify(
    config: StationConfig,
    client: RegistryClient,
    ref: Reference,
    *,
    rerun: bool,
    logger: Log | None,
    retry: tuple[str, int] | None = None,
) -> VerifiedTrain:
    audit = audit_log(config)

    def done(digest: str) -> bool:
        if retry is None:
            return audit.completed(digest, config.station_id)
        return _retried(audit, digest, config.station_id, retry[0])

    trust = Trust(
        creators=config.trust.creators,
        approvers=config.trust.approvers,
        required_approvals=config.trust.required_approvals,
    )
    return verify_train(
        client,
        ref,
        station_id=config.station_id,
        station_key=config.public_key,
        trust=trust,
        already_done=done,
        rerun=rerun,
        retry=retry,
        on_check=lambda check: _say(logger, f"check passed: {check_statement(check)}"),
    )


def _retried(audit: AuditLog, digest: str, station: str, tag: str) -> bool:
    """True if a hop of ``digest`` at ``station`` was recorded for the retry tag ``tag``."""
    return any(
        rec.get("event") == "hop"
        and rec.get("train_digest") == digest
        and rec.get("station") == station
        and _retry_of(str(rec.get("reference") or "")) == tag
        for rec in audit.entries()
    )


def _retry_of(reference: str) -> str | None:
    """The ``retry-<k>-<n>`` tag a train reference names (``…:retry-1-2@sha256:…``), if any."""
    try:
        tag = Reference.parse(reference.strip()).tag
    except PhtError:
        return None
    return tag if tag is not None and RETRY_TAG.match(tag) else None


def _explicit_retry(client: RegistryClient, ref: Reference) -> tuple[str, int] | None:
    """An explicit retry (``protocol.RETRY_TAG``): the reference names a ``retry-<k>-<n>`` tag,
    which must point at the train (the pinned digest, when the reference has one)."""
    tag = ref.tag
    m = RETRY_TAG.match(tag) if tag else None
    if tag is None or m is None:
        return None
    tagged = client.resolve(ref.repository, tag)
    if ref.digest is not None and tagged != ref.digest:
        raise VerificationError(
            f"{tag} points at {tagged}, not at the train {ref.digest}",
            digest=ref.digest,
            check="resolve",
        )
    return tag, int(m.group(1))


def verify_step(
    config: StationConfig,
    reference: str,
    *,
    rerun: bool = False,
    logger: Log | None = None,
    card: bool = False,
) -> dict[str, Any]:
    """The Verify step. Returns the verified train's summary; raises a VerificationError.

    A reference with a ``retry-<k>-<n>`` tag is an explicit retry: it may repeat a hop this
    station completed or refused before, once per retry tag (the audit log remembers).
    With ``card`` the summary has ``card_facts``: what a person approving the run is shown
    (:func:`.card.card_facts`, including the train's own code read from its layers).

    A work folder's filesystem without room for the output cap plus a working margin fails
    here, before anything is written there (:func:`_check_free_space`; ``run`` checks again).
    """
    ref = parse_train_reference(config, reference)
    existing = config.work_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check_free_space(config, existing)
    with registry_client(config) as client:
        retry = _explicit_retry(client, ref)
        verified = _verify(config, client, ref, rerun=rerun, logger=logger, retry=retry)
        if verified.spec.dataset not in config.datasets:
            raise PolicyError(
                f"the train asks for data set {verified.spec.dataset!r}, which this station "
                f"does not offer ({', '.join(sorted(config.datasets))})"
            )
        facts = card_facts(config, verified, client) if card else None
    summary = verified.summary()
    if facts is not None:
        summary["card_facts"] = facts
    _say(logger, f"verified train {verified.spec.id} at hop {verified.hop}: {verified.digest}")
    return summary


def _existing_result(client: RegistryClient, verified: VerifiedTrain) -> dict[str, Any] | None:
    """A valid result of this hop already pushed (by an earlier attempt), if any."""
    candidates = find_results(client, verified.ref)
    previous = verified.previous.digest if verified.previous else None
    try:
        found = accept_hop(client, verified.ref, verified.spec, candidates, verified.hop, previous)
    except VerificationError:
        return None
    if found is None:
        return None
    return {
        "result_digest": found.digest,
        "result_reference": str(found.reference),
        "recipients": found.recipients,
        "reused": True,
    }


def sandbox_name(config: StationConfig, train_id: str, hop: int) -> str:
    """The sandbox container's name for a train's hop at this station (deterministic)."""
    return f"pht-{config.station_id}-{train_id[:8]}-{hop}"


def wipe_work(path: Path) -> None:
    """Remove a hop's private folder (:func:`_wipe`), for a task being killed."""
    _wipe(path)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Room the work folder's filesystem must have beyond the output cap before a train runs
#: (the decrypted input and the resting copy of the output live there too).
WORK_MARGIN = 64 * 1024 * 1024
#: Below this much free space after the run, the filesystem filled while the train ran.
FULL_MARGIN = 1024 * 1024


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _check_free_space(config: StationConfig, work: Path) -> None:
    need = config.limits.output_bytes + WORK_MARGIN
    free = _free_bytes(work)
    if free < need:
        raise PolicyError(
            f"the station's work folder {config.work_dir} has {free} bytes free, less than the "
            f"output cap plus a working margin ({need} bytes); free space there or lower "
            "sandbox.max_output before running trains"
        )


def run_step(
    config: StationConfig,
    verified_summary: dict[str, Any],
    *,
    run_key: str,
    docker_client: Any = None,
    logger: Log | None = None,
    on_work: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """The ``run`` task: decrypt the input, run the train in the sandbox, keep its output
    encrypted to the station itself (:mod:`.rest`) under ``run_key``.

    Idempotent: a hop that already has a valid result in the registry is not run (the
    summary says ``reused``), and an output already resting under ``run_key`` (an earlier
    attempt of this task finished the train) is not made again. ``on_work`` is told the
    hop's private folder as soon as it exists (so a task being killed can wipe it)."""
    import docker

    ref = Reference.parse(verified_summary["reference"])
    with registry_client(config) as client:
        # Re-check at the pinned digest: the registry may have changed since Verify.
        verified = _verify(config, client, ref, rerun=True, logger=None)
        existing = _existing_result(client, verified)
    if existing is not None:
        _say(logger, f"hop {verified.hop} already has a valid result {existing['result_digest']}")
        return {**existing, "exit_code": 0, "container_seconds": 0.0}
    stored = rest.load_facts(config, run_key)
    if stored is not None:
        _say(
            logger,
            "the train already ran in an earlier attempt; its output is kept, not made again",
        )
        return {**stored, "reused": False, "again": True}
    dataset = config.datasets.get(verified.spec.dataset)
    if dataset is None:
        raise PolicyError(f"data set {verified.spec.dataset!r} is not offered here")
    engine = docker_client or docker.from_env(timeout=300)
    sweep(config, engine, logger=logger)  # leftovers of hops that are not running
    for name in rest.sweep_rest(config):  # outputs of hops that ended without record
        _say(logger, f"removed the stale resting output {name}")
    image = f"{ref.registry}/{ref.repository}@{verified.digest}"
    username, password = config.registry.credentials()
    auth = {"username": username, "password": password} if username else None
    # The folder names the image before it is pulled: a sweep keeps a running hop's image.
    work, lock = open_work(config, f"{HOP_PREFIX}{verified.spec.id}-", image=image)
    try:
        if on_work is not None:
            on_work(work)
        _check_free_space(config, work)
        _say(logger, f"pulling {image}")
        try:
            engine.images.pull(
                f"{ref.registry}/{ref.repository}", tag=verified.digest, auth_config=auth
            )
        except docker.errors.APIError as exc:
            raise RegistryError(
                f"the Docker engine could not pull {image}: {exc.explanation}"
            ) from None
        input_dir = work / "input"
        own: str | None = None  # the station's recipient, once its identity is open
        if verified.previous is not None:
            identity = config.load_age_identity()
            own = identity.recipient
            _say(logger, f"decrypting the result of hop {verified.previous.hop}")
            with registry_client(config) as client:
                open_result(client, verified.previous, identity, input_dir)
        else:
            input_dir.mkdir()
        output_dir = work / "output"
        output_dir.mkdir()
        env = {
            "PHT_TRAIN_ID": verified.spec.id,
            "PHT_STATION_ID": config.station_id,
            "PHT_HOP": str(verified.hop),
            "PHT_ROUTE_LENGTH": str(len(verified.spec.route)),
            "PHT_DATASET": verified.spec.dataset,
        }
        started = _now()
        with data_view(dataset, work, log=logger) as view:
            data = view.record()
            _say(logger, f"data set {dataset.name} ({dataset.kind}): {view.digest}")
            try:
                outcome = run_train(
                    engine,
                    image,
                    data_dir=view.path,
                    input_dir=input_dir,
                    output_dir=output_dir,
                    env=env,
                    limits=config.limits,
                    log=logger,
                    name=sandbox_name(config, verified.spec.id, verified.hop),
                )
            except BaseException as exc:
                # The train saw the data even if it failed: the audit record says which.
                with contextlib.suppress(AttributeError, TypeError):
                    exc.pht_data = data  # type: ignore[attr-defined]
                raise
            if _free_bytes(work) < FULL_MARGIN:
                error = PolicyError(
                    "the station's disk filled while the train ran; its output may be cut "
                    "off, so nothing is sealed (free space in the work folder's filesystem)"
                )
                error.pht_data = data  # type: ignore[attr-defined]
                raise error
        _say(logger, f"train exited 0 after {outcome.duration_seconds:.1f} s")
        finished = _now()
        # Checked now, while the plaintext is here: no later task has to decrypt it again.
        report = _check_folder(config, verified.spec.dataset, output_dir, view.rows)
        facts = rest.store_output(
            config,
            run_key,
            output_dir,
            {
                "train_id": verified.spec.id,
                "hop": verified.hop,
                "exit_code": outcome.exit_code,
                "container_seconds": round(outcome.duration_seconds, 3),
                "started": started,
                "finished": finished,
                "data": data,
                "dataset_rows": view.rows,
                "disclosure": report.summary(),
                "disclosure_inputs": _disclosure_inputs(config, verified.spec.dataset),
            },
            # The identity is opened at most once per run (a passphrase costs a scrypt run).
            recipient=own,
            # The result's layer, made now (seal then decrypts nothing); none for a blocked
            # output, which is never sealed.
            payload_recipients=(
                None
                if report.verdict == "block"
                else list(verified.spec.recipients_for_hop(verified.hop))
            ),
        )
    finally:
        _wipe(work)
        os.close(lock)
        _drop_image(engine, image, logger)
    _say(logger, f"the output ({facts['files']} file(s)) rests encrypted (never in plaintext)")
    return {**_run_summary(facts), "reused": False}


#: Facts of a resting output that stay in its facts file (the ``run`` task's XCom is short).
_FACTS_ONLY = ("disclosure", "disclosure_inputs", "payload")


def _run_summary(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if k not in _FACTS_ONLY}


def _disclosure_inputs(config: StationConfig, dataset_name: str) -> Any:
    """What a disclosure verdict depends on besides the output (JSON-normalised, to compare
    the policy a verdict was made under with the station's policy now)."""
    dataset = config.datasets.get(dataset_name)
    inputs = {
        "policy": config.policy.disclosure.record(),
        "min_cell_count": config.policy.min_cell_count,
        "identifier_columns": list(dataset.identifier_columns) if dataset is not None else [],
    }
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def _check_folder(
    config: StationConfig, dataset_name: str, folder: Path, dataset_rows: Any
) -> DisclosureReport:
    dataset = config.datasets.get(dataset_name)
    return check_output(
        folder,
        config.policy.disclosure,
        min_cell_count=config.policy.min_cell_count,
        dataset_rows=_dataset_rows(dataset_rows),
        identifier_columns=dataset.identifier_columns if dataset is not None else (),
    )


def _dataset_rows(rows: Any) -> int | None:
    return rows if isinstance(rows, int) and not isinstance(rows, bool) else None


def check_step(
    config: StationConfig,
    verified_summary: dict[str, Any],
    run_summary: dict[str, Any],
    *,
    logger: Log | None = None,
) -> dict[str, Any]:
    """The ``check_output`` task: the station's disclosure checks on the resting output.

    Returns the verdicts (no content: positions and thresholds only) and whether a person
    must release the output. A ``block`` verdict fails the hop with its reasons. The verdicts
    are those the ``run`` task found while it had the plaintext (kept with the resting
    output); only when the station's disclosure policy changed since is the output decrypted
    and checked again."""
    if run_summary.get("result_digest"):
        return {"verdict": "pass", "files": [], "release_needed": False, "reused": True}
    dataset_name = str(verified_summary.get("dataset"))
    key = str(run_summary["rest_key"])
    facts = rest.load_facts(config, key) or {}
    stored = facts.get("disclosure")
    if isinstance(stored, dict) and facts.get("disclosure_inputs") == _disclosure_inputs(
        config, dataset_name
    ):
        summary = dict(stored)
    else:
        _say(logger, "the disclosure policy changed since the train ran: checking again")
        with rest.opened_output(config, key, str(verified_summary["train_id"])) as folder:
            report = _check_folder(config, dataset_name, folder, run_summary.get("dataset_rows"))
        summary = dict(report.summary())
    verdict = str(summary.get("verdict"))
    for item in summary.get("files") or []:
        reasons = "; ".join(str(r) for r in item.get("reasons") or [])
        _say(
            logger, f"{item.get('path')}: {item.get('verdict')}{' - ' + reasons if reasons else ''}"
        )
    if verdict == "block":
        raise PolicyError(block_message(summary))
    summary["release_needed"] = bool(config.policy.require_release_approval or verdict == "review")
    _say(
        logger,
        f"disclosure verdict: {verdict}; "
        + (
            "a person must release the output"
            if summary["release_needed"]
            else "released automatically"
        ),
    )
    return summary


def seal_step(
    config: StationConfig,
    verified_summary: dict[str, Any],
    run_summary: dict[str, Any],
    check_summary: dict[str, Any] | None,
    *,
    approved_by: str | None = None,
    released_by: str | None = None,
    logger: Log | None = None,
) -> dict[str, Any]:
    """The ``seal`` task: seal the resting output for the hop's recipients, push, sign, attest.

    Idempotent: when a valid result of this hop is already in the registry (an earlier
    attempt pushed it, then failed) that result is returned and nothing is pushed again."""
    ref = Reference.parse(verified_summary["reference"])
    with registry_client(config) as client:
        verified = _verify(config, client, ref, rerun=True, logger=None)
        existing = _existing_result(client, verified)
        if existing is not None:
            _say(
                logger, f"hop {verified.hop} already has a valid result {existing['result_digest']}"
            )
            return _sealed_summary(existing, run_summary)
        if (check_summary or {}).get("release_needed") and not released_by:
            raise PolicyError("the output needs a person's release before it is sealed")
        key = config.load_signing_key()
        predicate = _predicate(
            config, verified, run_summary, check_summary, approved_by, released_by
        )
        rest_key = str(run_summary["rest_key"])
        common: dict[str, Any] = {
            "hop": verified.hop,
            "key": key,
            "previous": verified.previous.digest if verified.previous else None,
            "predicate": predicate,
            "created": run_summary.get("finished"),
            "journal": rest.seal_journal(config, rest_key),
        }
        payload = rest.stored_payload(config, rest_key)
        recipients = tuple(verified.spec.recipients_for_hop(verified.hop))
        if payload is not None and payload.recipients == recipients:
            # Encrypted to the recipients by run: nothing is decrypted here.
            sealed = seal(
                client, verified.ref, verified.manifest, verified.spec, payload=payload, **common
            )
        else:
            with rest.opened_output(config, rest_key, verified.spec.id) as folder:
                sealed = seal(
                    client,
                    verified.ref,
                    verified.manifest,
                    verified.spec,
                    output_dir=folder,
                    **common,
                )
    _say(logger, f"pushed result {sealed.digest} for {len(sealed.recipients)} recipient(s)")
    return _sealed_summary(
        {
            "result_digest": sealed.digest,
            "result_reference": str(sealed.reference),
            "recipients": sealed.recipients,
            "plaintext_bytes": sealed.config["plaintext_bytes"],
            "reused": False,
        },
        run_summary,
    )


def _sealed_summary(result: dict[str, Any], run_summary: dict[str, Any]) -> dict[str, Any]:
    return {
        **result,
        "exit_code": run_summary.get("exit_code"),
        "container_seconds": run_summary.get("container_seconds"),
        "duration_seconds": run_summary.get("container_seconds"),
        "started": run_summary.get("started"),
        "finished": run_summary.get("finished"),
        "data": run_summary.get("data"),
    }


def _predicate(
    config: StationConfig,
    verified: VerifiedTrain,
    run_summary: dict[str, Any],
    check_summary: dict[str, Any] | None,
    approved_by: str | None,
    released_by: str | None,
) -> dict[str, Any]:
    """The run attestation's predicate (:func:`pht_airflow.attestation.hop_predicate`)."""
    from ..attestation import hop_predicate

    limits = config.limits
    data = run_summary.get("data") or {}
    check = check_summary or {}
    return hop_predicate(
        train={"digest": verified.digest, "id": verified.spec.id, "name": verified.spec.name},
        station=config.station_id,
        hop=verified.hop,
        dataset={"name": verified.spec.dataset, "digest": data.get("digest")},
        sandbox={
            "memory_bytes": limits.memory_bytes,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "wall_seconds": limits.wall_seconds,
            "output_bytes": limits.output_bytes,
            "user": limits.user,
            "network": "none",
            "gpus": _gpus(config),
        },
        disclosure=check or None,
        approved_by=approved_by,
        released_by=released_by,
        started=run_summary.get("started"),
        finished=run_summary.get("finished"),
        exit_code=run_summary.get("exit_code"),
    )


def _gpus(config: StationConfig) -> Any:
    return getattr(config.limits, "gpus", None) or "none"


def end_step(
    config: StationConfig, run_summary: dict[str, Any] | None, *, logger: Log | None = None
) -> bool:
    """Remove the hop's resting output, whatever the outcome (``record`` calls it), and sweep
    what killed attempts of this or any other finished hop left (:func:`.sweep.sweep`): a
    SIGKILLed ``seal`` leaves the output it decrypted, a SIGKILLed ``run`` its input, output
    and container, and no later task of the hop would otherwise remove them. True if a
    resting output was removed."""
    key = (run_summary or {}).get("rest_key")
    dropped = bool(key) and rest.drop_output(config, str(key))
    try:
        sweep(config, logger=logger)
    except Exception as exc:  # noqa: BLE001 - the engine being down must not fail the record
        _say(logger, f"could not sweep leftovers ({type(exc).__name__}: {exc}); the next hop will")
    return dropped


def _flagged(checked: dict[str, Any]) -> str:
    """The flagged files of a disclosure summary and their first reason, on one line."""
    parts = []
    for item in checked.get("files") or []:
        if isinstance(item, dict) and item.get("verdict") != "pass":
            reasons = item.get("reasons") or ["flagged"]
            parts.append(f"{item.get('path')}: {reasons[0]}")
    if checked.get("release_needed") and not parts:
        return "policy.require_release_approval is set"
    return safe_text("; ".join(parts[:5]), limit=1000)


def execute_step(
    config: StationConfig,
    verified_summary: dict[str, Any],
    *,
    run_key: str | None = None,
    docker_client: Any = None,
    logger: Log | None = None,
    approved_by: str | None = None,
    released_by: str | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """run → check_output → seal in one call (``pht station run`` and tests).

    With ``push=False`` the train runs and its output is checked, but nothing is sealed or
    pushed: the summary has the verdicts. A ``review`` verdict (or a policy that asks for a
    release) needs ``released_by``."""
    key = run_key or rest.run_key(
        str(verified_summary["train_id"]), int(verified_summary["hop"]), secrets.token_hex(8)
    )
    ran: dict[str, Any] | None = None
    try:
        ran = run_step(
            config, verified_summary, run_key=key, docker_client=docker_client, logger=logger
        )
        checked = check_step(config, verified_summary, ran, logger=logger)
        if not push:
            return {**_sealed_summary({"reused": False}, ran), "disclosure": checked}
        if checked.get("release_needed") and not released_by and not ran.get("result_digest"):
            raise PolicyError(
                "the output needs a person's release (disclosure verdict "
                f"{checked.get('verdict')}: {_flagged(checked)}); review it and pass "
                "--released-by NAME, or run the hop through Airflow's release step"
            )
        if ran.get("result_digest"):
            return {**ran, "duration_seconds": 0.0}
        sealed = seal_step(
            config,
            verified_summary,
            ran,
            checked,
            approved_by=approved_by,
            released_by=released_by,
            logger=logger,
        )
        return {**sealed, "disclosure": checked}
    finally:
        end_step(config, ran)


def _drop_image(engine: Any, image: str, logger: Log | None) -> None:
    """Remove the station's pulled reference to the train image after the hop.

    Without this every hop leaves its train image in the engine and a busy station fills
    its disk. Only this reference (``repository@digest``) goes; the image itself stays while
    anything else refers to it or a container uses it. A failure here never fails the hop.
    """
    import docker

    try:
        engine.images.remove(image)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        _say(logger, f"left the train image {image} in the engine: {exc.explanation or exc}")


#: Errors that are the station's own problem, not the train's: audited, never reported to the
#: central service (a station's mistake must not fail a researcher's train).
_STATION_FAULTS: tuple[type[BaseException], ...] = (ConfigError, KeyFileError, AuditLogError)


def _station_fault(exc: BaseException) -> bool:
    if isinstance(exc, RegistryError):
        return exc.retryable or isinstance(exc, RegistryAuthError)
    return isinstance(
        exc, (*_STATION_FAULTS, WrongProjectError, AlreadyDoneError, DuplicateRunError)
    )


def failure_summary(exc: BaseException) -> dict[str, Any]:
    """What the audit log records about a failure (check, digest, key id, message).

    ``station_fault`` is true for the station's own problems (its config, keys, registry
    account, a registry hiccup, a train it already ran, a trigger for another project): they
    are audited but not reported to the central service."""
    message = re.sub(
        r"(?i)age-secret-key-1[0-9a-z]*|age-secret-key|private key", "[redacted]", str(exc)
    )
    message = safe_text(message, limit=4000, multiline=True)
    info: dict[str, Any] = {"error": type(exc).__name__, "message": message}
    if isinstance(exc, VerificationError):
        info.update(check=exc.check, digest=exc.digest, key_id=exc.key_id)
    if _station_fault(exc):
        info["station_fault"] = True
    return info


def record_step(
    config: StationConfig,
    *,
    reference: str,
    verified: dict[str, Any] | None,
    executed: dict[str, Any] | None,
    failure: dict[str, Any] | None,
    approved_by: str | None = None,
    run_id: str | None = None,
    logger: Log | None = None,
    data: dict[str, Any] | None = None,
    decision: dict[str, Any] | None = None,
    released_by: str | None = None,
    disclosure: dict[str, Any] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Append the hop to the audit log and return the record.

    The outcome is ``success`` (``executed`` and no failure), ``rejected`` or ``withheld``
    (``decision``: ``{"outcome", "by", "reason"}``, a person's refusal to run the train or to
    release its output), or ``failure``. ``data`` is what the train saw (:meth:`DataView.record`)
    when it failed after seeing it; a successful hop's comes in ``executed``.

    With ``report`` (and ``central.url`` set) the central service is told of a rejected,
    withheld or failed hop — unless the failure is the station's own (``station_fault``: a
    config or key problem, a registry hiccup, a trigger in another project, a train this
    station already ran), which would otherwise fail the researcher's train for nothing.
    """
    limits = config.limits
    v = verified or {}
    x = executed or {}
    if decision is not None:
        outcome = str(decision.get("outcome"))
    elif executed and not failure:
        outcome = "success"
    else:
        outcome = "failure"
    record = hop_record(
        train_id=v.get("train_id"),
        train_name=v.get("train_name"),
        train_digest=v.get("digest") or (failure or {}).get("digest"),
        station=config.station_id,
        outcome=outcome,  # type: ignore[arg-type]
        hop=v.get("hop"),
        reference=reference,
        run_id=run_id,
        signers=v.get("signers", []),
        checks_passed=v.get("checks_passed", []),
        failed_check=(failure or {}).get("check") if outcome == "failure" else None,
        failure=failure if outcome == "failure" else None,
        approved_by=approved_by,
        dataset=v.get("dataset"),
        limits={
            "memory_bytes": limits.memory_bytes,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "wall_seconds": limits.wall_seconds,
            "output_bytes": limits.output_bytes,
            "user": limits.user,
        },
        exit_code=x.get("exit_code"),
        duration_seconds=x.get("duration_seconds"),
        result_digest=x.get("result_digest"),
        recipients=x.get("recipients") or [],
        data=x.get("data") or data,
        decision=(
            {"by": decision.get("by"), "reason": decision.get("reason")} if decision else None
        ),
        released_by=released_by,
        disclosure=disclosure,
    )
    written = dict(audit_log(config).append(record))
    if outcome == "success" or not report or not config.central_url:
        return written
    if outcome == "failure" and (failure or {}).get("station_fault"):
        _say(logger, "not reported to the central service: the station's own problem")
        return written
    report_failure(config, written, reference, logger=logger)
    return written


def report_failure(
    config: StationConfig,
    record: dict[str, Any],
    reference: str,
    *,
    logger: Log | None = None,
) -> bool:
    """Send a failed, rejected or withheld hop's audit record to the central service, signed
    (:func:`~pht_airflow.hopreport.report_from_record`); True if accepted.

    Never raises: the audit log is the record that counts, and the central service fails
    the hop by its timeout anyway if the report does not arrive. Says why when it fails.
    """
    assert config.central_url  # noqa: S101 - callers check
    train_id = record.get("train_id")
    if not train_id:
        try:  # verification failed before the spec was read: the repository names the train
            train_id = Reference.parse(reference.strip()).repository.rsplit("/", 1)[-1]
        except PhtError:
            _say(logger, f"not reporting the failure to {config.central_url}: bad reference")
            return False
    try:
        report = report_from_record(
            record,
            train_id=str(train_id),
            station=config.station_id,
            key=config.load_signing_key(),
        )
        # No token: the station's signature authenticates the report.
        CentralClient(config.central_url, token="", timeout=10.0).report_failure(report)
    except PhtError as exc:
        _say(logger, f"could not report the failed hop to the central service: {exc}")
        return False
    said = {"failure": "failed"}.get(str(record.get("outcome")), record.get("outcome"))
    _say(logger, f"reported the {said} hop to the central service at {config.central_url}")
    return True


def run_hop(
    config: StationConfig,
    reference: str,
    *,
    rerun: bool = False,
    approved_by: str | None = None,
    released_by: str | None = None,
    docker_client: Any = None,
    logger: Log | None = None,
    push: bool = True,
    record: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """The whole hop without Airflow (``pht station run``). Returns the audit record.

    ``push``/``record``/``report``: seal and push the result, append to the audit log, tell the
    central service of a failure. With all three off (``pht station run``'s default) the
    train is verified, run and its output checked, and nothing leaves the station: the
    returned summary (not an audit record) says what would have happened. Raises the step's
    error after recording it (when ``record``).
    """
    verified: dict[str, Any] | None = None
    executed: dict[str, Any] | None = None
    try:
        verified = verify_step(config, reference, rerun=rerun, logger=logger)
        if config.policy.require_approval and not approved_by and push:
            raise PolicyError(
                "this station's policy requires a person's approval: pass --approved-by NAME "
                "(or run it through Airflow's approval step)"
            )
        executed = execute_step(
            config,
            verified,
            docker_client=docker_client,
            logger=logger,
            approved_by=approved_by,
            released_by=released_by,
            push=push,
        )
    except BaseException as exc:
        if record:
            try:
                record_step(
                    config,
                    reference=reference,
                    verified=verified,
                    executed=None,
                    failure=failure_summary(exc),
                    approved_by=approved_by,
                    logger=logger,
                    data=getattr(exc, "pht_data", None),
                    report=report,
                )
            except Exception:  # noqa: BLE001 - the original error matters more
                log.exception("could not record the failed hop in the audit log")
        raise
    if not record:
        return {
            "outcome": "success" if push else "dry-run",
            "train_id": verified.get("train_id"),
            "hop": verified.get("hop"),
            "result_digest": executed.get("result_digest"),
            "disclosure": executed.get("disclosure"),
            "exit_code": executed.get("exit_code"),
            "seq": None,
        }
    return record_step(
        config,
        reference=reference,
        verified=verified,
        executed=executed,
        failure=None,
        approved_by=approved_by,
        released_by=released_by,
        disclosure=executed.get("disclosure"),
        logger=logger,
        report=report,
    )
