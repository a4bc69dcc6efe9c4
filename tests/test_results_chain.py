"""The result config parser of ``pht_airflow/results/chain.py`` on untrusted input.

The chain rules themselves are tested on sealed artifacts in ``test_results_artifact.py``;
here the parser alone: every field's type, and property tests that arbitrary bytes and
arbitrary JSON only ever raise :class:`PhtError`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pht_airflow.errors import PhtError
from pht_airflow.results.chain import MAX_CONFIG_BYTES, parse_result_config, plaintext_length

DIGEST = "sha256:" + "ab" * 32
VALID: dict[str, Any] = {
    "train": {"id": "0c4f5a0e-6a53-4c4b-9a0e-1f8a3c2b9d7e", "digest": DIGEST},
    "hop": 1,
    "station": "station-b",
    "previous": DIGEST,
    "created": "2026-12-05T00:00:00Z",
    "recipients": ["age1xyz"],
    "plaintext_bytes": 10240,
}


def _raw(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_a_valid_config_parses_as_is() -> None:
    assert parse_result_config(_raw(VALID)) == VALID
    assert parse_result_config(_raw({**VALID, "previous": None, "extra": 1}))["extra"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"plaintext_bytes": "10240"}, r"plaintext_bytes must be a whole number .*, not '10240'"),
        ({"plaintext_bytes": -1}, r"plaintext_bytes .*, not -1"),
        ({"plaintext_bytes": True}, r"plaintext_bytes .*, not True"),
        ({"plaintext_bytes": 10240.0}, r"plaintext_bytes .*, not 10240.0"),
        ({"plaintext_bytes": 1 << 51}, r"plaintext_bytes .*, not 2251799813685248"),
        ({"plaintext_bytes": None}, r"plaintext_bytes .*, not None"),
        ({"hop": True}, r"hop must be a non-negative integer, not True"),
        ({"hop": -1}, r"hop must be a non-negative integer, not -1"),
        ({"train": "x"}, r"train must be an object with id and digest, not 'x'"),
        ({"train": {"id": 1, "digest": DIGEST}}, r"train must hold id and digest strings"),
        ({"station": ""}, r"station must be a name, not ''"),
        ({"previous": "sha256:00"}, r"previous must be null or a sha256 digest"),
        ({"recipients": []}, r"recipients must be a non-empty list of age recipients"),
        ({"recipients": [1]}, r"recipients must be a non-empty list"),
        ({"created": 0}, r"created must be a timestamp string, not 0"),
    ],
)
def test_each_field_is_type_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PhtError, match=message):
        parse_result_config(_raw({**VALID, **change}))


def test_missing_fields_are_refused() -> None:
    for key in VALID:
        rest = {k: v for k, v in VALID.items() if k != key}
        with pytest.raises(PhtError, match=f"{key} must be"):
            parse_result_config(_raw(rest))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
        (b'{"hop": NaN}', "not valid JSON: NaN is not a JSON number"),
        (b'{"hop": 1, "hop": 2}', "not valid JSON: the key 'hop' appears twice"),
        (b"[]", "not a JSON object"),
        (b" " * (MAX_CONFIG_BYTES + 1), "over 1048576 bytes"),
    ],
    ids=["not-utf8", "deep", "nan", "duplicate-key", "array", "too-large"],
)
def test_malformed_configs_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PhtError, match=message):
        parse_result_config(raw)


def test_plaintext_length_rechecks_a_config_that_did_not_come_through_the_parser() -> None:
    assert plaintext_length({"plaintext_bytes": 0}) == 0
    with pytest.raises(PhtError, match="not False"):
        plaintext_length({"plaintext_bytes": False})


# --- property tests ----------------------------------------------------------------------

_PROPERTY = settings(max_examples=200, deadline=None)
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@_PROPERTY
@given(raw=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_pht_errors(raw: bytes) -> None:
    with contextlib.suppress(PhtError):
        parse_result_config(raw)


@_PROPERTY
@given(data=_JSON)
def test_arbitrary_json_raises_only_pht_errors(data: Any) -> None:
    with contextlib.suppress(PhtError):
        parse_result_config(_raw(data))


@_PROPERTY
@given(key=st.sampled_from(sorted(VALID)), value=_JSON)
def test_any_value_in_any_field_is_accepted_only_with_its_type(key: str, value: Any) -> None:
    try:
        parsed = parse_result_config(_raw({**VALID, key: value}))
    except PhtError:
        return
    if key in ("hop", "plaintext_bytes"):
        assert type(parsed[key]) is int and parsed[key] >= 0
    if key == "recipients":
        assert parsed[key] and all(isinstance(r, str) for r in parsed[key])
