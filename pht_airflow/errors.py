"""One exception hierarchy for pht-airflow, rooted at :class:`PhtError`.

Messages are written for the person who has to act on them (a station operator, a
researcher) and never contain secrets: no private key, passphrase, robot secret or
plaintext result is ever interpolated into a message. Callers at the edges (CLI, Airflow
operators, web apps) map these to exit codes, task states and HTTP statuses; the library
itself knows nothing of those.
"""

from __future__ import annotations

from collections.abc import Sequence


class PhtError(Exception):
    """Root of every error pht-airflow raises on purpose."""


# --- input and configuration -------------------------------------------------------------


class ConfigError(PhtError):
    """A configuration file or option is invalid; the message names the field and the file."""


class PreflightError(ConfigError):
    """The station's pre-flight failed: a key does not open or is the wrong kind, a data set
    is not readable by the sandbox user, the registry cannot be reached with the station's
    credentials. The message lists every failed check with what to do; ``report`` holds the
    :class:`~pht_airflow.station.preflight.PreflightReport`. Nothing ran and nothing was
    reported to the central service: it is the station's problem, not the train's."""

    def __init__(self, message: str, *, report: object = None) -> None:
        self.report = report
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """True when only a registry or engine that did not answer failed (waiting may fix
        it); False when a person must change something."""
        return bool(getattr(self.report, "retryable", False))


class InvalidReferenceError(PhtError):
    """An image or artifact reference (``host/repo:tag@sha256:…``) is malformed."""


class KeyFileError(PhtError):
    """A key file is missing, truncated, of the wrong type, or cannot be decrypted."""


class PassphraseError(KeyFileError):
    """The passphrase does not open the key (or none was given for an encrypted key)."""


class SpecError(PhtError):
    """A train spec is invalid. ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"invalid train spec{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"invalid train spec{where} ({len(self.problems)} problems):\n{lines}"
        super().__init__(msg)


# --- registry ----------------------------------------------------------------------------


class RegistryError(PhtError):
    """The registry refused or failed a request. Retrying may help for 5xx and network errors."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        self.status = status
        self.url = url
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """True for network failures and server-side errors, false for client errors."""
        return self.status is None or self.status >= 500 or self.status == 429


class RegistryAuthError(RegistryError):
    """The registry rejected our credentials or the token exchange failed."""


class NotFoundError(RegistryError):
    """A manifest, tag, blob or repository does not exist."""


class DigestMismatchError(RegistryError):
    """Bytes received from (or sent to) the registry do not match the expected digest."""

    @property
    def retryable(self) -> bool:
        return False


class InvalidManifestError(RegistryError):
    """A manifest or descriptor is malformed: not JSON, a bad digest, size or field type."""

    @property
    def retryable(self) -> bool:
        return False


class ResponseTooLargeError(RegistryError):
    """A server (registry, token service, central service) sent a body larger than the limit
    for its kind, counted in decoded bytes. The message names what and the limit; retrying
    does not help."""

    @property
    def retryable(self) -> bool:
        return False


class DeadlineExceededError(RegistryError):
    """A network operation did not finish within its total deadline (a server answering one
    byte at a time, or not at all). The message names the operation and the deadline."""


# --- verification ------------------------------------------------------------------------


class VerificationError(PhtError):
    """A protocol check failed. Names the check, the artifact digest and the key id involved.

    ``check`` is a short stable identifier (``"signature"``, ``"chain"``, …) that audit logs
    and tests match on; the message is one line a person can act on.
    """

    check: str = "verification"

    def __init__(
        self,
        message: str,
        *,
        digest: str | None = None,
        key_id: str | None = None,
        check: str | None = None,
        details: Sequence[str] = (),
    ) -> None:
        if check is not None:
            self.check = check
        self.digest = digest
        self.key_id = key_id
        self.reason = message
        self.details = list(details)
        parts = [f"[{self.check}] {message}"]
        if digest:
            parts.append(f"digest={digest}")
        if key_id:
            parts.append(f"key={key_id}")
        super().__init__(" ".join(parts))


class UnsignedError(VerificationError):
    """The artifact carries no signature at all (no ``sha256-<hex>.sig`` manifest or no layers)."""

    check = "signed"


class UntrustedSignatureError(VerificationError):
    """Signatures exist, but none verifies under the trusted keys (wrong key or forged bytes)."""

    check = "signature-trusted"


class InvalidSignatureError(VerificationError):
    """A signature names a trusted key but does not verify: its payload or bytes were altered."""

    check = "signature-valid"


class MalformedSignatureError(VerificationError):
    """A signature layer is structurally broken: bad base64, truncated DER, unreadable payload."""

    check = "signature-format"


class SignatureDigestMismatchError(VerificationError):
    """A signature's payload names another manifest digest (a layer copied from another image)."""

    check = "signature-digest"


class InvalidSpecError(VerificationError):
    """The train's spec label is missing or invalid (the station refuses it before anything)."""

    check = "spec"


class UntrustedCreatorError(VerificationError):
    """No signature by a key in the station's ``trusted_creators`` (matching the spec's creator)."""

    check = "creator"


class TooFewApprovalsError(VerificationError):
    """Fewer than ``required_approvals`` signatures by distinct keys in ``trusted_approvers``."""

    check = "approvals"


class NotOnRouteError(VerificationError):
    """This station does not appear (exactly once) on the train's route."""

    check = "route"


class RouteKeyMismatchError(VerificationError):
    """The route entry for this station carries another public key than the station's own."""

    check = "route-key"


class ExpiredError(VerificationError):
    """The train's ``expires`` time has passed."""

    check = "expired"


class AlreadyDoneError(VerificationError):
    """This station already completed this train digest (its audit log says so)."""

    check = "already-done"


class ChainError(VerificationError):
    """A result in a train's chain is missing, ambiguous, or does not link to its predecessor.

    ``hop`` and ``station`` name the link that broke.
    """

    check = "chain"

    def __init__(
        self,
        message: str,
        *,
        hop: int | None = None,
        station: str | None = None,
        digest: str | None = None,
        key_id: str | None = None,
        details: Sequence[str] = (),
    ) -> None:
        self.hop = hop
        self.station = station
        where = ""
        if hop is not None:
            where = f"hop {hop}" + (f" ({station})" if station else "") + ": "
        super().__init__(where + message, digest=digest, key_id=key_id, details=details)


class UnsafeArchiveError(PhtError):
    """A result archive (or a folder to be sealed) holds an entry that is not allowed.

    Links, device files, FIFOs, absolute paths and ``..`` are refused; so is an archive
    larger than the extraction limit. The message names the offending path.
    """


class PolicyError(PhtError):
    """A station policy refuses the action (approval missing, output over the size cap, …)."""


# --- audit -------------------------------------------------------------------------------


class AuditLogError(PhtError):
    """The station's audit log is damaged or was tampered with, or cannot be appended to.

    ``line`` is the 1-based line the problem was found on (``None`` when it concerns the whole
    file or its head file); ``path`` is the log. The message says what is wrong in one line.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}: {message}" if path else message)


# --- sandbox -----------------------------------------------------------------------------


class SandboxError(PhtError):
    """A train container could not be run, or was stopped for breaking one of its limits.

    ``image`` is the train image reference. Messages name the image, the limit and the
    measured value; they never contain the train's output or log.
    """

    def __init__(self, message: str, *, image: str | None = None) -> None:
        self.image = image
        super().__init__(message)


class TrainExitError(SandboxError):
    """The train exited with a non-zero code (``exit_code``); the hop fails, nothing is sealed."""

    def __init__(self, message: str, *, image: str | None = None, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message, image=image)


class TrainTimeoutError(SandboxError):
    """The train ran longer than its wall-time limit and was killed."""

    def __init__(
        self, message: str, *, image: str | None = None, limit_seconds: float, elapsed: float
    ) -> None:
        self.limit_seconds = limit_seconds
        self.elapsed = elapsed
        super().__init__(message, image=image)


class TrainOOMError(SandboxError):
    """The kernel killed the train for exceeding its memory limit (``limit_bytes``)."""

    def __init__(self, message: str, *, image: str | None = None, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(message, image=image)


class OutputTooLargeError(SandboxError, PolicyError):
    """The train's output folder grew over the station's output cap (checked while it runs)."""

    def __init__(
        self, message: str, *, image: str | None = None, limit_bytes: int, measured_bytes: int
    ) -> None:
        self.limit_bytes = limit_bytes
        self.measured_bytes = measured_bytes
        super().__init__(message, image=image)


# --- webhooks ----------------------------------------------------------------------------


class WebhookError(PhtError):
    """A registry webhook request is unacceptable; ``status`` is the HTTP status to answer.

    400: not JSON; 413: body over the size limit; 415: unsupported content type; 422: JSON of
    the wrong shape or with an invalid field. The message names the field, as in
    ``events[2].target.digest: …``, and never quotes the request's secrets. ``where`` is that
    field path alone (safe to log: it holds nothing from the body), ``reason`` the rest.
    """

    def __init__(self, message: str, *, status: int = 400, where: str | None = None) -> None:
        self.status = status
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


# --- central registry --------------------------------------------------------------------


class NotSupportedError(RegistryError):
    """The registry cannot do this at all (a plain registry has no accounts or API webhooks).

    The message says what to configure instead; retrying never helps.
    """

    @property
    def retryable(self) -> bool:
        return False


class ConflictError(RegistryError):
    """The registry refused a change that conflicts with what it holds (HTTP 409): a robot
    account or webhook policy with that name, a tag that points at another artifact."""

    @property
    def retryable(self) -> bool:
        return False


# --- self-test ---------------------------------------------------------------------------


class SelfTestError(PhtError):
    """A station self-test check failed. The message names the check, the failed step and
    what to fix; it never contains key material, passphrases or data."""


# --- local services (demo, tests) ---------------------------------------------------------


class ServiceError(PhtError):
    """A local service this tool started (Airflow, the central service) did not come up or
    died. The message names the service and says where its log is."""
