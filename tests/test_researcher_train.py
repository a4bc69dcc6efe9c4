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
from hypothesis import given, settings
from hypothesis import strategies as st

from pht_airflow.errors import TrainExitError
from pht_airflow.protocol import (
    BASE_DIGEST_LABEL,
    BASE_LAYERS_LABEL,
    BASE_NAME_LABEL,
    BASE_TOP_LAYER_LABEL,
)
from pht_airflow.researcher.train import base_image_name, base_labels, init_train
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


# --- which layers are the base image's (pht train build labels them) --------------------------


@pytest.mark.parametrize(
    ("dockerfile", "base"),
    [
        ("FROM pht-local/python:3.11\nCOPY a.py /opt/\n", "pht-local/python:3.11"),
        ("# c\nfrom  --platform=linux/amd64 r-base:4 AS b\nRUN x\n", "r-base:4"),
        ("ARG BASE=python:3.12\nFROM ${BASE} AS build\nRUN make\nFROM build\n", "python:3.12"),
        ("FROM a:1 AS one\nFROM b:2\nCOPY --from=one /x /x\n", "b:2"),
        ("FROM \\\n  c:3\n", "c:3"),
        ("ARG V\nFROM python:$V\n", None),
        ("FROM scratch\nCOPY x /\n", "scratch"),
        ("RUN echo no from\n", None),
    ],
)
def test_the_base_image_a_dockerfile_builds_on(dockerfile: str, base: str | None) -> None:
    assert base_image_name(dockerfile) == base


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_base_image_name_never_raises(text: str) -> None:
    result = base_image_name(text)
    assert result is None or isinstance(result, str)


@pytest.mark.docker
def test_base_labels_from_the_engine(docker_client: Any) -> None:
    image = docker_client.images.get("pht-local/python:3.11")
    layers = image.attrs["RootFS"]["Layers"]
    labels = base_labels(docker_client, "pht-local/python:3.11")
    assert labels == {
        BASE_NAME_LABEL: "pht-local/python:3.11",
        BASE_LAYERS_LABEL: str(len(layers)),
        BASE_TOP_LAYER_LABEL: layers[-1],
    }  # a local image has no manifest digest: no BASE_DIGEST_LABEL
    assert BASE_DIGEST_LABEL not in labels
    assert base_labels(docker_client, "scratch") == {
        BASE_NAME_LABEL: "scratch",
        BASE_LAYERS_LABEL: "0",
    }
    assert base_labels(docker_client, f"pht-local/absent-{uuid.uuid4().hex[:8]}:1") == {}
    assert base_labels(docker_client, None) == {}
