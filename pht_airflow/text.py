"""Make untrusted text safe to show to a person (a terminal, the Airflow UI, a log line).

Text from a train (file names, image history, labels, spec fields), a registry or a webhook
may carry terminal escape sequences (ESC, C1 controls such as CSI ``U+009B``), bidi overrides
and other invisible format characters: enough to hide or reorder what a reviewer reads.
:func:`safe_text` shows every such character as a visible escape (``\\x1b``, ``\\u202e``),
so nothing is hidden and nothing is dropped silently, and bounds the length with an ellipsis.

The result is plain text. Output that interprets markup (rich in the CLI, HTML in a web page)
must still escape it for that medium; this module knows nothing of rich or HTML.
"""

from __future__ import annotations

import unicodedata

__all__ = ["ELLIPSIS", "safe_text"]

ELLIPSIS = "\u2026"

#: Default bound on the shown length, in characters, for one-line values (names, labels).
DEFAULT_LIMIT = 200

# Characters that end a line in some terminal, viewer or log parser (besides \n and \r).
_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, decoded with surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _needs_escape(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: bidi overrides/isolates, zero-width and other format
    # characters; Cs: lone surrogates (undecodable bytes); Zl/Zp: line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")


class _Table(dict[int, "int | str"]):
    """A ``str.translate`` table computed on demand: each character maps to itself or to
    its visible escape. At most ``_CACHE`` characters are remembered (bounded memory)."""

    _CACHE = 4096

    def __init__(self, multiline: bool) -> None:
        super().__init__()
        self.multiline = multiline

    def __missing__(self, code: int) -> int | str:
        ch = chr(code)
        value: int | str
        if ch == "\r" or ch == "\n":
            value = "\n" if self.multiline else "\\n"
        elif ch == "\t":
            value = "\t" if self.multiline else "\\t"
        elif ch in _LINE_BREAKS or _needs_escape(ch):
            value = _escape_char(ch)
        else:
            value = code
        if len(self) < self._CACHE:
            self[code] = value
        return value


_TABLES = {False: _Table(False), True: _Table(True)}


def safe_text(value: object, *, limit: int | None = DEFAULT_LIMIT, multiline: bool = False) -> str:
    """Return ``value`` as text that shows every control or format character visibly.

    ``value`` may be ``str``, ``bytes`` (decoded as UTF-8, invalid bytes shown as ``\\xNN``)
    or anything else (``str()`` of it). Control characters (C0, DEL, C1, including ESC),
    format characters (bidi overrides and isolates, zero-width characters, BOM), lone
    surrogates and line/paragraph separators become ``\\xNN``/``\\uNNNN`` escapes.

    With ``multiline=False`` (the default) the result is one line: ``\\r\\n``, ``\\r`` and
    ``\\n`` show as ``\\n`` and tabs as ``\\t``. With ``multiline=True`` line breaks are
    normalised to ``\\n`` and tabs are kept; every other control is escaped as above.

    ``limit`` bounds the result's length in characters (``None`` for no bound); a longer
    result ends in ``…``. Only the first ``2 * limit + 2`` characters of ``value`` are read,
    so a huge value costs no more than a short one. An escape is never cut in half.
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    # Every one or two input characters (\r\n) yield at least one output character, so a
    # window of 2 * limit + 2 characters (4 bytes each at most) decides the shown text.
    window = None if limit is None else 2 * limit + 2
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value if window is None else value[: 4 * window])
        text = raw.decode("utf-8", errors="surrogateescape")
    else:
        text = value if isinstance(value, str) else str(value)
    if window is not None:
        text = text[:window]
    if text.isprintable():  # the common case, at C speed: nothing to escape (no Cc/Cf/Cs/Z*)
        if limit is None or len(text) <= limit:
            return text
        return text[: limit - len(ELLIPSIS)] + ELLIPSIS
    shown = text.replace("\r\n", "\n").translate(_TABLES[multiline])
    if limit is None or len(shown) <= limit:
        return shown
    return _bounded(text, limit, multiline)  # cut between whole escapes


def _bounded(text: str, limit: int, multiline: bool) -> str:
    """The shown text piece by piece, stopping with ``…`` before ``limit`` is exceeded."""
    out: list[str] = []
    length = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        i += 1
        if ch == "\r" or ch == "\n":
            if ch == "\r" and i < n and text[i] == "\n":
                i += 1
            piece = "\n" if multiline else "\\n"
        elif ch == "\t":
            piece = "\t" if multiline else "\\t"
        elif ch in _LINE_BREAKS or _needs_escape(ch):
            piece = _escape_char(ch)
        else:
            piece = ch
        if length + len(piece) > limit:
            return _truncate(out, length, limit)
        out.append(piece)
        length += len(piece)
    return "".join(out)


def _truncate(out: list[str], length: int, limit: int) -> str:
    """Drop whole pieces from the end until ``…`` fits within ``limit``."""
    while out and length + len(ELLIPSIS) > limit:
        length -= len(out.pop())
    return "".join(out) + ELLIPSIS
