"""The local connector: a POS engine that keeps its data in the gateway's own database.

Its native format is the unified model, so its records need no mapping and its ``remote_id`` is
the record's own id. (Being rewritten into the full engine: catalog, stock ledger, sales.)
"""

from __future__ import annotations

from gateway.sdk.connector import Connector, load_manifest
from gateway.services import records
from gateway.ids import new_id
from gateway.storage.uow import UnitOfWork


class LocalConnector(Connector):
    """The built-in POS engine."""

    manifest = load_manifest("connectors.local")

    async def setup(self, uow: UnitOfWork) -> None:
        """Create the connection's first location, "Main"."""
        location_id = new_id("location")
        await records.upsert(
            uow,
            connection_id=self.context.id,
            entity="locations",
            remote_id=location_id,
            record_id=location_id,
            body={"name": "Main", "kind": "store", "address": None, "timezone": self.context.settings.get("timezone")},
        )
