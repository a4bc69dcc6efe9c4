"""Extraction of a sql data set to Parquet against PostgreSQL's own COPY to /dev/null.

Run:  .venv/bin/python benchmarks/bench_extract.py [--rows 1000000] [--repeat 3]

Starts its own PostgreSQL (``pht_airflow.dev.localpostgres``) on 127.0.0.1, fills an
OMOP-style ``measurement`` table with ``--rows`` rows (ids, a concept id, a date, a
timestamp, an unbounded numeric, a unit and a free-text note), and measures, alternating the
order between runs:

  (a) ``psql -c "COPY (SELECT * FROM measurement) TO STDOUT (FORMAT csv)" > /dev/null``:
      the database's own export, the baseline;
  (b) ``pht_airflow.station.data.extract`` of the same table to Parquet (the station's
      extraction: read-only transaction, COPY into the work folder, streaming conversion in
      row groups of the default 32 MiB budget);
  (c) the same with ``formats: [parquet, csv]`` (the CSV kept for the train);
  (d) (b) through psycopg 3's own COPY (what the Postgres provider opens with SQLAlchemy 2),
      without the psycopg2 twin the extractor uses when it can.

Each runs in a fresh process under GNU ``/usr/bin/time -f "%M %U %S"`` (peak RSS and CPU of
that process alone). Throughput is rows/s and MB/s of the table's CSV form (the bytes COPY
produces), so both sides are measured on the same amount of data. Target: (b) at least half
of (a)'s throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pht_airflow.dev.localpostgres import start_postgres  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024

FILL = """
CREATE TABLE measurement AS
SELECT g AS measurement_id,
       (g % 50000) + 1 AS person_id,
       3000000 + (g % 700) AS measurement_concept_id,
       DATE '2015-01-01' + (g % 3000) AS measurement_date,
       TIMESTAMP '2015-01-01 08:00' + (g % 3000) * INTERVAL '1 day'
           + (g % 86400) * INTERVAL '1 second' AS measurement_datetime,
       ((g % 1000) / 7.0)::numeric AS value_as_number,
       (ARRAY['mmol/L', 'mg/dL', 'kg', 'cm', 'mmHg'])[(g % 5) + 1]::varchar(50)
           AS unit_source_value,
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'note ' || md5(g::text) END AS note
FROM generate_series(1, %(rows)s) AS g
"""


def _time(cmd: list[str], stdout: int | None = None) -> tuple[float, int, float, str]:
    """Run ``cmd`` under /usr/bin/time; (wall s, peak RSS KiB, CPU s, its stdout)."""
    stats = tempfile.NamedTemporaryFile(prefix="bench-time-", delete=False)  # noqa: SIM115
    stats.close()
    start = time.perf_counter()
    proc = subprocess.run(  # noqa: S603 - fixed commands
        ["/usr/bin/time", "-o", stats.name, "-f", "%M %U %S", *cmd],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    wall = time.perf_counter() - start
    text = Path(stats.name).read_text().split()
    os.unlink(stats.name)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode()[-2000:]}")
    rss, user, system = int(text[-3]), float(text[-2]), float(text[-1])
    out = proc.stdout.decode() if proc.stdout else ""
    return wall, rss, user + system, out


def one(url: str, out: str, formats: str) -> None:
    """Child process: extract the table, print the seconds the extraction took."""
    import importlib

    from pht_airflow.station.data import extract, parse_datasets
    from pht_airflow.station.secrets import DatabaseUrls

    if formats.endswith("+psycopg3"):
        module = importlib.import_module("pht_airflow.station.data.extract")
        module._fast_driver = lambda conn: conn  # type: ignore[attr-defined]
        formats = formats.removesuffix("+psycopg3")

    dataset = parse_datasets(
        {"bench": {"kind": "sql", "connection": "db", "tables": ["measurement"],
                   "formats": formats.split(",")}},
        problem=lambda path, text: sys.exit(text),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "bench",
        lookups=DatabaseUrls({"db": url}),
    )["bench"]  # fmt: skip
    start = time.perf_counter()
    done = extract(dataset, Path(out))
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": done.tables[0].rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("URL", "OUT", "FORMATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    import psycopg
    import pyarrow

    server = start_postgres(prefix="pht-bench-postgres-")
    work = Path(tempfile.mkdtemp(prefix="pht-bench-extract-"))
    try:
        url = f"{server.url}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL.replace("%(rows)s", str(int(args.rows))))
            conn.execute("VACUUM ANALYZE measurement")
            table_bytes = conn.execute("SELECT pg_total_relation_size('measurement')").fetchone()[0]  # type: ignore[index]
        copy_sql = "COPY (SELECT * FROM measurement) TO STDOUT (FORMAT csv)"
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            csv_bytes = 0
            with cur.copy(copy_sql) as copy:
                for chunk in copy:
                    csv_bytes += len(chunk)
        psql = shutil.which("psql") or str(server.bindir / "psql")
        keys = ["copy", "parquet", "parquet+csv", "parquet+psycopg3"]
        results: dict[str, list[tuple[float, int, float]]] = {k: [] for k in keys}
        parquet_bytes = 0
        for i in range(args.repeat):
            order = list(keys)
            if i % 2:
                order.reverse()
            for key in order:
                if key == "copy":
                    with open(os.devnull, "wb") as null:
                        wall, rss, cpu, _ = _time([psql, url, "-X", "-q", "-c", copy_sql],
                                                  stdout=null.fileno())  # fmt: skip
                    results[key].append((wall, rss, cpu))
                    continue
                out = work / f"{key}-{i}"
                out.mkdir()
                formats = {"parquet": "parquet", "parquet+csv": "parquet,csv",
                           "parquet+psycopg3": "parquet+psycopg3"}[key]  # fmt: skip
                _, rss, cpu, text = _time([sys.executable, __file__, "--one", url, str(out),
                                           formats])  # fmt: skip
                info = json.loads(text.strip().splitlines()[-1])
                assert info["rows"] == args.rows, info
                parquet_bytes = (out / "measurement.parquet").stat().st_size
                results[key].append((info["seconds"], rss, cpu))
                shutil.rmtree(out)
        print(f"# bench_extract: {args.rows} rows, table {table_bytes / MiB:.0f} MiB in "
              f"PostgreSQL, {csv_bytes / MiB:.0f} MiB as CSV, {parquet_bytes / MiB:.0f} MiB as "
              f"Parquet; {args.repeat} runs each")  # fmt: skip
        print(f"# {platform.python_version()}, pyarrow {pyarrow.__version__}, psycopg "
              f"{psycopg.__version__}, {os.cpu_count()} cores, load "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
        print(
            "| operation | best s | rows/s best | MB/s best | MB/s median | peak RSS MiB | CPU s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        labels = {
            "copy": '`psql -c "COPY (SELECT …) TO STDOUT (FORMAT csv)"` > /dev/null',
            "parquet": "`extract` → Parquet",
            "parquet+csv": "`extract` → Parquet + CSV",
            "parquet+psycopg3": "`extract` → Parquet, psycopg 3's COPY",
        }
        best = {}
        for key, runs in results.items():
            seconds = [r[0] for r in runs]
            best[key] = min(seconds)
            print(f"| {labels[key]} | {best[key]:.2f} | {args.rows / best[key]:,.0f} | "
                  f"{csv_bytes / MB / best[key]:.0f} | "
                  f"{csv_bytes / MB / statistics.median(seconds):.0f} | "
                  f"{max(r[1] for r in runs) / 1024:.0f} | "
                  f"{statistics.median(r[2] for r in runs):.2f} |")  # fmt: skip
        print(f"# extract → Parquet at {best['copy'] / best['parquet']:.0%} of COPY's throughput "
              f"(best runs); target ≥ 50 %")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    main()
