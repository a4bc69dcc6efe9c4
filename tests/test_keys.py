"""Key files and in-memory keys (PROTOCOL.md "Keys"): formats, ids, errors, age interop.

The age files are checked against the real Debian ``age`` / ``age-keygen`` binaries, and the
signing key files against ``cryptography`` directly, so a format drift fails here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
from pathlib import Path

import pyrage
import pytest
from conftest import PASSPHRASE
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pyrage import x25519

from pht_airflow import keys
from pht_airflow.errors import KeyFileError, PassphraseError
from pht_airflow.keys import (
    AgeIdentity,
    PublicKey,
    SigningKey,
    generate_keypair,
    key_id_of,
    load_age_identity,
    load_public_key,
    load_recipient,
    load_signing_key,
    passphrase_from,
    public_key_from_pem,
    validate_recipient,
)

AGE = "/usr/bin/age"
AGE_KEYGEN = "/usr/bin/age-keygen"


def _independent_key_id(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _need(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not installed (apt-get install age)")


@pytest.fixture(scope="module")
def alice_age(key_files: dict[str, Path]) -> AgeIdentity:
    """alice's age identity, opened once (scrypt makes each load cost about a second)."""
    return load_age_identity(key_files["age"], PASSPHRASE)


# --- the four files ------------------------------------------------------------------------


def test_generate_writes_four_files_with_modes(key_files: dict[str, Path]) -> None:
    folder = key_files["key"].parent
    assert {p.name for p in folder.iterdir()} >= {
        "alice.key",
        "alice.pub",
        "alice.age",
        "alice.age.pub",
    }
    assert key_files["key"] == folder / "alice.key"
    assert key_files["pub"] == folder / "alice.pub"
    assert key_files["age"] == folder / "alice.age"
    assert key_files["age_pub"] == folder / "alice.age.pub"
    labels = ("key", "pub", "age", "age_pub")
    modes = {label: stat.S_IMODE(key_files[label].stat().st_mode) for label in labels}
    assert modes == {"key": 0o600, "pub": 0o644, "age": 0o600, "age_pub": 0o644}
    for label in labels:
        assert key_files[label].is_file() and key_files[label].stat().st_size > 0


def _pem_labels(data: bytes) -> tuple[str, str]:
    """The labels of a single PEM block's BEGIN and END lines (RFC 7468), checked whole."""
    match = re.fullmatch(r"-----BEGIN ([A-Z ]+)-----\n[A-Za-z0-9+/=\n]+\n-----END ([A-Z ]+)-----\n",
                         data.decode("ascii"))  # fmt: skip
    assert match is not None, "not a single PEM block"
    return match.group(1), match.group(2)


def test_key_file_is_encrypted_pkcs8_p256(key_files: dict[str, Path]) -> None:
    data = key_files["key"].read_bytes()
    assert _pem_labels(data) == ("ENCRYPTED PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
    with pytest.raises(TypeError):  # cryptography: encrypted, but no password given
        serialization.load_pem_private_key(data, password=None)
    private = serialization.load_pem_private_key(data, password=PASSPHRASE)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP256R1)


def test_pub_file_is_spki_pem_and_key_id_is_sha256_of_der(key_files: dict[str, Path]) -> None:
    data = key_files["pub"].read_bytes()
    assert _pem_labels(data) == ("PUBLIC KEY", "PUBLIC KEY")
    public = serialization.load_pem_public_key(data)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    expected = _independent_key_id(public)

    loaded = load_public_key(key_files["pub"])
    assert loaded.key_id == expected
    assert loaded.pem.encode() == data
    private = load_signing_key(key_files["key"], PASSPHRASE)
    assert private.key_id == expected
    assert private.public == loaded
    assert private.source == str(key_files["key"])


def test_key_id_of_matches_independent_computation() -> None:
    key = SigningKey.generate()
    raw = key.public.key
    assert key.key_id == _independent_key_id(raw) == key_id_of(raw)
    assert key.key_id.startswith("sha256:") and len(key.key_id) == 7 + 64
    assert SigningKey.generate().key_id != key.key_id


def test_age_pub_file_holds_the_recipient(
    key_files: dict[str, Path], alice_age: AgeIdentity
) -> None:
    text = key_files["age_pub"].read_text()
    assert text == alice_age.recipient + "\n"
    assert load_recipient(key_files["age_pub"]) == alice_age.recipient
    assert alice_age.source == str(key_files["age"])


# --- signing ---------------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    key = SigningKey.generate()
    data = b"sha256:" + b"ab" * 32
    signature = key.sign(data)
    assert key.public.verify(signature, data)
    assert not key.public.verify(signature, data + b"x")
    assert not key.public.verify(b"\x30\x02\x00\x00", data)
    assert not key.public.verify(b"", data)
    assert not SigningKey.generate().public.verify(signature, data)
    # a plain DER ECDSA-SHA256 signature, as cosign makes and checks
    key.public.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    theirs = ec.generate_private_key(ec.SECP256R1())
    foreign = PublicKey(theirs.public_key())
    assert foreign.verify(theirs.sign(data, ec.ECDSA(hashes.SHA256())), data)


def test_loaded_key_signs_for_the_pub_file(key_files: dict[str, Path]) -> None:
    key = load_signing_key(key_files["key"], PASSPHRASE)
    public = load_public_key(key_files["pub"])
    assert public.verify(key.sign(b"payload"), b"payload")


def test_private_pem_needs_a_passphrase_and_round_trips() -> None:
    key = SigningKey.generate()
    with pytest.raises(PassphraseError):
        key.private_pem(b"")
    pem = key.private_pem(b"pw")
    assert _pem_labels(pem)[0] == "ENCRYPTED PRIVATE KEY"
    again = keys.signing_key_from_pem(pem, b"pw", "memory")
    assert again.key_id == key.key_id


def test_signing_key_refuses_other_curves() -> None:
    with pytest.raises(KeyFileError, match="P-256"):
        SigningKey(ec.generate_private_key(ec.SECP384R1()))


# --- passphrases -----------------------------------------------------------------------------


def test_wrong_passphrase_for_key(key_files: dict[str, Path]) -> None:
    wrong = b"not the passphrase at all"
    with pytest.raises(PassphraseError) as info:
        load_signing_key(key_files["key"], wrong)
    msg = str(info.value)
    assert str(key_files["key"]) in msg
    assert "wrong passphrase" in msg
    assert wrong.decode() not in msg and PASSPHRASE.decode() not in msg


def test_wrong_passphrase_for_age(key_files: dict[str, Path]) -> None:
    wrong = b"not the passphrase at all"
    with pytest.raises(PassphraseError) as info:
        load_age_identity(key_files["age"], wrong)
    msg = str(info.value)
    assert str(key_files["age"]) in msg
    assert "wrong passphrase" in msg
    assert wrong.decode() not in msg and PASSPHRASE.decode() not in msg


@pytest.mark.parametrize("passphrase", [None, b""])
def test_no_passphrase(key_files: dict[str, Path], passphrase: bytes | None) -> None:
    with pytest.raises(PassphraseError, match="no passphrase was given") as info:
        load_signing_key(key_files["key"], passphrase)
    assert str(key_files["key"]) in str(info.value)
    with pytest.raises(PassphraseError, match="no passphrase was given") as info:
        load_age_identity(key_files["age"], passphrase)
    assert str(key_files["age"]) in str(info.value)


def test_passphrase_from_file_first_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHT_PASSPHRASE", "from the environment")
    f = tmp_path / "pass"
    f.write_text("first line \nsecond line\n")
    assert passphrase_from(file=f) == b"first line "  # the file wins over the environment
    f.write_text("no newline")
    assert passphrase_from(file=f) == b"no newline"
    f.write_text("crlf\r\n")
    assert passphrase_from(file=f) == b"crlf"


def test_passphrase_from_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(PassphraseError, match="empty"):
        passphrase_from(file=empty)
    blank = tmp_path / "blank"
    blank.write_text("\nsecret on line two\n")
    with pytest.raises(PassphraseError, match="empty"):
        passphrase_from(file=blank)
    with pytest.raises(PassphraseError, match="cannot read") as info:
        passphrase_from(file=tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHT_PASSPHRASE", "from the environment")
    assert passphrase_from() == b"from the environment"
    monkeypatch.setenv("OTHER_VAR", "other")
    assert passphrase_from(env="OTHER_VAR") == b"other"


def test_passphrase_from_nothing_and_no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHT_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    for prompt in (False, True):
        with pytest.raises(PassphraseError) as info:
            passphrase_from(prompt=prompt)
        assert "--passphrase-file" in str(info.value)
        assert "PHT_PASSPHRASE" in str(info.value)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_passphrase_prompt_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHT_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", _Tty(""))
    answers = iter(["typed", "typed", "one", "two"])
    monkeypatch.setattr(keys.getpass, "getpass", lambda prompt="": next(answers))
    assert passphrase_from(prompt=True, confirm=True) == b"typed"
    with pytest.raises(PassphraseError, match="differ"):
        passphrase_from(prompt=True, confirm=True)


# --- wrong, broken and missing files -----------------------------------------------------------


def test_pub_passed_as_private_key(key_files: dict[str, Path]) -> None:
    with pytest.raises(KeyFileError) as info:
        load_signing_key(key_files["pub"], PASSPHRASE)
    msg = str(info.value)
    assert not isinstance(info.value, PassphraseError)
    assert str(key_files["pub"]) in msg
    assert "expected a signing private key (NAME.key)" in msg
    assert "but this is a signing public key (NAME.pub)" in msg


def test_key_passed_as_public_key(key_files: dict[str, Path]) -> None:
    with pytest.raises(KeyFileError) as info:
        load_public_key(key_files["key"])
    msg = str(info.value)
    assert str(key_files["key"]) in msg
    assert "expected a PEM public key" in msg
    assert "but this is a signing private key (NAME.key)" in msg


def test_recipient_passed_as_age_identity(key_files: dict[str, Path]) -> None:
    with pytest.raises(KeyFileError) as info:
        load_age_identity(key_files["age_pub"], PASSPHRASE)
    msg = str(info.value)
    assert not isinstance(info.value, PassphraseError)
    assert str(key_files["age_pub"]) in msg
    assert "expected an age identity (NAME.age)" in msg
    assert "but this is an age recipient (NAME.age.pub)" in msg


def test_identity_passed_as_recipient(key_files: dict[str, Path]) -> None:
    with pytest.raises(KeyFileError, match=r"expected an age recipient .*passphrase-protected"):
        load_recipient(key_files["age"])


def test_random_text_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("just some notes\nnothing to see\n")
    loaders = [
        lambda: load_public_key(f),
        lambda: load_signing_key(f, PASSPHRASE),
        lambda: load_age_identity(f, PASSPHRASE),
        lambda: load_recipient(f),
    ]
    for load in loaders:
        with pytest.raises(KeyFileError) as info:
            load()
        msg = str(info.value)
        assert not isinstance(info.value, PassphraseError)
        assert str(f) in msg
        assert "expected" in msg
        assert "not a key file pht knows" in msg


def test_other_pem_kind(tmp_path: Path) -> None:
    f = tmp_path / "cert.pem"
    f.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeyFileError, match="a PEM file of another kind"):
        load_public_key(f)


def _without_middle_line(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    assert len(lines) >= 4
    middle = len(lines) // 2
    return b"".join(lines[:middle] + lines[middle + 1 :])


@pytest.mark.parametrize("how", ["first-100-bytes", "middle-line-removed"])
def test_truncated_public_pem(key_files: dict[str, Path], tmp_path: Path, how: str) -> None:
    data = key_files["pub"].read_bytes()
    broken = data[:100] if how == "first-100-bytes" else _without_middle_line(data)
    f = tmp_path / "broken.pub"
    f.write_bytes(broken)
    with pytest.raises(KeyFileError, match="truncated or corrupt") as info:
        load_public_key(f)
    assert str(f) in str(info.value)
    with pytest.raises(KeyFileError, match="truncated or corrupt"):
        public_key_from_pem(broken.decode())


@pytest.mark.parametrize("how", ["first-100-bytes", "middle-line-removed"])
def test_truncated_private_pem(key_files: dict[str, Path], tmp_path: Path, how: str) -> None:
    data = key_files["key"].read_bytes()
    broken = data[:100] if how == "first-100-bytes" else _without_middle_line(data)
    f = tmp_path / "broken.key"
    f.write_bytes(broken)
    with pytest.raises(KeyFileError, match="truncated or corrupt") as info:
        load_signing_key(f, PASSPHRASE)
    # a broken file is not reported as a wrong passphrase
    assert not isinstance(info.value, PassphraseError)
    assert str(f) in str(info.value)


def test_a_wrong_passphrase_is_named_even_when_the_garbage_parses_as_padding(
    tmp_path: Path,
) -> None:
    """About one wrong passphrase in 300 decrypts to bytes with valid padding, and
    cryptography then reports a parse error, not a wrong password. It is still a wrong
    passphrase, not a damaged file."""
    key = SigningKey.generate()
    data = key.private_pem(b"the right one")
    f = tmp_path / "k.key"
    f.write_bytes(data)
    for i in range(20_000):
        wrong = b"wrong-%d" % i
        try:
            serialization.load_pem_private_key(data, password=wrong)
        except ValueError as exc:
            if "password" not in str(exc).lower():
                break
    else:
        pytest.fail("no wrong passphrase of 20 000 decrypted to valid padding")
    with pytest.raises(PassphraseError, match="wrong passphrase for this key"):
        load_signing_key(f, wrong)


@pytest.mark.parametrize("keep", [100, -10])
def test_truncated_age_identity(key_files: dict[str, Path], tmp_path: Path, keep: int) -> None:
    data = key_files["age"].read_bytes()
    f = tmp_path / "broken.age"
    f.write_bytes(data[:keep])
    with pytest.raises(KeyFileError, match="truncated or corrupt") as info:
        load_age_identity(f, PASSPHRASE)
    assert not isinstance(info.value, PassphraseError)
    assert str(f) in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.pub"
    f.write_bytes(b"")
    with pytest.raises(KeyFileError, match="empty") as info:
        load_public_key(f)
    assert str(f) in str(info.value)
    f.write_bytes(b"\n  \n")
    with pytest.raises(KeyFileError, match="empty"):
        load_signing_key(f, PASSPHRASE)


def test_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nobody.pub"
    for load in (lambda: load_public_key(f), lambda: load_age_identity(f, PASSPHRASE)):
        with pytest.raises(KeyFileError, match="no such key file") as info:
            load()
        assert str(f) in str(info.value)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a folder") as info:
        load_signing_key(tmp_path, PASSPHRASE)
    assert str(tmp_path) in str(info.value)


def test_too_large_file(tmp_path: Path) -> None:
    f = tmp_path / "huge.pub"
    f.write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * (keys.MAX_KEY_FILE_BYTES + 10))
    with pytest.raises(KeyFileError, match="too large"):
        load_public_key(f)


def test_p384_public_key_refused() -> None:
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not ECDSA P-256") as info:
        public_key_from_pem(pem, "their.pub")
    assert "their.pub" in str(info.value)


def test_ed25519_public_key_refused() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not ECDSA P-256"):
        public_key_from_pem(pem)


def test_public_key_from_pem_accepts_str_and_bytes() -> None:
    key = SigningKey.generate()
    assert public_key_from_pem(key.public.pem).key_id == key.key_id
    assert public_key_from_pem(key.public.pem.encode()).key_id == key.key_id


# --- generate_keypair refusals ---------------------------------------------------------------


def test_refuses_to_overwrite_existing_files(key_files: dict[str, Path]) -> None:
    folder = key_files["key"].parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(KeyFileError, match="refusing to overwrite") as info:
        generate_keypair("alice", folder, PASSPHRASE)
    assert str(key_files["key"]) in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_refuses_if_any_one_file_exists(tmp_path: Path) -> None:
    existing = tmp_path / "bob.age.pub"
    existing.write_text("age1 mine, do not touch\n")
    with pytest.raises(KeyFileError, match="refusing to overwrite") as info:
        generate_keypair("bob", tmp_path, PASSPHRASE)
    assert str(existing) in str(info.value)
    assert str(tmp_path / "bob.key") not in str(info.value)
    assert existing.read_text() == "age1 mine, do not touch\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob.age.pub"]


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "tab\there"])
def test_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="plain file name"):
        generate_keypair(name, tmp_path / "out", PASSPHRASE)
    assert not (tmp_path / "out").exists()


def test_refuses_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(PassphraseError):
        generate_keypair("bob", tmp_path, b"")
    assert list(tmp_path.iterdir()) == []


# --- age recipients and interop ------------------------------------------------------------


def test_validate_recipient(alice_age: AgeIdentity) -> None:
    real = alice_age.recipient
    assert validate_recipient(real) == real
    assert validate_recipient(f"  {real}\n") == real
    assert validate_recipient(str(x25519.Identity.generate().to_public())).startswith("age1")
    flipped = real[:-1] + ("q" if real[-1] != "q" else "p")  # breaks the bech32 checksum
    bad = [
        "garbage",
        "",
        "age1",
        "age1" + "x" * 58,
        "age1" + "q" * 58,
        flipped,
        real.upper()[:-1],
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI",
    ]
    for value in bad:
        with pytest.raises(KeyFileError, match="recipient") as info:
            validate_recipient(value, "the field")
        assert str(info.value).startswith("the field: ")


def test_validate_recipient_never_echoes_a_secret_key(alice_age: AgeIdentity) -> None:
    secret = alice_age.secret_text()
    with pytest.raises(KeyFileError) as info:
        validate_recipient(secret, "recipient")
    msg = str(info.value)
    assert "recipient" in msg
    # not even the first characters of the secret past its fixed prefix
    assert secret[len("AGE-SECRET-KEY-1") :][:4] not in msg


def test_age_cli_encrypts_to_our_recipient(
    key_files: dict[str, Path], alice_age: AgeIdentity
) -> None:
    _need(AGE)
    recipient = key_files["age_pub"].read_text().strip()
    done = subprocess.run(
        [AGE, "-e", "-r", recipient], input=b"hello", capture_output=True, check=True
    )
    assert done.stdout.startswith(b"age-encryption.org/v1\n-> X25519 ")
    assert pyrage.decrypt(done.stdout, [alice_age.identity]) == b"hello"
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(done.stdout, [x25519.Identity.generate()])


def test_age_cli_decrypts_with_our_identity(alice_age: AgeIdentity, tmp_path: Path) -> None:
    _need(AGE)
    identity_file = tmp_path / "identity.txt"
    identity_file.touch(mode=0o600)
    identity_file.write_text(alice_age.secret_text() + "\n")
    sealed = pyrage.encrypt(b"result bytes", [x25519.Recipient.from_str(alice_age.recipient)])
    done = subprocess.run(
        [AGE, "-d", "-i", str(identity_file)], input=sealed, capture_output=True, check=True
    )
    assert done.stdout == b"result bytes"


def test_age_file_decrypts_to_the_matching_identity(
    key_files: dict[str, Path], tmp_path: Path
) -> None:
    plain = pyrage.passphrase.decrypt(key_files["age"].read_bytes(), PASSPHRASE.decode()).decode()
    secrets = [ln for ln in plain.splitlines() if ln.startswith("AGE-SECRET-KEY-1")]
    assert len(secrets) == 1
    recipient = key_files["age_pub"].read_text().strip()
    assert str(x25519.Identity.from_str(secrets[0]).to_public()) == recipient
    # and age-keygen agrees on the recipient of that identity
    if os.access(AGE_KEYGEN, os.X_OK):
        identity_file = tmp_path / "identity.txt"
        identity_file.touch(mode=0o600)
        identity_file.write_text(plain)
        done = subprocess.run(
            [AGE_KEYGEN, "-y", str(identity_file)], capture_output=True, check=True, text=True
        )
        assert done.stdout.strip() == recipient


def test_plain_age_identity_file_loads_without_passphrase(tmp_path: Path) -> None:
    identity = AgeIdentity.generate()
    f = tmp_path / "plain.age"
    f.write_text(f"# created: now\n# public key: {identity.recipient}\n{identity.secret_text()}\n")
    loaded = load_age_identity(f, None)
    assert loaded.recipient == identity.recipient
    f.write_text(f"{identity.secret_text()}\n{AgeIdentity.generate().secret_text()}\n")
    with pytest.raises(KeyFileError, match="exactly one"):
        load_age_identity(f, None)


# --- secrets never shown -------------------------------------------------------------------


def test_repr_and_str_hold_no_secret(key_files: dict[str, Path], alice_age: AgeIdentity) -> None:
    signing = load_signing_key(key_files["key"], PASSPHRASE)
    unencrypted = signing._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body = "".join(unencrypted.splitlines()[1:-1])
    for text in (repr(signing), str(signing), f"{signing}", repr([signing])):
        assert "PRIVATE" not in text
        assert body[-40:] not in text
        assert signing.key_id in text
        assert PASSPHRASE.decode() not in text
    secret = alice_age.secret_text()
    assert secret.startswith("AGE-SECRET-KEY-1")
    for text in (repr(alice_age), str(alice_age), f"{alice_age}", repr({"a": alice_age})):
        assert "AGE-SECRET-KEY" not in text
        assert secret[16:40] not in text
        assert alice_age.recipient in text
    fresh = AgeIdentity.generate()
    assert "AGE-SECRET-KEY" not in repr(fresh) and fresh.secret_text()[16:] not in repr(fresh)


def test_age_keygen_files_load(tmp_path: Path) -> None:
    """Files written by the real ``age-keygen`` (with its ``# created`` comments) load."""
    _need(AGE_KEYGEN)
    identity_file = tmp_path / "key.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(identity_file)], capture_output=True, check=True)
    assert identity_file.read_text().startswith("# created: ")
    recipient_file = tmp_path / "key.txt.pub"
    done = subprocess.run(
        [AGE_KEYGEN, "-y", "-o", str(recipient_file), str(identity_file)],
        capture_output=True,
        check=True,
    )
    assert done.returncode == 0
    loaded = load_age_identity(identity_file, None)
    assert loaded.recipient == recipient_file.read_text().strip()
    commented = tmp_path / "commented.age.pub"
    commented.write_text(f"# station-a\n{loaded.recipient}\n")
    assert load_recipient(commented) == loaded.recipient


def test_an_age_identity_age_refuses_as_excessive_work_says_so(tmp_path: Path) -> None:
    """age refuses a scrypt work factor far above what it measures this machine does in a
    second ("excessive work"); on a loaded machine that measurement can be wrong, so the
    identity is tried again, and a factor no measurement allows gets its own message (not
    "truncated or corrupt")."""
    import re

    import pyrage

    from pht_airflow.errors import KeyFileError
    from pht_airflow.keys import age_identity_from_bytes, generate_age_identity

    identity = generate_age_identity()
    secret = str(identity.identity).encode()
    data = pyrage.passphrase.encrypt(secret, "pw")
    assert age_identity_from_bytes(data, b"pw", "x.age").recipient == identity.recipient
    heavy = re.sub(rb"(-> scrypt \S+) \d+\n", rb"\1 60\n", data, count=1)
    assert heavy != data
    with pytest.raises(KeyFileError) as caught:
        age_identity_from_bytes(heavy, b"pw", "x.age")
    assert "excessive work" in str(caught.value)
    assert "truncated or corrupt" not in str(caught.value)
