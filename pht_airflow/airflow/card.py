"""The approval card as Airflow shows it: a plain-text subject and a Markdown body for the
human-in-the-loop step, from the facts :func:`pht_airflow.station.card.card_facts` gathered.

The facts are already safe text (no control or format characters); here every value is also
made literal for Markdown (:func:`markdown_text`: each Markdown character escaped, one line),
and the train's own files are shown in fenced code blocks whose fence is longer than any
backtick run inside, so nothing a train wrote can become a link, an image, HTML or a heading.
"""

from __future__ import annotations

import re
from typing import Any

from ..text import safe_text

# Characters Markdown gives a meaning to (links, images, emphasis, code, HTML, headings).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&:])")
_BACKTICKS = re.compile(r"`+")
#: The body stops adding inline files past this many characters (Airflow stores the body).
MAX_BODY_CHARS = 256 * 1024
#: Files listed in the body (the facts hold at most traincode.MAX_FILES).
MAX_LISTED = 200
_LANGUAGES = {".py": "python", ".r": "r", ".sh": "sh", ".md": "markdown", ".json": "json"}


def markdown_text(value: object, *, limit: int = 200) -> str:
    """Untrusted ``value`` as Markdown that renders it literally, on one line: control and
    format characters shown escaped (:func:`~pht_airflow.text.safe_text`), then every Markdown
    character backslash-escaped, so ``[x](http://…)`` or ``<img>`` shows as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", safe_text(value, limit=limit))


def code_block(text: str, path: str = "") -> str:
    """``text`` as a fenced code block no content can close: the fence is one backtick longer
    than the longest backtick run in ``text`` (at least three)."""
    longest = max((len(m.group(0)) for m in _BACKTICKS.finditer(text)), default=0)
    fence = "`" * max(3, longest + 1)
    suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    language = _LANGUAGES.get(suffix, "text")
    body = safe_text(text, limit=None, multiline=True)
    return f"{fence}{language}\n{body}{'' if body.endswith(chr(10)) else chr(10)}{fence}"


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _person(p: dict[str, Any]) -> str:
    """``alice — Alice Smith (UKA), key sha256:…`` (the trust store's name when it has one)."""
    shown = markdown_text(p.get("signed_as") or p.get("id") or "?")
    name = p.get("name")
    named = f" — **{markdown_text(name)}**" if name else " — not named in the trust store"
    return f"{shown}{named}, key {markdown_text(p.get('key_id'), limit=80)}"


def _code_section(code: dict[str, Any]) -> list[str]:
    if "error" in code:
        return [
            "### The train's code",
            f"**The train's files cannot be shown:** {markdown_text(code['error'], limit=1000)}",
        ]
    lines = ["### The train's code"]
    base = code.get("base")
    if isinstance(base, dict):
        digest = f" ({markdown_text(base.get('digest'), limit=100)})" if base.get("digest") else ""
        lines.append(
            f"Base image {markdown_text(base.get('name') or 'unnamed')}{digest}: "
            f"{markdown_text(base.get('layers'))} layer(s), not listed."
        )
    if code.get("base_problem"):
        lines.append(f"**Note:** {markdown_text(code['base_problem'], limit=1000)}")
    entry = code.get("entrypoint")
    cmd = code.get("cmd")
    lines.append(
        f"Runs: entrypoint {markdown_text(entry, limit=1000)}, "
        f"command {markdown_text(cmd, limit=1000)}."
    )
    steps = []
    for layer in _l(code.get("layers")):
        layer = _d(layer)
        step = markdown_text(layer.get("step") or "(build step unknown)", limit=500)
        if layer.get("read"):
            steps.append(f"- {step} ({markdown_text(layer.get('entries'))} entries)")
        else:
            steps.append(f"- {step} (**not read**: over the card's read limit)")
    lines.append(
        f"Layers the train adds: {len(steps)}" + ("\n" + "\n".join(steps) if steps else "")
    )
    files = _l(code.get("files"))
    listed = []
    for f in files[:MAX_LISTED]:
        f = _d(f)
        kind = f.get("kind")
        if kind == "link":
            what = f"link to {markdown_text(f.get('target'), limit=300)}"
        elif kind == "removed":
            what = "removed"
        elif kind == "file":
            what = _size(f.get("size"))
        else:
            what = markdown_text(kind)
        listed.append(f"- {markdown_text(f.get('path'), limit=1000)} ({what})")
    more = int(code.get("more_files") or 0) + max(0, len(files) - MAX_LISTED)
    if more:
        listed.append(f"- … and {more} more")
    lines.append("Files the train adds:\n" + ("\n".join(listed) if listed else "- none"))
    return lines


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB"


def approval_card(facts: dict[str, Any]) -> dict[str, str]:
    """The approval card for the facts of :func:`pht_airflow.station.card.card_facts`: a
    plain-text ``subject`` and a Markdown ``body``. Missing or malformed fields show as
    ``None``/``?``, never break the card."""
    train = _d(facts.get("train"))
    route = _d(facts.get("route"))
    recipients = _d(facts.get("recipients"))
    data = _d(facts.get("data"))
    sandbox = _d(facts.get("sandbox"))
    code = _d(facts.get("code"))

    approvers = [_person(_d(a)) for a in _l(facts.get("approvers"))]
    readers = []
    for r in _l(recipients.get("parties")):
        r = _d(r)
        named = "; ".join(markdown_text(p, limit=400) for p in _l(r.get("parties")))
        readers.append(f"- {named} ({markdown_text(r.get('recipient'), limit=100)})")
    if data.get("offered") is False:
        where = "**not offered by this station**"
    else:
        tables = ", ".join(markdown_text(t) for t in _l(data.get("tables")))
        where = (
            f"{markdown_text(data.get('kind'))} {markdown_text(data.get('source'), limit=1000)}"
            + (f", tables {tables}" if tables else "")
            + f"; the train gets {markdown_text(data.get('mounted'), limit=300)}"
        )
    checks = "; ".join(markdown_text(_d(c).get("text"), limit=80) for c in _l(facts.get("checks")))
    parts = [
        f"**Train** {markdown_text(train.get('name'))} (id {markdown_text(train.get('id'))}), "
        f"digest {markdown_text(train.get('digest'), limit=80)}",
        f"**Created by** {_person(_d(facts.get('creator')))}",
        "**Approved by** "
        + ("; ".join(approvers) if approvers else "nobody")
        + f" ({markdown_text(facts.get('required_approvals'))} required here)",
        f"**Route** ({markdown_text(route.get('mode'))}): "
        f"{markdown_text(route.get('position'), limit=2000)}",
        f"**Expires** {markdown_text(train.get('expires'))}",
        "**Who can read this hop's result**: "
        f"{markdown_text(recipients.get('why'), limit=300)}\n" + "\n".join(readers),
        f"**Data** {markdown_text(data.get('dataset'))}: {where}",
        "**Sandbox** "
        f"memory {markdown_text(sandbox.get('memory'))}, {markdown_text(sandbox.get('cpus'))} "
        f"CPU, {markdown_text(sandbox.get('pids'))} processes, wall time "
        f"{markdown_text(sandbox.get('wall_time'))}, output up to "
        f"{markdown_text(sandbox.get('output'))}, /tmp {markdown_text(sandbox.get('tmp'))}, "
        f"user {markdown_text(sandbox.get('user'))}, network "
        f"{markdown_text(sandbox.get('network'))}, {markdown_text(sandbox.get('gpus'))}",
        f"**Checks passed**: {checks or 'none'}",
        *_code_section(code),
    ]
    body = "\n\n".join(parts)
    shown = 0
    inline = _l(code.get("inline"))
    for f in inline:
        f = _d(f)
        path = str(f.get("path") or "")
        text = code_block(str(f.get("text") or ""), path)
        block = f"#### {markdown_text(path, limit=1000)}\n\n{text}"
        if len(body) + len(block) > MAX_BODY_CHARS:
            break
        body += "\n\n" + block
        shown += 1
    if shown < len(inline):
        body += f"\n\n({len(inline) - shown} more small file(s) not shown: the card is full)"
    subject = f"Run train {safe_text(train.get('name'), limit=120)} at this station?"
    return {"subject": subject, "body": body}
