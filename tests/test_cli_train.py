"""The researcher's and reviewer's workflow through the `pht` command line, end to end.

Real engine (the image is built from `pht train init`'s starter on `pht-local/python:3.11`),
real registry. The stations' part is played by :func:`pht_airflow.results.seal` with the
stations' keys, which is exactly what a station's execute step calls.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE
from support.stationkit import make_train_spec, sign_train, signed_train

from pht_airflow.cli import main
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import TRAIN_LABEL
from pht_airflow.researcher.train import push_image
from pht_airflow.results import seal
from pht_airflow.signing import sign
from pht_airflow.spec import read_spec

pytestmark = [pytest.mark.registry, pytest.mark.docker]


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, key_files: dict[str, Path], parties: Any
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("researcher")
    reviewer = root / "reviewer.key"
    reviewer.write_bytes(parties["reviewer"].key.private_pem(PASSPHRASE))
    (root / "reviewer.pub").write_text(parties["reviewer"].public.pem)
    lines = ["stations:"]
    for s in ("station-a", "station-b"):
        (root / f"{s}.pub").write_text(parties[s].public.pem)
        lines += [f"  {s}:", f"    key: {s}.pub", f"    recipient: {parties[s].age.recipient}"]
    (root / "stations.yaml").write_text("\n".join(lines) + "\n")
    return {"root": root, "reviewer": reviewer, "reviewer_pub": root / "reviewer.pub"}


@pytest.fixture(scope="module")
def built(
    workspace: dict[str, Path], key_files: dict[str, Path], registry: Any, docker_client: Any
) -> dict[str, Any]:
    folder = workspace["root"] / "analysis"
    result = _run("train", "init", str(folder))
    assert result.exit_code == 0, result.output
    assert (folder / "Dockerfile").read_text().startswith("# A PHT train")
    assert "FROM pht-local/python:3.11" in (folder / "Dockerfile").read_text()
    result = _run(
        "train", "build", str(folder), "--route", "station-a,station-b",
        "--mode", "sequential", "--dataset", "cohort",
        "--creator-key", str(key_files["key"]),
        "--stations", str(workspace["root"] / "stations.yaml"),
        "--push", f"{registry.host}/pht-incoming", "--expires", "7d",
        "--passphrase-file", str(key_files["passphrase"]), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    info["pinned"] = f"{info['reference'].rsplit(':', 1)[0]}@{info['digest']}"
    return info


def test_build_pushes_a_signed_train_with_the_route_keys(
    built: dict[str, Any], key_files: dict[str, Path], registry: Any, parties: Any
) -> None:
    ref = Reference.parse(built["pinned"])
    assert ref.repository == f"pht-incoming/{built['id']}"
    with RegistryClient(registry.host) as client:
        spec, digest = read_spec(client, ref)
    assert digest == built["digest"]
    assert [r.station for r in spec.route] == ["station-a", "station-b"]
    assert spec.route[0].key_id == parties["station-a"].key.key_id
    assert spec.creator.recipient == key_files["age_pub"].read_text().strip()
    assert (spec.expires - spec.created).days == 7
    result = _run("verify", built["pinned"], "--key", str(key_files["pub"]), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signers"][0]["role"] == "creator"


def test_approve_shows_the_train_then_signs(
    built: dict[str, Any], workspace: dict[str, Path], key_files: dict[str, Path]
) -> None:
    result = _run(
        "train", "approve", built["pinned"], "--key", str(workspace["reviewer"]), "--yes",
        "--max-files", "500", "--passphrase-file", str(key_files["passphrase"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "build history" in result.output
    # The train's own code, not the base image's files: pht train build labels the base.
    assert "base image: pht-local/python:3.11, 1 layer(s), not listed" in result.output
    assert "files the train adds (1 shown):" in result.output
    assert re.search(r"^ +\d+  opt/train/analysis\.py$", result.output, re.MULTILINE)
    assert "usr/local/" not in result.output
    assert re.search(r"^opt/train/analysis\.py \(\d+ bytes\) ─", result.output, re.MULTILINE)
    assert "def count_rows(path: Path) -> int:\n" in result.output  # in full, never cropped
    assert "adding to earlier hops.\n" in result.output
    assert "approved" in result.output
    result = _run(
        "train", "status", built["pinned"], "--key", str(key_files["pub"]),
        "--key", str(workspace["reviewer_pub"]), "--json",
    )  # fmt: skip
    body = json.loads(result.stdout)
    assert sorted(s["role"] for s in body["signers"]) == ["approver", "creator"]


def test_approve_all_layers_lists_the_base_images_files_too(
    built: dict[str, Any], workspace: dict[str, Path], key_files: dict[str, Path]
) -> None:
    result = CliRunner().invoke(
        main,
        ["train", "approve", built["pinned"], "--key", str(workspace["reviewer"]),
         "--all-layers", "--max-files", "50", "--passphrase-file", str(key_files["passphrase"])],
        input="n\n",
    )  # fmt: skip
    assert result.exit_code == 1  # declined: nothing signed
    assert "files (51 shown):" in result.output  # 50 names and the count of the rest
    assert re.search(r"^  … \d+ more$", result.output, re.MULTILINE)
    assert "base image:" not in result.output


def test_approve_declined_adds_nothing(
    built: dict[str, Any], workspace: dict[str, Path], key_files: dict[str, Path]
) -> None:
    before = _run("verify", built["pinned"], "--key", str(workspace["reviewer_pub"]), "--json")
    result = CliRunner().invoke(
        main,
        ["train", "approve", built["pinned"], "--key", str(workspace["reviewer"]),
         "--no-files", "--passphrase-file", str(key_files["passphrase"])],
        input="n\n",
    )  # fmt: skip
    assert result.exit_code == 1
    after = _run("verify", built["pinned"], "--key", str(workspace["reviewer_pub"]), "--json")
    assert before.output == after.output


def test_status_fetch_and_tampering(
    built: dict[str, Any],
    key_files: dict[str, Path],
    registry: Any,
    parties: Any,
    tmp_path: Path,
) -> None:
    ref = Reference.parse(built["pinned"])
    with RegistryClient(registry.host) as client:
        spec, _ = read_spec(client, ref)
        manifest = client.get_manifest(ref.repository, ref.digest)
        digests: list[str] = []
        for hop, station in enumerate(("station-a", "station-b")):
            out = tmp_path / f"out{hop}"
            (out / "tables").mkdir(parents=True)
            (out / "tables" / "counts.csv").write_text(f"hop,{hop}\n")
            sealed = seal(
                client, ref, manifest, spec, hop=hop, output_dir=out,
                key=parties[station].key, previous=digests[-1] if digests else None,
            )  # fmt: skip
            digests.append(sealed.digest)

    result = _run("train", "status", built["pinned"], "--key", str(key_files["pub"]), "--json")
    hops = json.loads(result.stdout)["hops"]
    assert [(h["state"], h["digest"]) for h in hops] == [("accepted", d) for d in digests]

    dest = tmp_path / "fetched"
    result = _run(
        "results", "fetch", built["pinned"], "--identity", str(key_files["age"]),
        "--out", str(dest), "--passphrase-file", str(key_files["passphrase"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # visibility "final": only the last hop is addressed to the researcher.
    assert sorted(p.name for p in dest.iterdir()) == ["1-station-b"]
    assert (dest / "1-station-b" / "tables" / "counts.csv").read_text() == "hop,1\n"

    # Someone replaces hop 1's result with one signed by a key that is not on the route.
    with RegistryClient(registry.host) as client:
        out = tmp_path / "forged"
        (out).mkdir()
        (out / "counts.csv").write_text("hop,999\n")
        seal(client, ref, manifest, spec, hop=1, output_dir=out,
             key=parties["mallory"].key, previous=digests[0])  # fmt: skip
    dest = tmp_path / "fetched-again"
    result = _run(
        "results", "fetch", built["pinned"], "--identity", str(key_files["age"]),
        "--out", str(dest), "--passphrase-file", str(key_files["passphrase"]),
    )  # fmt: skip
    assert result.exit_code == 3
    assert "hop 1 (station-b)" in result.output
    assert "not signed by station-b's key" in result.output
    assert not dest.exists()
    result = _run("train", "status", built["pinned"], "--json")
    assert [h["state"] for h in json.loads(result.stdout)["hops"]] == ["accepted", "rejected"]


def test_fetch_with_a_creator_key_that_did_not_sign(
    built: dict[str, Any], key_files: dict[str, Path], workspace: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "nothing"
    result = _run(
        "results", "fetch", built["pinned"], "--identity", str(key_files["age"]),
        "--key", str(workspace["root"] / "station-a.pub"), "--out", str(dest),
        "--passphrase-file", str(key_files["passphrase"]),
    )  # fmt: skip
    assert result.exit_code == 3
    assert "signature" in result.output
    assert not dest.exists()


# --- hostile text in a train: shown visibly escaped, never raw ---------------------------

# Names a reviewer must see as written: a screen clear and cursor home, a right-to-left
# override that makes "fdp.exe" read as "exe.pdf", rich markup, a bell and a C1 CSI, a newline.
HOSTILE_FILES = {
    "\x1b[2J\x1b[Hclear.py": "\\x1b[2J\\x1b[Hclear.py",
    "report\u202efdp.exe": "report\\u202efdp.exe",
    "[bold red]loud[/].txt": "[bold red]loud[/].txt",
    "bell\x07csi\x9b31m.txt": "bell\\x07csi\\x9b31m.txt",
    "two\nlines.txt": "two\\nlines.txt",
}
HOSTILE_NOTE = "\x1b]0;pwned\x07\x1b[8mhidden [bold]loud[/bold] \u2067isolated\u2069"
HOSTILE_NOTE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[8mhidden [bold]loud[/bold] \\u2067isolated\\u2069"


def _raw_controls(text: str) -> list[str]:
    """Characters a terminal would act on or hide (newlines between lines are fine)."""
    return [
        ch for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]  # fmt: skip


def _build_hostile_train(docker_client: Any, ref: Reference, spec: Any) -> str:
    """A train whose file names, build history (a LABEL step), labels and entrypoint carry
    escape sequences, bidi controls and rich markup; built by the engine, pushed."""
    dockerfile = (
        "FROM pht-local/python:3.11\n"
        "COPY files/ /opt/train/\n"
        f'LABEL org.example.note="{HOSTILE_NOTE}"\n'
        'ENTRYPOINT ["python3", "/opt/train/\\u001b[2Jclear.py"]\n'
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [("Dockerfile", dockerfile)]
        entries += [(f"files/{name}", b"print(1)\n") for name in HOSTILE_FILES]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    stream = docker_client.api.build(
        fileobj=context, custom_context=True, tag=str(ref),
        labels={TRAIN_LABEL: spec.to_canonical_json()}, pull=False, rm=True, forcerm=True,
        decode=True,
    )  # fmt: skip
    for line in stream:
        if "error" in line:
            raise RuntimeError(f"docker build failed: {line['error']}")
    return push_image(docker_client, ref)


def test_approve_shows_hostile_names_history_and_labels_escaped(
    workspace: dict[str, Path],
    key_files: dict[str, Path],
    registry: Any,
    docker_client: Any,
    parties: Any,
) -> None:
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    try:
        digest = _build_hostile_train(docker_client, ref, spec)
    finally:
        docker_client.images.remove(str(ref))
    pinned = f"{ref.name}@{digest}"
    with RegistryClient(registry.host) as client:
        sign_train(client, ref.with_digest(digest), parties, "alice")

    result = CliRunner().invoke(
        main,
        ["train", "approve", pinned, "--key", str(workspace["reviewer"]), "--yes",
         "--max-files", "100000", "--passphrase-file", str(key_files["passphrase"])],
        env={"COLUMNS": "1000"},  # one table row per line, so the history is one string
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _raw_controls(result.output) == []
    for shown in HOSTILE_FILES.values():
        assert f"opt/train/{shown}\n" in result.output
    assert HOSTILE_NOTE_SHOWN in result.output  # the LABEL build step, markup and all
    assert f"label org.example.note = {HOSTILE_NOTE_SHOWN}\n" in result.output
    assert "entrypoint: ['python3', '/opt/train/\\x1b[2Jclear.py']" in result.output
    assert "approved" in result.output
    verified = _run("verify", pinned, "--key", str(workspace["reviewer_pub"]), "--json")
    assert json.loads(verified.stdout)["signers"][0]["role"] == "approver"


def test_approve_refuses_a_spec_with_hostile_fields_and_shows_them_escaped(
    workspace: dict[str, Path],
    key_files: dict[str, Path],
    registry: Any,
    docker_client: Any,
    parties: Any,
    client: RegistryClient,
) -> None:
    hostile = "\x1b[2Jevil\u202e[bold]x[/bold]"
    ref, spec = signed_train(
        docker_client, client, registry, parties, "pht-incoming", ["station-a"],
        signers=("alice",), change=lambda s: {"name": hostile, "dataset": hostile},
    )  # fmt: skip
    docker_client.images.remove(str(ref))
    result = CliRunner().invoke(
        main,
        ["train", "approve", str(ref), "--key", str(workspace["reviewer"]), "--yes",
         "--no-files", "--passphrase-file", str(key_files["passphrase"])],
        env={"COLUMNS": "1000"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "invalid train spec" in result.output
    assert "name '\\x1b[2Jevil\\u202e[bold]x[/bold]' is not allowed" in result.output
    assert "dataset '\\x1b[2Jevil\\u202e[bold]x[/bold]' is not allowed" in result.output
    assert _raw_controls(result.output) == []
    verified = _run("verify", str(ref), "--key", str(workspace["reviewer_pub"]), "--json")
    assert verified.exit_code == 3  # nothing was signed


def _push_config_image(
    client: RegistryClient, repository: str, config: bytes, layer_gzip: bytes | None = None
) -> str:
    """A one-layer OCI image with ``config`` as its config blob (and ``layer_gzip`` as its
    gzip-compressed layer when given); returns the manifest digest."""
    if layer_gzip is None:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            info = tarfile.TarInfo("opt/train/run.py")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"1\n"))
        layer_desc = client.upload_bytes(
            repository, layer.getvalue(), "application/vnd.oci.image.layer.v1.tar"
        )
    else:
        layer_desc = client.upload_bytes(
            repository, layer_gzip, "application/vnd.oci.image.layer.v1.tar+gzip"
        )
    config_desc = client.upload_bytes(
        repository, config, "application/vnd.oci.image.config.v1+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc.to_dict(),
        "layers": [layer_desc.to_dict()],
    }
    return client.put_manifest(
        repository, "train", json.dumps(manifest).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )  # fmt: skip


def test_approve_shows_a_hostile_commit_message_escaped_and_refuses_a_bad_config(
    workspace: dict[str, Path],
    key_files: dict[str, Path],
    registry: Any,
    parties: Any,
    client: RegistryClient,
) -> None:
    spec = make_train_spec(parties, ["station-a"])
    repository = f"pht-incoming/{spec.id}"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {TRAIN_LABEL: spec.to_canonical_json()}, "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [
            {"created_by": "COPY run.py /opt/train/", "comment": "fix\x1b[8m hidden\u202e[b]x[/b]"},
            "not an object \x07",
        ],
    }
    digest = _push_config_image(client, repository, json.dumps(config).encode())
    pinned = f"{registry.host}/{repository}@{digest}"
    sign_train(client, Reference.parse(pinned), parties, "alice")
    args = ["train", "approve", pinned, "--key", str(workspace["reviewer"]), "--yes",
            "--passphrase-file", str(key_files["passphrase"])]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"COLUMNS": "1000"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _raw_controls(result.output) == []
    assert "COPY run.py /opt/train/  # fix\\x1b[8m hidden\\u202e[b]x[/b]" in result.output
    assert "not an object \\x07" in result.output
    assert "opt/train/run.py\n" in result.output

    # The same train with a config that is JSON but not an object is refused, unsigned.
    spec2 = make_train_spec(parties, ["station-a"])
    repository2 = f"pht-incoming/{spec2.id}"
    digest2 = _push_config_image(client, repository2, b"[" * 100_000)
    pinned2 = f"{registry.host}/{repository2}@{digest2}"
    result = CliRunner().invoke(main, [*args[:2], pinned2, *args[3:]], catch_exceptions=False)
    assert result.exit_code == 1
    assert "the image config is nested too deeply" in result.output
    assert _run("verify", pinned2, "--key", str(workspace["reviewer_pub"])).exit_code == 3


def test_signer_names_are_escaped_in_tables_and_json(
    workspace: dict[str, Path],
    key_files: dict[str, Path],
    registry: Any,
    docker_client: Any,
    parties: Any,
    client: RegistryClient,
) -> None:
    """A signer's name is free text in the signature: shown escaped, and in --json the same
    text comes back exactly, with C1, DEL and bidi characters as \\u escapes."""
    ref, _ = signed_train(
        docker_client, client, registry, parties, "pht-incoming", ["station-a"],
        signers=("alice",),
    )  # fmt: skip
    docker_client.images.remove(str(ref))
    pinned = ref.with_digest(client.resolve(ref.repository, "train"))
    hostile = "rev\x1b[31m\u202e[bold]x[/bold]\x9b\x7f:smile:"
    sign(client, pinned, parties["reviewer"].key, role="approver", signer=hostile)
    args = ["verify", str(pinned), "--key", str(workspace["reviewer_pub"])]
    table = CliRunner().invoke(main, args, env={"COLUMNS": "1000"}, catch_exceptions=False)
    assert table.exit_code == 0, table.output
    assert _raw_controls(table.output) == []
    assert "rev\\x1b[31m\\u202e[bold]x[/bold]\\x9b\\x7f:smile:" in table.output
    as_json = _run(*args, "--json")
    assert _raw_controls(as_json.stdout) == []
    assert "\\u202e" in as_json.stdout and "\\u009b" in as_json.stdout
    assert json.loads(as_json.stdout)["signers"][0]["signer"] == hostile


def _pax_bomb_layer(size: int) -> bytes:
    """A gzip layer whose first member is a PAX extended header of ``size`` bytes (a path of
    'a's): about 100 KiB on the wire for 64 MiB."""
    value = b"a" * (size - 20)
    record = b" path=" + value + b"\n"
    length = len(record) + len(str(len(record) + 8))
    record = str(length).encode() + record
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(record)
    raw = header.tobuf(tarfile.USTAR_FORMAT)
    raw += record + b"\0" * (-len(record) % 512)
    member = tarfile.TarInfo("placeholder")
    raw += member.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024
    return gzip.compress(raw, compresslevel=6)


_LIST_IN_CHILD = r"""
import json, sys
from pathlib import Path
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.researcher.inspect import image_files

ref = Reference.parse(sys.argv[1])
outcome = {"error": None, "message": ""}
with RegistryClient(ref.registry) as client:
    manifest = client.get_manifest(ref.repository, ref.reference)
    try:
        image_files(client, ref, manifest, 100)
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
status = Path("/proc/self/status").read_text().splitlines()
hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({**outcome, "hwm_kib": hwm}))
"""


def test_approve_refuses_a_layer_with_a_huge_extended_header_in_bounded_memory(
    workspace: dict[str, Path],
    key_files: dict[str, Path],
    registry: Any,
    parties: Any,
    client: RegistryClient,
) -> None:
    """A train layer whose PAX header is 64 MiB (tarfile reads such a header whole, and
    parses it into more copies) is refused by the file listing before it is read: a clean
    one-line error, nothing signed, and the listing's peak RSS (VmHWM of a fresh interpreter,
    about 45 MiB with its imports) stays under 100 MiB, less than the header alone would take
    with its copies."""
    spec = make_train_spec(parties, ["station-a"])
    repository = f"pht-incoming/{spec.id}"
    config = {
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {TRAIN_LABEL: spec.to_canonical_json()}, "Cmd": ["python3"]},
    }  # fmt: skip
    layer = _pax_bomb_layer(64 * 1024 * 1024)
    digest = _push_config_image(client, repository, json.dumps(config).encode(), layer)
    pinned = f"{registry.host}/{repository}@{digest}"
    sign_train(client, Reference.parse(pinned), parties, "alice")
    args = ["train", "approve", pinned, "--key", str(workspace["reviewer"]), "--yes",
            "--passphrase-file", str(key_files["passphrase"])]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"COLUMNS": "1000"}, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert re.search(
        r"holds an extended tar header of 6710\d{4} bytes \(at most 65536 are read\); "
        "refusing to list it",
        result.output,
    ), result.output
    assert _run("verify", pinned, "--key", str(workspace["reviewer_pub"])).exit_code == 3

    done = subprocess.run(
        [sys.executable, "-c", _LIST_IN_CHILD, pinned],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["error"] == "InvalidManifestError", outcome
    assert outcome["hwm_kib"] < 100 * 1024, outcome
