"""Sealed results: seal+push and fetch+open against curl and the reference implementation.

Run:  .venv/bin/python benchmarks/bench_seal.py [--sizes 10,200,1024] [--repeat 3] [--skip-ref]
      [--ref-push] [--fetch-from CHECKOUT] [--markdown]

Starts its own ``docker-registry`` on 127.0.0.1 (storage under ``.pht/bench/seal-<pid>``, on
the same disk as the work tree), pushes a tiny train (an OCI image manifest whose config
carries the spec label, pushed with ``RegistryClient``), and for every size (MiB) writes a
result folder: one random file plus three small CSVs (random, so nothing compresses). Then,
for each size, ``--repeat`` times and interleaved, it measures on the same files:

  (a)  curl: ``cat FILES | curl -X PATCH -T -`` into an upload session of the same registry
       (one chunked request, as ours), then ``PUT ?digest=``: the limit, no tar, no crypto.
       The digest is computed before the clock starts;
  ours seal+push: ``results.seal`` (deterministic tar -> age -> streamed blob upload, then
       config, manifest and the station's signature);
  ours seal core: the same folder through the same deterministic tar and age encryption to
       the same recipient, SHA-256 of the ciphertext and an ECDSA signature of it, into no
       sink at all: the like-for-like comparison with (b1), which does no I/O either;
  ours fetch+open: what the next station does: ``results.verify_chain`` up to its hop, then
       ``results.open_result`` (download the blob into a private temporary file while its
       digest is checked; only then decrypt it and extract it with the strict archive
       reader into a new folder), the same path ``pht results fetch`` takes;
  ours fetch+open, --fetch-from code: with ``--fetch-from CHECKOUT`` only: the same fetch
       of the same result by another checkout's code (``git worktree add`` or a clone of an
       older commit), alternating with ours run by run: a before/after comparison;
  (b1) reference crypto core: pht-train-container-library 2.0.5's
       ``SecurityProtocol._post_run_outside_container`` (SHA-512, RSA-PSS, AES-CBC of whole
       files, RSA-OAEP key wrapping per route station and creator) on the same files;
  (b2) reference ``post_run_protocol`` on a local image holding the files in
       ``/opt/pht_results`` (built with ``docker import``; see ``ref_driver.py``);
  (b2+) with ``--ref-push`` only: (b2) plus the ``docker push`` of the resulting image to the
       same registry, which the reference's station does next and ours includes. Not a
       target row; its RSS and CPU columns are the driver's (the push runs in dockerd).

Every operation runs in a fresh child process under ``/usr/bin/time``, so its peak RSS is its
own (Linux carries ``ru_maxrss`` across ``exec``, so a child started straight from this
process would inherit ours). Ours run as ``bench_seal.py --one seal|fetch JOB``; the reference
runs in ``benchmarks/.ref-venv`` (``pip install pht-train-container-library==2.0.5``).
MB means MiB throughout; MB/s is result-folder bytes over seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pht_airflow.dev.localregistry import LocalRegistry, start_registry  # noqa: E402
from pht_airflow.keys import (  # noqa: E402
    AgeIdentity,
    SigningKey,
    load_age_identity,
    load_signing_key,
)
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Reference, RegistryClient  # noqa: E402
from pht_airflow.oci.media import sha256_digest  # noqa: E402
from pht_airflow.protocol import TRAIN_LABEL  # noqa: E402
from pht_airflow.researcher.train import StationInfo, make_spec  # noqa: E402
from pht_airflow.spec import TrainSpec  # noqa: E402

MiB = 1024 * 1024
BENCH_ROOT = ROOT / ".pht" / "bench"
REF_VENV = ROOT / "benchmarks" / ".ref-venv"
REF_PYTHON = REF_VENV / "bin" / "python"
REF_DRIVER = ROOT / "benchmarks" / "ref_driver.py"
REF_PACKAGE = "pht-train-container-library==2.0.5"
CSV_BYTES = 128 * 1024  # each of the three CSVs
TARGET_SIZE = 200  # MiB: where the throughput targets apply
RSS_SIZE = 1024  # MiB: where the memory target applies
RSS_LIMIT_MB = 100

ROWS = {
    "curl": "(a) curl upload",
    "seal": "ours seal+push",
    "core": "ours seal core (no registry)",
    "fetch": "ours fetch+open",
    "fetch_other": "ours fetch+open, --fetch-from code",
    "ref_crypto": "(b1) ref crypto core",
    "ref_protocol": "(b2) ref post_run_protocol",
    "ref_push": "(b2+) … + docker push",
}
TARGETS = {"curl": 0.6, "ref_crypto": 2.0, "ref_protocol": 10.0}


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Runs:
    """Per operation: seconds, peak RSS (KiB) and CPU seconds of each run."""

    seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, seconds: float, rss_kib: int, cpu: float) -> None:
        self.seconds.append(seconds)
        self.rss_kib.append(rss_kib)
        self.cpu.append(cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mb(self) -> float:
        return max(self.rss_kib) / 1024

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None
) -> tuple[float, int, float, str]:
    """Run ``cmd`` under ``/usr/bin/time``; return (wall s, peak RSS KiB, CPU s, stdout).

    ``time`` is small and forks the command, so the command's ``ru_maxrss`` starts from
    ``time``'s size rather than from this process's. The RSS and CPU ``time`` reports cover
    the command and every child it waited for (``sh``, ``cat``, ``curl``).
    """
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S", *cmd],
        capture_output=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        tail = " / ".join(err[-6:])[-1500:]
        raise RuntimeError(f"{shlex.join(cmd[:4])} … failed ({proc.returncode}): {tail}")
    rss, user, system = err[-1].split()
    return wall, int(rss), float(user) + float(system), proc.stdout.decode()


def child_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


# --- data, train and keys ----------------------------------------------------------------


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def _random_csv(path: Path, size: int) -> None:
    rows = ["id,stage,count,value"]
    total = len(rows[0]) + 1
    i = 0
    while total < size:
        r = os.urandom(8)
        row = f"{i},{r[0] % 4 + 1},{int.from_bytes(r[1:4], 'big')},{r[4:].hex()}"
        rows.append(row)
        total += len(row) + 1
        i += 1
    path.write_bytes(("\n".join(rows) + "\n").encode()[:size])


def make_result_folder(folder: Path, size_mib: int) -> list[Path]:
    """One random ``data.bin`` plus three CSVs, ``size_mib`` MiB in all; return the files."""
    folder.mkdir(parents=True)
    (folder / "tables").mkdir()
    csvs = [
        folder / "summary.csv",
        folder / "tables" / "counts.csv",
        folder / "tables" / "stages.csv",
    ]
    for csv in csvs:
        _random_csv(csv, CSV_BYTES)
    _random_file(folder / "data.bin", size_mib * MiB - len(csvs) * CSV_BYTES)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def push_train(client: RegistryClient, repository: str, spec: TrainSpec) -> Reference:
    """Push a tiny train image (one small layer, the spec label) straight to the registry."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"print('counting')\n"
        info = tarfile.TarInfo("opt/train/analysis.py")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    layer_desc = client.upload_bytes(repository, layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-11-22T00:00:00Z",
        "config": {
            "Labels": {TRAIN_LABEL: spec.to_canonical_json()},
            "Entrypoint": ["python3", "/opt/train/analysis.py"],
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
    }
    config_raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_desc = client.upload_bytes(repository, config_raw, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_dict(),
        "layers": [layer_desc.to_dict()],
    }
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = client.put_manifest(repository, "train", raw, OCI_MANIFEST)
    return Reference(client.registry, repository, digest=digest)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- child mode: one of our operations in a fresh process --------------------------------


def one(mode: str, job_path: Path) -> None:
    """Run one seal+push or fetch+open; print seconds, CPU seconds and peak RSS as JSON."""
    from pht_airflow.results import open_result, seal, verify_chain

    job = json.loads(job_path.read_text())
    spec = TrainSpec.from_json(job["spec"])
    if mode == "core":
        from pht_airflow.results import TarStream, encrypt_stream, plan_tar

        key = load_signing_key(job["key"], job["passphrase"].encode())
        recipients = [spec.route[1].recipient]  # what seal() encrypts hop 0 to
        cpu0, start = _cpu(), time.perf_counter()
        digest, size = hashlib.sha256(), 0
        for chunk in encrypt_stream(TarStream(plan_tar(Path(job["output_dir"]))), recipients):
            digest.update(chunk)
            size += len(chunk)
        key.sign(digest.hexdigest().encode())
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"seconds": seconds, "cpu": cpu, "maxrss_kib": peak, "blob_bytes": size}))
        return
    train = Reference(job["registry"], job["repository"], digest=job["train_digest"])
    with RegistryClient(job["registry"]) as client:
        if mode == "seal":
            key = load_signing_key(job["key"], job["passphrase"].encode())
            manifest = client.get_manifest(train.repository, train.digest or "")
            cpu0, start = _cpu(), time.perf_counter()
            sealed = seal(
                client,
                train,
                manifest,
                spec,
                hop=0,
                output_dir=Path(job["output_dir"]),
                key=key,
                previous=None,
            )
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
            extra: dict[str, Any] = {"digest": sealed.digest, "blob_bytes": sealed.layer.size}
        else:
            identity = load_age_identity(job["identity"], None)
            cpu0, start = _cpu(), time.perf_counter()
            # What station-b does before its run: verify the chain up to its hop, then
            # download, check, decrypt and extract hop 0's result.
            accepted = verify_chain(client, train, spec, upto=1)
            stats = open_result(client, accepted[0], identity, Path(job["dest"]))
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
            extra = {"files": stats.files, "bytes": stats.bytes}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu": cpu, "maxrss_kib": peak, **extra}))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the benchmark -----------------------------------------------------------------------

CURL_SCRIPT = r"""
set -eu
base=$1; repo=$2; digest=$3; shift 3
hdr() { tr -d '\r' | sed -n 's/^[Ll]ocation: //p'; }
abs() { case "$1" in /*) echo "$base$1";; *) echo "$1";; esac; }
loc=$(abs "$(curl -sSf -X POST -o /dev/null -D - "$base/v2/$repo/blobs/uploads/" | hdr)")
loc=$(abs "$(cat "$@" | curl -sSf -X PATCH -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -T - -o /dev/null -D - "$loc" | hdr)")
case "$loc" in *\?*) sep='&';; *) sep='?';; esac
curl -sSf -X PUT -H 'Content-Length: 0' -o /dev/null "$loc${sep}digest=$digest"
"""


def concat_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(8 * MiB):
                h.update(block)
    return "sha256:" + h.hexdigest()


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine_facts(skip_ref: bool) -> list[str]:
    from importlib.metadata import version

    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    os_name = platform.platform()
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    facts = [
        f"machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {os_name}, "
        f"Linux {platform.release()}, load average {os.getloadavg()[0]:.2f} at start",
        f"ours: Python {platform.python_version()}, pyrage {version('pyrage')}, "
        f"requests {version('requests')}, cryptography {version('cryptography')}",
        f"registry: {_version(['docker-registry', '--version'])} on 127.0.0.1, storage on "
        f"the work tree's disk; {_version(['curl', '--version']).split(' (')[0]}",
    ]
    if not skip_ref:
        ref = subprocess.run(
            [
                str(REF_PYTHON),
                "-c",
                "from importlib.metadata import version as v; import platform; "
                "print(platform.python_version(), v('pht-train-container-library'), "
                "v('cryptography'), v('docker'), v('pydantic'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        docker_version = _version(["docker", "version", "--format", "{{.Server.Version}}"])
        facts.append(
            f"reference: {REF_PACKAGE} in benchmarks/.ref-venv (Python {ref[0]}, "
            f"cryptography {ref[2]}, docker SDK {ref[3]}, pydantic {ref[4]}); "
            f"Docker engine {docker_version}"
        )
    return facts


def ensure_ref_venv() -> None:
    if REF_PYTHON.exists():
        return
    print(f"creating {REF_VENV.relative_to(ROOT)} with {REF_PACKAGE} …", flush=True)
    subprocess.run(["python3", "-m", "venv", str(REF_VENV)], check=True)
    subprocess.run([str(REF_VENV / "bin" / "pip"), "install", "-q", REF_PACKAGE], check=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = BENCH_ROOT / f"seal-{os.getpid()}"
        self.registry: LocalRegistry | None = None
        self.results: dict[int, dict[str, Runs]] = {}
        self.facts: list[str] = []

    def python_child(
        self, mode: str, job: dict[str, Any], script: Path | None = None
    ) -> dict[str, Any]:
        job_path = self.work / "keys" / f"job-{mode}.json"
        job_path.unlink(missing_ok=True)
        _write_secret(job_path, json.dumps(job).encode())
        script = script or Path(__file__).resolve()
        cmd = [sys.executable, str(script), "--one", mode, str(job_path)]
        _wall, rss, _cpu_s, out = run_measured(cmd)
        data = child_json(out)
        data["rss_kib"] = rss
        return data

    def ref(self, *argv: str) -> tuple[float, int, float, dict[str, Any]]:
        wall, rss, cpu, out = run_measured([str(REF_PYTHON), str(REF_DRIVER), *argv])
        return wall, rss, cpu, child_json(out)

    def setup(self) -> None:
        self.work.mkdir(parents=True)
        self.registry = start_registry(self.work / "registry")
        self.client = RegistryClient(self.registry.host)
        station_a, station_b = SigningKey.generate(), SigningKey.generate()
        age_a, age_b = AgeIdentity.generate(), AgeIdentity.generate()
        researcher, researcher_age = SigningKey.generate(), AgeIdentity.generate()
        spec = make_spec(
            name="bench-seal",
            creator_id="researcher",
            creator_key_id=researcher.key_id,
            creator_recipient=researcher_age.recipient,
            route=[
                StationInfo("station-a", station_a.public.pem, age_a.recipient),
                StationInfo("station-b", station_b.public.pem, age_b.recipient),
            ],
            mode="sequential",
            dataset="cohort",
        )
        self.spec = spec
        self.train = push_train(self.client, f"station-a/{spec.id}", spec)
        keys = self.work / "keys"
        keys.mkdir(mode=0o700)
        self.passphrase = secrets.token_hex(16)
        _write_secret(keys / "station-a.key", station_a.private_pem(self.passphrase.encode()))
        _write_secret(keys / "station-b.age", (age_b.secret_text() + "\n").encode())
        self.key_path = keys / "station-a.key"
        self.identity_path = keys / "station-b.age"

    def job(self, folder: Path, dest: Path) -> dict[str, Any]:
        assert self.train.digest is not None
        return {
            "registry": self.train.registry,
            "repository": self.train.repository,
            "train_digest": self.train.digest,
            "spec": self.spec.to_canonical_json(),
            "key": str(self.key_path),
            "passphrase": self.passphrase,
            "identity": str(self.identity_path),
            "output_dir": str(folder),
            "dest": str(dest),
        }

    def measure_size(self, size: int) -> dict[str, Runs]:
        assert self.registry is not None
        folder = self.work / f"data-{size}"
        files = make_result_folder(folder, size)
        digest = concat_digest(files)
        runs = {k: Runs() for k in ROWS if not (self.args.skip_ref and k.startswith("ref"))}
        if not self.args.ref_push:
            runs.pop("ref_push", None)
        if self.args.fetch_from is None:
            runs.pop("fetch_other", None)
        image = f"pht-bench-ref-{os.getpid()}-{size}"
        curl_cmd = ["sh", "-c", CURL_SCRIPT, "curl-upload", self.registry.url, "bench/curl", digest]
        curl_cmd += [str(f) for f in files]
        for r in range(self.args.repeat):
            print(f"  {size} MB, run {r + 1}/{self.args.repeat}: curl", end="", flush=True)
            os.sync()
            wall, rss, cpu, _ = run_measured(curl_cmd)
            runs["curl"].add(wall, rss, cpu)

            print(", seal", end="", flush=True)
            os.sync()
            dest = self.work / f"fetched-{size}-{r}"
            out = self.python_child("seal", self.job(folder, dest))
            runs["seal"].add(out["seconds"], out["rss_kib"], out["cpu"])

            print(", core", end="", flush=True)
            os.sync()
            out = self.python_child("core", self.job(folder, dest))
            runs["core"].add(out["seconds"], out["rss_kib"], out["cpu"])

            fetches = [("fetch", None)]
            if self.args.fetch_from is not None:
                # The same fetch with another checkout's code (its script imports its own
                # pht_airflow), in alternating order so drifting load hits both alike.
                other = ("fetch_other", self.args.fetch_from / "benchmarks" / "bench_seal.py")
                fetches = [fetches[0], other] if r % 2 == 0 else [other, fetches[0]]
            for key, script in fetches:
                print(f", {key}", end="", flush=True)
                os.sync()
                out = self.python_child("fetch", self.job(folder, dest), script)
                runs[key].add(out["seconds"], out["rss_kib"], out["cpu"])
                check_fetched(folder, dest)
                shutil.rmtree(dest)

            if not self.args.skip_ref:
                print(", ref crypto", end="", flush=True)
                os.sync()
                _, rss, _, out = self.ref("crypto", str(folder), "--state", str(self.work / "rk"))
                runs["ref_crypto"].add(out["seconds"], rss, out["cpu"])

                print(", ref protocol", end="", flush=True)
                state = self.work / f"ref-state-{size}"
                try:
                    self.ref("prepare", image, str(folder), "--state", str(state))
                    os.sync()
                    argv = ["protocol", image, "--state", str(state), "--check", str(folder)]
                    if "ref_push" in runs:
                        argv += ["--push-to", f"{self.registry.host}/bench-ref/{image}:latest"]
                    _, rss, _, out = self.ref(*argv)
                    runs["ref_protocol"].add(out["seconds"], rss, out["cpu"])
                    if "ref_push" in runs:
                        # RSS and CPU of the push are dockerd's, not measurable per operation.
                        runs["ref_push"].add(out["seconds"] + out["push_seconds"], rss, out["cpu"])
                finally:
                    self.ref("cleanup", image, "--state", str(state))
            print(flush=True)
        shutil.rmtree(folder)
        return runs

    def run(self) -> int:
        from rich.console import Console

        console = Console(width=120, soft_wrap=True)
        argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
        command = f".venv/bin/python benchmarks/bench_seal.py {argv}".strip()
        if not self.args.skip_ref:
            ensure_ref_venv()
        self.facts = machine_facts(self.args.skip_ref)
        console.print(f"[bold]command:[/] {command}")
        console.print(
            f"[bold]date:[/] {dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
        )
        for fact in self.facts:
            console.print(fact)
        console.print(
            f"data per size: data.bin (random) + 3 CSVs of {CSV_BYTES // 1024} KiB; "
            f"{self.args.repeat} run(s) per operation, median seconds, highest peak RSS"
        )
        try:
            self.setup()
            for size in self.args.sizes:
                self.results[size] = self.measure_size(size)
                console.print(render_table(size, self.results[size]))
        finally:
            if getattr(self, "client", None) is not None:
                self.client.close()
            if self.registry is not None:
                self.registry.stop()
            shutil.rmtree(self.work, ignore_errors=True)
        for line in verdicts(self.results):
            console.print(line)
        console.print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if self.args.markdown:
            print()
            print(markdown(self.results))
        return 0


def check_fetched(original: Path, opened: Path) -> None:
    """The opened result must hold the same files, byte for byte (sizes + one hash)."""
    want = {p.relative_to(original): p.stat().st_size for p in original.rglob("*") if p.is_file()}
    got = {p.relative_to(opened): p.stat().st_size for p in opened.rglob("*") if p.is_file()}
    if want != got:
        raise RuntimeError(f"fetch+open gave other files: {sorted(got)} vs {sorted(want)}")
    csv = Path("tables") / "counts.csv"
    if (original / csv).read_bytes() != (opened / csv).read_bytes():
        raise RuntimeError("fetch+open gave other bytes")


def _mbs(size: int, seconds: float) -> float:
    return size / seconds


def ratio(size: int, runs: dict[str, Runs], key: str) -> float:
    """seal+push throughput divided by the row's throughput."""
    return _mbs(size, runs["seal"].median) / _mbs(size, runs[key].median)


def render_table(size: int, runs: dict[str, Runs]) -> Any:
    from rich.table import Table

    table = Table(title=f"{size} MB result ({size * MiB:,} bytes)", title_justify="left")
    for name, justify in [
        ("operation", "left"),
        ("MB/s", "right"),
        ("seconds", "right"),
        ("peak RSS MB", "right"),
        ("CPU s", "right"),
        ("seal+push ÷ row", "right"),
        (f"target at {TARGET_SIZE} MB", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, label in ROWS.items():
        if key not in runs:
            continue
        r = runs[key]
        target = TARGETS.get(key)
        table.add_row(
            label,
            f"{_mbs(size, r.median):.0f}",
            f"{r.median:.2f}",
            f"{r.peak_mb:.0f}",
            f"{r.cpu_median:.2f}",
            f"{ratio(size, runs, key):.2f}",
            f"≥ {target:g}" if target else "",
        )
    return table


def verdicts(results: dict[int, dict[str, Runs]]) -> list[str]:
    lines = []
    if TARGET_SIZE in results:
        runs = results[TARGET_SIZE]
        for key, want in TARGETS.items():
            if key in runs:
                got = ratio(TARGET_SIZE, runs, key)
                verdict = "met" if got >= want else "MISSED"
                lines.append(
                    f"target at {TARGET_SIZE} MB: seal+push ≥ {want:g} × {ROWS[key]}: "
                    f"{got:.2f} × — {verdict}"
                )
        if "core" in runs and "ref_crypto" in runs:
            like = _mbs(TARGET_SIZE, runs["core"].median) / _mbs(
                TARGET_SIZE, runs["ref_crypto"].median
            )
            lines.append(
                f"like for like at {TARGET_SIZE} MB (no I/O on either side): ours seal core = "
                f"{like:.2f} × {ROWS['ref_crypto']}"
            )
    if RSS_SIZE in results:
        peak = results[RSS_SIZE]["seal"].peak_mb
        verdict = "met" if peak < RSS_LIMIT_MB else "MISSED"
        lines.append(
            f"target at {RSS_SIZE} MB: seal+push peak RSS < {RSS_LIMIT_MB} MB: "
            f"{peak:.0f} MB — {verdict}"
        )
    return lines


def markdown(results: dict[int, dict[str, Runs]]) -> str:
    out = []
    for size, runs in results.items():
        out.append(f"**{size} MB**\n")
        out.append("| operation | MB/s | seconds | peak RSS MB | CPU s | seal+push ÷ row |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for key, label in ROWS.items():
            if key in runs:
                r = runs[key]
                out.append(
                    f"| {label} | {_mbs(size, r.median):.0f} | {r.median:.2f} | "
                    f"{r.peak_mb:.0f} | {r.cpu_median:.2f} | {ratio(size, runs, key):.2f} |"
                )
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[10, 200, 1024],
        help="result sizes in MiB, comma-separated (default 10,200,1024)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (median)")
    parser.add_argument("--skip-ref", action="store_true", help="skip the reference (b1, b2)")
    parser.add_argument(
        "--ref-push",
        action="store_true",
        help="also time docker push of the reference's image after post_run_protocol (b2+)",
    )
    parser.add_argument(
        "--fetch-from",
        type=lambda p: Path(p).resolve(),
        metavar="CHECKOUT",
        help="also time fetch+open with another checkout's code (a before/after row)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print markdown tables")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]))
        return 0
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
