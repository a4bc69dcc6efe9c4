"""Readable failures: what station staff read first when a hop fails for an expected reason.

:func:`failure_lines` turns a :class:`~pht_airflow.errors.PhtError` into a few lines, for the
task log instead of a Python stack:

1. the check and the reason in plain words (``creator: the creator's signature is not from a
   trusted creator (…)``);
2. the train's digest, and the key involved with the name this station's trust store gives it
   (``trust.trusted_creators`` entries ``{key, name}``), or what the key is to this station;
3. the check's details, if any (a spec's problems, one per line);
4. what to do (``add the key to trust.trusted_creators if you trust this creator``).

Names come only from the station's own config, never from the train (a train can write any
name into its signatures). Every line is passed through :func:`~pht_airflow.text.safe_text`:
control and bidi characters from a train, a registry or a file name show as visible escapes.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    OutputTooLargeError,
    PhtError,
    PolicyError,
    PreflightError,
    RegistryAuthError,
    RegistryError,
    SandboxError,
    TrainExitError,
    TrainOOMError,
    TrainTimeoutError,
    VerificationError,
)
from ..text import safe_text
from .config import StationConfig

__all__ = ["HINTS", "failure_lines", "key_label"]

#: Per VerificationError check: (the reason in plain words, what to do).
HINTS: dict[str, tuple[str, str]] = {
    "resolve": (
        "the train reference does not resolve to the digest it names",
        "trigger the run again with the train's tag or its current digest",
    ),
    "spec": (
        "the train's spec (its org.pht.train label) is missing or invalid",
        "ask the researcher to rebuild the train with `pht train build`; nothing ran",
    ),
    "signed": (
        "the train carries no signature",
        "ask the researcher to sign it (`pht train build` signs as creator) and a reviewer to "
        "approve it (`pht train approve`)",
    ),
    "signature-trusted": (
        "no signature on the train is by a key this station trusts",
        "if you trust the signer, add their public key to trust.trusted_creators or "
        "trust.trusted_approvers; otherwise nothing is to be done",
    ),
    "signature-valid": (
        "a signature by a trusted key does not verify: the train or its signature was altered",
        "do not run it; tell the researcher and the central team",
    ),
    "signature-format": (
        "a signature on the train is malformed",
        "ask the signer to sign again; do not run it as it is",
    ),
    "signature-digest": (
        "a signature on the train was made for another image (copied from another train)",
        "do not run it; tell the central team",
    ),
    "creator": (
        "the creator's signature is not from a trusted creator",
        "add the key to trust.trusted_creators if you trust this creator",
    ),
    "approvals": (
        "the train has fewer approvals by trusted reviewers than this station requires",
        "ask a reviewer whose key is in trust.trusted_approvers to approve it (`pht train "
        "approve`), or add the reviewer's key to trust.trusted_approvers if you trust them",
    ),
    "route": (
        "this station is not on the train's route",
        "nothing to do if the train was not meant for this station; otherwise ask the "
        "researcher to build it again with this station on the route",
    ),
    "route-key": (
        "the train's route names another signing key for this station",
        "check that keys.public_key is the key registered with the central service (`pht "
        "central stations show`); if it is, the train was built with an old key: ask the "
        "researcher to build it again",
    ),
    "expired": (
        "the train has expired",
        "ask the researcher to build and submit a new train",
    ),
    "already-done": (
        "this station already ran this train",
        "nothing to do; to run it again on purpose, trigger it with rerun: true (or ask for "
        "`pht train retry`)",
    ),
    "chain": (
        "the results of the previous hops do not form a valid chain",
        "do not run it; tell the central team which hop broke (named above)",
    ),
    "failure-report": (
        "a station's failure report does not verify",
        "tell the central team; the report is ignored",
    ),
    "digest": (
        "the image does not match the digest it was asked for",
        "fetch it again by digest; if it persists, tell the central team",
    ),
    "bundle": (
        "the bundle was refused",
        "ask for a new bundle from the sending side",
    ),
}
_DEFAULT_HINT = (
    "the train did not pass verification",
    "read the reason below; nothing ran",
)


def key_label(config: StationConfig | None, key_id: str) -> str:
    """``key_id`` with what this station knows of it: the trust store's name, "this
    station's own key", "trusted (no name)", or "not in this station's trust store"."""
    if config is None:
        return key_id
    trust = getattr(config, "trust", None)
    name_of = getattr(trust, "name_of", None)
    name = name_of(key_id) if callable(name_of) else None
    if name:
        return f"{key_id} ({safe_text(name, limit=100)})"
    own = getattr(getattr(config, "public_key", None), "key_id", None)
    if key_id == own:
        return f"{key_id} (this station's own key)"
    trusted = {
        k.key_id
        for k in (*getattr(trust, "creators", ()), *getattr(trust, "approvers", ()))
        if hasattr(k, "key_id")
    }
    if key_id in trusted:
        return f"{key_id} (trusted, no name given)"
    return f"{key_id} (not in this station's trust store)"


def _line(text: Any, limit: int = 2000) -> str:
    return safe_text(text, limit=limit)


def _verification_lines(exc: VerificationError, config: StationConfig | None) -> list[str]:
    plain, todo = HINTS.get(exc.check, _DEFAULT_HINT)
    lines = [_line(f"{exc.check}: {plain} ({exc.reason})")]
    if exc.digest:
        lines.append(_line(f"train digest: {exc.digest}"))
    if exc.key_id:
        lines.append(_line(f"key: {key_label(config, exc.key_id)}"))
    lines.extend(_line(f"  {detail}", 1000) for detail in exc.details[:50])
    lines.append(_line(f"what to do: {todo}"))
    return lines


def _sandbox_hint(exc: SandboxError, config: StationConfig | None) -> tuple[str, str]:
    limits = getattr(config, "limits", None)
    if isinstance(exc, TrainExitError):
        return (
            f"the train exited with code {exc.exit_code}",
            "this is the train's own failure: its output is in the run task's log; tell "
            "the researcher",
        )
    if isinstance(exc, TrainTimeoutError):
        return (
            f"the train ran longer than sandbox.wall_time ({exc.limit_seconds:g} s) and was "
            "stopped",
            "raise sandbox.wall_time if you accept longer runs, or ask the researcher for a "
            "faster train",
        )
    if isinstance(exc, TrainOOMError):
        return (
            f"the train needed more memory than sandbox.memory ({exc.limit_bytes} bytes)",
            "raise sandbox.memory if you accept it, or ask the researcher for a leaner train",
        )
    if isinstance(exc, OutputTooLargeError):
        return (
            f"the train wrote more than sandbox.output_bytes ({exc.limit_bytes} bytes)",
            "raise sandbox.output_bytes if the output is expected to be this large",
        )
    current = getattr(limits, "user", None)
    return (
        "the sandbox could not run the train",
        "run the pht_station_selftest DAG (or `pht station check`) to find what is wrong"
        + (f"; the sandbox user is {current}" if current else ""),
    )


def failure_lines(exc: BaseException, config: StationConfig | None = None) -> list[str]:
    """The lines to log for an expected failure, most important first; no stack, no secret.

    ``exc`` is usually a :class:`~pht_airflow.errors.VerificationError` (one hint per check,
    :data:`HINTS`); pre-flight, policy, sandbox and registry errors get their own first line
    and what to do. ``config`` (the station's) names keys from its trust store.
    """
    if isinstance(exc, VerificationError):
        return _verification_lines(exc, config)
    if isinstance(exc, PreflightError):
        return [_line(line) for line in str(exc).splitlines()[:200]]
    if isinstance(exc, SandboxError):
        plain, todo = _sandbox_hint(exc, config)
        return [_line(f"sandbox: {plain} ({exc})"), _line(f"what to do: {todo}")]
    if isinstance(exc, PolicyError):
        return [
            _line(f"policy: this station's policy refused the hop ({exc})"),
            _line(
                "what to do: nothing, if the refusal is right; otherwise see the policy "
                "section of the station config"
            ),  # fmt: skip
        ]
    if isinstance(exc, RegistryAuthError):
        return [
            _line(f"registry: the registry refused the station's credentials ({exc})"),
            _line(
                "what to do: check the robot account (registry.connection_id or "
                "registry.username/password) and run `pht station check`"
            ),  # fmt: skip
        ]
    if isinstance(exc, RegistryError):
        todo = (
            "the task retries by itself; if it keeps failing, check that the registry is up"
            if exc.retryable
            else "tell the central team: the registry's answer is not acceptable"
        )
        return [_line(f"registry: {exc}"), _line(f"what to do: {todo}")]
    if isinstance(exc, PhtError):
        return [_line(f"{type(exc).__name__}: {exc}")]
    return [_line(f"unexpected {type(exc).__name__}: {exc}")]
