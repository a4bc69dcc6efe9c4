"""The ``keys`` check: pre-flight's key checks (:func:`~pht_airflow.station.preflight.open_keys`:
the right kind of file, opens with its passphrase), then the signing key signs for
``keys.public_key`` and the age identity decrypts."""

from __future__ import annotations

import contextlib
import secrets

from ...errors import PhtError, SelfTestError
from ..config import StationConfig
from ..preflight import open_keys
from .probe import _scrub, _short


def check_keys(config: StationConfig) -> str:
    """The signing key opens, belongs to ``keys.public_key`` and signs; the age identity opens
    and decrypts a message encrypted to its recipient."""
    import pyrage

    refs = [config.signing_passphrase, config.age_passphrase]
    secret_values: list[bytes] = []
    for ref in refs:
        if ref is not None:
            with contextlib.suppress(PhtError, OSError, UnicodeDecodeError):
                secret_values.append(ref.read_bytes())

    challenge = secrets.token_bytes(32)
    # The same opening and kind checks as pre-flight (one implementation), then a real
    # signature and a real decryption.
    key, identity, problems = open_keys(config)
    if problems:
        text = "; ".join(p.line() for p in problems)
        raise SelfTestError(_scrub(f"keys: {_short(SelfTestError(text), 800)}", secret_values))
    assert key is not None and identity is not None  # noqa: S101 - no problem means both
    if not config.public_key.verify(key.sign(challenge), challenge):
        raise SelfTestError(
            f"keys: a signature by the station signing key ({config.signing_key.describe()}) "
            f"does not verify under keys.public_key ({config.public_key.key_id})"
        )
    try:
        sealed = pyrage.encrypt(challenge, [pyrage.x25519.Recipient.from_str(identity.recipient)])
        opened = pyrage.decrypt(sealed, [identity.identity])
    except Exception as exc:  # noqa: BLE001 - pyrage raises its own error types
        raise SelfTestError(
            f"keys: the age identity ({config.age_identity.describe()}) cannot decrypt a "
            f"message to its own recipient ({type(exc).__name__})"
        ) from None
    if opened != challenge:
        raise SelfTestError(
            f"keys: the age identity ({config.age_identity.describe()}) decrypted a message "
            "to other bytes"
        )
    return (
        f"keys: signing key {key.key_id} opens and matches keys.public_key; age identity "
        f"{identity.recipient} opens and decrypts"
    )
