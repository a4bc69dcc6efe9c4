"""``file`` and ``folder`` data sets: the train's view and the described shape.

A CSV file becomes ``<table>.parquet`` (types inferred) and, when asked, a stable copy of the
CSV; a Parquet file is rewritten batch by batch; both get ``schema.json``. A malformed file is
a clear error that leaves nothing. A folder is mounted as it is, and described by its files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pht_airflow.station.data import (
    DataSet,
    DataSetError,
    data_view,
    describe,
    extract,
    parse_datasets,
)


def dataset(entry: dict[str, Any]) -> DataSet:
    problems: list[str] = []
    found = parse_datasets(
        {"registry": entry},
        problem=lambda path, text: problems.append(f"{'.'.join(path)}: {text}"),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "station.yaml:1",
    )
    assert not problems, problems
    return found["registry"]


@pytest.fixture()
def registry_csv(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "registry.csv"
    path.parent.mkdir()
    path.write_text('person_id,age,stage,note\n1,54,II,"a, b"\n2,61,III,\n3,47,I,"x\ny"\n')
    return path


def test_a_csv_file_becomes_parquet_and_a_stable_csv_copy(
    registry_csv: Path, tmp_path: Path
) -> None:
    ds = dataset({"kind": "file", "path": str(registry_csv), "formats": ["parquet", "csv"],
                  "identifier_columns": ["person_id"]})  # fmt: skip
    work = tmp_path / "hop"
    work.mkdir()
    with data_view(ds, work) as view:
        assert sorted(p.name for p in view.path.iterdir()) == [
            "registry.csv", "registry.parquet", "schema.json",
        ]  # fmt: skip
        registry_csv.write_text("changed during the run\n")  # the view does not change
        assert (view.path / "registry.csv").read_text().startswith("person_id,age")
        rows = pq.read_table(view.path / "registry.parquet").to_pylist()
        assert rows[0] == {"person_id": 1, "age": 54, "stage": "II", "note": "a, b"}
        assert rows[1]["note"] is None and rows[2]["note"] == "x\ny"
        schema = json.loads((view.path / "schema.json").read_text())
        assert schema["kind"] == "file" and schema["dataset"] == "registry"
        assert schema["tables"]["registry"]["rows"] == 3
        assert schema["tables"]["registry"]["columns"][:2] == [
            {"name": "person_id", "type": "int64", "identifier": True},
            {"name": "age", "type": "int64"},
        ]
    assert list(work.iterdir()) == []


def test_a_parquet_file_is_rewritten_in_batches(tmp_path: Path) -> None:
    source = tmp_path / "lab.parquet"
    table = pa.table({"id": list(range(200_000)), "value": [i * 0.5 for i in range(200_000)]})
    pq.write_table(table, source, row_group_size=50_000)
    ds = dataset({"kind": "file", "path": str(source), "table": "lab",
                  "formats": ["parquet", "csv"]})  # fmt: skip
    with data_view(ds, tmp_path) as view:
        assert pq.read_table(view.path / "lab.parquet").equals(table)
        lines = (view.path / "lab.csv").read_text().splitlines()
        assert lines[0] == '"id","value"' and len(lines) == 200_001
        assert view.tables == ("lab",)
    shape = describe(ds, threshold=1000)
    assert shape["tables"]["lab"] == {
        "rows": 200_000,
        "columns": [{"name": "id", "type": "int64"}, {"name": "value", "type": "double"}],
        "files": ["lab.parquet", "lab.csv"],
    }


def test_a_csv_whose_types_change_midway_is_refused_with_a_hint(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    lines = ["n"] + [str(i) for i in range(100_000)] + ["not a number"]
    source.write_text("\n".join(lines) + "\n")
    ds = dataset({"kind": "file", "path": str(source)})
    work = tmp_path / "hop"
    work.mkdir()
    with pytest.raises(DataSetError) as info, data_view(ds, work):
        pytest.fail("the view must not open")
    message = str(info.value)
    assert "data set 'registry' (bad.csv): a value does not fit its column's type" in message
    assert "convert the file to Parquet" in message
    assert list(work.iterdir()) == []


def test_a_ragged_csv_is_refused_without_echoing_its_row(tmp_path: Path) -> None:
    source = tmp_path / "ragged.csv"
    source.write_text("a,b,c\n1,2,3\n4,secret-value\n")
    ds = dataset({"kind": "file", "path": str(source)})
    only_csv = dataset({"kind": "file", "path": str(source), "formats": ["csv"]})
    for attempt in (
        lambda: describe(ds),
        lambda: extract(ds, tmp_path / "view"),
        lambda: extract(only_csv, tmp_path / "view"),
    ):
        (tmp_path / "view").mkdir(exist_ok=True)
        with pytest.raises(DataSetError) as info:
            attempt()
        assert "Expected 3 columns, got 2" in str(info.value)
        assert "secret-value" not in str(info.value)


def test_a_corrupt_parquet_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "broken.parquet"
    source.write_bytes(b"PAR1 not really")
    ds = dataset({"kind": "file", "path": str(source)})
    refused = r"\(broken.parquet\): not a readable Parquet file"
    with pytest.raises(DataSetError, match=refused), data_view(ds, tmp_path):
        pytest.fail("the view must not open")
    assert list(tmp_path.iterdir()) == [source]


def test_a_folder_is_mounted_as_it_is_and_described_by_its_files(
    registry_csv: Path, tmp_path: Path
) -> None:
    ds = dataset({"kind": "folder", "path": str(registry_csv.parent)})
    with data_view(ds, tmp_path) as view:
        assert view.path == registry_csv.parent and not view.extracted
        assert view.files == 1 and view.digest.startswith("sha256:")
    assert registry_csv.exists()  # a host folder is never wiped
    shape = describe(ds, threshold=2)
    assert shape["tables"]["registry.csv"]["rows"] == 2
    assert [c["name"] for c in shape["tables"]["registry.csv"]["columns"]] == [
        "person_id", "age", "stage", "note",
    ]  # fmt: skip
    assert "a, b" not in json.dumps(shape)


def test_a_parquet_file_damaged_past_its_footer_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"a": list(range(300_000))}), source, row_group_size=50_000)
    data = bytearray(source.read_bytes())
    for i in range(2_000, 400_000, 7):  # the column chunks; the footer stays readable
        data[i] = (data[i] + 1) % 256
    source.write_bytes(bytes(data))
    work = tmp_path / "hop"
    work.mkdir()
    refused = r"data set 'registry' \(damaged.parquet\): cannot"
    ds = dataset({"kind": "file", "path": str(source)})
    with pytest.raises(DataSetError, match=refused), data_view(ds, work):
        pytest.fail("the view must not open")
    assert list(work.iterdir()) == []
