"""The ``datasets:`` parser and the one-statement check take any input without crashing.

Property tests (hypothesis): whatever the YAML holds, :func:`parse_datasets` reports problems
and never raises; a query with a ``;`` or an unmatched parenthesis outside quotes is refused,
and one inside a string literal is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pht_airflow.station.data import KINDS, parse_datasets
from pht_airflow.station.data.model import statement_problem

_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
_entries = st.dictionaries(
    st.sampled_from(["kind", "path", "connection", "tables", "queries", "formats", "table",
                     "publish_schema", "identifier_columns", "other"]),
    _values | st.sampled_from(list(KINDS)),
    max_size=6,
)  # fmt: skip


def _parse(raw: Any) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []

    def resolve(value: Any, path: tuple[str, ...]) -> Path | None:
        if isinstance(value, str) and value:
            return Path(value)
        problems.append(f"{'.'.join(path)}: must be a path")  # as load_config's resolver does
        return None

    found = parse_datasets(
        raw,
        problem=lambda path, text: problems.append(f"{'.'.join(path)}: {text}"),
        resolve_path=resolve,
        where=lambda path: "station.yaml:1",
    )
    return found, problems


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _entries | _values, max_size=4) | _values)
def test_any_datasets_section_gives_problems_not_exceptions(raw: Any) -> None:
    found, problems = _parse(raw)
    assert found or problems
    for name, ds in found.items():
        assert ds.name == name and ds.kind in KINDS


_plain = st.text(alphabet="abcdefgh SELECT*,.=<>0123456789_\n", max_size=30)


@given(_plain, _plain)
def test_a_semicolon_between_statements_is_refused(a: str, b: str) -> None:
    assert statement_problem(f"SELECT {a}; {b}") is not None


@given(_plain, _plain)
def test_separators_inside_literals_and_comments_are_allowed(a: str, b: str) -> None:
    query = f"SELECT '{a};)' AS x, \"{b}(\" FROM t -- ; )\n WHERE y = $q$;($q$ /* ; ( */"  # noqa: S608
    assert statement_problem(query) is None


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=20))
def test_parentheses_must_balance_and_never_close_first(opened: int, closed: int) -> None:
    query = "SELECT " + "(" * opened + "1" + ")" * closed
    assert (statement_problem(query) is None) == (opened == closed)
    assert statement_problem("SELECT 1) AS a, (SELECT 2") is not None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_judged_without_crashing(text: str) -> None:
    result = statement_problem(text)
    assert result is None or isinstance(result, str)
    if ";" not in text and "(" not in text and ")" not in text and not set(text) & set("'\"$/-"):
        assert result is None
