"""Property-based tests for every parser of untrusted input: only ``PhtError`` ever escapes.

Each parser gets arbitrary input (random bytes and text, random JSON and YAML documents) and
mutations of a valid seed (a real spec, the recorded Harbor and distribution bodies, a real
station config, a real audit log, a signed failure report): a field replaced by a random
value, a field removed or added, bytes flipped, inserted or cut. Whatever the input, the
parser returns a value or raises its ``PhtError``; any other exception is a bug in the parser.

Cosign signature payloads are parsed before any key verifies them, so they are here too.
Tar streams and the result config are covered with the result extraction (test_results_*).
"""

from __future__ import annotations

import base64
import copy
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.stationkit import make_station
from test_spec import make_spec_dict
from test_webhooks import DIST, manifest_event

from pht_airflow.errors import (
    AuditLogError,
    ConfigError,
    InvalidManifestError,
    InvalidReferenceError,
    MalformedSignatureError,
    PhtError,
    SpecError,
    UntrustedSignatureError,
    VerificationError,
    WebhookError,
)
from pht_airflow.hopreport import check_report, make_report
from pht_airflow.oci import Manifest
from pht_airflow.oci.reference import (
    Reference,
    check_digest,
    check_registry,
    check_repository,
    check_tag,
)
from pht_airflow.signing import make_payload, verify_payload
from pht_airflow.spec import TrainSpec, parse_duration, spec_from_config
from pht_airflow.station.audit import AuditLog, audit_verify_main, verify_log
from pht_airflow.station.config import load_config, parse_seconds, parse_size
from pht_airflow.webhooks import CT_CLOUDEVENTS, CT_JSON, parse_events

HARBOR = Path(__file__).resolve().parent / "vectors" / "harbor"
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ---------------------------------------------------------------------------

# Text that reaches parsers: anything, plus the characters that tend to break them.
_NASTY = st.sampled_from(
    ["", " ", "\x00", "\x1b[2J", "\u202e", "\ud800", "\udcff", "\n", "\r\n", "..", "/", ":",
     "@", "sha256:", "age1", "-----BEGIN PUBLIC KEY-----", "9" * 5000, "1e999", "NaN",
     "[" * 2000, "{" * 2000, "é", "\U000e0041", "a" * 300]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=40), _NASTY)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, seed: Any, rounds: int = 3) -> Any:
    """``seed`` with up to ``rounds`` random edits: replace, remove or add a value."""
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(min_value=1, max_value=rounds))):
        path = draw(st.sampled_from(_paths(doc)))
        value = draw(JSON_VALUES)
        if not path:
            if draw(st.booleans()):
                return value
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = value
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(TEXT)] = value
        else:
            parent.insert(path[-1], value)
    return doc


@st.composite
def byte_mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, inserted or cut, or truncated."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        if action == "flip":
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "cut":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        else:
            del data[at:]
    return bytes(data)


def _dumps(doc: Any) -> bytes:
    """JSON as a hostile sender may write it: NaN/Infinity and lone surrogates included."""
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def only(expected: type[PhtError], call: Callable[[], Any]) -> Any:
    """Run ``call``; it returns or raises ``expected`` (a PhtError), nothing else."""
    try:
        return call()
    except expected as exc:
        assert str(exc)  # a message for a person
        return exc


# --- train spec ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_seed(parties: dict[str, Any]) -> dict[str, Any]:
    return make_spec_dict(parties)


def test_spec_seed_is_valid(spec_seed: dict[str, Any]) -> None:
    assert TrainSpec.from_dict(spec_seed).name == "age-histogram"


@SETTINGS
@given(data=st.data())
def test_spec_from_mutated_json(spec_seed: dict[str, Any], data: st.DataObject) -> None:
    doc = data.draw(mutated(spec_seed))
    result = only(SpecError, lambda: TrainSpec.from_json(_dumps(doc)))
    if isinstance(result, TrainSpec):
        assert TrainSpec.from_json(result.to_canonical_json()) == result


@SETTINGS
@given(data=st.data())
def test_spec_from_mutated_dict(spec_seed: dict[str, Any], data: st.DataObject) -> None:
    doc = data.draw(mutated(spec_seed))
    only(SpecError, lambda: TrainSpec.from_dict(doc, source="hypothesis"))


@SETTINGS
@given(data=st.data())
def test_spec_from_mutated_bytes(spec_seed: dict[str, Any], data: st.DataObject) -> None:
    raw = data.draw(byte_mutated(_dumps(spec_seed)))
    only(SpecError, lambda: TrainSpec.from_json(raw))


@SETTINGS
@given(
    raw=st.one_of(st.binary(max_size=200), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
)
def test_spec_from_arbitrary_bytes(raw: bytes) -> None:
    only(SpecError, lambda: TrainSpec.from_json(raw))


def test_spec_deeply_nested_and_huge_values_are_spec_errors(spec_seed: dict[str, Any]) -> None:
    for raw in ("[" * 100_000, '{"a":' * 100_000):
        with pytest.raises(SpecError, match="nested too deeply|not valid JSON"):
            TrainSpec.from_json(raw)
    exc = only(SpecError, lambda: TrainSpec.from_dict({**spec_seed, "mode": "m" * 10**6}))
    assert len(str(exc)) < 1000
    many = {**spec_seed, **{f"x{i}": 1 for i in range(10_000)}}
    exc = only(SpecError, lambda: TrainSpec.from_dict(many))
    assert len(exc.problems) == 20 and exc.problems[-1] == "… and 9981 more problems"
    with pytest.raises(SpecError, match="not valid Unicode"):
        TrainSpec.from_json(json.dumps({**spec_seed, "name": "\ud800"}))
    route = [spec_seed["route"][0]] * 257
    with pytest.raises(SpecError, match="route has 257 stations; at most 256"):
        TrainSpec.from_dict({**spec_seed, "route": route})


@SETTINGS
@given(data=st.data())
def test_spec_from_mutated_image_config(spec_seed: dict[str, Any], data: st.DataObject) -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.pht.train": json.dumps(spec_seed)}, "Cmd": ["x"]},
        "history": [{"created_by": "RUN x"}],
    }
    doc = data.draw(mutated(config))
    raw = _dumps(doc) if data.draw(st.booleans()) else data.draw(byte_mutated(_dumps(config)))
    only(SpecError, lambda: spec_from_config(raw, "registry/train@sha256:0"))


def test_spec_image_config_nested_too_deeply() -> None:
    with pytest.raises(SpecError, match="nested too deeply"):
        spec_from_config(b"[" * 100_000, "here")


@SETTINGS
@given(text=st.one_of(TEXT, st.from_regex(r"[0-9]{1,30}[dhm]", fullmatch=True)))
def test_parse_duration(text: str) -> None:
    result = only(ConfigError, lambda: parse_duration(text))
    if not isinstance(result, PhtError):
        assert result.total_seconds() > 0


def test_parse_duration_bounds() -> None:
    assert parse_duration("3650d").days == 3650
    for text in ("3651d", "99999999999999999999d", "٣d", "1 d", "0d"):
        with pytest.raises(ConfigError):
            parse_duration(text)


# --- webhook bodies -----------------------------------------------------------------------


def _harbor_seeds() -> list[tuple[dict[str, Any], str]]:
    return [
        (json.loads((HARBOR / "push_artifact_default.json").read_text()), CT_JSON),
        (json.loads((HARBOR / "push_artifact_cloudevents.json").read_text()), CT_CLOUDEVENTS),
        ({"events": [manifest_event()]}, DIST),
        ({"events": [manifest_event(), manifest_event("pull", "HEAD")]}, DIST),
    ]


CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from([CT_JSON, CT_CLOUDEVENTS, DIST, "text/plain", "application/json; x=1"]),
    TEXT,
)


def test_webhook_seeds_parse() -> None:
    for doc, content_type in _harbor_seeds():
        assert parse_events(json.dumps(doc).encode(), content_type)


@SETTINGS
@given(data=st.data())
def test_webhook_mutated_bodies(data: st.DataObject) -> None:
    doc, content_type = data.draw(st.sampled_from(_harbor_seeds()))
    if data.draw(st.booleans()):
        body = _dumps(data.draw(mutated(doc)))
    else:
        body = data.draw(byte_mutated(_dumps(doc)))
    if data.draw(st.integers(0, 4)) == 0:
        content_type = data.draw(CONTENT_TYPES)
    events = only(WebhookError, lambda: parse_events(body, content_type))
    if isinstance(events, list):
        for event in events:  # whatever survives is checked strictly
            Reference(event.registry or "docker.io", event.repository, event.tag, event.digest)


@SETTINGS
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_webhook_arbitrary_bodies(body: bytes, content_type: str | None) -> None:
    only(WebhookError, lambda: parse_events(body, content_type))


@SETTINGS
@given(doc=JSON_VALUES, content_type=CONTENT_TYPES)
def test_webhook_arbitrary_json(doc: Any, content_type: str | None) -> None:
    only(WebhookError, lambda: parse_events(_dumps(doc), content_type))


# --- OCI references -----------------------------------------------------------------------

REFERENCE_LIKE = st.from_regex(
    r"([a-z0-9.:\[\]-]{0,12}/)?[a-z0-9._/-]{0,20}(:[A-Za-z0-9_.-]{0,10})?(@sha256:[0-9a-f]{0,64})?",
    fullmatch=True,
)


@SETTINGS
@given(text=st.one_of(TEXT, REFERENCE_LIKE))
def test_reference_parse(text: str) -> None:
    ref = only(InvalidReferenceError, lambda: Reference.parse(text))
    if isinstance(ref, Reference):
        assert Reference.parse(str(ref)) == ref  # what parses prints back to itself
        assert ref.tag is not None or ref.digest is not None


@SETTINGS
@given(text=TEXT)
def test_reference_checks(text: str) -> None:
    for check in (check_registry, check_repository, check_tag, check_digest):
        only(InvalidReferenceError, lambda check=check: check(text))  # type: ignore[misc]


# --- station config -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def station_seed(tmp_path_factory: pytest.TempPathFactory, parties: dict[str, Any]) -> Path:
    station = make_station(
        tmp_path_factory.mktemp("station"),
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )
    return Path(station.config_path)


def test_station_config_seed_loads(station_seed: Path) -> None:
    assert load_config(station_seed).station_id == "station-a"


_YAML_TRICKS = st.sampled_from(
    [
        "a: &x [*x]\n",
        "a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d]\nsandbox: {memory: *e}\n",
        "station: !!python/object:os.system {}\n",
        "? [a, b]\n: c\n",
        "t: 2001-02-30\n",
        "n: " + "9" * 5000 + "\n",
        "x: " + "[" * 500 + "]" * 500 + "\n",
        "sandbox: {pids: .inf, cpus: .nan, memory: " + "9" * 400 + "GiB}\n",
        "\ufeffstation: {id: a}\n",
        'station: {id: "\\ud800"}\n',
        "- a\n- b\n",
        "",
    ]
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_station_config_mutated(station_seed: Path, tmp_path: Path, data: st.DataObject) -> None:
    seed = yaml.safe_load(station_seed.read_text())
    choice = data.draw(st.integers(0, 3))
    if choice == 0:
        text = yaml.safe_dump(data.draw(mutated(seed)), allow_unicode=True)
    elif choice == 1:
        raw = data.draw(byte_mutated(station_seed.read_bytes()))
        text = raw.decode("utf-8", "replace")
    elif choice == 2:
        text = data.draw(_YAML_TRICKS)
    else:
        text = yaml.safe_dump(seed) + data.draw(_YAML_TRICKS)
    path = station_seed.parent / "mutated.yaml"  # beside the seed: its relative paths resolve
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    only(ConfigError, lambda: load_config(path))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("x: &a [1]\ny: *a\n", r":\d+: YAML aliases \(\*name\) are not supported"),
        ("x: &a [*a]\n", "YAML aliases"),
        ("x: !!python/object:os.system {}\n", "not valid YAML"),
        ("x: 2001-02-30\n", r"not valid YAML \(ValueError\)"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "not valid YAML"),
        ("sandbox: {pids: .inf}\n", "sandbox.pids: must be a number"),
        ("sandbox: {cpus: .nan}\n", "sandbox.cpus: must be a number"),
        ("sandbox: {memory: " + "9" * 400 + "GiB}\n", "sandbox.memory: .* is too large a size"),
        ("sandbox: {wall_time: " + "9" * 400 + "}\n", "sandbox.wall_time: .* too long a duration"),
    ],
)
def test_station_config_refusals(station_seed: Path, extra: str, message: str) -> None:
    seed = yaml.safe_load(station_seed.read_text())
    path = station_seed.parent / "refused.yaml"
    if extra.startswith("sandbox: "):  # merged into the seed's own sandbox section
        seed["sandbox"] = {**seed.get("sandbox", {}), **yaml.safe_load(extra)["sandbox"]}
        extra = ""
    path.write_text(yaml.safe_dump(seed) + extra)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_station_config_too_large_or_not_utf8(station_seed: Path) -> None:
    path = station_seed.parent / "refused.yaml"
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(path)
    path.write_bytes(b"station: {id: \xff}\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 \(byte 14\)"):
        load_config(path)


@SETTINGS
@given(value=JSON_VALUES)
def test_station_sizes_and_durations(value: Any) -> None:
    for parse in (parse_size, parse_seconds):
        try:
            result = parse(value)
        except ValueError as exc:  # load_config turns these into a ConfigError problem line
            assert str(exc)
        else:
            assert result > 0 and math.isfinite(result)


# --- audit log lines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    log = AuditLog(path)
    log.append({"event": "hop", "train_id": "t1", "outcome": "success", "n": 1.5})
    log.append({"event": "hop", "train_id": "t2", "outcome": "failure", "note": "é\u202e"})
    log.append({"event": "selftest", "checks": ["engine", "registry"]})
    return path


def _audit_copy(seed: Path, folder: Path, data: bytes, head: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.jsonl"
    path.write_bytes(data)
    head_path = folder / "audit.jsonl.head"
    if head is None:
        head_path.unlink(missing_ok=True)
    else:
        head_path.write_bytes(head)
    return path


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_audit_log_mutated(audit_seed: Path, tmp_path: Path, data: st.DataObject) -> None:
    lines = audit_seed.read_bytes().splitlines(keepends=True)
    head = (audit_seed.parent / "audit.jsonl.head").read_bytes()
    choice = data.draw(st.integers(0, 3))
    if choice == 0:  # one line's record edited as JSON
        i = data.draw(st.integers(0, len(lines) - 1))
        doc = data.draw(mutated(json.loads(lines[i])))
        lines[i] = _dumps(doc) + b"\n"
    elif choice == 1:  # a line replaced by arbitrary JSON or bytes
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(st.one_of(JSON_VALUES.map(_dumps), st.binary(max_size=80)))
        lines[i] += b"\n"
    elif choice == 2:
        lines = [data.draw(byte_mutated(b"".join(lines)))]
    else:
        head = data.draw(st.one_of(byte_mutated(head), JSON_VALUES.map(_dumps)))
    path = _audit_copy(audit_seed, tmp_path / "log", b"".join(lines), head)
    only(AuditLogError, lambda: verify_log(path))
    ok, message = audit_verify_main(str(path))
    assert message
    log = AuditLog(path)
    only(AuditLogError, lambda: list(log.entries()))
    only(AuditLogError, lambda: log.last())
    only(AuditLogError, lambda: log.append({"event": "hop", "after": "mutation"}))


def test_audit_lines_that_json_reads_but_audit_log_cannot_write(tmp_path: Path) -> None:
    start = '{"event":"hop","prev":"' + "0" * 64 + '","seq":0,"time":"t","x":'
    for bad in (start + "1e999}", start + '"\\ud800"}', start + "[" * 5000 + "]" * 5000 + "}"):
        path = _audit_copy(tmp_path, tmp_path / "bad", bad.encode() + b"\n", None)
        with pytest.raises(AuditLogError, match="line 1"):
            verify_log(path)
        with pytest.raises(AuditLogError, match="line 1"):
            list(AuditLog(path).entries())
    path = _audit_copy(tmp_path, tmp_path / "head", b"", b"[" * 3000)
    with pytest.raises(AuditLogError, match="head file"):
        verify_log(path)


# --- hop reports --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_seed(parties: dict[str, Any]) -> dict[str, Any]:
    return make_report(
        train_id="3b1f2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        train_digest="sha256:" + "a" * 64,
        station="station-a",
        hop=0,
        failure={"check": "signed", "error": "VerificationError", "message": "no signature"},
        audit_seq=3,
        key=parties["station-a"].key,
        now=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
    )


def test_report_seed_checks(report_seed: dict[str, Any], parties: dict[str, Any]) -> None:
    assert check_report(report_seed, parties["station-a"].public).year == 2026


@SETTINGS
@given(data=st.data())
def test_report_mutated(
    report_seed: dict[str, Any], parties: dict[str, Any], data: st.DataObject
) -> None:
    doc = data.draw(mutated(report_seed))
    assume(doc != report_seed)
    key = parties["station-a"].public
    result = only(VerificationError, lambda: check_report(doc, key))
    if not isinstance(result, PhtError):
        # Only an edit outside the signed payload can leave the report valid.
        assert {k: v for k, v in doc.items() if k != "signature"} == {
            k: v for k, v in report_seed.items() if k != "signature"
        }


@SETTINGS
@given(doc=st.dictionaries(TEXT, JSON_VALUES, max_size=6))
def test_report_arbitrary(doc: dict[str, Any], parties: dict[str, Any]) -> None:
    only(VerificationError, lambda: check_report(doc, parties["station-a"].public))


def test_report_with_a_lone_surrogate_is_refused(
    report_seed: dict[str, Any], parties: dict[str, Any]
) -> None:
    with pytest.raises(VerificationError, match="not valid Unicode"):
        check_report({**report_seed, "message": "\ud800"}, parties["station-a"].public)


# --- cosign signature payloads (anyone who can push may add a signature layer) -------------

_DIGEST = "sha256:" + "b" * 64


@pytest.fixture(scope="module")
def payload_seed(parties: dict[str, Any]) -> tuple[dict[str, Any], str]:
    payload = make_payload(
        "registry.example/p/t", _DIGEST, {"org.pht.key": parties["alice"].key.key_id}
    )
    signature = base64.b64encode(parties["alice"].key.sign(payload)).decode()
    return json.loads(payload), signature


@SETTINGS
@given(data=st.data())
def test_signature_payload_mutated(
    payload_seed: tuple[dict[str, Any], str], parties: dict[str, Any], data: st.DataObject
) -> None:
    body, signature = payload_seed
    alice = parties["alice"]
    choice = data.draw(st.integers(0, 3))
    if choice == 0:  # an unsigned (attacker's) payload with the real signature
        payload = _dumps(data.draw(mutated(body)))
    elif choice == 1:
        payload = data.draw(byte_mutated(_dumps(body)))
    elif choice == 2:  # signed by a trusted key, but odd: the parser still holds
        payload = _dumps(data.draw(mutated(body)))
        signature = base64.b64encode(alice.key.sign(payload)).decode()
    else:
        payload = data.draw(st.binary(max_size=200))
        signature = data.draw(st.one_of(st.just(signature), TEXT))
    result = only(
        VerificationError, lambda: verify_payload(payload, signature, _DIGEST, [alice.public])
    )
    if isinstance(result, PhtError):
        assert "\x1b" not in str(result)


def test_signature_payload_nested_too_deeply(parties: dict[str, Any]) -> None:
    payload = b"[" * 60_000
    signature = base64.b64encode(parties["mallory"].key.sign(payload)).decode()
    with pytest.raises(UntrustedSignatureError, match="does not verify under any trusted key"):
        verify_payload(payload, signature, _DIGEST, [parties["alice"].public])
    signature = base64.b64encode(parties["alice"].key.sign(payload)).decode()
    with pytest.raises(MalformedSignatureError, match="not JSON"):
        verify_payload(payload, signature, _DIGEST, [parties["alice"].public])
    claim = json.dumps({"optional": {"org.pht.key": "\x1b[2Jsha256:x"}}).encode()
    signature = base64.b64encode(parties["mallory"].key.sign(claim)).decode()
    with pytest.raises(UntrustedSignatureError) as caught:
        verify_payload(claim, signature, _DIGEST, [parties["alice"].public])
    assert "names key" not in str(caught.value)  # a claim that is not a key id is not echoed


# --- OCI manifests (served by the registry) ------------------------------------------------

_MANIFEST_SEED = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:" + "c" * 64,
        "size": 2,
    },
    "layers": [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": "sha256:" + "d" * 64,
            "size": 5,
            "annotations": {"a": "b"},
        }
    ],
    "subject": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "e" * 64,
        "size": 9,
    },
    "annotations": {"org.pht.x": "y"},
}


def _read_manifest(raw: bytes, media_type: str | None) -> None:
    manifest = Manifest.from_raw(raw, media_type)
    for name in ("config", "layers", "subject", "annotations", "manifests"):
        if hasattr(type(manifest), name):
            getattr(manifest, name)


@SETTINGS
@given(data=st.data())
def test_manifest_mutated(data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = _dumps(data.draw(mutated(_MANIFEST_SEED)))
    else:
        raw = data.draw(byte_mutated(_dumps(_MANIFEST_SEED)))
    media_type = data.draw(st.sampled_from([None, _MANIFEST_SEED["mediaType"]]))
    only(InvalidManifestError, lambda: _read_manifest(raw, media_type))


def test_manifest_nested_too_deeply() -> None:
    with pytest.raises(InvalidManifestError, match="nested too deeply"):
        Manifest.from_raw(b"[" * 100_000)
    with pytest.raises(InvalidManifestError, match="is nested too deeply"):
        Manifest.from_raw(b"[" * 100_000, str(_MANIFEST_SEED["mediaType"]))
