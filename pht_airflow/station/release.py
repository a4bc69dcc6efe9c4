"""What a person reviewing a hop's output before its release sees (the dashboard's review page).

The output rests encrypted to the station (:mod:`.rest`); :func:`review` decrypts it into a
private, wiped folder, runs the station's disclosure checks again (the same rules the
``check_output`` task applied) and returns each file's verdict and reasons with a bounded
preview of each table, flagged cells marked. The previews carry values of the output: they
are for the authenticated review page only, never for an XCom, a log or an exception.
"""

from __future__ import annotations

from typing import Any

from .config import StationConfig
from .disclosure import check_output, preview_tables
from .rest import load_facts, opened_output


def review(config: StationConfig, run_key: str) -> dict[str, Any] | None:
    """The review of the output resting under ``run_key``, or None if there is none (the hop
    ended, or its train has not finished running)."""
    facts = load_facts(config, run_key)
    if facts is None:
        return None
    data = facts.get("data")
    data = data if isinstance(data, dict) else {}
    dataset = config.datasets.get(str(data.get("dataset")))
    rows = facts.get("dataset_rows")
    with opened_output(config, run_key, str(facts.get("train_id") or "train")) as folder:
        report = check_output(
            folder,
            config.policy.disclosure,
            min_cell_count=config.policy.min_cell_count,
            dataset_rows=rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
            identifier_columns=dataset.identifier_columns if dataset is not None else (),
        )
        previews = {str(p.get("path")): p for p in preview_tables(folder, report)}
    summary = report.summary()
    files = []
    for item in summary.get("files") or []:
        shown = previews.get(str(item.get("path")))
        preview = None
        if shown is not None:
            cells = shown.get("rows") or []
            preview = {
                "columns": list(shown.get("columns") or []),
                "rows": [[cell.get("value") for cell in row] for row in cells],
                "flagged": [
                    [r, c]
                    for r, row in enumerate(cells)
                    for c, cell in enumerate(row)
                    if cell.get("flagged")
                ],
            }
        files.append({**item, "preview": preview})
    return {"verdict": summary.get("verdict"), "files": files}
