"""Connections: a tenant's accounts at POS vendors.

Credentials are validated against the connector's JSON Schema, checked with the vendor, then
stored encrypted (:mod:`gateway.crypto`) and never returned or logged. Settings are merged with
the schema's defaults and validated on every write.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import jsonschema
from sqlalchemy import and_, insert, or_, select, update

from gateway import jsonutil
from gateway.crypto import CredentialCipher, DecryptionError
from gateway.errors import NotFound, ValidationFailed
from gateway.ids import new_id
from gateway.model import ConnectionCreate, ConnectionUpdate
from gateway.sdk.connector import ConnectionContext, Connector
from gateway.sdk.registry import ConnectorRegistry
from gateway.services import records
from gateway.services.records import decode_cursor, encode_cursor
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.reader import as_text

_BY_ID_SQL = ("SELECT id, tenant_id, connector, name, settings, credentials, updated_at FROM connections "
              "WHERE id = :id AND deleted_at IS NULL")
_BY_ID_CACHE = 256  # connectors kept by connector_by_id (one per connection receiving webhooks)


def _schema_errors(schema: dict[str, Any], value: dict[str, Any], where: str) -> list[dict[str, Any]]:
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path)):
        # Never echo a credential value back: jsonschema messages can quote the instance.
        msg = error.message if where == "settings" else f"does not satisfy '{error.validator}' of the schema"
        out.append({"loc": ["body", where, *[str(p) for p in error.path]], "msg": msg, "type": f"schema.{error.validator}"})
    return out


def _safety_stock(settings: dict[str, Any]) -> Decimal:
    """The ``safety_stock`` setting in units (0 when unset; the schemas allow only decimal strings)."""
    return Decimal(str(settings.get("safety_stock") or "0"))


def public_view(row: Any) -> dict[str, Any]:
    """The API representation of a connection row (no credentials)."""
    return {
        "id": row.id,
        "connector": row.connector,
        "name": row.name,
        "settings": jsonutil.loads(row.settings),
        "status": row.status,
        "created_at": jsonutil.rfc3339(row.created_at),
        "updated_at": jsonutil.rfc3339(row.updated_at),
    }


class ConnectionService:
    """Create, read, update and delete connections, and build connectors for them."""

    def __init__(self, db: Database, registry: ConnectorRegistry, cipher: CredentialCipher) -> None:
        self.db = db
        self.registry = registry
        self.cipher = cipher
        self._by_id: dict[tuple[Any, ...], Connector] = {}

    def _validate(self, connector: type[Connector], credentials: dict[str, Any], settings: dict[str, Any]) -> None:
        manifest = connector.manifest
        errors = _schema_errors(manifest["credentials_schema"], credentials, "credentials")
        errors += _schema_errors(manifest["settings_schema"], settings, "settings")
        if errors:
            raise ValidationFailed("credentials or settings do not match the connector's schema", errors=errors)

    async def create(self, tenant_id: str, body: ConnectionCreate) -> dict[str, Any]:
        """Create a connection after validating and checking its credentials.

        Raises:
            UnknownConnector: no such connector installed.
            ValidationFailed: credentials or settings break the connector's schemas.
            VendorCredentialsRejected / VendorError: the vendor check failed.
        """
        cls = self.registry.get(body.connector)
        settings = {**cls.default_settings(), **body.settings}
        self._validate(cls, body.credentials, settings)
        connection_id = new_id("connection")
        context = ConnectionContext(connection_id, tenant_id, body.connector, body.name, settings, body.credentials)
        connector = cls(context, self.db)
        await connector.check()
        now = jsonutil.utcnow()
        ciphertext = self.cipher.encrypt(
            jsonutil.dumps(body.credentials), tenant_id=tenant_id, connection_id=connection_id
        )
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(
                insert(t.connections).values(
                    id=connection_id,
                    tenant_id=tenant_id,
                    connector=body.connector,
                    name=body.name,
                    settings=jsonutil.dumps(settings).decode(),
                    credentials=ciphertext,
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
            )
            await connector.setup(uow)
        return await self.get(tenant_id, connection_id)

    async def require(self, tenant_id: str, connection_id: str) -> Any:
        """The row of one of the tenant's live connections.

        Raises:
            NotFound: no such connection for this tenant (another tenant's, or deleted).
        """
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.connections).where(
                        t.connections.c.id == connection_id,
                        t.connections.c.tenant_id == tenant_id,
                        t.connections.c.deleted_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no connection {connection_id!r}")
        return row

    async def get(self, tenant_id: str, connection_id: str) -> dict[str, Any]:
        """One connection (404 for another tenant's or a deleted one)."""
        return public_view(await self.require(tenant_id, connection_id))

    async def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's connections, ordered by (updated_at, id)."""
        query = select(t.connections).where(t.connections.c.tenant_id == tenant_id, t.connections.c.deleted_at.is_(None))
        if cursor:
            after_time, after_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    t.connections.c.updated_at > after_time,
                    and_(t.connections.c.updated_at == after_time, t.connections.c.id > after_id),
                )
            )
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(t.connections.c.updated_at, t.connections.c.id).limit(limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].updated_at, rows[-1].id) if more else None
        return [public_view(row) for row in rows], next_cursor

    async def update(self, tenant_id: str, connection_id: str, body: ConnectionUpdate) -> dict[str, Any]:
        """Rename, replace credentials (checked with the vendor) or merge settings.

        A changed ``safety_stock`` re-derives ``available`` of the connection's cached inventory
        levels in the same transaction (:func:`gateway.services.records.recompute_available`:
        ``inventory.updated`` per changed level, ``inventory.low`` where one crosses its threshold).
        """
        row = await self.require(tenant_id, connection_id)
        cls = self.registry.get(row.connector)
        settings = jsonutil.loads(row.settings)
        old_safety = _safety_stock(settings)
        if body.settings is not None:
            settings = {**settings, **body.settings}
        credentials = body.credentials if body.credentials is not None else self.credentials(row)
        self._validate(cls, credentials, settings)
        values: dict[str, Any] = {"settings": jsonutil.dumps(settings).decode(), "updated_at": jsonutil.utcnow()}
        if body.name is not None:
            values["name"] = body.name
        if body.credentials is not None:
            context = ConnectionContext(row.id, tenant_id, row.connector, values.get("name", row.name), settings, credentials)
            await cls(context, self.db).check()
            values["credentials"] = self.cipher.encrypt(
                jsonutil.dumps(credentials), tenant_id=tenant_id, connection_id=row.id
            )
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(update(t.connections).where(t.connections.c.id == row.id).values(**values))
            if _safety_stock(settings) != old_safety:
                await records.recompute_available(uow, connection_id=row.id, safety_stock=_safety_stock(settings))
        return await self.get(tenant_id, connection_id)

    async def delete(self, tenant_id: str, connection_id: str) -> dict[str, Any]:
        """Soft-delete a connection: its records stop being served; credentials are wiped."""
        row = await self.require(tenant_id, connection_id)
        now = jsonutil.utcnow()
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(
                update(t.connections)
                .where(t.connections.c.id == row.id)
                .values(deleted_at=now, updated_at=now, status="deleted", credentials="")
            )
        view = public_view(row)
        view.update(status="deleted", updated_at=jsonutil.rfc3339(now))
        return view

    def credentials(self, row: Any) -> dict[str, Any]:
        """Decrypt a connection row's credentials."""
        return jsonutil.loads(self.cipher.decrypt(row.credentials, tenant_id=row.tenant_id, connection_id=row.id))

    async def connector_for(self, tenant_id: str, connection_id: str) -> Connector:
        """The connector instance serving one of the tenant's connections.

        Raises:
            NotFound: no such connection for this tenant.
        """
        row = await self.require(tenant_id, connection_id)
        cls = self.registry.get(row.connector)
        context = ConnectionContext(
            row.id, tenant_id, row.connector, row.name, jsonutil.loads(row.settings), self.credentials(row)
        )
        return cls(context, self.db)

    async def connector_by_id(self, connection_id: str) -> Connector:
        """The connector of a live connection found by id alone, for vendor calls that carry no
        API key (``POST /hooks/{connection_id}``: the connector's signature check authenticates).

        One indexed read per call (:class:`~gateway.storage.reader.FastReader`); the connector
        built for a row is reused while the row is the same (any change to its name, settings,
        credentials or ``updated_at``, made by any process, builds a new one), so a burst of
        deliveries does not decrypt the credentials once per delivery.

        Raises:
            NotFound: no live connection with this id.
        """
        row = await self.db.reader.one(_BY_ID_SQL, {"id": connection_id})
        if row is None:
            raise NotFound(f"no connection {connection_id!r}")
        key = tuple(as_text(v) if isinstance(v, bytes) else v for v in row)
        connector = self._by_id.get(key)
        if connector is None:
            _id, tenant_id, connector_name, name, settings, credentials, _updated = key
            cls = self.registry.get(connector_name)
            plain = jsonutil.loads(self.cipher.decrypt(credentials, tenant_id=tenant_id, connection_id=connection_id))
            connector = cls(ConnectionContext(connection_id, tenant_id, connector_name, name, jsonutil.loads(settings),
                                              plain), self.db)
            self._by_id[key] = connector
            while len(self._by_id) > _BY_ID_CACHE:
                self._by_id.pop(next(iter(self._by_id)))
        return connector

    async def rotate_credentials(self) -> tuple[int, list[str]]:
        """Re-encrypt every connection's credentials with the primary key.

        Returns:
            (how many were re-encrypted, ids of connections no configured key can decrypt). A
            row that cannot be decrypted is left as it is and reported, not fatal.
        """
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.connections).where(t.connections.c.credentials != ""))).all()
        changed = 0
        failed: list[str] = []
        for row in rows:
            if not self.cipher.needs_rotation(row.credentials):
                continue
            try:
                plaintext = self.cipher.decrypt(row.credentials, tenant_id=row.tenant_id, connection_id=row.id)
            except DecryptionError:
                failed.append(row.id)
                continue
            token = self.cipher.encrypt(plaintext, tenant_id=row.tenant_id, connection_id=row.id)
            async with self.db.transaction() as uow:
                await uow.conn.execute(update(t.connections).where(t.connections.c.id == row.id).values(credentials=token))
            changed += 1
        return changed, failed
