"""The station's operators: the approval card a person reads is safe to show.

The verify operator runs against the real registry and engine-built train; the card it
returns is placed by the DAG's approval task, whose templates are rendered here with the
card as the verify task's XCom.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest
from support.stationkit import build_train, make_station, make_train_spec

from pht_airflow.airflow.card import markdown_text
from pht_airflow.airflow.dags import run_train_dag
from pht_airflow.airflow.operators import CARD_KEY, STARTED_KEY, VerifyTrainOperator
from pht_airflow.oci import Reference
from pht_airflow.signing import sign

# A screen clear, a window-title change ending in a bell, a right-to-left override, a
# Markdown link and image, raw HTML, and rich markup.
HOSTILE = "mallory\x1b[2J\x1b]0;t\x07\u202e [ok](http://evil.example) ![x](http://e/x.png) <b>b</b>"


def _raw_controls(text: str) -> list[str]:
    return [
        ch for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "markdown"),
    [
        ("row-count", "row\\-count"),
        ("a_b *c*", "a\\_b \\*c\\*"),
        ("[x](http://e)", "\\[x\\]\\(http\\:\\/\\/e\\)".replace("\\/", "/")),
        ("![i](u)", "\\!\\[i\\]\\(u\\)"),
        ("<script>&amp;", "\\<script\\>\\&amp;"),
        ("`code`", "\\`code\\`"),
        ("esc\x1b[31m", "esc\\\\x1b\\[31m"),
        ("two\nlines", "two\\\\nlines"),
        ("rlo\u202e", "rlo\\\\u202e"),
    ],
)
def test_markdown_text_renders_literally(raw: str, markdown: str) -> None:
    assert markdown_text(raw) == markdown


def test_markdown_text_is_bounded() -> None:
    assert len(markdown_text("a" * 10_000, limit=50)) == 50


@pytest.mark.docker
@pytest.mark.registry
def test_verify_builds_a_safe_approval_card_and_the_dag_shows_it(
    tmp_path: Path, docker_client: Any, client: Any, registry: Any, parties: Any
) -> None:
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"require_approval": True}},  # the full card
    )
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    docker_client.images.remove(str(ref))
    pinned = ref.with_digest(digest)
    sign(client, pinned, parties["alice"].key, role="creator", signer=HOSTILE)
    sign(client, pinned, parties["reviewer"].key, role="approver", signer="[bold]rev[/bold]")

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG("card", schedule=None):  # verify branches to approve (the policy asks) and run
        operator = VerifyTrainOperator(
            task_id="verify", reference=str(pinned), config_path=str(station.config_path)
        )
        operator >> [EmptyOperator(task_id="approve"), EmptyOperator(task_id="run")]
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        xcom_push=lambda key, value: pushed.__setitem__(key, value), task=operator, map_index=-1
    )
    summary = operator.execute({"ti": ti, "run_id": "manual__card"})  # as Airflow gives it
    assert pushed["return_value"] == summary
    assert sorted(pushed["skipmixin_key"]["followed"]) == ["approve", "run"]
    assert "card_facts" not in summary  # the facts go into the card, not twice into the XCom
    assert STARTED_KEY in pushed  # the task said it started (how a silent end is told apart)
    card = summary[CARD_KEY]
    assert summary["signers"][0]["signer"] == HOSTILE  # the facts stay as they are

    assert _raw_controls(card["subject"] + card["body"]) == []
    assert card["subject"] == "Run train row-count at this station?"
    body = card["body"]
    assert (
        "mallory\\\\x1b\\[2J\\\\x1b\\]0;t\\\\x07\\\\u202e \\[ok\\]\\(http\\:/"
        "/evil\\.example\\) \\!\\[x\\]\\(http\\://e/x\\.png\\) \\<b\\>b\\</b\\> — not named"
    ) in body
    assert "\\[bold\\]rev\\[/bold\\] — not named in the trust store" in body
    assert "](http" not in body and "<b>" not in body
    assert f"id {markdown_text(spec.id)}" in body and markdown_text(digest) in body
    assert "**Checks passed**: pinned to its digest; train spec valid;" in body
    assert 'Path("/pht/output/state.json")' in body  # the train's own code, inline

    # The approval task places the card as it is.
    approve = run_train_dag(config_path=str(station.config_path)).get_task("approve")

    class _TI:
        def xcom_pull(self, task_ids: str) -> Any:
            assert task_ids == "verify"
            return summary

    def render(template: str) -> str:
        return jinja2.Environment(autoescape=False).from_string(template).render(ti=_TI())  # noqa: S701

    assert render(approve.subject) == card["subject"]
    assert render(approve.body) == card["body"]
