"""`pht keys generate` and `pht keys show` through click's CliRunner, on real files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pht_airflow.cli import main
from pht_airflow.keys import load_age_identity, load_public_key

SECRET = "a cli passphrase nobody guesses"
FILES = ("bob.key", "bob.pub", "bob.age", "bob.age.pub")


def _run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    # PHT_PASSPHRASE unset unless a test sets it; CliRunner's stdin is never a terminal.
    full_env: dict[str, str | None] = {"PHT_PASSPHRASE": None}
    full_env.update(env or {})
    return CliRunner().invoke(main, list(args), env=full_env)


def _assert_no_secret(text: str) -> None:
    assert SECRET not in text
    assert "PRIVATE KEY" not in text
    assert "AGE-SECRET-KEY" not in text


@pytest.fixture(scope="module")
def passfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("pass") / "passphrase"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, passfile: Path) -> tuple[Path, Result]:
    """One `pht keys generate --name bob` run, shared (each run costs an scrypt)."""
    out = tmp_path_factory.mktemp("cli-keys") / "keys"
    result = _run(
        "keys", "generate", "--name", "bob", "--out", str(out), "--passphrase-file", str(passfile)
    )
    return out, result


def test_generate_writes_four_files(generated: tuple[Path, Result], passfile: Path) -> None:
    out, result = generated
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert stat.S_IMODE((out / "bob.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "bob.age").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "bob.pub").stat().st_mode) == 0o644
    # the files open with the passphrase from the file
    age = load_age_identity(out / "bob.age", SECRET.encode())
    assert (out / "bob.age.pub").read_text().strip() == age.recipient


def test_generate_output_shows_public_identity_only(generated: tuple[Path, Result]) -> None:
    out, result = generated
    key_id = load_public_key(out / "bob.pub").key_id
    recipient = (out / "bob.age.pub").read_text().strip()
    assert key_id in result.output
    assert recipient in result.output
    for name in FILES:
        assert str(out / name) in result.output
    _assert_no_secret(result.output)


def test_generate_again_refuses_and_changes_nothing(
    generated: tuple[Path, Result], passfile: Path
) -> None:
    out, _ = generated
    before = {name: (out / name).read_bytes() for name in FILES}
    result = _run(
        "keys", "generate", "--name", "bob", "--out", str(out), "--passphrase-file", str(passfile)
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: refusing to overwrite existing key files")
    assert str(out / "bob.key") in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert {name: (out / name).read_bytes() for name in FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_generate_with_passphrase_from_env(tmp_path: Path) -> None:
    out = tmp_path / "envkeys"
    result = _run(
        "keys", "generate", "--name", "carol", "--out", str(out), env={"PHT_PASSPHRASE": SECRET}
    )
    assert result.exit_code == 0, result.output
    _assert_no_secret(result.output)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["carol.key", "carol.pub", "carol.age", "carol.age.pub"])
    shown = _run("keys", "show", str(out / "carol.key"), "--json", env={"PHT_PASSPHRASE": SECRET})
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["key_id"] == load_public_key(out / "carol.pub").key_id


def test_generate_without_passphrase_source(tmp_path: Path) -> None:
    out = tmp_path / "nokeys"
    result = _run("keys", "generate", "--name", "dave", "--out", str(out))
    assert result.exit_code == 1
    assert "--passphrase-file" in result.stderr
    assert "PHT_PASSPHRASE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or list(out.iterdir()) == []


def test_generate_with_missing_passphrase_file(tmp_path: Path) -> None:
    result = _run(
        "keys",
        "generate",
        "--name",
        "erin",
        "--out",
        str(tmp_path / "k"),
        "--passphrase-file",
        str(tmp_path / "nope"),
    )
    assert result.exit_code == 1
    assert "cannot read the passphrase file" in result.stderr
    assert not (tmp_path / "k").exists() or list((tmp_path / "k").iterdir()) == []


def test_show_pub_prints_key_id(generated: tuple[Path, Result]) -> None:
    out, _ = generated
    result = _run("keys", "show", str(out / "bob.pub"))
    assert result.exit_code == 0, result.output
    assert f"key_id: {load_public_key(out / 'bob.pub').key_id}" in result.stdout
    assert "signing public key" in result.stdout


def test_show_recipient_json(generated: tuple[Path, Result]) -> None:
    out, _ = generated
    result = _run("keys", "show", str(out / "bob.age.pub"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["recipient"] == (out / "bob.age.pub").read_text().strip()
    assert data["file"] == str(out / "bob.age.pub")
    assert "age recipient" in data["type"]


def test_show_private_key_with_passphrase(generated: tuple[Path, Result], passfile: Path) -> None:
    out, _ = generated
    result = _run("keys", "show", str(out / "bob.key"), "--passphrase-file", str(passfile))
    assert result.exit_code == 0, result.output
    assert load_public_key(out / "bob.pub").key_id in result.stdout
    _assert_no_secret(result.output)


def test_show_private_key_without_passphrase_shows_no_id(generated: tuple[Path, Result]) -> None:
    out, _ = generated
    result = _run("keys", "show", str(out / "bob.key"))
    assert result.exit_code == 0, result.output
    assert "give the passphrase" in result.stdout
    assert load_public_key(out / "bob.pub").key_id not in result.stdout


def test_show_private_key_wrong_passphrase(generated: tuple[Path, Result], tmp_path: Path) -> None:
    out, _ = generated
    wrong = tmp_path / "wrong"
    wrong.write_text("definitely wrong\n")
    result = _run("keys", "show", str(out / "bob.key"), "--passphrase-file", str(wrong))
    assert result.exit_code == 1
    assert "wrong passphrase" in result.stderr
    assert str(out / "bob.key") in result.stderr
    assert "definitely wrong" not in result.output
    assert "Traceback" not in result.output


def test_show_age_identity_with_passphrase(generated: tuple[Path, Result], passfile: Path) -> None:
    out, _ = generated
    result = _run(
        "keys", "show", str(out / "bob.age"), "--passphrase-file", str(passfile), "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recipient"] == (out / "bob.age.pub").read_text().strip()
    _assert_no_secret(result.output)


def test_show_random_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("shopping list\n")
    result = _run("keys", "show", str(f))
    assert result.exit_code == 1
    assert str(f) in result.stderr
    assert "not a key file pht knows" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_show_missing_file(tmp_path: Path) -> None:
    result = _run("keys", "show", str(tmp_path / "ghost.pub"))
    assert result.exit_code == 1
    assert "no such key file" in result.stderr
