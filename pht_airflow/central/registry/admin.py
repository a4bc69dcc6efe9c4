"""What the central service needs from a registry, and what both adapters share.

:class:`RegistryAdmin` is the protocol (see the package docstring for what a copy covers);
:class:`CopyReport` says what one copy did; :class:`RobotAccount` carries a robot's name and
its secret, which stays out of ``repr``. The result-tag ordering and the paging limits are
used by both :class:`~.plain.PlainRegistryAdmin` and :class:`~.harbor.HarborAdmin`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ...protocol import RESULT_TAG_CLAIM

PayloadFormat = Literal["Default", "CloudEvents"]
PAYLOAD_FORMATS: tuple[str, ...] = ("Default", "CloudEvents")

#: What an ``ensure_*`` call did: ``created`` it, ``updated`` what was there to match, found
#: it ``already there`` as asked, or found it ``not needed`` (a plain registry's project,
#: which is only a repository prefix).
Ensured = Literal["created", "updated", "already there", "not needed"]

# Limits for paged list endpoints (distribution's catalog, Harbor's lists).
_PAGE_SIZE = 100
_MAX_PAGES = 1000


@dataclass(frozen=True)
class RobotAccount:
    """A robot account: its full name (Harbor: ``robot$<project>+<name>``) and its secret.

    The secret is shown once by Harbor; it is kept out of ``repr`` and ``str``. A robot
    that was looked up rather than created has an empty secret (Harbor never shows it again).
    """

    name: str
    secret: str = field(repr=False)
    id: int | None = None


@dataclass
class CopyReport:
    """What one :meth:`RegistryAdmin.copy_train` did.

    ``manifests``: manifests written to the destination; ``manifests_present``: manifests
    that were already there under the right tag (skipped); ``blobs_mounted``: blobs linked
    across repositories without moving bytes; ``blobs_streamed`` / ``bytes_streamed``:
    blobs the registry refused to mount, copied through this process instead. ``tags``
    lists the destination tags the copy covers. For Harbor the blob counts stay 0: Harbor
    copies inside its own storage.
    """

    source: str
    destination: str
    train_digest: str
    manifests: int = 0
    manifests_present: int = 0
    blobs_mounted: int = 0
    blobs_streamed: int = 0
    bytes_streamed: int = 0
    tags: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.source} -> {self.destination} @ {self.train_digest}: "
            f"{self.manifests} manifest(s) copied, {self.manifests_present} already there, "
            f"{self.blobs_mounted} blob(s) mounted, {self.blobs_streamed} streamed "
            f"({self.bytes_streamed} bytes)"
        )


@runtime_checkable
class RegistryAdmin(Protocol):
    """What the central service needs from the registry that carries the trains."""

    def ensure_project(self, name: str) -> Ensured:
        """Make sure a private project ``name`` exists (idempotent); say what it did."""
        ...

    def create_robot(self, project: str, name: str) -> RobotAccount:
        """A new robot account that can pull and push in ``project`` and nowhere else."""
        ...

    def find_robot(self, project: str, name: str) -> RobotAccount | None:
        """The robot ``name`` of ``project`` (its secret empty), or None if there is none."""
        ...

    def robot_secret_works(self, project: str, robot_name: str, secret: str) -> bool:
        """True if the registry accepts ``secret`` for robot ``robot_name`` (its full name)."""
        ...

    def delete_robot(self, project: str, name: str) -> str | None:
        """Delete the robot ``name`` of ``project``; its full name, or None if there was none
        (its credentials stop working at once)."""
        ...

    def ensure_webhook(
        self,
        project: str,
        endpoint_url: str,
        auth_header: str,
        payload_format: PayloadFormat = "Default",
    ) -> Ensured:
        """Make the registry POST every artifact push in ``project`` to ``endpoint_url``,
        with ``Authorization: <auth_header>`` (idempotent: create or update; say which)."""
        ...

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> CopyReport:
        """Copy a train, its signatures and its results with theirs (idempotent)."""
        ...

    def delete_repository(self, repository: str) -> None:
        """Delete a repository and everything tagged in it."""
        ...

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete one manifest (artifact) by digest."""
        ...

    def list_repositories(self, project: str) -> list[str]:
        """The repositories (``project/name``) in a project that hold something."""
        ...


# Both adapters copy a train's results in hop order: result-0, result-1, …
def _result_tags(tags: Iterable[str]) -> list[str]:
    return sorted((t for t in tags if RESULT_TAG_CLAIM.match(t)), key=_tag_order)


def _tag_order(tag: str) -> tuple[int, str]:
    m = RESULT_TAG_CLAIM.match(tag)
    return (int(m.group(1)) if m else -1, tag)
