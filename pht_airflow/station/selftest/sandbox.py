"""The ``sandbox`` check: a probe container under the station's limits is isolated.

``_sandbox_script`` is what the probe runs, ``_Listener`` the host-side listener it must not
reach, and :func:`sandbox_problems` judges the probe's report against the limits.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from ..sandbox import Limits
from .probe import MARKER, _engine, _private_dir, _run_probe, selftest_image


def _sandbox_script(port: int) -> str:
    return f"""
say() {{ echo "{MARKER} $1=$2"; }}
say uid "$(id -u)"
say gid "$(id -g)"
T=; if command -v timeout >/dev/null 2>&1; then T="timeout 5"; fi
if command -v nc >/dev/null 2>&1; then
  if $T nc -w 2 127.0.0.1 {port} </dev/null >/dev/null 2>&1; then say net connected
  else say net blocked; fi
elif command -v wget >/dev/null 2>&1; then
  if $T wget -q -T 2 -O /dev/null http://127.0.0.1:{port}/ >/dev/null 2>&1
  then say net connected
  else say net blocked; fi
else say net untested; fi
say interfaces "$(sed -n '3,$p' /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
say mount-root "$(sed -n 's#^[^ ]* / [^ ]* \\([^, ]*\\).*#\\1#p' /proc/mounts | tail -n 1)"
say mount-data "$(sed -n 's#^[^ ]* /pht/data [^ ]* \\([^, ]*\\).*#\\1#p' /proc/mounts | tail -n 1)"
if (echo x > /pht-selftest-probe) 2>/dev/null; then say root-write allowed
  rm -f /pht-selftest-probe 2>/dev/null
else say root-write denied; fi
if (echo x > /pht/data/.pht-selftest-probe) 2>/dev/null; then say data-write allowed
  rm -f /pht/data/.pht-selftest-probe 2>/dev/null
else say data-write denied; fi
if (echo x > /pht/output/.pht-selftest-probe) 2>/dev/null; then say output-write allowed
  rm -f /pht/output/.pht-selftest-probe
else say output-write denied; fi
if (printf '#!/bin/sh\\nexit 0\\n' > /tmp/pht-selftest-probe) 2>/dev/null; then
  say tmp-write allowed
  chmod 700 /tmp/pht-selftest-probe 2>/dev/null
  if /tmp/pht-selftest-probe 2>/dev/null; then say tmp-exec allowed; else say tmp-exec denied; fi
  rm -f /tmp/pht-selftest-probe
else say tmp-write denied; say tmp-exec untested; fi
say cap-eff "$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
say no-new-privs "$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)"
say done 1
exit 0
"""


class _Listener:
    """A TCP listener on the host's 127.0.0.1 that accepts, counts and closes connections.

    Closing at once lets a probe that did get through (no network isolation) finish
    instead of waiting on an open connection until its wall time.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pht-selftest-net", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> int:
        """Stop listening; return how many connections arrived."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return self.connections


def sandbox_problems(found: dict[str, str], limits: Limits, reached_host: int) -> list[str]:
    """What is wrong with the sandbox, judged from the probe's report (empty: all well)."""
    problems: list[str] = []

    def expect(key: str, want: str, problem: str) -> None:
        got = found.get(key)
        if got is None:
            problems.append(f"the probe did not report {key}")
        elif got != want:
            problems.append(f"{problem} ({key}={got})")

    if reached_host:
        problems.append(
            f"network: the probe reached a listener on the host's 127.0.0.1 "
            f"({reached_host} connection(s)); the sandbox must have no network"
        )
    net = found.get("net")
    if net == "untested":
        problems.append("network: the probe image has neither nc nor wget, so it was not tested")
    else:
        expect("net", "blocked", "network: the probe connected to 127.0.0.1")
    interfaces = found.get("interfaces", "").split()
    if interfaces != ["lo"]:
        problems.append(
            f"network: the probe sees interfaces {', '.join(interfaces) or 'none'}, not only lo"
        )
    uid, gid = found.get("uid"), found.get("gid")
    if uid in (None, ""):
        problems.append("the probe did not report uid")
    elif uid == "0":
        problems.append("user: the probe runs as root (uid 0)")
    elif uid != str(limits.uid):
        problems.append(f"user: the probe runs as uid {uid}, not sandbox.user {limits.uid}")
    if gid in (None, ""):
        problems.append("the probe did not report gid")
    elif gid == "0":
        problems.append("user: the probe runs in the root group (gid 0)")
    elif gid != str(limits.gid):
        problems.append(f"user: the probe runs as gid {gid}, not sandbox.user {limits.gid}")
    expect("mount-root", "ro", "read-only root: / is not mounted read-only")
    expect("root-write", "denied", "read-only root: the probe could write /")
    expect("mount-data", "ro", "read-only data: /pht/data is not mounted read-only")
    expect("data-write", "denied", "read-only data: the probe could write /pht/data")
    expect("output-write", "allowed", "output: the probe could not write /pht/output")
    expect("tmp-write", "allowed", "tmp: the probe could not write /tmp")
    if found.get("tmp-exec") != "untested":  # untested: /tmp not writable, reported above
        expect("tmp-exec", "denied", "noexec tmp: the probe could run a program from /tmp")
    cap = found.get("cap-eff")
    if cap is None:
        problems.append("the probe did not report cap-eff")
    elif cap.strip("0") != "":
        problems.append(f"capabilities: the probe holds capabilities (CapEff {cap})")
    expect("no-new-privs", "1", "no-new-privileges: not set for the probe")
    return problems


def check_sandbox(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """Run the probe through :func:`run_train` under the station's limits and check isolation.

    The probe tries to connect to a listener this function opens on the host's 127.0.0.1
    (it must fail, and the listener must see no connection), lists its network interfaces
    (only ``lo``), tries to write ``/`` and ``/pht/data`` (must fail), ``/pht/output`` and
    ``/tmp`` (must work), runs a script from ``/tmp`` (must fail: ``noexec``), and reports
    its uid, gid, effective capabilities and ``NoNewPrivs``. The wall time is capped at
    :data:`PROBE_WALL_SECONDS`; every other limit is the station's.
    """
    image = image or selftest_image(config)
    limits = config.limits
    listener = _Listener()
    try:
        port = listener.port
        with _engine(docker_client, "sandbox") as engine:
            work = _private_dir(config, "selftest-data-")
            try:
                # Empty and open to all, so only the read-only mount can stop the probe
                # writing /pht/data. Removed right after.
                os.chmod(work, 0o777)  # noqa: S103
                found = _run_probe(
                    config, engine, image, _sandbox_script(port), data_dir=work, what="sandbox"
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        reached = listener.close()
    problems = sandbox_problems(found, limits, reached)
    if problems:
        raise SelfTestError("sandbox: " + "; ".join(problems))
    return (
        f"sandbox: {image} ran as {found['uid']}:{found['gid']} with no network (only lo), "
        "read-only / and /pht/data, writable /pht/output and noexec /tmp, no capabilities, "
        "no-new-privileges"
    )
