"""Signing keys (ECDSA P-256) and encryption keys (age X25519), as PROTOCOL.md "Keys" says.

Files written by :func:`generate_keypair` for a party called NAME:

==============  ==========================================================  ======
file            content                                                     mode
==============  ==========================================================  ======
``NAME.key``    ECDSA P-256 private key, PKCS#8 PEM encrypted with the       0600
                passphrase (the same shape ``cosign generate-key-pair``
                would accept as an imported key)
``NAME.pub``    SubjectPublicKeyInfo PEM (the shape of ``cosign.pub``)       0644
``NAME.age``    the ``AGE-SECRET-KEY-1…`` identity, encrypted with age's     0600
                passphrase (scrypt) recipient, so ``age -d`` opens it
``NAME.age.pub``  the ``age1…`` recipient                                    0644
==============  ==========================================================  ======

A signing key's id is ``sha256:`` + the hex SHA-256 of its DER SubjectPublicKeyInfo.
Nothing here logs or puts a private key or a passphrase into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyrage import x25519

from .errors import KeyFileError, PassphraseError

PASSPHRASE_ENV = "PHT_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
MAX_KEY_FILE_BYTES = 64 * 1024

# PEM files are told apart by the label of their first line (RFC 7468).
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PUBLIC_LABEL = b"PUBLIC KEY"
_ENCRYPTED_LABEL = b"ENCRYPTED PRIVATE KEY"
_PRIVATE_LABELS = (_ENCRYPTED_LABEL, b"PRIVATE KEY", b"EC PRIVATE KEY")
_AGE_ARMORED_LABEL = b"AGE ENCRYPTED FILE"
_AGE_SECRET = b"AGE-SECRET-KEY-1"
_AGE_ENCRYPTED = b"age-encryption.org/v1"


# --- public and private signing keys ----------------------------------------------------


def key_id_of(public: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An ECDSA P-256 verification key with its id and PEM."""

    key: ec.EllipticCurvePublicKey
    source: str = "<memory>"

    @property
    def key_id(self) -> str:
        """``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo."""
        return key_id_of(self.key)

    @property
    def pem(self) -> str:
        """The SubjectPublicKeyInfo PEM text."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` (DER ECDSA) signs ``data`` (SHA-256) under this key."""
        try:
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)


class SigningKey:
    """An ECDSA P-256 private key. Its ``repr`` and ``str`` never show key material."""

    def __init__(self, private: ec.EllipticCurvePrivateKey, source: str = "<memory>") -> None:
        if not isinstance(private.curve, ec.SECP256R1):
            raise KeyFileError(f"{source}: signing keys must be ECDSA P-256")
        self._private = private
        self.source = source
        self.public = PublicKey(private.public_key(), source)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key (for tests and :func:`generate_keypair`)."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def key_id(self) -> str:
        """The public key's id."""
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature of SHA-256(data)."""
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))

    def private_pem(self, passphrase: bytes) -> bytes:
        """PKCS#8 PEM encrypted with ``passphrase`` (never unencrypted)."""
        if not passphrase:
            raise PassphraseError("refusing to write a private key without a passphrase")
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id}, from {self.source})"


class AgeIdentity:
    """An age X25519 identity. ``recipient`` is public; the secret is only in ``identity``."""

    def __init__(self, identity: x25519.Identity, source: str = "<memory>") -> None:
        self.identity = identity
        self.source = source
        self.recipient = str(identity.to_public())

    @classmethod
    def generate(cls) -> AgeIdentity:
        """A fresh random identity."""
        return cls(x25519.Identity.generate())

    def secret_text(self) -> str:
        """The ``AGE-SECRET-KEY-1…`` string. Only for writing an identity file."""
        return str(self.identity)

    def __repr__(self) -> str:
        return f"AgeIdentity({self.recipient}, from {self.source})"


def generate_age_identity() -> AgeIdentity:
    """A fresh random age X25519 identity."""
    return AgeIdentity.generate()


# --- reading files ------------------------------------------------------------------------


def _read(path: Path | str) -> bytes:
    path = Path(path)
    try:
        if path.is_dir():
            raise KeyFileError(f"{path}: is a folder, not a key file")
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: no such key file") from exc
    except PermissionError as exc:
        raise KeyFileError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: too large to be a key file")
    if not data.strip():
        raise KeyFileError(f"{path}: the file is empty")
    return data


def _pem_label(data: bytes) -> bytes | None:
    """The label of the PEM block ``data`` starts with (``PUBLIC KEY``…), or None."""
    match = _PEM_BEGIN.match(data.lstrip())
    return match.group(1) if match else None


def _kind(data: bytes) -> str:
    head = data.lstrip()
    while head.startswith(b"#"):  # age-keygen writes "# created: …" lines before the key
        head = head.partition(b"\n")[2].lstrip()
    label = _pem_label(head)
    if label == _PUBLIC_LABEL:
        return "public"
    if label in _PRIVATE_LABELS:
        return "private"
    if label == _AGE_ARMORED_LABEL or head.startswith(_AGE_ENCRYPTED):
        return "age-encrypted"
    if label is not None:
        return "other-pem"
    if head.startswith(_AGE_SECRET):
        return "age-identity"
    if head.startswith(b"age1"):
        return "age-recipient"
    return "unknown"


_KIND_NAMES = {
    "public": "a signing public key (NAME.pub)",
    "private": "a signing private key (NAME.key)",
    "age-identity": "an age identity (NAME.age)",
    "age-encrypted": "a passphrase-protected age identity (NAME.age)",
    "age-recipient": "an age recipient (NAME.age.pub)",
    "other-pem": "a PEM file of another kind",
    "unknown": "not a key file pht knows",
}


#: What :func:`key_kind` can answer, each with how a person would call it.
KEY_KINDS: dict[str, str] = dict(_KIND_NAMES)


def key_kind(data: bytes) -> str:
    """What kind of key file ``data`` holds, from its first line only (nothing is decrypted):
    ``public``, ``private`` (signing keys), ``age-identity``, ``age-encrypted`` (an identity
    behind a passphrase), ``age-recipient``, ``other-pem`` or ``unknown``; see
    :data:`KEY_KINDS` for how each reads. Station pre-flight uses it to tell an operator that
    a ``.pub`` was given as the signing key or an ``.age.pub`` as the age identity."""
    return _kind(data)


def _wrong_kind(path: Path | str, data: bytes, wanted: str) -> KeyFileError:
    return KeyFileError(f"{path}: expected {wanted}, but this is {_KIND_NAMES[_kind(data)]}")


def public_key_from_pem(pem: str | bytes, source: str = "<PEM>") -> PublicKey:
    """Parse a SubjectPublicKeyInfo PEM holding an ECDSA P-256 key."""
    data = pem.encode() if isinstance(pem, str) else pem
    if _kind(data) != "public":
        raise _wrong_kind(source, data, "a PEM public key (-----BEGIN PUBLIC KEY-----)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{source}: the public key PEM is truncated or corrupt ({type(exc).__name__})"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{source}: the public key is not ECDSA P-256")
    return PublicKey(key, source)


def load_public_key(path: Path | str) -> PublicKey:
    """Load ``NAME.pub``. A private key file here is an error (pass the ``.pub``)."""
    data = _read(path)
    return public_key_from_pem(data, str(path))


def load_signing_key(path: Path | str, passphrase: bytes | None) -> SigningKey:
    """Load ``NAME.key`` (encrypted PKCS#8 PEM) with its passphrase."""
    return signing_key_from_pem(_read(path), passphrase, str(path))


def signing_key_from_pem(data: bytes, passphrase: bytes | None, source: str) -> SigningKey:
    """Parse an (encrypted) PKCS#8 PEM signing key; ``source`` names it in messages."""
    path = source
    if _kind(data) != "private":
        raise _wrong_kind(path, data, "a signing private key (NAME.key)")
    encrypted = _pem_label(data) == _ENCRYPTED_LABEL or b"ENCRYPTED" in data[:200]
    if encrypted and not passphrase:
        raise PassphraseError(
            f"{path}: the key is encrypted and no passphrase was given "
            f"(use --passphrase-file or ${PASSPHRASE_ENV})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        # cryptography says "Bad decrypt. Incorrect password?" for a wrong passphrase and
        # names the structure problem otherwise; neither message holds key material.
        text = str(exc).lower()
        if encrypted and ("password" in text or "decrypt" in text or _outer_der_intact(data)):
            # A wrong passphrase decrypts to garbage whose padding happens to look valid
            # about once in 300 tries; cryptography then reports a parse error instead. An
            # intact outer structure means the file is whole, so the passphrase is wrong.
            raise PassphraseError(f"{path}: wrong passphrase for this key") from None
        raise KeyFileError(
            f"{path}: the private key PEM is truncated or corrupt ({type(exc).__name__})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: the private key is not an ECDSA key")
    return SigningKey(key, str(path))


def _outer_der_intact(pem: bytes) -> bool:
    """True if ``pem`` is one PEM block whose DER is a complete SEQUENCE, nothing missing.

    For an encrypted PKCS#8 key that outer SEQUENCE (EncryptedPrivateKeyInfo) is readable
    without the passphrase; cryptography offers no call that parses it alone.
    """
    lines = pem.strip().splitlines()
    if len(lines) < 3 or _pem_label(lines[0]) is None or not lines[-1].startswith(b"-----END "):
        return False
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        head, length = 2, der[1]
    else:
        size = der[1] & 0x7F
        if not 1 <= size <= 4 or len(der) < 2 + size:
            return False
        head, length = 2 + size, int.from_bytes(der[2 : 2 + size], "big")
    return head + length == len(der)


def _parse_age_secret(text: str, source: str) -> AgeIdentity:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    secrets = [ln for ln in lines if ln.startswith("AGE-SECRET-KEY-1")]
    if len(secrets) != 1:
        raise KeyFileError(f"{source}: expected exactly one age secret key line")
    try:
        return AgeIdentity(x25519.Identity.from_str(secrets[0]), source)
    except Exception:  # noqa: BLE001 - pyrage raises its own types; never echo the key
        raise KeyFileError(f"{source}: the age identity is truncated or corrupt") from None


#: How often a passphrase-protected identity is tried when age answers "excessive work".
_EXCESSIVE_WORK_ATTEMPTS = 5


def load_age_identity(path: Path | str, passphrase: bytes | None) -> AgeIdentity:
    """Load ``NAME.age``: a passphrase-protected (or plain) age X25519 identity file."""
    return age_identity_from_bytes(_read(path), passphrase, str(path))


def age_identity_from_bytes(data: bytes, passphrase: bytes | None, source: str) -> AgeIdentity:
    """Parse an age identity (plain or passphrase-protected); ``source`` names it."""
    path = source
    kind = _kind(data)
    if kind == "age-identity":
        return _parse_age_secret(data.decode("ascii", "replace"), str(path))
    if kind != "age-encrypted":
        raise _wrong_kind(path, data, "an age identity (NAME.age)")
    if not passphrase:
        raise PassphraseError(
            f"{path}: the age identity is passphrase-protected and no passphrase was given "
            f"(use --passphrase-file or ${PASSPHRASE_ENV})"
        )
    if _pem_label(data) == _AGE_ARMORED_LABEL:
        raise KeyFileError(f"{path}: armored age identity files are not supported; use binary")
    try:
        text = passphrase.decode("utf-8")
    except UnicodeDecodeError:
        raise PassphraseError(f"{path}: the passphrase is not valid UTF-8") from None
    for _attempt in range(_EXCESSIVE_WORK_ATTEMPTS):
        try:
            plain = pyrage.passphrase.decrypt(data, text)
            break
        except Exception as exc:  # noqa: BLE001 - pyrage.DecryptError and friends
            # age says "Decryption failed" when the passphrase does not open the header; a
            # cut or altered file gives other messages ("Incomplete header", "decryption
            # error"). "Excessive work" is age refusing a scrypt work factor more than 16x
            # what it measures this machine does in a second: a measurement a loaded machine
            # can get wrong, so it is measured again before giving up.
            said = str(exc).lower()
            if "decryption failed" in said:
                raise PassphraseError(f"{path}: wrong passphrase for this age identity") from None
            if "excessive work" not in said:
                raise KeyFileError(
                    f"{path}: the age identity file is truncated or corrupt"
                ) from None
    else:
        raise KeyFileError(
            f"{path}: age refuses the identity file's passphrase work factor as more than this "
            "machine can do now (age: excessive work); re-encrypt the identity on this machine "
            "(pht keys generate) or retry when it is less loaded"
        )
    return _parse_age_secret(plain.decode("ascii", "replace"), str(path))


def validate_recipient(text: str, source: str = "recipient") -> str:
    """Check an ``age1…`` X25519 recipient string; return it stripped."""
    value = text.strip() if isinstance(text, str) else ""
    if value.upper().startswith("AGE-SECRET-KEY-"):  # never echo any part of a secret
        raise KeyFileError(f"{source}: this is an age secret key, not a recipient (age1…)")
    if not value.startswith("age1"):
        raise KeyFileError(f"{source}: {value[:20]!r} is not an age recipient (age1…)")
    try:
        x25519.Recipient.from_str(value)
    except Exception:  # noqa: BLE001 - pyrage raises its own error type
        raise KeyFileError(
            f"{source}: {value[:20]!r}… is not a valid age X25519 recipient"
        ) from None
    return value


def load_recipient(path: Path | str) -> str:
    """Load ``NAME.age.pub``."""
    data = _read(path)
    if _kind(data) != "age-recipient":
        raise _wrong_kind(path, data, "an age recipient (NAME.age.pub)")
    lines = [ln for ln in data.decode("ascii", "replace").split("\n") if ln.strip()]
    first = next(ln for ln in lines if not ln.lstrip().startswith("#"))
    return validate_recipient(first, str(path))


def describe_key_file(path: Path | str, passphrase: bytes | None = None) -> dict[str, Any]:
    """What a key file is and its public identity; private parts need the passphrase."""
    data = _read(path)
    kind = _kind(data)
    info: dict[str, Any] = {"file": str(path), "type": _KIND_NAMES[kind]}
    if kind == "public":
        info["key_id"] = load_public_key(path).key_id
    elif kind == "private":
        if passphrase or b"ENCRYPTED" not in data[:200]:
            info["key_id"] = load_signing_key(path, passphrase).key_id
        else:
            info["key_id"] = "(give the passphrase to show it)"
    elif kind in ("age-identity", "age-encrypted"):
        if passphrase or kind == "age-identity":
            info["recipient"] = load_age_identity(path, passphrase).recipient
        else:
            info["recipient"] = "(give the passphrase to show it)"
    elif kind == "age-recipient":
        info["recipient"] = load_recipient(path)
    else:
        raise _wrong_kind(path, data, "a key file written by `pht keys generate`")
    return info


# --- passphrases and generation ------------------------------------------------------------


def passphrase_from(
    *,
    file: Path | str | None = None,
    prompt: bool = False,
    confirm: bool = False,
    env: str = PASSPHRASE_ENV,
) -> bytes:
    """The passphrase from a file (first line), ``$PHT_PASSPHRASE``, or a terminal prompt."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PassphraseError(f"{file}: cannot read the passphrase file") from exc
        value = text.splitlines()[0] if text.splitlines() else ""
        if not value:
            raise PassphraseError(f"{file}: the passphrase file is empty")
        return value.encode("utf-8")
    if os.environ.get(env):
        return os.environ[env].encode("utf-8")
    if prompt and sys.stdin.isatty():
        first = getpass.getpass("passphrase: ")
        if confirm and getpass.getpass("passphrase (again): ") != first:
            raise PassphraseError("the two passphrases differ")
        if not first:
            raise PassphraseError("the passphrase is empty")
        return first.encode("utf-8")
    raise PassphraseError(
        f"no passphrase: use --passphrase-file FILE, set ${env}, or run in a terminal"
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def generate_keypair(name: str, out_dir: Path | str, passphrase: bytes) -> dict[str, Path]:
    """Write NAME.key, NAME.pub, NAME.age and NAME.age.pub into ``out_dir``.

    Refuses to overwrite any existing file; on failure, removes what it wrote.
    Returns the paths keyed ``key``, ``pub``, ``age``, ``age_pub``.
    """
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise KeyFileError(f"key name {name!r} must be a plain file name (e.g. alice)")
    if not passphrase:
        raise PassphraseError("refusing to write private keys without a passphrase")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "key": out / f"{name}.key",
        "pub": out / f"{name}.pub",
        "age": out / f"{name}.age",
        "age_pub": out / f"{name}.age.pub",
    }
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise KeyFileError(f"refusing to overwrite existing key files: {', '.join(existing)}")
    signing = SigningKey.generate()
    identity = AgeIdentity.generate()
    secret = f"# created by pht keys generate\n# public key: {identity.recipient}\n"
    secret += identity.secret_text() + "\n"
    contents = {
        "key": (signing.private_pem(passphrase), 0o600),
        "pub": (signing.public.pem.encode("ascii"), 0o644),
        "age": (pyrage.passphrase.encrypt(secret.encode(), passphrase.decode("utf-8")), 0o600),
        "age_pub": ((identity.recipient + "\n").encode("ascii"), 0o644),
    }
    written: list[Path] = []
    try:
        for label, path in paths.items():
            data, mode = contents[label]
            _write_new(path, data, mode)
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return paths


def encode_signature(signature: bytes) -> str:
    """Base64 (standard alphabet) of a DER signature, as cosign stores it."""
    return base64.b64encode(signature).decode("ascii")
