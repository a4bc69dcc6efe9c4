"""Start and stop a private PostgreSQL server (Debian's ``postgresql``) on 127.0.0.1.

Used by ``make demo`` (the stations' OMOP databases) and the tests (``postgres_server``). The
cluster lives in a fresh temporary folder, listens on 127.0.0.1 only (its socket in that
folder too), and is stopped and deleted by :meth:`LocalPostgres.stop`. Authentication is
``trust`` for the one loopback listener: the cluster is a throwaway with synthetic data.
As root, the server runs as the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ServiceError
from .localregistry import free_port

#: Where Debian installs the server binaries (``/usr/lib/postgresql/<major>/bin``).
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "pht"


def postgres_bindir() -> Path | None:
    """The newest installed server's ``bin`` folder, or None when none is installed."""
    found = sorted(DEBIAN_ROOT.glob("*/bin/initdb"), key=lambda p: _major(p.parent.parent.name))
    return found[-1].parent if found else None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


@dataclass
class LocalPostgres:
    """A running private server. Make one with :func:`start_postgres`; :meth:`stop` ends it
    and deletes its folder."""

    root: Path
    port: int
    bindir: Path
    run_as: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        """The server's URL without a database name (append ``/<db>``)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _pg(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(  # noqa: S603 - the installed PostgreSQL binaries
            [*self.run_as, *args], capture_output=True, text=True, check=False, timeout=timeout
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"{Path(args[0]).name} failed ({proc.returncode}): "
                f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
            )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                         "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(*, port: int | None = None, prefix: str = "pht-postgres-") -> LocalPostgres:
    """Create a cluster in a fresh temporary folder and start it on 127.0.0.1.

    The superuser is ``pht`` (see :attr:`LocalPostgres.url`). Raises :class:`ServiceError`
    naming what failed (no PostgreSQL installed, ``initdb`` or ``pg_ctl`` failing); nothing
    is left behind then.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceError(
            f"no PostgreSQL server under {DEBIAN_ROOT}: install Debian's postgresql "
            "(make bootstrap)"
        )
    root = Path(tempfile.mkdtemp(prefix=prefix))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    server = LocalPostgres(root, port or free_port(), bindir, run_as)
    try:
        server._pg(str(bindir / "initdb"), "-D", str(server.data), "-U", SUPERUSER,
                   "--auth=trust", "-E", "UTF8", "--no-instructions")  # fmt: skip
        server._pg(str(bindir / "pg_ctl"), "-D", str(server.data), "-l",
                   str(root / "server.log"), "-w", "-t", "60", "-o",
                   f"-h 127.0.0.1 -p {server.port} -k {root}", "start")  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return server


def stop_leftover(root: Path) -> bool:
    """Stop and delete a cluster an interrupted run left in ``root`` (its temporary folder);
    True if there was one."""
    bindir = postgres_bindir()
    if bindir is None or not (root / "data" / "PG_VERSION").exists():
        return False
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with contextlib.suppress(ServiceError):  # a server that already died: just delete it
        LocalPostgres(root, 0, bindir, run_as).stop()
    shutil.rmtree(root, ignore_errors=True)
    return True
