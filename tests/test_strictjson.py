"""The one strict JSON reader every untrusted document goes through (webhook bodies,
attestation envelopes, result configs, output manifests)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pht_airflow import strictjson
from pht_airflow.strictjson import NestedTooDeeplyError, StrictJSONError


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a": 1}\xff', "not UTF-8 (byte 8)"),
        (b"", "not valid JSON (line 1: Expecting value)"),
        ('{\n"a": 1,\n}', "not valid JSON (line 3: Expecting property name enclosed in double "
         "quotes)"),
        ('{"a": 1, "a": 1}', "not valid JSON: the key 'a' appears twice in one object"),
        ('[{"x": {"b": 1, "b": 2}}]', "not valid JSON: the key 'b' appears twice in one object"),
        ('{"n": NaN}', "not valid JSON: NaN is not a JSON number"),
        ("[Infinity]", "not valid JSON: Infinity is not a JSON number"),
        ("-Infinity", "not valid JSON: -Infinity is not a JSON number"),
        ("9" * 5000, "not valid JSON (a number with too many digits)"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=[
        "utf8", "empty", "trailing-comma", "duplicate", "nested-duplicate", "nan", "infinity",
        "minus-infinity", "digits", "deep",
    ],
)  # fmt: skip
def test_what_is_refused_and_why(raw: bytes | str, reason: str) -> None:
    with pytest.raises(StrictJSONError) as info:
        strictjson.loads(raw)
    assert str(info.value) == reason


def test_too_deep_is_its_own_kind() -> None:
    """A caller with its own depth bound tells this case apart (disclosure names its bound)."""
    with pytest.raises(NestedTooDeeplyError):
        strictjson.loads(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(StrictJSONError) as info:
        strictjson.loads(b'{"a": 1, "a": 2}')
    assert not isinstance(info.value, NestedTooDeeplyError)


def test_a_repeated_key_is_shown_escaped_and_bounded() -> None:
    key = "\x1b[2J\u202e" + "k" * 500
    with pytest.raises(StrictJSONError) as info:
        strictjson.loads(json.dumps({key: 1})[:-1] + ", " + json.dumps(key) + ": 2}")
    message = str(info.value)
    assert "\x1b" not in message and "\u202e" not in message
    assert "\\x1b[2J\\u202e" in message
    assert len(message) < 200


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_every_json_document_reads_back_as_written(value: Any) -> None:
    raw = json.dumps(value)
    assert strictjson.loads(raw) == value
    assert strictjson.loads(raw.encode()) == value


@given(st.binary(max_size=200))
def test_any_bytes_read_or_refuse_with_a_reason(raw: bytes) -> None:
    try:
        strictjson.loads(raw)
    except StrictJSONError as exc:
        assert str(exc)


# --- fields Go's encoding/json would read ignoring case -----------------------------------


@pytest.mark.parametrize(
    ("obj", "key", "field"),
    [
        ({"Cmd": [], "cmd": ["evil"]}, "cmd", "Cmd"),
        ({"cmd": ["evil"]}, "cmd", "Cmd"),
        ({"ENTRYPOINT": []}, "ENTRYPOINT", "Entrypoint"),
        ({"Wor\u212aingDir": "/"}, "Wor\u212aingDir", "WorkingDir"),  # the Kelvin sign
    ],
)
def test_a_field_in_another_case_is_refused(obj: dict[str, Any], key: str, field: str) -> None:
    with pytest.raises(StrictJSONError) as info:
        strictjson.check_fields(obj, ["Cmd", "Entrypoint", "WorkingDir"], "in config")
    assert str(info.value) == (
        f"ambiguous: the key '{key}' in config is {field} in another case, which the Docker "
        f"engine reads as {field} and an exact reader does not"
    )


def test_exact_fields_and_other_keys_pass() -> None:
    strictjson.check_fields(
        {"Cmd": [], "Entrypoint": None, "x-note": 1, "X-NOTE": 2}, ["Cmd", "Entrypoint"]
    )


def test_image_config_and_manifest_readers_refuse_other_cases() -> None:
    from pht_airflow.errors import InvalidManifestError
    from pht_airflow.oci import Manifest, parse_image_config
    from pht_airflow.oci.media import OCI_MANIFEST

    config = {"config": {"Cmd": ["run"], "Labels": {"a": "1", "A": "2"}}, "rootfs": {}}
    assert parse_image_config(json.dumps(config).encode()) == config  # label keys are a map
    for bad, where in [
        ({**config, "Config": {}}, ""),
        ({"config": {"Cmd": [], "labels": {}}}, " in config"),
        ({"rootfs": {"Diff_IDs": []}}, " in rootfs"),
        ({"history": [{}, {"Created_By": "RUN x"}]}, " in history[1]"),
        ({"config": {"Healthcheck": {"test": ["CMD", "x"]}}}, " in config.Healthcheck"),
        ({"container_config": {"CMD": []}}, " in container_config"),
    ]:
        with pytest.raises(
            StrictJSONError, match=f"^ambiguous: the key '.*'{re.escape(where)} is "
        ):
            parse_image_config(json.dumps(bad).encode())
    layer = {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1}
    good = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": layer, "layers": [layer]}
    assert len(Manifest.from_raw(json.dumps(good).encode()).layers) == 1
    for bad_raw in [
        json.dumps({**good, "Layers": []}),
        json.dumps({**good, "layers": [{**layer, "Digest": layer["digest"]}]}),
        json.dumps(good)[:-1] + ', "layers": []}',
    ]:
        with pytest.raises(InvalidManifestError, match="ambiguous|appears twice"):
            Manifest.from_raw(bad_raw.encode())
