"""The one strict JSON reader every untrusted document goes through (webhook bodies,
attestation envelopes, result configs, output manifests)."""

from __future__ import annotations

import json
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
