"""The train sandbox against the real Docker engine: one probe train per behaviour.

Every probe runs on the local base images (``pht-local/python:3.11``, ``pht-local/busybox``)
with a ``command`` override, and every test checks afterwards that its container is gone and
that the private temporary folders hold nothing. Nothing here contacts anything but the
engine and a listener of our own on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.errors import (
    ConfigError,
    OutputTooLargeError,
    PolicyError,
    SandboxError,
    TrainExitError,
    TrainOOMError,
    TrainTimeoutError,
)
from pht_airflow.station.sandbox import (
    ALL_GPUS,
    LABEL,
    MAX_OUTPUT_DEPTH,
    RESOLV_CONF,
    Limits,
    SandboxResult,
    container_settings,
    describe_gpus,
    run_train,
)

pytestmark = pytest.mark.docker

PYTHON = "pht-local/python:3.11"
BUSYBOX = "pht-local/busybox:latest"
MiB = 1024 * 1024
NOBODY = 65534
SOCKET = "import socket; socket.socket(socket.AF_UNIX).bind('/pht/output/sock')"


@pytest.fixture(scope="module")
def images(docker_client: Any) -> None:
    import docker.errors

    for image in (PYTHON, BUSYBOX):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            msg = f"the image {image} is not available: run scripts/bootstrap.sh first"
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)


@dataclass
class Box:
    """One probe run's folders, container name and collected log lines."""

    docker: Any
    tmp: Path
    data: Path
    output: Path
    name: str
    train_id: str
    lines: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "PHT_TRAIN_ID": self.train_id,
            "PHT_STATION_ID": "station-test",
            "PHT_HOP": "1",
            "PHT_ROUTE_LENGTH": "3",
            "PHT_DATASET": "cohort",
        }

    def run(
        self,
        image: str,
        command: Sequence[str],
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> SandboxResult:
        return run_train(
            self.docker,
            image,
            data_dir=self.data,
            input_dir=kwargs.pop("input_dir", None),
            output_dir=self.output,
            env=kwargs.pop("env", self.env()),
            limits=limits or Limits(memory_bytes=256 * MiB, wall_seconds=30),
            log=self.lines.append,
            name=self.name,
            command=command,
            **kwargs,
        )

    def python(self, source: str, limits: Limits | None = None, **kwargs: Any) -> SandboxResult:
        return self.run(PYTHON, ["python3", "-u", "-c", textwrap.dedent(source)], limits, **kwargs)

    def sh(self, script: str, limits: Limits | None = None, **kwargs: Any) -> SandboxResult:
        return self.run(BUSYBOX, ["sh", "-c", script], limits, **kwargs)

    def containers(self, **filters: str) -> list[Any]:
        return self.docker.containers.list(
            all=True, filters={"label": LABEL, "name": self.name, **filters}
        )


@pytest.fixture()
def box(
    docker_client: Any, images: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Box]:
    private_tmp = tmp_path / "private-tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "cohort.csv").write_text("id,age\n1,34\n2,51\n3,47\n")
    output = tmp_path / "output"
    output.mkdir()
    tag = uuid.uuid4().hex[:12]
    b = Box(docker_client, tmp_path, data, output, f"pht-sbtest-{tag}", f"train-{tag}")
    yield b
    assert b.containers() == [], "a sandbox container was left behind"
    assert list(private_tmp.iterdir()) == [], "the private input folder was left behind"
    assert sorted(p.name for p in data.iterdir()) == ["cohort.csv"], "the data set changed"


def _output_names(box: Box) -> list[str]:
    return sorted(str(p.relative_to(box.output)) for p in box.output.rglob("*"))


# --- the happy path ----------------------------------------------------------------------


def test_happy_path_reads_data_writes_output_and_logs(box: Box) -> None:
    result = box.python(
        """
        import csv, json, os
        rows = list(csv.DictReader(open("/pht/data/cohort.csv")))
        print("read", len(rows), "rows")
        print("a very long line", "x" * 20000)
        json.dump({
            "n": len(rows),
            "mean_age": sum(int(r["age"]) for r in rows) / len(rows),
            "env": {k: v for k, v in os.environ.items()},
            "input": os.listdir("/pht/input"),
            "uid": os.getuid(),
        }, open("/pht/output/result.json", "w"))
        print("done")
        """
    )
    assert isinstance(result, SandboxResult)
    assert result.exit_code == 0
    assert result.container_name == box.name
    assert result.image == PYTHON
    assert result.output_files == 1
    written = (box.output / "result.json").stat()
    assert result.output_bytes == max(written.st_size, written.st_blocks * 512)  # allocated
    assert 0 < result.duration_seconds < 30
    assert _output_names(box) == ["result.json"]
    # The train's uid wrote it; after the run the station owns it, private to it.
    assert (written.st_uid, written.st_mode & 0o7777) == (os.geteuid(), 0o600)

    out = json.loads((box.output / "result.json").read_text())
    assert out["n"] == 3 and out["mean_age"] == pytest.approx(44.0)
    assert out["input"] == [] and out["uid"] == NOBODY
    for key, value in box.env().items():
        assert out["env"][key] == value
    image_env = box.docker.images.get(PYTHON).attrs["Config"].get("Env") or []
    allowed = {v.split("=", 1)[0] for v in image_env} | {"PATH", "HOSTNAME", "HOME"}
    allowed.add("LC_CTYPE")  # set by python3 itself in a C locale (PEP 538)
    others = {k for k in out["env"] if not k.startswith("PHT_")}
    assert others <= allowed, f"unexpected variables: {others - allowed}"

    assert box.lines[0] == "read 3 rows"
    assert box.lines[-1] == "done"
    assert box.lines[1].endswith("[line truncated]") and len(box.lines[1]) < 5000
    assert result.log_lines == 3


def test_train_output_reaches_the_log_with_controls_escaped(box: Box) -> None:
    box.python(
        r"""
        print("\x1b[2J\x1b]0;title\x07clear\u202eevil\x9b31m\tcolumn")
        print("progress 1\rprogress 2")
        """
    )
    assert box.lines == [
        "\\x1b[2J\\x1b]0;title\\x07clear\\u202eevil\\x9b31m\tcolumn",
        "progress 1\\nprogress 2",
    ]


def test_input_folder_is_mounted_read_only(box: Box) -> None:
    given = box.tmp / "input"
    given.mkdir(mode=0o755)
    (given / "previous.json").write_text('{"n": 7}')
    box.python(
        """
        import json, os
        n = json.load(open("/pht/input/previous.json"))["n"]
        try:
            open("/pht/input/new", "w")
        except OSError as exc:
            print("input write:", exc.strerror)
        json.dump({"n": n + 1}, open("/pht/output/r.json", "w"))
        """,
        input_dir=given,
    )
    assert json.loads((box.output / "r.json").read_text()) == {"n": 8}
    assert box.lines == ["input write: Read-only file system"]
    assert sorted(p.name for p in given.iterdir()) == ["previous.json"]


# --- isolation -----------------------------------------------------------------------------


def test_no_network(box: Box) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        box.python(
            f"""
            import json, socket
            found = {{}}
            try:
                socket.create_connection(("127.0.0.1", {port}), 2)
                found["connect"] = "connected"
            except OSError as exc:
                found["connect"] = type(exc).__name__
            try:
                socket.getaddrinfo("example.org", 443)
                found["dns"] = "resolved"
            except OSError as exc:
                found["dns"] = type(exc).__name__
            found["interfaces"] = sorted(
                line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]
            )
            json.dump(found, open("/pht/output/net.json", "w"))
            """
        )
        with pytest.raises(BlockingIOError):
            listener.accept()  # the train never reached the host's loopback
    finally:
        listener.close()
    found = json.loads((box.output / "net.json").read_text())
    assert found["connect"] == "ConnectionRefusedError"  # the container's own lo
    assert found["dns"] == "gaierror"
    assert found["interfaces"] == ["lo"]


def test_root_and_data_are_read_only_output_and_tmp_writable(box: Box) -> None:
    box.sh(
        "touch /x; echo root=$?; touch /pht/data/y; echo data=$?; "
        "echo ok > /pht/output/z; echo output=$?; echo t > /tmp/t; echo tmp=$?; "
        "cp /bin/busybox /tmp/bb && /tmp/bb true; echo tmpexec=$?",
    )
    assert "touch: /x: Read-only file system" in box.lines
    assert "touch: /pht/data/y: Read-only file system" in box.lines
    assert {"root=1", "data=1", "output=0", "tmp=0"} <= set(box.lines)
    assert "tmpexec=0" not in box.lines  # /tmp is noexec
    assert _output_names(box) == ["z"]


def test_runs_as_nobody(box: Box) -> None:
    box.sh("id -u; id -g")
    assert box.lines == [str(NOBODY), str(NOBODY)]


def test_no_capabilities_and_no_new_privileges(box: Box) -> None:
    box.sh("grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status")
    status = dict(line.split(":\t") for line in box.lines)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[cap] == "0000000000000000", cap
    assert status["NoNewPrivs"] == "1"


def test_container_settings_as_inspected(box: Box) -> None:
    # The train reads its own limits from the cgroup; the engine settings are checked too.
    box.sh(
        "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; "
        "ls /dev/shm 2>&1; ulimit -c; mount | grep ' /tmp '",
        limits=Limits(memory_bytes=128 * MiB, pids=64, tmp_bytes=8 * MiB, wall_seconds=30),
    )
    assert box.lines[0] == "64"
    assert "No such file or directory" in box.lines[1]  # ipc_mode none: no /dev/shm
    assert box.lines[2] == "0"  # no core dumps
    assert "size=8192k" in box.lines[3] and "noexec" in box.lines[3]


# --- limits --------------------------------------------------------------------------------


def test_memory_hog_is_oom_killed(box: Box) -> None:
    limits = Limits(memory_bytes=64 * MiB, wall_seconds=30)
    with pytest.raises(TrainOOMError) as info:
        box.python(
            """
            hog = []
            for _ in range(640):
                hog.append(b"x" * (1 << 20))
            print("survived")
            """,
            limits=limits,
        )
    assert info.value.limit_bytes == 64 * MiB
    assert PYTHON in str(info.value) and "64.0 MiB" in str(info.value)
    assert "survived" not in box.lines


def test_endless_loop_hits_wall_time(box: Box) -> None:
    with pytest.raises(TrainTimeoutError) as info:
        box.sh("while :; do :; done", limits=Limits(wall_seconds=3))
    assert info.value.limit_seconds == 3
    assert info.value.elapsed > 3  # not stopped before its limit
    assert box.containers() == []
    assert "wall-time limit of 3 s" in str(info.value)


def test_fork_bomb_is_contained(box: Box, docker_client: Any) -> None:
    with pytest.raises(TrainTimeoutError) as info:
        box.python(
            """
            import os, time
            root, told = os.getpid(), False
            while True:
                try:
                    os.fork()
                except OSError as exc:
                    if os.getpid() == root and not told:
                        print("fork refused", exc.errno, flush=True)
                        told = True
                    time.sleep(0.05)
            """,
            limits=Limits(memory_bytes=512 * MiB, pids=32, wall_seconds=5),
        )
    assert info.value.limit_seconds == 5  # stopped by its wall time, the engine unharmed
    assert "fork refused 11" in box.lines  # EAGAIN: the pids limit held
    assert docker_client.ping()
    assert box.containers() == []


def test_output_over_cap_is_stopped_while_running(box: Box) -> None:
    # The train never exits by itself: only a check while it runs (the output cap, or the wall
    # time, which would raise TrainTimeoutError) can end it.
    with pytest.raises(OutputTooLargeError) as info:
        box.python(
            """
            import time
            with open("/pht/output/big.bin", "wb") as f:
                f.write(b"\\0" * (5 << 20))
            print("written")
            time.sleep(3600)
            """,
            limits=Limits(output_bytes=1 * MiB, memory_bytes=256 * MiB, wall_seconds=60),
            poll_seconds=0.2,
        )
    assert isinstance(info.value, PolicyError)
    assert info.value.limit_bytes == 1 * MiB
    assert info.value.measured_bytes > 1 * MiB
    assert "1.0 MiB" in str(info.value)


def test_output_over_cap_is_refused_at_the_end(box: Box) -> None:
    # poll_seconds is long: the train exits before any poll, the final check catches it.
    with pytest.raises(OutputTooLargeError) as info:
        box.sh(
            "head -c 3145728 /dev/zero > /pht/output/a; mkdir /pht/output/d; "
            "head -c 3145728 /dev/zero > /pht/output/d/b; ln -s /pht/data /pht/output/link",
            limits=Limits(output_bytes=5 * MiB, wall_seconds=30),
            poll_seconds=30,
        )
    # Two 3 MiB files and the folder's own blocks, if any; the link is never followed.
    assert 6 * MiB <= info.value.measured_bytes <= 6 * MiB + 64 * 1024
    assert _output_names(box) == []  # nothing of a refused output is left


def test_space_reserved_past_the_end_of_a_file_counts_against_the_cap(box: Box) -> None:
    """fallocate(FALLOC_FL_KEEP_SIZE) reserves 64 MiB while the file's size stays 0: the cap
    counts allocated blocks, so the hop fails with the cap's message."""
    with pytest.raises(OutputTooLargeError) as info:
        box.python(
            """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fd = os.open("/pht/output/reserved.bin", os.O_WRONLY | os.O_CREAT, 0o644)
            rc = libc.fallocate(fd, 1, 0, 64 << 20)  # 1: FALLOC_FL_KEEP_SIZE
            st = os.fstat(fd)
            print("fallocate", rc, ctypes.get_errno(), st.st_size, st.st_blocks * 512 >= 64 << 20)
            """,
            limits=Limits(output_bytes=16 * MiB, memory_bytes=256 * MiB, wall_seconds=30),
            poll_seconds=30,  # the train exits before any poll: the final check catches it
        )
    assert box.lines == ["fallocate 0 0 0 True"]  # reserved, with an apparent size of 0
    assert info.value.measured_bytes >= 64 * MiB and info.value.limit_bytes == 16 * MiB
    assert "over the station's output limit of 16.0 MiB" in str(info.value)
    assert _output_names(box) == []


def test_sparse_file_counts_its_apparent_size(box: Box) -> None:
    with pytest.raises(OutputTooLargeError, match="output limit of 1.0 MiB") as info:
        box.python(
            "import os; os.truncate(os.open('/pht/output/s', os.O_CREAT | os.O_WRONLY), 1 << 30)",
            limits=Limits(output_bytes=1 * MiB, memory_bytes=256 * MiB, wall_seconds=30),
            poll_seconds=30,
        )
    assert info.value.measured_bytes == 1 << 30  # what sealing it would produce
    assert _output_names(box) == []


_LONG_PATH = """
    import os
    os.chdir("/pht/output")
    for level in range({levels}):
        os.mkdir("d%d" % level + "x" * 250)
        os.chdir("d%d" % level + "x" * 250)
    with open("deep.bin", "wb") as f:
        f.write(b"1" * {size})
    print(len(os.getcwd()) > 4096)
"""


def test_paths_longer_than_path_max_are_measured(box: Box) -> None:
    """20 folders of 252-byte names: the file at the bottom is past PATH_MAX (4096) on the
    host too, and its bytes still count (they were skipped before)."""
    with pytest.raises(OutputTooLargeError) as info:
        box.python(
            _LONG_PATH.format(levels=20, size=2 * MiB),
            limits=Limits(output_bytes=1 * MiB, memory_bytes=256 * MiB, wall_seconds=30),
            poll_seconds=30,
        )
    assert box.lines == ["True"]
    assert info.value.measured_bytes >= 2 * MiB  # the file at the bottom counts
    assert _output_names(box) == []

    result = box.python(_LONG_PATH.format(levels=20, size=10))
    assert result.output_files == 1  # the file past PATH_MAX was reached and counted
    assert result.output_bytes >= 10


def test_over_deep_output_is_refused_and_removed(box: Box) -> None:
    """3000 nested folders: refused at the archive's depth limit, and removed although
    shutil.rmtree could not (it recurses and holds a descriptor per level)."""
    with pytest.raises(OutputTooLargeError) as info:
        box.python(
            """
            import os
            os.chdir("/pht/output")
            for _ in range(3000):
                os.mkdir("d")
                os.chdir("d")
            open("bottom", "w").write("x")
            """,
            poll_seconds=30,
        )
    assert f"more than {MAX_OUTPUT_DEPTH} levels deep to /pht/output" in str(info.value)
    assert MAX_OUTPUT_DEPTH == 64
    assert list(box.output.iterdir()) == []


def test_modes_the_train_set_are_reset(box: Box) -> None:
    box.sh(
        "cd /pht/output && echo x > suid && chmod 6777 suid && echo y > plain && "
        "chmod 0666 plain && mkdir -m 1777 sticky && echo z > sticky/f && chmod 2646 sticky/f "
        "&& chmod 0777 /pht/output && stat -c '%a %n' suid plain sticky sticky/f"
    )
    assert box.lines == ["6777 suid", "666 plain", "1777 sticky", "2646 sticky/f"]
    found = {
        str(p.relative_to(box.output)): (p.lstat().st_mode & 0o7777, p.lstat().st_uid)
        for p in [box.output, *box.output.rglob("*")]
    }
    me = os.geteuid()
    assert found == {
        ".": (0o700, me),
        "suid": (0o700, me),  # executable stays executable, without setuid/setgid
        "plain": (0o600, me),
        "sticky": (0o700, me),
        "sticky/f": (0o600, me),
    }


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["sh", "-c", "ln -s /etc/passwd /pht/output/link"], "symbolic link (link)"),
        (["sh", "-c", "mkdir /pht/output/d && mkfifo /pht/output/d/pipe"], "FIFO (pipe)"),
        (["python3", "-c", SOCKET], "socket (sock)"),
    ],
)
def test_entries_that_are_not_files_or_folders_are_refused(
    box: Box, command: list[str], kind: str
) -> None:
    with pytest.raises(SandboxError) as info:
        box.run(PYTHON, command)
    assert f"left a {kind} in /pht/output; a result holds only folders and regular files" in str(
        info.value
    )
    assert _output_names(box) == []


def test_the_hosts_resolver_configuration_is_not_shown(box: Box) -> None:
    box.sh("cat /etc/resolv.conf; grep -c ' /etc/resolv.conf ' /proc/self/mountinfo")
    assert box.lines == [RESOLV_CONF.rstrip("\n"), "1"]
    host = Path("/etc/resolv.conf").read_text()
    assert not {line for line in box.lines if line.startswith("nameserver")} & set(
        host.splitlines()
    )


def test_nonzero_exit(box: Box) -> None:
    with pytest.raises(TrainExitError) as info:
        box.sh("echo failing; exit 3")
    assert info.value.exit_code == 3
    assert "exited with code 3" in str(info.value)
    assert box.lines == ["failing"]


def test_log_is_capped_but_counted(box: Box) -> None:
    result = box.sh("seq 1 12000")
    assert len(box.lines) == 10_001
    assert box.lines[:2] == ["1", "2"] and box.lines[9_999] == "10000"
    assert box.lines[-1] == "... log truncated after 10000 lines"
    assert result.log_lines == 12_000


def test_container_is_removed_on_keyboard_interrupt(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pht_airflow.station.sandbox as sandbox

    calls = {"n": 0}
    real = sandbox.measure_output

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sandbox, "measure_output", interrupted)
    with pytest.raises(KeyboardInterrupt):
        box.sh("sleep 60", poll_seconds=0.1)
    assert box.containers() == []


# --- refusals before any container exists ------------------------------------------------


def _creates(docker_client: Any, box: Box, since: float) -> list[Any]:
    events = docker_client.events(
        since=since,
        until=time.time() + 1,
        decode=True,
        filters={
            "type": "container",
            "event": "create",
            "label": f"org.pht.sandbox.train-id={box.train_id}",
        },
    )
    return list(events)


def test_non_empty_output_is_refused_before_any_container(box: Box, docker_client: Any) -> None:
    (box.output / "stale.json").write_text("{}")
    since = time.time() - 1
    with pytest.raises(SandboxError, match="not empty"):
        box.sh("echo never")
    assert _creates(docker_client, box, since) == []
    assert _output_names(box) == ["stale.json"]


def test_missing_image_is_refused_never_pulled(box: Box, docker_client: Any) -> None:
    since = time.time() - 1
    with pytest.raises(SandboxError, match="not in the local Docker engine"):
        box.run("127.0.0.1:1/pht/no-such-train@sha256:" + "0" * 64, ["true"])
    assert _creates(docker_client, box, since) == []


def test_image_with_a_volume_is_refused(box: Box, docker_client: Any) -> None:
    dockerfile = f"FROM {BUSYBOX}\nVOLUME /scratch\n".encode()
    tag = f"pht-local/sbtest-volume:{uuid.uuid4().hex[:8]}"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile), tag=tag, pull=False, rm=True, forcerm=True
    )
    try:
        with pytest.raises(SandboxError, match="VOLUME /scratch"):
            box.run(tag, ["true"])
    finally:
        docker_client.images.remove(image.id, force=True)


def test_leftover_container_is_replaced_but_a_foreign_one_is_kept(
    box: Box, docker_client: Any
) -> None:
    leftover = docker_client.containers.create(
        BUSYBOX, ["true"], name=box.name, labels={LABEL: "1"}, network_mode="none"
    )
    result = box.sh("echo fresh")
    assert result.exit_code == 0 and box.lines == ["fresh"]
    assert leftover.id not in {c.id for c in docker_client.containers.list(all=True)}

    foreign = docker_client.containers.create(BUSYBOX, ["true"], name=box.name, network_mode="none")
    try:
        with pytest.raises(SandboxError, match="not a sandbox container"):
            box.sh("echo never")
        foreign.reload()  # still there
    finally:
        foreign.remove(force=True)


def test_only_pht_variables_are_passed(box: Box) -> None:
    with pytest.raises(ValueError, match="PHT_"):
        box.sh("true", env={**box.env(), "AWS_SECRET_ACCESS_KEY": "x"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "0"}, "root"),
        ({"user": "root"}, "root"),
        ({"user": "0:0"}, "root"),
        ({"user": "1000:0"}, "root group"),
        ({"user": "nobody"}, "numeric"),
        ({"memory_bytes": 0}, "memory_bytes"),
        ({"memory_bytes": 1024}, "at least"),
        ({"cpus": -1.0}, "cpus"),
        ({"pids": 0}, "pids"),
        ({"wall_seconds": 0}, "wall_seconds"),
        ({"output_bytes": -1}, "output_bytes"),
        ({"tmp_bytes": True}, "tmp_bytes"),
    ],
)
def test_limits_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)


def test_limits_defaults() -> None:
    limits = Limits()
    assert (limits.memory_bytes, limits.cpus, limits.pids) == (2 << 30, 1.0, 256)
    assert (limits.wall_seconds, limits.output_bytes, limits.tmp_bytes) == (3600, 1 << 30, 64 * MiB)
    assert (limits.user, limits.uid, limits.gid) == ("65534:65534", NOBODY, NOBODY)
    assert Limits(user="1000").user == "1000:1000"


# --- GPUs (sandbox.gpus) ---------------------------------------------------------------------


def _created_device_requests(box: Box, limits: Limits) -> Any:
    """The DeviceRequests the engine records for a sandbox container created (never started)
    with ``limits``; the container is removed again."""
    settings = container_settings(
        BUSYBOX, name=box.name, data_dir=box.data, input_dir=box.data, output_dir=box.output,
        env=box.env(), limits=limits, command=["true"],
    )  # fmt: skip
    container = box.docker.containers.create(**settings)
    try:
        container.reload()
        return container.attrs["HostConfig"].get("DeviceRequests")
    finally:
        container.remove(force=True)


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [(ALL_GPUS, -1, []), (2, 2, []), (("0", "GPU-3b1f0c2e"), 0, ["0", "GPU-3b1f0c2e"])],
)
def test_gpus_become_the_containers_device_requests(
    box: Box, gpus: Any, count: int, ids: Any
) -> None:
    """No GPU host here: the engine's record of the created container shows what would be
    passed through (``docker run --gpus``); by default nothing is."""
    assert _created_device_requests(box, Limits()) in (None, [])
    requests = _created_device_requests(box, Limits(gpus=gpus))
    assert requests == [
        {"Driver": "", "Count": count, "DeviceIDs": ids, "Capabilities": [["gpu"]], "Options": {}}
    ]


def test_a_gpu_run_on_an_engine_without_gpus_is_refused_and_leaves_nothing(box: Box) -> None:
    with pytest.raises(SandboxError, match="could not start train image") as caught:
        box.sh("true", limits=Limits(memory_bytes=64 * MiB, wall_seconds=30, gpus=1))
    assert "gpu" in str(caught.value).lower()
    # the box fixture checks that no container and no private folder is left


@pytest.mark.parametrize(
    ("gpus", "shown"),
    [(0, "no GPU"), (ALL_GPUS, "all GPUs of the host"), (1, "1 GPU"), (3, "3 GPUs"),
     (("0",), "GPU 0"), (("0", "1"), "GPUs 0, 1")],
)  # fmt: skip
def test_gpus_are_described_for_people(gpus: Any, shown: str) -> None:
    assert describe_gpus(gpus) == shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", ALL_GPUS), (2, 2), ("none", 0), (0, 0), ([0, "GPU-3b1f"], ("0", "GPU-3b1f"))],
)
def test_sandbox_gpus_in_the_station_config(
    tmp_path: Path, parties: Any, value: Any, expected: Any
) -> None:
    from support.stationkit import make_station

    pem = parties["alice"].public.pem
    station = make_station(
        tmp_path / "s", parties["station-a"], "127.0.0.1:5000", creators=[pem], approvers=[pem],
        overrides={"sandbox": {"gpus": value}},
    )  # fmt: skip
    assert station.config().limits.gpus == expected
    plain = make_station(
        tmp_path / "p", parties["station-a"], "127.0.0.1:5000", creators=[pem], approvers=[pem]
    )
    assert plain.config().limits.gpus == 0  # the default: no GPU


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("many", "must be none, all, a count"),
        (-1, "must be none, all, a count"),
        (True, "must be none, all, a count"),
        (65, "a count from 1 to 64"),
        ([], "a list of 1 to 64 device ids"),
        (["0; rm -rf /"], "is not a device id"),
        ([0, "0"], "lists a device id twice"),
    ],
)
def test_sandbox_gpus_refusals_name_the_field(
    tmp_path: Path, parties: Any, value: Any, message: str
) -> None:
    from support.stationkit import make_station

    pem = parties["alice"].public.pem
    station = make_station(
        tmp_path / "s", parties["station-a"], "127.0.0.1:5000", creators=[pem], approvers=[pem],
        overrides={"sandbox": {"gpus": value}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"station\.yaml:\d+: sandbox\.gpus: ") as caught:
        station.config()
    assert message in str(caught.value)
