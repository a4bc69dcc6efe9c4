"""``traincode``: what a train adds on top of its base image, read from the real registry.

The image here is made by hand (OCI layers as plain tar) so that every kind of entry a layer
can hold is present: files, a symbolic and a hard link, a FIFO, a whiteout of a base file,
an opaque folder, and a later layer overriding an earlier one.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hostile_tar import BLOCK, build, finish, member, pax_header, pax_record, raw_header

from pht_airflow.errors import InvalidManifestError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import BASE_LAYERS_LABEL, BASE_NAME_LABEL, BASE_TOP_LAYER_LABEL
from pht_airflow.traincode import _declared_base, read_train_code

pytestmark = pytest.mark.registry

LAYER = "application/vnd.oci.image.layer.v1.tar"


def _tar(entries: list[tuple[str, Any]]) -> bytes:
    """A tar of (name, bytes | ("symlink"|"hardlink", target) | "fifo" | "dir")."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if isinstance(what, bytes):
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
                continue
            if what == "dir":
                info.type = tarfile.DIRTYPE
            elif what == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.type = tarfile.SYMTYPE if what[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = what[1]
            tar.addfile(info)
    return out.getvalue()


def _push_image(client: RegistryClient, registry: Any, layers: list[bytes], labels: Any) -> Any:
    repository = f"traincode/t{uuid.uuid4().hex[:12]}"
    descriptors = [client.upload_bytes(repository, layer, LAYER) for layer in layers]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    if callable(labels):
        labels = labels(diff_ids)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": labels, "Entrypoint": ["python3", "/opt/train/analysis.py"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": "/bin/sh -c #(nop) ADD file:base in / "},
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "COPY src/ /opt/train/ # buildkit"},
            {"created_by": "/bin/sh -c make"},
        ],
    }
    config_desc = client.upload_bytes(
        repository, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc.to_dict(),
        "layers": [d.to_dict() for d in descriptors],
    }
    media = "application/vnd.oci.image.manifest.v1+json"
    digest = client.put_manifest(repository, "train", json.dumps(manifest).encode(), media)
    ref = Reference(registry.host, repository, digest=digest)
    return ref, client.get_manifest(repository, digest)


BASE_LAYER = _tar(
    [("usr/lib/a.py", b"base\n"), ("opt/train/old.py", b"old\n"), ("opt/keep/x.txt", b"x\n")]
)
COPY_LAYER = _tar(
    [
        ("opt/train", "dir"),
        ("./opt/train/analysis.py", b"print('first')\n"),
        ("opt/train/link", ("symlink", "analysis.py")),
        ("opt/train/hard", ("hardlink", "opt/train/analysis.py")),
        ("opt/train/.wh.old.py", b""),
        ("opt/keep/.wh..wh..opq", b""),
    ]
)
RUN_LAYER = _tar([("opt/train/analysis.py", b"print('second')\n"), ("opt/train/pipe", "fifo")])


def _labels(diff_ids: list[str]) -> dict[str, str]:
    return {
        BASE_NAME_LABEL: "example/base:1",
        BASE_LAYERS_LABEL: "1",
        BASE_TOP_LAYER_LABEL: diff_ids[0],
    }


def test_every_kind_of_entry_the_train_adds(client: RegistryClient, registry: Any) -> None:
    ref, manifest = _push_image(client, registry, [BASE_LAYER, COPY_LAYER, RUN_LAYER], _labels)
    code = read_train_code(client, ref, manifest).to_dict()
    assert code["base"] == {"name": "example/base:1", "digest": None, "layers": 1}
    assert [(layer["index"], layer["step"], layer["read"]) for layer in code["layers"]] == [
        (1, "COPY src/ /opt/train/ # buildkit", True),
        (2, "RUN make", True),
    ]
    files = {f["path"]: (f["kind"], f["layer"], f["target"]) for f in code["files"]}
    assert files == {
        "opt/keep/": ("removed", 1, None),
        "opt/train/analysis.py": ("file", 2, None),  # the later layer's version
        "opt/train/hard": ("link", 1, "opt/train/analysis.py"),
        "opt/train/link": ("link", 1, "analysis.py"),
        "opt/train/old.py": ("removed", 1, None),
        "opt/train/pipe": ("other", 2, None),
    }
    assert "usr/lib/a.py" not in files  # the base's
    assert code["inline"] == [
        {"path": "opt/train/analysis.py", "size": 16, "text": "print('second')\n"}
    ]
    assert code["entrypoint"] == ["python3", "/opt/train/analysis.py"]


def test_the_limits_bound_what_is_listed_held_and_read(
    client: RegistryClient, registry: Any
) -> None:
    ref, manifest = _push_image(client, registry, [BASE_LAYER, COPY_LAYER, RUN_LAYER], _labels)
    few = read_train_code(client, ref, manifest, max_files=2, inline_files=0).to_dict()
    assert [f["path"] for f in few["files"]] == ["opt/keep/", "opt/train/analysis.py"]
    assert few["more_files"] > 0 and few["inline"] == []
    budget = manifest.layers[1].size
    part = read_train_code(client, ref, manifest, max_read_bytes=budget).to_dict()
    assert [layer["read"] for layer in part["layers"]] == [True, False]
    assert part["layers"][1]["entries"] == 0
    with pytest.raises(ValueError, match="must be positive"):
        read_train_code(client, ref, manifest, max_files=0)


@given(
    labels=st.dictionaries(
        st.sampled_from([BASE_LAYERS_LABEL, BASE_TOP_LAYER_LABEL, BASE_NAME_LABEL, "x"]),
        st.one_of(st.text(max_size=20), st.integers(), st.none()),
    ),
    layers=st.integers(min_value=0, max_value=5),
    diff_ids=st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=6)),
)
@settings(max_examples=300, deadline=None)
def test_a_base_declaration_is_used_only_when_it_fits(
    labels: dict[str, Any], layers: int, diff_ids: Any
) -> None:
    base, problem = _declared_base(labels, layers, diff_ids)
    assert (base is None) != (problem is None)
    if base is not None:
        assert 0 <= base.layers <= layers
        if base.layers:
            assert diff_ids[base.layers - 1] == labels[BASE_TOP_LAYER_LABEL]


_READ_IN_CHILD = r"""
import json, sys
from pathlib import Path
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.traincode import read_train_code

ref = Reference.parse(sys.argv[1])
with RegistryClient(ref.registry) as client:
    manifest = client.get_manifest(ref.repository, ref.reference)
    code = read_train_code(client, ref, manifest)
status = Path("/proc/self/status").read_text().splitlines()
hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"files": len(code.files), "more": code.more_files, "hwm_kib": hwm}))
"""


def test_a_layer_of_many_entries_is_read_in_bounded_memory(
    client: RegistryClient, registry: Any
) -> None:
    """200,000 empty files in one train layer (about 1 MiB on the wire): 200 names are kept
    and tarfile's own list of members is emptied as it goes. Measured: peak RSS (VmHWM of a
    fresh interpreter, imports included) 43 MiB; 143 MiB when tarfile keeps every member."""
    import gzip
    import subprocess
    import sys

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(200_000):
            tar.addfile(tarfile.TarInfo(f"opt/train/many/f{i:07d}"))
    layer = gzip.compress(out.getvalue(), 6)
    del out
    ref, _ = _push_image(client, registry, [BASE_LAYER, layer], _labels)
    done = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, str(ref)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["files"] == 200 and outcome["more"] == 200_000 - 200
    assert outcome["hwm_kib"] < 100 * 1024, outcome


# --- headers Python's tarfile and the engine's Go archive/tar read differently -------------


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _pax(path: str) -> bytes:
    records = pax_record("path", path.encode())
    return pax_header(len(records)) + _padded(records)


def _gnu(name: str, kind: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    data = name.encode() + b"\0"
    return raw_header("././@LongLink", len(data), kind) + _padded(data)


def _file(name: str, data: bytes = b"print('x')\n") -> bytes:
    return raw_header(name, len(data)) + _padded(data)


SHOWN, WRITTEN = "opt/train/README.txt", "usr/local/lib/python3.11/sitecustomize.py"
TWO_NAMES = "an entry named by more than one extended header"


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (build(member(WRITTEN), global_pax={"path": SHOWN}), "a global PAX header"),
        (finish(_pax(SHOWN) + _pax(WRITTEN) + _file("x")), TWO_NAMES),
        (finish(_pax(SHOWN) + _gnu(WRITTEN) + _file("x")), TWO_NAMES),
        (finish(_gnu(SHOWN) + _pax(WRITTEN) + _file("x")), TWO_NAMES),
        (finish(_gnu(SHOWN) + _gnu(WRITTEN) + _file("x")), TWO_NAMES),
    ],
    ids=["global-path", "pax-pax", "pax-gnu", "gnu-pax", "gnu-gnu"],
)
def test_a_layer_whose_names_readers_disagree_on_is_refused(
    client: RegistryClient, registry: Any, layer: bytes, reason: str
) -> None:
    """tarfile keeps the first of two name headers (and applies a global ``path`` to every
    later entry); Go's archive/tar keeps the last (a GNU long name always) and the engine
    ignores global headers. A listing that shows ``SHOWN`` while the engine writes ``WRITTEN``
    would let a reviewer approve a file they never saw."""
    ref, manifest = _push_image(client, registry, [BASE_LAYER, layer], _labels)
    with pytest.raises(InvalidManifestError, match=f"holds {reason}"):
        read_train_code(client, ref, manifest)


def test_a_gnu_long_name_with_a_long_link_name_is_read(
    client: RegistryClient, registry: Any
) -> None:
    long_dir = "opt/train/" + "d" * 120
    link = raw_header("x", 0, tarfile.SYMTYPE)
    layer = finish(
        _gnu(f"{long_dir}/link") + _gnu(f"{long_dir}/target", tarfile.GNUTYPE_LONGLINK) + link
    )
    ref, manifest = _push_image(client, registry, [BASE_LAYER, layer], _labels)
    files = {f["path"]: f for f in read_train_code(client, ref, manifest).to_dict()["files"]}
    assert files[f"{long_dir}/link"]["target"] == f"{long_dir}/target"
