"""The approval card as Airflow shows it (``airflow/card.py``): Markdown from the card facts.

The body is parsed with markdown-it (CommonMark, what a Markdown renderer does with it): the
facts of a real train render as the reviewer should read them, with the analysis script in a
code block, and nothing a train wrote becomes a link, an image, HTML or a closed fence.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from support.cardkit import README, SCRIPT, code_train, verified_at
from support.stationkit import make_station

from pht_airflow.airflow.card import MAX_BODY_CHARS, approval_card, code_block, markdown_text
from pht_airflow.oci import RegistryClient
from pht_airflow.station.card import card_facts

ALICE = "Alice Smith (UKA)"


def _tokens(body: str) -> list[Any]:
    flat = []
    for token in MarkdownIt("commonmark").parse(body):
        flat.append(token)
        flat.extend(token.children or [])
    return flat


def _unsafe(body: str) -> list[str]:
    """Token types through which Markdown would show something other than literal text."""
    bad = {"link_open", "image", "html_inline", "html_block", "autolink"}
    return [t.type for t in _tokens(body) if t.type in bad]


def _fences(body: str) -> dict[str, str]:
    """Each fenced block's language and content, in order (language may repeat: index it)."""
    found = [t for t in _tokens(body) if t.type == "fence"]
    return {f"{i}:{t.info}": t.content for i, t in enumerate(found)}


@pytest.mark.registry
@pytest.mark.docker
def test_a_real_trains_card_renders_what_is_decided(
    tmp_path: Path, client: RegistryClient, registry: Any, docker_client: Any, parties: Any
) -> None:
    station = make_station(
        tmp_path / "station-a", parties["station-a"], registry.host,
        creators=[{"key": parties["alice"].public.pem, "name": ALICE}],  # type: ignore[list-item]
        approvers=[parties["reviewer"].public.pem],
    )  # fmt: skip
    ref, spec = code_train(
        docker_client, client, registry, parties, "station-a", ["station-a", "station-b"]
    )
    facts = card_facts(station.config(), verified_at(station, client, ref), client)
    card = approval_card(facts)
    assert card["subject"] == "Run train row-count at this station?"
    body = card["body"]
    assert _unsafe(body) == []
    text = html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").render(body)))
    assert f"Created by alice — {ALICE}, key {parties['alice'].key.key_id}" in text
    assert (
        f"Approved by reviewer — not named in the trust store, key {parties['reviewer'].key.key_id}"
        in text
    )  # noqa: E501
    assert "Route (sequential): hop 1 of 2: [station-a] → station-b" in text
    assert f"Expires {facts['train']['expires']}" in text
    assert "Who can read this hop's result: the next station on the route" in text
    assert "station station-b (the next station)" in text
    assert f"Data cohort: folder {station.root / 'data' / 'cohort'}" in text
    assert "memory 256 MiB" in text and "network none, no GPU" in text
    assert "not expired; not run here before" in text
    assert "Base image pht-local/python:3.11: 1 layer(s), not listed." in text
    assert "opt/train/analysis.py (" in text and "usr/local/lib" not in text
    assert f"(id {spec.id})" in text
    assert _fences(body) == {"0:markdown": README.decode(), "1:python": SCRIPT.decode()}


def test_a_train_cannot_break_out_of_its_code_block_or_make_links() -> None:
    hostile = "x = 1\n````\n# heading\n[click](http://evil.example) <img src=x onerror=alert(1)>\n"
    facts = {
        "train": {"name": "[click](http://evil.example)", "id": "<b>id</b>"},
        "creator": {"signed_as": "![img](http://evil.example/x.png)", "key_id": "k"},
        "route": {"position": "<script>alert(1)</script>"},
        "code": {
            "files": [{"path": "a/<i>b</i>.py", "kind": "file", "size": 10}],
            "inline": [{"path": "a/`x`.py", "text": hostile}],
        },
    }
    body = approval_card(facts)["body"]
    assert _unsafe(body) == []
    assert _fences(body) == {"0:python": hostile}
    assert "`````python\n" in body  # one backtick longer than the longest run inside


def test_code_block_fences_and_languages() -> None:
    assert code_block("a\n", "x/y.py") == "```python\na\n```"
    assert code_block("no newline", "README") == "```text\nno newline\n```"
    assert code_block("``` and ``````", "r.R").startswith("```````r\n")
    assert code_block("\x1b[2Jhidden\u202e", "s.sh") == "```sh\n\\x1b[2Jhidden\\u202e\n```"


def test_markdown_text_is_literal_on_one_line() -> None:
    shown = markdown_text("[a](b)\n# c")
    assert shown == "\\[a\\]\\(b\\)\\\\n\\# c"  # the escape's backslash is literal too
    rendered = MarkdownIt("commonmark").render(shown)
    assert rendered == "<p>[a](b)\\n# c</p>\n"
    assert _unsafe(shown) == []


def test_malformed_or_missing_facts_never_break_the_card() -> None:
    for facts in ({}, {"code": []}, {"approvers": "x", "checks": None, "recipients": 3}):
        card = approval_card(facts)  # type: ignore[arg-type]
        assert card["subject"] == "Run train None at this station?"
        assert "**Approved by** nobody" in card["body"]
    card = approval_card({"code": {"error": "layer sha256:… is not a readable tar archive"}})
    assert "The train's files cannot be shown:" in card["body"]


def test_the_body_is_bounded() -> None:
    inline = [{"path": f"f{i}.py", "text": "#" * 16_000 + "\n"} for i in range(40)]
    body = approval_card({"code": {"inline": inline}})["body"]
    assert len(body) <= MAX_BODY_CHARS + 200
    assert re.search(r"\((\d+) more small file\(s\) not shown: the card is full\)$", body)
