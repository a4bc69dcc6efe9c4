"""Finding trains by asking the registry: the station's outbound-only intake.

A station behind a firewall cannot receive the registry's webhook, so it polls its own
project (``intake: poll`` or ``both`` in the station config). One poll:

1. lists the project's repositories: the registry's ``/v2/_catalog`` filtered to
   ``<project>/…``, or Harbor's ``GET /projects/{project}/repositories`` when
   ``registry.harbor_url`` is set (a Harbor robot account may not read the catalog);
2. lists each repository's tags and keeps the intake tags: ``train`` and the central
   service's ``retry-<k>-<n>`` (:data:`~pht_airflow.protocol.RETRY_TAG`);
3. resolves (one ``HEAD``) only the tags it has not seen before: ``known`` is what the
   previous poll saw, ``repository -> {tag: digest}``;
4. hands back an :class:`Arrival` per new tag, each with the same deterministic run id the
   webhook path uses (:func:`run_id_for`), so a train digest runs once whichever path sees
   it first: the second finds the run there and starts nothing.

A tag is moved into ``known`` only once its run exists (the caller does that after
triggering), so a poll that fails half way loses nothing. At most ``limit`` arrivals come
back per poll; the rest come with the next one. Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import NotFoundError
from ..oci import RegistryClient
from ..protocol import RETRY_TAG, TRAIN_TAG

#: Most arrivals one poll hands over (the rest wait for the next poll).
MAX_ARRIVALS = 50

Known = Mapping[str, Mapping[str, str]]


def run_id_for(digest: str, tag: str = TRAIN_TAG) -> str:
    """The DAG run id for a train digest (``pht__sha256_<hex>``), or for one explicit retry
    of it (``pht__sha256_<hex>__retry-<k>-<n>``): one run each, whoever asks first."""
    base = "pht__" + digest.replace(":", "_")
    return base if tag == TRAIN_TAG else f"{base}__{tag}"


def is_intake_tag(tag: str | None) -> bool:
    """Whether a pushed tag starts a hop: ``train`` or a ``retry-<k>-<n>``."""
    return tag == TRAIN_TAG or (tag is not None and RETRY_TAG.match(tag) is not None)


@dataclass(frozen=True)
class Arrival:
    """A train (or an explicit retry of one) this station has not started yet."""

    repository: str
    tag: str
    digest: str

    @property
    def run_id(self) -> str:
        return run_id_for(self.digest, self.tag)

    def reference(self, registry: str) -> str:
        """The reference a run verifies: pinned to the digest; a retry keeps its tag."""
        if self.tag == TRAIN_TAG:
            return f"{registry}/{self.repository}@{self.digest}"
        return f"{registry}/{self.repository}:{self.tag}@{self.digest}"

    def trigger(self, registry: str) -> dict[str, Any]:
        """The run to create: its id and conf (the same the webhook receiver creates)."""
        return {
            "trigger_run_id": self.run_id,
            "conf": {"train": self.reference(registry), "rerun": False},
        }


def catalog_repositories(client: RegistryClient, project: str) -> list[str]:
    """The project's train repositories (``<project>/<name>``) from ``/v2/_catalog``."""
    prefix = project + "/"
    return [
        r for r in client.list_catalog() if r.startswith(prefix) and "/" not in r[len(prefix) :]
    ]


def scan(
    client: RegistryClient,
    repositories: Callable[[], list[str]],
    known: Known,
    *,
    limit: int = MAX_ARRIVALS,
) -> tuple[list[Arrival], dict[str, dict[str, str]]]:
    """One poll: the new arrivals, and what is known now (``known`` for the next poll,
    pruned to repositories that still exist, without the returned arrivals)."""
    arrivals: list[Arrival] = []
    seen: dict[str, dict[str, str]] = {}
    for repository in sorted(repositories()):
        try:
            tags = sorted(t for t in client.list_tags(repository) if is_intake_tag(t))
        except NotFoundError:
            continue  # deleted between the listing and now
        before = known.get(repository, {})
        kept = {t: before[t] for t in tags if isinstance(before.get(t), str)}
        if kept:
            seen[repository] = kept
        for tag in tags:
            if tag in kept or len(arrivals) >= limit:
                continue
            try:
                digest = client.resolve(repository, tag)
            except NotFoundError:
                continue
            arrivals.append(Arrival(repository, tag, digest))
    return arrivals, seen


def remember(known: Known, arrivals: list[Arrival]) -> dict[str, dict[str, str]]:
    """``known`` with the arrivals whose runs now exist."""
    merged = {repo: dict(tags) for repo, tags in known.items()}
    for a in arrivals:
        merged.setdefault(a.repository, {})[a.tag] = a.digest
    return merged
