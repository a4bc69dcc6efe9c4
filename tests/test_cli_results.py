"""``pht results fetch`` (``pht_airflow/cli/results.py``) against hostile results, end to end.

Real registry; the train is a tiny image signed by the researcher's key files; a result is
published as station-a would sign it. The refusal must be one clean line (no traceback, no
raw control characters), exit non-zero, and leave nothing in or beside the output folder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE
from support.hostile_tar import build, member

from pht_airflow.cli import main
from pht_airflow.keys import load_age_identity, load_signing_key
from pht_airflow.oci import RegistryClient
from pht_airflow.protocol import RESULT_MEDIA_TYPE, TRAIN_LABEL
from pht_airflow.researcher.train import StationInfo, make_spec
from pht_airflow.results import encrypt_stream, push_result
from pht_airflow.signing import sign

pytestmark = [pytest.mark.registry, pytest.mark.docker]


@pytest.fixture()
def publish(build_and_push: Any, registry: Any, parties: Any, key_files: dict[str, Path]) -> Any:
    """A factory: a parallel train signed by the key files' creator, with ``plaintext``
    sealed as station-a's signed result-0 to the creator; returns the pinned reference."""
    creator = load_signing_key(key_files["key"], PASSPHRASE)
    recipient = load_age_identity(key_files["age"], PASSPHRASE).recipient

    def factory(plaintext: bytes) -> str:
        spec = make_spec(
            name="hostile-cli", creator_id="alice", creator_key_id=creator.key_id,
            creator_recipient=recipient, recipients=[],
            route=[StationInfo("station-a", parties["station-a"].public.pem,
                               parties["station-a"].age.recipient)],
            mode="parallel", dataset="cohort",
        )  # fmt: skip
        ref = build_and_push(
            f"station-test/{spec.id}", "train", labels={TRAIN_LABEL: spec.to_canonical_json()}
        )
        with RegistryClient(registry.host) as client:
            sign(client, ref, creator, role="creator", signer="alice")
            manifest = client.get_manifest(ref.repository, ref.digest)
            layer = client.upload_blob(
                ref.repository,
                encrypt_stream(io.BytesIO(plaintext), [recipient]),
                media_type=RESULT_MEDIA_TYPE,
            )
            config = {
                "train": {"id": spec.id, "digest": ref.digest}, "hop": 0,
                "station": "station-a", "previous": None, "created": "2026-12-05T00:00:00Z",
                "recipients": [recipient], "plaintext_bytes": len(plaintext),
            }  # fmt: skip
            push_result(client, ref, manifest, layer, config, key=parties["station-a"].key)
        return str(ref)

    return factory


def _fetch(ref: str, key_files: dict[str, Path], out: Path) -> Any:
    args = ["results", "fetch", ref, "--identity", str(key_files["age"]), "--out", str(out),
            "--passphrase-file", str(key_files["passphrase"])]  # fmt: skip
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_fetch_opens_a_good_result(
    publish: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref = publish(build(member("counts.csv", b"n\n3\n")))
    result = _fetch(ref, key_files, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "0-station-a" / "counts.csv").read_bytes() == b"n\n3\n"


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        (build(member("a.csv"), member("a.csv")), "'a.csv': the name appears twice"),
        (build(member("\x1b[2Jclear.csv")), r"'\x1b[2Jclear.csv': control characters"),
    ],
    ids=["duplicate", "escape-sequence"],
)
def test_fetch_refuses_a_hostile_archive_in_one_clean_line(
    plaintext: bytes, message: str, publish: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref = publish(plaintext)
    work = tmp_path / "work"
    work.mkdir()
    result = _fetch(ref, key_files, work / "out")
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    assert os.listdir(work) == []
