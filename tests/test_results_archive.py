"""The result archive on its own: deterministic tar, refusals, safe extraction, age interop.

The hostile archives of ``support/hostile_tar.py`` are refused here by the reader itself; the
same archives sealed as signed results are refused through the registry in
``test_results_artifact.py``. Property tests feed the reader arbitrary and mutated archives.

Covers ``pht_airflow/results/archive.py`` and, on the same archives, the age streams of
``pht_airflow/results/crypt.py``. These tests need no registry. The round trip through the
registry and the chain rules are in ``test_results_artifact.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile_tar import CASES

from pht_airflow.errors import PhtError, UnsafeArchiveError
from pht_airflow.keys import generate_age_identity
from pht_airflow.results.archive import (
    MAX_DEPTH,
    ArchiveReader,
    TarStream,
    plan_tar,
    safe_extract,
    tar_bytes,
    tar_size,
)
from pht_airflow.results.crypt import decrypt_stream, encrypt_stream


def make_output(root: Path) -> Path:
    """A small mixed output folder: nested folders, an empty file, non-ASCII names."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "counts.json").write_text('{"a": 1}\n')
    (root / "sub" / "Ärzte und Ñandú 统计.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    (root / "sub" / "deeper" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "sub" / "deeper" / "run.sh", 0o750)
    (root / "sub" / "deeper" / "blob.bin").write_bytes(os.urandom(70_000))
    return root


def test_same_folder_gives_the_same_tar_bytes(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    first = tar_bytes(out)
    # Different mtimes, a different copy of the same content: the archive does not change.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    assert tar_bytes(copy) == first
    assert tar_bytes(out) == first


def test_tar_size_is_exact(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    entries = plan_tar(out)
    assert len(tar_bytes(out)) == tar_size(entries)


def test_tar_members_are_sorted_and_normalised(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(out))) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names[0] == "counts.json"
    assert "sub/Ärzte und Ñandú 统计.csv" in names
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["sub/deeper/run.sh"] == 0o755
    assert modes["counts.json"] == 0o644
    assert modes["sub"] == 0o755


def test_gnu_tar_lists_the_archive(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    archive = tmp_path / "result.tar"
    archive.write_bytes(tar_bytes(out))
    listing = subprocess.run(
        ["tar", "-tf", str(archive)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert "sub/Ärzte und Ñandú 统计.csv" in listing
    assert "sub/deeper/blob.bin" in listing


def test_symlink_in_output_is_refused_naming_the_path(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "sub" / "escape").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match=r"sub/escape: symbolic links are not allowed"):
        plan_tar(out)


def test_symlink_to_a_folder_inside_is_refused_too(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "alias").symlink_to(out / "sub")
    with pytest.raises(UnsafeArchiveError, match=r"alias: symbolic links"):
        plan_tar(out)


def test_fifo_in_output_is_refused(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    os.mkfifo(out / "pipe")
    with pytest.raises(UnsafeArchiveError, match=r"pipe: a FIFO is not allowed"):
        plan_tar(out)


def test_output_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeArchiveError, match="is not a folder"):
        plan_tar(tmp_path / "file")


def test_file_that_grows_while_sealing_fails(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    entries = plan_tar(out)
    with open(out / "counts.json", "a") as f:
        f.write("more\n")
    with pytest.raises(UnsafeArchiveError, match="changed size"):
        TarStream(entries).read()


# --- safe extraction of crafted archives ------------------------------------------------


def crafted(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    """Build a tar in memory from hand-made members (the attacks below)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def file_member(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_member("../escape.txt"), r"'\.\.' is not allowed"),
        (file_member("a/../../escape.txt"), r"'\.\.' is not allowed"),
        (file_member("/etc/cron.d/evil"), "absolute paths are not allowed"),
        (link_member("innocent", "/etc/passwd"), "links are not allowed"),
        (link_member("hard", "/etc/shadow", tarfile.LNKTYPE), "links are not allowed"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_safe_extract_refuses_crafted_member(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(crafted(member), dest)
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_refuses_symlink_then_write_through_it(tmp_path: Path) -> None:
    """The classic escape: a link to a folder outside, then a file 'inside' the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = crafted(link_member("data", str(outside)), file_member("data/planted.txt"))
    with pytest.raises(UnsafeArchiveError, match="links are not allowed"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_safe_extract_refuses_device_files(tmp_path: Path) -> None:
    info = tarfile.TarInfo("dev-null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="special files are not allowed"):
        safe_extract(crafted((info, None)), dest)


def test_safe_extract_enforces_the_size_limit(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = crafted(file_member("a.bin", b"x" * 600), file_member("b.bin", b"y" * 600))
    with pytest.raises(UnsafeArchiveError, match="more than the extraction limit of 1000 bytes"):
        safe_extract(archive, dest, max_bytes=1000)


def test_safe_extract_round_trips_a_sealed_folder(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    dest = tmp_path / "dest"
    dest.mkdir()
    stats = safe_extract(io.BytesIO(tar_bytes(out)), dest)
    assert stats.files == 5
    for p in out.rglob("*"):
        q = dest / p.relative_to(out)
        assert q.is_dir() if p.is_dir() else q.read_bytes() == p.read_bytes()


# --- age ----------------------------------------------------------------------------------


def test_encrypted_archive_opens_with_the_age_cli_and_gnu_tar(tmp_path: Path) -> None:
    """Interop: a sealed archive is plain age; `age -d -i` and GNU tar read it."""
    if shutil.which("age") is None:
        pytest.fail("the age CLI is missing: run scripts/bootstrap.sh", pytrace=False)
    out = make_output(tmp_path / "out")
    identity = generate_age_identity()
    ciphertext = b"".join(encrypt_stream(TarStream(plan_tar(out)), [identity.recipient]))
    (tmp_path / "result.age").write_bytes(ciphertext)
    key_file = tmp_path / "id.txt"
    key_file.write_text(identity.secret_text() + "\n")
    key_file.chmod(0o600)
    plain = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(tmp_path / "result.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert plain == tar_bytes(out)
    listing = subprocess.run(
        ["tar", "-tvf", "-"], input=plain, check=True, capture_output=True
    ).stdout.decode()
    assert "sub/deeper/run.sh" in listing


def test_decrypt_with_a_non_recipient_identity_fails_clearly(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    ciphertext = b"".join(
        encrypt_stream(TarStream(plan_tar(out)), [generate_age_identity().recipient])
    )
    stranger = generate_age_identity()
    with pytest.raises(PhtError, match="is not a recipient of the result"):
        b"".join(decrypt_stream([ciphertext], stranger))


def test_encrypt_decrypt_streams_in_chunks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    a, b = generate_age_identity(), generate_age_identity()
    chunks = list(encrypt_stream(TarStream(plan_tar(out)), [a.recipient, b.recipient]))
    assert len(chunks) > 1 and max(len(c) for c in chunks) < 2 * 1024 * 1024
    for who in (a, b):
        assert b"".join(decrypt_stream(iter(chunks), who)) == tar_bytes(out)


# --- the strict reader: one rule per hostile archive -------------------------------------


def _consume(data: bytes, length: int | None) -> list[str]:
    """Read an archive to the end without writing anything; return the entry names."""
    names = []
    for member, chunks in ArchiveReader(io.BytesIO(data), length=length).members():
        names.append(member.name)
        for _ in chunks:
            pass
    return names


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_refuses_each_hostile_archive_naming_the_rule(case: str, tmp_path: Path) -> None:
    build, message = CASES[case]
    data = build()
    with pytest.raises(UnsafeArchiveError, match=message):
        _consume(data, len(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(io.BytesIO(data), dest, length=len(data))
    assert not (tmp_path / "escape.txt").exists()


def test_reader_accepts_the_writers_archive_and_checks_its_length(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    data = tar_bytes(out)
    assert _consume(data, len(data))[0] == "counts.json"
    with pytest.raises(UnsafeArchiveError, match="ends before its signed length"):
        _consume(data, len(data) + 512)
    with pytest.raises(UnsafeArchiveError, match="longer than its signed length"):
        _consume(data + bytes(512), len(data))
    with pytest.raises(UnsafeArchiveError, match=r"ends early \(truncated\)"):
        _consume(data[:1000], None)


def test_sealing_refuses_names_the_reader_would_refuse(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "line\nbreak.csv").write_text("x")
    with pytest.raises(UnsafeArchiveError, match=r"'line\\nbreak.csv': control characters"):
        plan_tar(out)
    out = make_output(tmp_path / "deep")
    deep = out.joinpath(*["d"] * (MAX_DEPTH + 1))
    deep.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError, match=f"deeper than {MAX_DEPTH} levels"):
        plan_tar(out)


# --- property tests: only PhtError ever escapes the reader --------------------------------

_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(data=st.binary(max_size=4096), exact=st.booleans())
def test_reader_on_arbitrary_bytes_raises_only_pht_errors(data: bytes, exact: bool) -> None:
    with contextlib.suppress(PhtError):
        _consume(data, len(data) if exact else None)


def _sample_archive() -> tuple[bytes, list[int]]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "sub").mkdir()
        (out / "sub" / "Größe – 统计.csv").write_text("a,b\n1,2\n", encoding="utf-8")
        (out / "sub" / ("long-" * 30 + ".txt")).write_text("x" * 700)
        (out / "run.sh").write_text("#!/bin/sh\n")
        data = tar_bytes(out)
    headers = []
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for info in archive.getmembers():
            headers.append(info.offset)
            if info.offset_data - info.offset > 512:  # a PAX header before the member
                headers.append(info.offset_data - 512)
    return data, headers


_VALID, _HEADERS = _sample_archive()
_POSITIONS = st.one_of(
    st.integers(0, len(_VALID) - 1),
    st.sampled_from(_HEADERS).flatmap(lambda at: st.integers(at, at + 511)),
)


@_PROPERTY
@given(
    flips=st.lists(st.tuples(_POSITIONS, st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, len(_VALID))),
    exact=st.booleans(),
)
def test_extracting_mutated_archives_raises_only_pht_errors(
    flips: list[tuple[int, int]], cut: int | None, exact: bool
) -> None:
    data = bytearray(_VALID)
    for at, value in flips:
        data[at] = value
    mutated = bytes(data[:cut] if cut is not None else data)
    with tempfile.TemporaryDirectory() as folder, contextlib.suppress(PhtError):
        safe_extract(io.BytesIO(mutated), Path(folder), length=len(_VALID) if exact else None)
