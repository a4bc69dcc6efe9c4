"""Where a train is: read from the registry (its spec, signers, and for each hop whether a
result exists, who signed it and whether the chain holds), or asked of the central service
(each hop's state and the event timeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..central_client import CentralClient
from ..keys import PublicKey
from ..oci import Reference, RegistryClient
from ..results import HopStatus, chain_status
from .inspect import TrainView, read_train


@dataclass(frozen=True)
class TrainStatus:
    """A train as read from the registry, and the state of each hop of its route."""

    train: TrainView
    hops: list[HopStatus]


def train_status(client: RegistryClient, text: str, keys: Sequence[PublicKey] = ()) -> TrainStatus:
    """Pin ``text``, read the spec (even if expired), check the signatures against ``keys``,
    and check each hop in order without raising (see :func:`~pht_airflow.results.chain_status`).
    """
    view = read_train(client, text, keys)
    return TrainStatus(view, chain_status(client, view.reference, view.spec))


def train_id_of(ref: str) -> str:
    """The train id in ``ref``: a bare id, or a reference whose repository is
    ``<project>/<train-id>``."""
    if "/" not in ref:
        return ref
    return Reference.parse(ref).repository.rsplit("/", 1)[1]


def central_timeline(central_url: str, ref: str) -> dict[str, Any]:
    """Ask the central service where the train ``ref`` (an id or a reference) is."""
    return CentralClient(central_url).train(train_id_of(ref))
