"""A station's hop as plain Python: verify → approve? → execute → record.

The same functions back the Airflow tasks (``pht_airflow.airflow.operators``) and
``pht station run`` (for operators debugging a train without the scheduler). Each step
returns a JSON-safe summary (no secrets, no data) that the next step takes as input, so an
Airflow XCom never carries anything sensitive.

``execute`` does decrypt-input, sandbox, release check, seal, push, sign and wipe in one
call, so plaintext never crosses a task boundary. It is idempotent: if a valid result of
this hop, signed by this station, is already in the registry (a retried task whose first
attempt pushed before failing), it returns that result instead of running again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..central_client import CentralClient
from ..errors import PhtError, PolicyError, RegistryError, VerificationError
from ..hopreport import make_report
from ..oci import Reference, RegistryClient
from ..protocol import RETRY_TAG
from ..results import accept_hop, find_results, open_result, seal
from ..text import safe_text
from .audit import AuditLog, hop_record
from .config import StationConfig
from .data import data_view
from .sandbox import run_train
from .sweep import HOP_PREFIX, open_work, sweep
from .sweep import wipe_folder as _wipe
from .verify import Trust, VerifiedTrain, verify_train

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


def parse_train_reference(config: StationConfig, text: str) -> Reference:
    """Parse a train reference and check it is in this station's own project."""
    ref = Reference.parse(text.strip())
    if ref.registry != config.registry.host:
        raise PolicyError(
            f"{text} is not in this station's registry {config.registry.host}; "
            "a station runs only trains copied into its own project"
        )
    if not ref.repository.startswith(config.registry.project + "/"):
        raise PolicyError(
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
        on_check=lambda check: _say(logger, f"check passed: {check}"),
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
    config: StationConfig, reference: str, *, rerun: bool = False, logger: Log | None = None
) -> dict[str, Any]:
    """The Verify step. Returns the verified train's summary; raises a VerificationError.

    A reference with a ``retry-<k>-<n>`` tag is an explicit retry: it may repeat a hop this
    station completed or refused before, once per retry tag (the audit log remembers).
    """
    ref = parse_train_reference(config, reference)
    with registry_client(config) as client:
        retry = _explicit_retry(client, ref)
        verified = _verify(config, client, ref, rerun=rerun, logger=logger, retry=retry)
    if verified.spec.dataset not in config.datasets:
        raise PolicyError(
            f"the train asks for data set {verified.spec.dataset!r}, which this station does "
            f"not offer ({', '.join(sorted(config.datasets))})"
        )
    summary = verified.summary()
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


def execute_step(
    config: StationConfig,
    verified_summary: dict[str, Any],
    *,
    docker_client: Any = None,
    logger: Log | None = None,
    on_work: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Decrypt input, run the sandbox, check the release policy, seal, push, sign, wipe.

    ``on_work`` is told the hop's private folder as soon as it exists (so a task being
    killed can wipe it, :func:`wipe_work`)."""
    import docker

    ref = Reference.parse(verified_summary["reference"])
    started = time.monotonic()
    with registry_client(config) as client:
        # Re-check at the pinned digest: the registry may have changed since Verify.
        verified = _verify(config, client, ref, rerun=True, logger=None)
        existing = _existing_result(client, verified)
        if existing is not None:
            _say(
                logger, f"hop {verified.hop} already has a valid result {existing['result_digest']}"
            )
            return {**existing, "exit_code": 0, "duration_seconds": 0.0}
        if config.policy.require_release_approval:
            raise PolicyError(
                "policy.require_release_approval is set, but release approval is not "
                "supported by this version; unset it or approve releases out of band"
            )
        dataset = config.datasets.get(verified.spec.dataset)
        if dataset is None:
            raise PolicyError(f"data set {verified.spec.dataset!r} is not offered here")
        engine = docker_client or docker.from_env(timeout=300)
        sweep(config, engine, logger=logger)  # leftovers of hops that are not running
        image = f"{ref.registry}/{ref.repository}@{verified.digest}"
        username, password = config.registry.credentials()
        auth = {"username": username, "password": password} if username else None
        # The folder names the image before it is pulled: a sweep keeps a running hop's image.
        work, lock = open_work(config, f"{HOP_PREFIX}{verified.spec.id}-", image=image)
        try:
            if on_work is not None:
                on_work(work)
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
            if verified.previous is not None:
                identity = config.load_age_identity()
                _say(logger, f"decrypting the result of hop {verified.previous.hop}")
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
            _say(logger, f"train exited 0 after {outcome.duration_seconds:.1f} s")
            key = config.load_signing_key()
            sealed = seal(
                client,
                verified.ref,
                verified.manifest,
                verified.spec,
                hop=verified.hop,
                output_dir=output_dir,
                key=key,
                previous=verified.previous.digest if verified.previous else None,
            )
        finally:
            _wipe(work)
            os.close(lock)
            _drop_image(engine, image, logger)
    _say(logger, f"pushed result {sealed.digest} for {len(sealed.recipients)} recipient(s)")
    return {
        "result_digest": sealed.digest,
        "result_reference": str(sealed.reference),
        "recipients": sealed.recipients,
        "plaintext_bytes": sealed.config["plaintext_bytes"],
        "exit_code": outcome.exit_code,
        "duration_seconds": round(time.monotonic() - started, 3),
        "container_seconds": round(outcome.duration_seconds, 3),
        "reused": False,
        "data": data,
    }


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


def failure_summary(exc: BaseException) -> dict[str, Any]:
    """What the audit log records about a failure (check, digest, key id, message)."""
    message = re.sub(
        r"(?i)age-secret-key-1[0-9a-z]*|age-secret-key|private key", "[redacted]", str(exc)
    )
    message = safe_text(message, limit=4000, multiline=True)
    info: dict[str, Any] = {"error": type(exc).__name__, "message": message}
    if isinstance(exc, VerificationError):
        info.update(check=exc.check, digest=exc.digest, key_id=exc.key_id)
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
) -> dict[str, Any]:
    """Append the hop to the audit log (success or failure) and return the record.

    ``data`` is what the train saw (:meth:`DataView.record`) when it failed after seeing it;
    a successful hop's comes in ``executed``. A failure is also reported to the central
    service when the config names one (:func:`report_failure`).
    """
    limits = config.limits
    v = verified or {}
    x = executed or {}
    record = hop_record(
        train_id=v.get("train_id"),
        train_digest=v.get("digest") or (failure or {}).get("digest"),
        station=config.station_id,
        outcome="success" if executed and not failure else "failure",
        hop=v.get("hop"),
        reference=reference,
        run_id=run_id,
        signers=v.get("signers", []),
        checks_passed=v.get("checks_passed", []),
        failed_check=(failure or {}).get("check"),
        failure=failure,
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
    )
    written = dict(audit_log(config).append(record))
    if written.get("outcome") != "success" and config.central_url:
        report_failure(config, written, reference, logger=logger)
    return written


def report_failure(
    config: StationConfig,
    record: dict[str, Any],
    reference: str,
    *,
    logger: Log | None = None,
) -> bool:
    """Send a failed hop's audit record to the central service, signed; True if accepted.

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
        report = make_report(
            train_id=str(train_id),
            train_digest=record.get("train_digest"),
            station=config.station_id,
            hop=record.get("hop"),
            failure=record.get("failure") or {},
            audit_seq=record.get("seq"),
            key=config.load_signing_key(),
        )
        # No token: the station's signature authenticates the report.
        CentralClient(config.central_url, token="", timeout=10.0).report_failure(report)
    except PhtError as exc:
        _say(logger, f"could not report the failed hop to the central service: {exc}")
        return False
    _say(logger, f"reported the failed hop to the central service at {config.central_url}")
    return True


def run_hop(
    config: StationConfig,
    reference: str,
    *,
    rerun: bool = False,
    approved_by: str | None = None,
    docker_client: Any = None,
    logger: Log | None = None,
) -> dict[str, Any]:
    """The whole hop without Airflow (``pht station run``). Returns the audit record.

    Raises the step's error after recording it.
    """
    verified: dict[str, Any] | None = None
    executed: dict[str, Any] | None = None
    try:
        verified = verify_step(config, reference, rerun=rerun, logger=logger)
        if config.policy.require_approval and not approved_by:
            raise PolicyError(
                "this station's policy requires a person's approval: pass --approved-by NAME "
                "(or run it through Airflow's approval step)"
            )
        executed = execute_step(config, verified, docker_client=docker_client, logger=logger)
    except BaseException as exc:
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
            )
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not record the failed hop in the audit log")
        raise
    return record_step(
        config,
        reference=reference,
        verified=verified,
        executed=executed,
        failure=None,
        approved_by=approved_by,
        logger=logger,
    )
