"""``pht train init``'s starter analysis reads the data contract at ``/pht/data``.

Real engine: the starter is built on the default base image (no pyarrow) and run in the
sandbox on a station's extracted view; it reads the CSV files, and says what to do when the
station offers Parquet only. With pyarrow (this test's interpreter) it reads the Parquet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.errors import TrainExitError
from pht_airflow.researcher.train import init_train
from pht_airflow.station.data import DataSet, data_view, parse_datasets
from pht_airflow.station.sandbox import Limits, run_train


def _file_dataset(path: Path, formats: list[str]) -> DataSet:
    return parse_datasets(
        {"cohort": {"kind": "file", "path": str(path), "table": "person", "formats": formats}},
        problem=lambda p, text: pytest.fail(text),
        resolve_path=lambda value, p: Path(value),
        where=lambda p: "station.yaml:1",
    )["cohort"]


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("person_id,age\n1,54\n2,61\n3,47\n")
    return path


@pytest.fixture()
def starter(tmp_path: Path, docker_client: Any) -> Iterator[str]:
    folder = tmp_path / "analysis"
    names = sorted(p.name for p in init_train(folder))
    assert names == ["Dockerfile", "README.md", "analysis.py"]
    tag = f"pht-test-starter:{uuid.uuid4().hex[:12]}"
    docker_client.images.build(path=str(folder), tag=tag, pull=False, rm=True, forcerm=True)
    try:
        yield tag
    finally:
        docker_client.images.remove(tag, force=True)


def _run(docker_client: Any, image: str, data: Path, tmp_path: Path) -> tuple[Any, list[str]]:
    out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    lines: list[str] = []
    try:
        run_train(
            docker_client, image, data_dir=data, input_dir=None, output_dir=out,
            env={"PHT_STATION_ID": "station-a"}, limits=Limits(), log=lines.append,
        )  # fmt: skip
    except TrainExitError:
        return None, lines
    return json.loads((out / "state.json").read_text()), lines


@pytest.mark.docker
def test_the_starter_reads_csv_without_pyarrow_and_says_what_to_do_with_parquet_only(
    docker_client: Any, starter: str, source: Path, tmp_path: Path
) -> None:
    with data_view(_file_dataset(source, ["parquet", "csv"]), tmp_path) as view:
        state, lines = _run(docker_client, starter, view.path, tmp_path)
    assert state == {"rows": 3, "hops": [{"station": "station-a", "rows": 3,
                                          "tables": {"person": 3}}]}  # fmt: skip
    assert "table person: person_id (int64), age (int64)" in lines
    with data_view(_file_dataset(source, ["parquet"]), tmp_path) as view:
        state, lines = _run(docker_client, starter, view.path, tmp_path)
    assert state is None
    assert any("Parquet only and this image has no pyarrow" in line for line in lines), lines


def test_the_starter_reads_parquet_with_pyarrow(source: Path, tmp_path: Path) -> None:
    folder = tmp_path / "analysis"
    init_train(folder)
    out = tmp_path / "out"
    out.mkdir()
    with data_view(_file_dataset(source, ["parquet"]), tmp_path) as view:
        script = (folder / "analysis.py").read_text()
        script = script.replace('Path("/pht/data")', f"Path({str(view.path)!r})")
        script = script.replace('Path("/pht/input")', f"Path({str(tmp_path / 'none')!r})")
        script = script.replace('Path("/pht/output")', f"Path({str(out)!r})")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=False, env={"PHT_STATION_ID": "station-a"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / "state.json").read_text())
    assert state["hops"][0]["tables"] == {"person": 3}
