"""pht_airflow.text.safe_text: untrusted text made safe to show to a person."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pht_airflow.text import ELLIPSIS, safe_text


def _visible(s: str, *, multiline: bool) -> bool:
    allowed = {"\n", "\t"} if multiline else set()
    return all(
        ch in allowed or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in s
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain.csv", "plain.csv"),
        ("\x1b[2J\x1b[1;1Hok", "\\x1b[2J\\x1b[1;1Hok"),  # clear screen, cursor home
        ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI
        ("del\x7f", "del\\x7f"),
        ("nul\x00", "nul\\x00"),
        ("bell\x07", "bell\\x07"),
        ("evil\u202egpj.exe", "evil\\u202egpj.exe"),  # right-to-left override
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("tag\U000e0041", "tag\\U000e0041"),  # Unicode tag character (Cf)
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("two\nlines", "two\\nlines"),
        ("crlf\r\nend", "crlf\\nend"),
        ("cr\roverwrite", "cr\\noverwrite"),
        ("tab\there", "tab\\there"),
        ("vt\x0bff\x0c", "vt\\x0bff\\x0c"),
        ("nel\x85", "nel\\x85"),
        ("émoji ✓ 漢字", "émoji ✓ 漢字"),
        ("[bold]markup[/]", "[bold]markup[/]"),  # markup is the renderer's business
    ],
)
def test_one_line_shows_controls_visibly(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_multiline_normalises_line_breaks_and_keeps_tabs() -> None:
    raw = "RUN a \\\r\n\tb\rc\nd\x1b[8mhidden\u2028e"
    assert safe_text(raw, multiline=True) == "RUN a \\\n\tb\nc\nd\\x1b[8mhidden\\u2028e"


def test_bytes_are_decoded_and_invalid_bytes_shown() -> None:
    assert safe_text(b"ok\xff\xfe\x1b") == "ok\\xff\\xfe\\x1b"
    assert safe_text("caf\udce9") == "caf\\xe9"  # surrogateescape'd byte from a tar name


def test_non_text_values_use_str() -> None:
    assert safe_text(42) == "42"
    assert safe_text(None) == "None"


def test_long_text_is_bounded_with_an_ellipsis() -> None:
    assert safe_text("x" * 10, limit=10) == "x" * 10
    assert safe_text("x" * 11, limit=10) == "x" * 9 + ELLIPSIS
    assert safe_text("x" * 10_000_000, limit=5) == "xxxx" + ELLIPSIS
    assert safe_text(b"y" * 10_000_000, limit=5) == "yyyy" + ELLIPSIS
    assert len(safe_text("z" * 1000)) == 200


def test_an_escape_is_never_cut_in_half() -> None:
    # "ab" + "\x1b" shown as 4 characters: it does not fit in 5 with the ellipsis.
    assert safe_text("ab\x1bcd", limit=5) == "ab" + ELLIPSIS
    assert safe_text("ab\x1b", limit=6) == "ab\\x1b"


def test_line_breaks_count_towards_the_limit() -> None:
    assert safe_text("\r\n" * 100, limit=3, multiline=True) == "\n\n" + ELLIPSIS


def test_no_limit() -> None:
    assert safe_text("a" * 5000, limit=None) == "a" * 5000


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        safe_text("x", limit=0)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(), st.binary()),
    st.one_of(st.none(), st.integers(min_value=1, max_value=300)),
    st.booleans(),
)
def test_property_result_is_visible_and_bounded(
    value: str | bytes, limit: int | None, ml: bool
) -> None:
    shown = safe_text(value, limit=limit, multiline=ml)
    assert _visible(shown, multiline=ml)
    if limit is not None:
        assert len(shown) <= limit
    if not ml:
        assert "\n" not in shown and "\r" not in shown


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))))
def test_property_printable_text_is_unchanged(value: str) -> None:
    assert safe_text(value, limit=None) == value


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=50))
def test_property_truncation_is_a_prefix_of_the_full_rendering(value: str, limit: int) -> None:
    full = safe_text(value, limit=None)
    shown = safe_text(value, limit=limit)
    if len(full) <= limit:
        assert shown == full
    else:
        assert shown.endswith(ELLIPSIS)
        assert full.startswith(shown[: -len(ELLIPSIS)])
