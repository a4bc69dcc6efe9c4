"""The approval card's facts (``station/card.py``) from real trains on the real registry.

Each train is built by the real engine on ``pht-local/python:3.11``, pushed, signed and
verified the way a station verifies it; the facts are then read from the verified manifest
and config, the station's trust store names the keys, and nothing unsafe reaches them.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from support.cardkit import README, SCRIPT, code_train, verified_at
from support.stationkit import Station, make_station, make_train_spec, sign_train

from pht_airflow.errors import ConfigError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import BASE_LAYERS_LABEL, BASE_TOP_LAYER_LABEL, TRAIN_LABEL
from pht_airflow.station.card import card_facts, position_text, seconds_text, size_text
from pht_airflow.station.verify import CHECK_STATEMENTS, CHECKS, check_statement

pytestmark = [pytest.mark.registry, pytest.mark.docker]

ALICE = "Alice Smith (UKA)"
REVIEWER = "Rita Reviewer (ethics board)"


def _raw_controls(text: str) -> list[str]:
    """Characters a terminal or a browser would act on or hide (line breaks in JSON are
    escaped, so none is expected at all)."""
    return [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def _station(tmp_path: Path, parties: Any, registry: Any, name: str, **kw: Any) -> Station:
    """A station trusting alice (named) as creator and the reviewer (named) as approver."""
    return make_station(
        tmp_path / name,
        parties[name],
        registry.host,
        creators=[{"key": parties["alice"].public.pem, "name": ALICE}],  # type: ignore[list-item]
        approvers=[{"key": parties["reviewer"].public.pem, "name": REVIEWER}],  # type: ignore[list-item]
        **kw,
    )


@pytest.fixture()
def station_a(tmp_path: Path, parties: Any, registry: Any) -> Station:
    return _station(tmp_path, parties, registry, "station-a")


def test_the_card_says_what_is_being_decided(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    ref, spec = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a", "station-b"]
    )
    verified = verified_at(station_a, client, ref)
    facts = card_facts(station_a.config(), verified, client)
    assert json.loads(json.dumps(facts)) == facts  # JSON-safe as it is

    assert facts["train"]["name"] == "row-count" and facts["train"]["id"] == spec.id
    assert facts["train"]["digest"] == ref.digest
    assert facts["train"]["expires"].endswith("Z")
    creator = facts["creator"]
    assert creator == {
        "id": "alice", "key_id": parties["alice"].key.key_id, "name": ALICE, "signed_as": "alice",
    }  # fmt: skip
    assert facts["approvers"] == [
        {"key_id": parties["reviewer"].key.key_id, "name": REVIEWER, "signed_as": "reviewer"}
    ]
    assert facts["route"]["position"] == "hop 1 of 2: [station-a] → station-b"
    assert facts["route"]["hop"] == 0 and facts["route"]["mode"] == "sequential"
    # Sequential, not the last hop, visibility final: only the next station can read it.
    assert facts["recipients"]["parties"] == [
        {
            "recipient": parties["station-b"].age.recipient,
            "parties": ["station station-b (the next station)"],
        }
    ]
    assert facts["recipients"]["why"] == "the next station on the route, which continues the train"
    data = facts["data"]
    assert data["dataset"] == "cohort" and data["kind"] == "folder"
    assert data["source"] == str(station_a.root / "data" / "cohort")
    assert data["mounted"] == "the folder itself, read-only at /pht/data"
    assert facts["sandbox"] == {
        "memory": "256 MiB", "cpus": 1.0, "pids": 64, "wall_time": "1 min",
        "output": "10 MiB", "tmp": "64 MiB", "user": "65534:65534", "network": "none",
        "gpus": "no GPU",
    }  # fmt: skip
    texts = [c["text"] for c in facts["checks"]]
    assert [c["id"] for c in facts["checks"]] == list(CHECKS)
    assert "not expired" in texts and "not run here before" in texts
    assert "creator trusted" in texts

    code = facts["code"]
    assert code["base"] == {"name": "pht-local/python:3.11", "digest": None, "layers": 1}
    assert code["base_problem"] is None
    assert [f["path"] for f in code["files"]] == ["opt/train/README.md", "opt/train/analysis.py"]
    assert code["more_files"] == 0
    assert len(code["layers"]) == 1 and code["layers"][0]["step"].startswith("COPY dir:")
    inline = {f["path"]: f["text"] for f in code["inline"]}
    assert inline == {
        "opt/train/README.md": README.decode(),
        "opt/train/analysis.py": SCRIPT.decode(),
    }
    assert code["entrypoint"] == ["python3", "/opt/train/analysis.py"]


def test_the_result_readers_are_named_in_parallel_mode(
    tmp_path: Path, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    """Parallel: every hop's result goes to the result recipients; the creator is named by
    the station's trust store, a further recipient as one the spec names."""
    station_b = _station(
        tmp_path, parties, registry, "station-b",
        overrides={"sandbox": {"gpus": [0, 1]}},
    )  # fmt: skip
    outsider = parties["mallory"].age.recipient
    ref, _ = code_train(
        docker_client, client, registry, parties, "station-b", ["station-a", "station-b"],
        mode="parallel", recipients=[outsider],
    )  # fmt: skip
    facts = card_facts(station_b.config(), verified_at(station_b, client, ref), client)
    assert facts["route"]["position"] == "2 of 2 stations in parallel: station-a, [station-b]"
    assert facts["recipients"]["why"] == "the train's result recipients (parallel: every hop)"
    assert facts["recipients"]["parties"] == [
        {"recipient": parties["alice"].age.recipient, "parties": [f"the creator alice ({ALICE})"]},
        {
            "recipient": outsider,
            "parties": ["a further result recipient the spec names (not a route station)"],
        },
    ]
    assert facts["sandbox"]["gpus"] == "GPUs 0, 1"


def test_an_unnamed_key_and_a_sql_data_set(
    tmp_path: Path, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    """The plain form of a trust entry keeps working (no name); a sql data set shows its
    Airflow Connection and tables, not a path."""
    station = make_station(
        tmp_path / "station-a", parties["station-a"], registry.host,
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"datasets": {"cohort": {"kind": "sql", "connection": "pg_cohort",
                                           "tables": ["person", "visits"]}}},
    )  # fmt: skip
    ref, _ = code_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    config = station.config()
    assert config.trust.name_of(parties["alice"].key.key_id) is None
    facts = card_facts(config, verified_at(station, client, ref), client)
    assert facts["creator"]["name"] is None
    assert facts["approvers"][0]["name"] is None
    assert facts["data"]["source"] == "Airflow Connection pg_cohort"
    assert facts["data"]["tables"] == ["person", "visits"]
    assert facts["data"]["mounted"].startswith("extracted just before the run")
    # The last (only) sequential hop: the result recipients read it.
    assert facts["recipients"]["why"] == "the train's result recipients (the last hop)"


HOSTILE_NAME = "evil\x1b[2J\u202egnp.py"
HOSTILE_TEXT = "print('hi')\n# \x1b]8;;http://x\x07link\x1b]8;;\x07 \u202e ````\n"


def test_everything_from_the_train_is_made_safe(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    """File names, file text and a signer's self-chosen name carry terminal escapes and bidi
    overrides: the facts hold them as visible escapes only."""
    ref, _ = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a"],
        files={"analysis.py": SCRIPT, HOSTILE_NAME: HOSTILE_TEXT.encode()},
        signers=("alice",),
    )  # fmt: skip
    from pht_airflow.signing import sign

    sign(client, ref, parties["reviewer"].key, role="approver", signer="rev\x1b[31m\u202e")
    facts = card_facts(station_a.config(), verified_at(station_a, client, ref), client)
    dumped = json.dumps(facts, ensure_ascii=False)
    assert _raw_controls(dumped) == []
    assert facts["approvers"][0]["signed_as"] == "rev\\x1b[31m\\u202e"
    paths = [f["path"] for f in facts["code"]["files"]]
    assert "opt/train/evil\\x1b[2J\\u202egnp.py" in paths
    inline = {f["path"]: f["text"] for f in facts["code"]["inline"]}
    shown = inline["opt/train/evil\\x1b[2J\\u202egnp.py"]
    assert shown == "print('hi')\n# \\x1b]8;;http://x\\x07link\\x1b]8;;\\x07 \\u202e ````\n"


def test_without_a_base_declaration_every_layer_is_shown_with_the_reason(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    ref, _ = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a"], labels={}
    )
    code = card_facts(station_a.config(), verified_at(station_a, client, ref), client)["code"]
    assert code["base"] is None
    assert "does not say which layers are its base image" in code["base_problem"]
    assert len(code["layers"]) == 2  # the base's layer is listed as the train's
    assert code["more_files"] > 0 and len(code["files"]) == 200
    assert code["layers"][1]["step"].startswith("COPY dir:")
    # The COPY layer's files come first among the inline ones, whatever the base holds.
    assert [f["path"] for f in code["inline"]][:2] == [
        "opt/train/README.md",
        "opt/train/analysis.py",
    ]


def test_a_base_declaration_that_does_not_fit_the_image_is_not_used(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    """A creator who labels every layer as the base (hiding the code) is caught by the
    top-layer diff id, and one who claims more layers than the image has by the count."""
    base = docker_client.images.get("pht-local/python:3.11")
    top = base.attrs["RootFS"]["Layers"][-1]
    for labels, reason in (
        ({BASE_LAYERS_LABEL: "2", BASE_TOP_LAYER_LABEL: top}, "does not match layer 2"),
        ({BASE_LAYERS_LABEL: "7", BASE_TOP_LAYER_LABEL: top}, "is not a number of layers"),
        ({BASE_LAYERS_LABEL: "-1"}, "is not a number of layers from 0 to 2"),
    ):
        ref, _ = code_train(
            docker_client, client, registry, parties, "station-a", ["station-a"], labels=labels
        )
        code = card_facts(station_a.config(), verified_at(station_a, client, ref), client)
        assert code["code"]["base"] is None
        assert reason in code["code"]["base_problem"]
        assert "opt/train/analysis.py" in [f["path"] for f in code["code"]["files"]]


def test_a_layer_that_cannot_be_listed_makes_the_card_say_so(
    station_a: Station, client: RegistryClient, registry: Any, parties: Any
) -> None:
    """A signed train whose one layer is not a tar archive: verification does not read
    layers and passes; the card says its files cannot be shown instead of hiding them."""
    spec = make_train_spec(parties, ["station-a"])
    repository = f"station-a/{spec.id}"
    layer = client.upload_bytes(
        repository, b"not a tar archive" * 100, "application/vnd.oci.image.layer.v1.tar"
    )
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {TRAIN_LABEL: spec.to_canonical_json()}, "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }  # fmt: skip
    config_desc = client.upload_bytes(
        repository, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
    )
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc.to_dict(), "layers": [layer.to_dict()],
    }  # fmt: skip
    digest = client.put_manifest(
        repository, "train", json.dumps(manifest).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )  # fmt: skip
    ref = Reference(registry.host, repository, digest=digest)
    sign_train(client, ref, parties, "alice", "reviewer")
    facts = card_facts(station_a.config(), verified_at(station_a, client, ref), client)
    assert set(facts["code"]) == {"error"}
    assert "is not a readable tar archive" in facts["code"]["error"]


def test_an_over_large_text_file_is_listed_not_inlined_and_inline_files_are_bounded(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    files = {f"script{i:02}.py": b"print(%d)\n" % i for i in range(14)}
    files["big.py"] = b"#" * (16 * 1024 + 1)
    files["data.bin"] = b"\0\1\2"
    files["analysis.py"] = SCRIPT
    ref, _ = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a"], files=files
    )
    code = card_facts(station_a.config(), verified_at(station_a, client, ref), client)["code"]
    listed = {f["path"]: f for f in code["files"]}
    assert listed["opt/train/big.py"]["size"] == 16 * 1024 + 1
    assert "opt/train/data.bin" in listed
    inline = [f["path"] for f in code["inline"]]
    assert len(inline) == 10 and inline == sorted(inline)
    assert "opt/train/big.py" not in inline and "opt/train/data.bin" not in inline
    assert inline[0] == "opt/train/analysis.py"


def test_files_a_later_step_removes_are_shown_as_removed(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    ref, _ = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a"],
        files={"analysis.py": SCRIPT, "secret.txt": b"token\n"},
        extra_steps="RUN rm /opt/train/secret.txt\n",
    )  # fmt: skip
    code = card_facts(station_a.config(), verified_at(station_a, client, ref), client)["code"]
    listed = {f["path"]: f["kind"] for f in code["files"]}
    assert listed["opt/train/secret.txt"] == "removed"
    assert "opt/train/secret.txt" not in [f["path"] for f in code["inline"]]
    assert [layer["step"].split()[0] for layer in code["layers"]] == ["COPY", "RUN"]


# --- the trust store's names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"key": "PEM", "name": "Eve\x1b[2J"}, "name: must be a name of 1 to 120 printable"),
        ({"key": "PEM", "name": ""}, "name: must be a name of 1 to 120 printable"),
        ({"key": "PEM", "name": "x" * 121}, "name: must be a name of 1 to 120 printable"),
        ({"key": "PEM", "name": 7}, "name: must be a name of 1 to 120 printable"),
        ({"key": "PEM", "nick": "A"}, "unknown field(s) nick (expected key, name)"),
        ({"name": "A"}, "key: must be a public key file path or PEM text"),
    ],
)
def test_trust_entry_names_are_validated(
    tmp_path: Path, parties: Any, entry: dict[str, Any], message: str
) -> None:
    pem = parties["alice"].public.pem
    entry = {k: (pem if v == "PEM" else v) for k, v in entry.items()}
    station = make_station(
        tmp_path / "s", parties["station-a"], "127.0.0.1:5000",
        creators=[entry], approvers=[pem],  # type: ignore[list-item]
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"station\.yaml:\d+: trust\.trusted_creators\.0") as e:
        station.config()
    assert message in str(e.value)


def test_one_key_named_twice_differently_is_refused(tmp_path: Path, parties: Any) -> None:
    pem = parties["alice"].public.pem
    station = make_station(
        tmp_path / "s", parties["station-a"], "127.0.0.1:5000",
        creators=[{"key": pem, "name": "Alice"}],  # type: ignore[list-item]
        approvers=[{"key": pem, "name": "Bob"}],  # type: ignore[list-item]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="is named twice, differently"):
        station.config()
    same = make_station(
        tmp_path / "t", parties["station-a"], "127.0.0.1:5000",
        creators=[{"key": pem, "name": "Alice"}],  # type: ignore[list-item]
        approvers=[{"key": pem, "name": "Alice"}],  # type: ignore[list-item]
    )  # fmt: skip
    assert same.config().trust.name_of(parties["alice"].key.key_id) == "Alice"


# --- wording ---------------------------------------------------------------------------------


def test_every_check_reads_as_a_statement() -> None:
    assert set(CHECK_STATEMENTS) == set(CHECKS)
    assert check_statement("expired") == "not expired"
    assert check_statement("already-done") == "not run here before"
    assert check_statement("creator") == "creator trusted"
    assert check_statement("something-new") == "something-new"


def test_sizes_durations_and_positions_for_people() -> None:
    assert [size_text(n) for n in (512, 1024, 256 << 20, 3 << 29)] == [
        "512 B", "1 KiB", "256 MiB", "1.5 GiB",
    ]  # fmt: skip
    assert [seconds_text(s) for s in (90, 60, 1800, 7200, 0.5)] == [
        "90 s", "1 min", "30 min", "2 h", "0.5 s",
    ]  # fmt: skip
    assert position_text(["a", "b", "c"], 1, "sequential") == "hop 2 of 3: a → [b] → c"


def test_a_layer_altered_in_transit_is_not_shown(
    station_a: Station, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    """The train's layer comes back with its gzip trailer changed (tar readers ignore it, the
    files parse the same): the layer is read to its end, its digest fails, and the card shows
    none of it, only why."""
    from support.authservers import Lie, LyingProxy

    ref, _ = code_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    layer = client.get_manifest(ref.repository, ref.reference).layers[-1]
    raw = client.get_blob(ref.repository, layer.digest, max_bytes=layer.size)
    altered = raw[:-1] + bytes([raw[-1] ^ 0xFF])
    blob_path = f"/v2/{ref.repository}/blobs/{layer.digest}"
    with LyingProxy(registry.url) as proxy:
        proxy.rule = lambda m, path: Lie(body=altered) if m == "GET" and path == blob_path else None
        with RegistryClient(proxy.host) as lied_to:
            proxied = Reference(proxy.host, ref.repository, digest=ref.digest)
            verified = verified_at(station_a, lied_to, proxied)
            facts = card_facts(station_a.config(), verified, lied_to)
        assert proxy.served == 1
    assert set(facts["code"]) == {"error"}
    assert "it was altered in storage or in transit" in facts["code"]["error"]
