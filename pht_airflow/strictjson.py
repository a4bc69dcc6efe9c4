"""One strict reader for JSON from untrusted hands (a webhook body, an attestation envelope, a
result config, a train's output manifest).

Python's :func:`json.loads` accepts what RFC 8259 does not define: ``NaN``, ``Infinity`` and
``-Infinity``, and an object that names a key twice (the last value wins, where another
reader may keep the first). A document two readers can read differently is refused here, so
what a station checks is what everyone else reads.

Go's ``encoding/json``, which the Docker engine and registries use, also matches an object's
keys to a struct's fields ignoring case (the Kelvin sign for ``k`` and the long s for ``s``
included), the last match winning: an image config holding ``"Cmd"`` and then ``"cmd"`` runs
the second while an exact reader shows the first, and a lone ``"cmd"`` runs while an exact
reader sees no command. :func:`check_fields` refuses a key that names a known field in
another case, for the objects the engine reads into structs (not maps such as ``Labels``).

Every refusal is a :class:`StrictJSONError` whose text completes "<what> is …" (``not
valid JSON (line 1: Expecting value)``), with a key shown only through
:func:`~pht_airflow.text.safe_text` and bounded. Callers bound the input's size before.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from .text import safe_text

__all__ = ["NestedTooDeeplyError", "StrictJSONError", "check_fields", "loads"]

#: How much of a repeated key an error shows.
KEY_LIMIT = 80


class StrictJSONError(ValueError):
    """Not JSON this reader accepts; ``str()`` completes "<what> is …"."""


class NestedTooDeeplyError(StrictJSONError):
    """Nested deeper than Python's parser recurses."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = safe_text(key, limit=KEY_LIMIT)
            raise StrictJSONError(f"not valid JSON: the key '{shown}' appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"not valid JSON: {name} is not a JSON number")


def loads(raw: bytes | str) -> Any:
    """``raw`` (UTF-8 bytes or text) parsed; :class:`StrictJSONError` if it is not UTF-8, not
    JSON, names a key twice in one object, holds ``NaN``/``Infinity`` or an integer of more
    digits than Python converts, or nests deeper than the parser recurses."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    try:
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise NestedTooDeeplyError("nested too deeply") from None
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        raise StrictJSONError("not valid JSON (a number with too many digits)") from None


def check_fields(obj: Mapping[str, Any], fields: Collection[str], where: str = "") -> None:
    """Refuse a key of ``obj`` that is one of ``fields`` in another case (``where`` names the
    object, as "in config"): Go's ``encoding/json`` would read it as that field, an exact
    reader would not. Keys that are no field in any case are left alone."""
    by_fold = {field.casefold(): field for field in fields}
    for key in obj:
        field = by_fold.get(key.casefold())
        if field is not None and key != field:
            shown = safe_text(key, limit=KEY_LIMIT)
            raise StrictJSONError(
                f"ambiguous: the key '{shown}'{' ' + where if where else ''} is {field} in "
                f"another case, which the Docker engine reads as {field} and an exact reader "
                "does not"
            )
