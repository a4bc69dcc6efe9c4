"""The release review (``station.release.review``): the resting output, checked again by the
station's rules, with each table's preview and its flagged cells, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.stationkit import make_station

from pht_airflow.station import rest
from pht_airflow.station.release import review


def test_review_shows_the_verdicts_and_marks_the_small_cell(tmp_path: Path, parties: Any) -> None:
    station = make_station(
        tmp_path / "a", parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"min_cell_count": 10}},
    )  # fmt: skip
    config = station.config()
    out = tmp_path / "output"
    out.mkdir()
    (out / "counts.csv").write_text("group,n\nZebrafinch-7731,25\nsmall,3\n")
    (out / "pht-output.json").write_text(json.dumps(
        {"version": 1, "tables": {"counts.csv": {"kind": "frequency", "count_columns": ["n"]}}}
    ))  # fmt: skip
    key = rest.run_key("train-1", 0, "manual__x")
    rest.store_output(config, key, out, {"train_id": "train-1", "data": {"dataset": "cohort"}})

    shown = review(config, key)
    assert shown is not None and shown["verdict"] == "review"
    counts = next(f for f in shown["files"] if f["path"] == "counts.csv")
    assert counts["verdict"] == "review"
    assert any("min_cell_count 10" in r for r in counts["reasons"])
    assert counts["preview"]["columns"] == ["group", "n"]
    assert counts["preview"]["rows"] == [["Zebrafinch-7731", "25"], ["small", "3"]]
    assert counts["preview"]["flagged"] == [[1, 1]]  # the 3, and only it
    # Decrypted only while the review is made: nothing in work_dir but the ciphertext.
    assert sorted(p.name for p in config.work_dir.iterdir()) == [
        f"rest-{key}.age",
        f"rest-{key}.json",
    ]
    assert b"Zebrafinch" not in (config.work_dir / f"rest-{key}.age").read_bytes()
    assert review(config, rest.run_key("train-1", 0, "other")) is None
