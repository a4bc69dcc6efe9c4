"""A station with a real config and audit log for dashboard tests, and a release review's data.

:func:`dashboard_station` writes a station (:func:`support.stationkit.make_station`) whose
trust store names its keys after their files (``alice.pub``, ``reviewer.pub``) and appends
hop records to its audit log with :class:`~pht_airflow.station.audit.AuditLog`. The texts
carry HTML and control characters, as a hostile train's would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pht_airflow.station.audit import AuditLog, hop_record
from support.stationkit import Station, make_station

HOSTILE_NAME = "<script>alert(1)</script>\x1b[31mred\u202eevil"
HOSTILE_REASON = "cell <b>3</b> is below 10\x07"
DIGESTS = ["sha256:" + c * 64 for c in "abc"]
RESULT = "sha256:" + "d" * 64


def dashboard_station(root: Path, parties: Any) -> Station:
    """A station trusting alice (creator) and reviewer (approver) by key file, with three hops
    in its audit log: a success with a hostile train name (approved and released), a
    rejection with a reason, a failure."""
    trust = root / "trust"
    trust.mkdir(parents=True)
    for name in ("alice", "reviewer"):
        (trust / f"{name}.pub").write_text(parties[name].public.pem)
    station = make_station(
        root / "station-a",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[str(trust / "alice.pub")],
        approvers=[str(trust / "reviewer.pub")],
    )
    log = AuditLog(station.audit_path)
    signers = [
        {"key_id": parties["alice"].key.key_id, "role": "creator"},
        {"key_id": parties["reviewer"].key.key_id, "role": "approver"},
    ]
    bob = parties["station-b"].age.recipient
    log.append(
        {
            **hop_record(
                train_id="train-1",
                train_digest=DIGESTS[0],
                station="station-a",
                outcome="success",
                hop=0,
                run_id="pht__run-1",
                signers=signers,
                approved_by="nurse\x1b]0;x\x07",
                released_by="dr-release",
                dataset="cohort",
                result_digest=RESULT,
                recipients=[bob],
            ),
            "train_name": HOSTILE_NAME,
            "recipient_names": {bob: "station-b"},
        }
    )
    log.append(
        hop_record(
            train_id="train-2",
            train_digest=DIGESTS[1],
            station="station-a",
            outcome="rejected",
            hop=0,
            run_id="pht__run-2",
            signers=signers,
            decision={"by": "dr-house", "reason": HOSTILE_REASON},
        )
    )
    log.append(
        hop_record(
            train_id="train-3",
            train_digest=DIGESTS[2],
            station="station-a",
            outcome="failure",
            failed_check="creator-signature",
            failure={"error": "VerificationError", "message": "no trusted creator signature"},
        )
    )
    log.append({"event": "cleanup", "station": "station-a", "removed": []})  # not a train
    return station


def review_data(rows: int = 5) -> dict[str, Any]:
    """A release review in the shape ``station.release.review`` returns."""
    return {
        "verdict": "review",
        "files": [
            {
                "path": "counts.csv",
                "bytes": 120,
                "verdict": "review",
                "reasons": ["cell (1, stage=III) is 3, below min_cell_count 10"],
                "preview": {
                    "columns": ["stage", "count"],
                    "rows": [
                        ["I", 40],
                        ["III", 3],
                        *[[f"<i>s{i}</i>", 50 + i] for i in range(rows)],
                    ],
                    "flagged": [[1, 1]],
                },
            },
            {
                "path": "notes\x1b[2J.txt",
                "bytes": 12,
                "verdict": "pass",
                "reasons": [],
                "preview": None,
            },
        ],
    }
