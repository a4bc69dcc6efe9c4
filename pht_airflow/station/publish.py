"""Publish the shape of the station's chosen data sets to the central service's directory.

For every data set with ``publish_schema: true`` in the station config, the station describes
its shape (:func:`.data.describe`: column names and types, row counts; no row is read for its
values) and sends it as a schema document (:mod:`pht_airflow.schemadoc`) signed with the
station's key. Row counts are rounded down to the station's disclosure threshold
(``policy.min_cell_count``) before the document is signed. A data set the station does not
mark is not described at all, and each publication replaces the previous one, so unmarking a
data set and publishing again withdraws it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..central_client import CentralClient
from ..errors import ConfigError
from ..schemadoc import Column, DataSetShape, TableShape, make_document
from .config import StationConfig
from .data import describe


def published_shapes(config: StationConfig) -> list[DataSetShape]:
    """The shapes of the data sets the station publishes (``publish_schema: true``), with
    row counts rounded to ``policy.min_cell_count``."""
    threshold = config.policy.min_cell_count
    shapes = []
    for name, dataset in sorted(config.datasets.items()):
        if not dataset.publish_schema:
            continue
        described = describe(dataset, threshold=threshold)
        tables = tuple(
            TableShape(
                table,
                tuple(
                    Column(c["name"], c["type"], bool(c.get("identifier", False)))
                    for c in shape["columns"]
                ),
                shape["rows"],
                tuple(shape.get("files", ())),
            )
            for table, shape in described["tables"].items()
        )
        shapes.append(DataSetShape(name, dataset.kind, tables))
    return shapes


def schema_document(config: StationConfig) -> dict[str, Any]:
    """The signed schema document for the station's published data sets (possibly none)."""
    return make_document(
        station=config.station_id,
        datasets=published_shapes(config),
        min_cell_count=config.policy.min_cell_count,
        key=config.load_signing_key(),
    )


def publish_schema(
    config: StationConfig,
    *,
    client: CentralClient | None = None,
    logger: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Describe, sign and send the station's schema document to ``central.url``; return the
    central service's answer (station, time, data set names)."""
    if client is None:
        if not config.central_url:
            raise ConfigError(
                f"{config.source}: central.url is not set; the schema goes to the central "
                "service's station directory"
            )
        client = CentralClient(config.central_url)
    document = schema_document(config)
    names = [d["name"] for d in document["datasets"]]
    logger(
        f"publishing the shape of {len(names)} data set(s) of {config.station_id}"
        + (f": {', '.join(names)}" if names else " (none has publish_schema: true)")
    )
    return client.publish_schema(document)
