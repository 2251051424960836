"""Security rules of DESIGN.md: hashed and revocable API keys, credentials encrypted and bound to
their row, rotation, per-key rate limits, tenant isolation."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import ClassVar

import httpx
import pytest
from sqlalchemy import select, update

from gateway.api.app import create_app
from gateway.api.deps import Services
from gateway.crypto import CredentialCipher, DecryptionError
from gateway.model import ConnectionCreate
from gateway.sdk.connector import Connector
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.tenants import KeyVerifier, create_key, create_tenant, revoke_key
from gateway.settings import Settings
from gateway.storage import tables as t


def new_key() -> bytes:
    return os.urandom(32)


class VaultConnector(Connector):
    """A connector with a secret credential, to see where credentials travel."""

    manifest: ClassVar[dict] = {
        "name": "vault",
        "version": "0.0.1",
        "title": "Vault test connector",
        "credentials_schema": {"type": "object", "required": ["api_key"], "additionalProperties": False,
                               "properties": {"api_key": {"type": "string", "pattern": "^apx_"}}},
        "settings_schema": {"type": "object", "properties": {}},
        "capabilities": {"products": {"read": True}},
    }


async def test_api_keys_are_stored_hashed_and_revocable(db):
    tenant_id, key = await create_tenant(db, "hash-check")
    async with db.read() as conn:
        row = (await conn.execute(select(t.api_keys).where(t.api_keys.c.id == key.id))).first()
    assert key.secret not in (row.key_hash, row.key_id) and row.key_hash == hashlib.sha256(key.secret.encode()).hexdigest()
    verifier = KeyVerifier(db, ttl=0)
    assert await verifier.tenant_for(key.secret) == tenant_id
    assert await verifier.tenant_for(key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")) is None
    assert await verifier.tenant_for("tgk_short") is None
    await revoke_key(db, key.id)
    assert await verifier.tenant_for(key.secret) is None


def test_ciphertexts_are_bound_to_tenant_and_connection():
    cipher = CredentialCipher([new_key()])
    token = cipher.encrypt(b'{"api_key":"apx_secret"}', tenant_id="ten_a", connection_id="con_1")
    assert b"apx_secret" not in token.encode()
    assert cipher.decrypt(token, tenant_id="ten_a", connection_id="con_1") == b'{"api_key":"apx_secret"}'
    for tenant, connection in (("ten_b", "con_1"), ("ten_a", "con_2")):
        with pytest.raises(DecryptionError):
            cipher.decrypt(token, tenant_id=tenant, connection_id=connection)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptionError):
        cipher.decrypt(tampered, tenant_id="ten_a", connection_id="con_1")
    with pytest.raises(DecryptionError):
        CredentialCipher([new_key()]).decrypt(token, tenant_id="ten_a", connection_id="con_1")


async def test_credentials_are_encrypted_at_rest_never_returned_and_rotate(db, tenant):
    tenant_id, _ = tenant
    old, new = new_key(), new_key()
    registry = ConnectorRegistry([VaultConnector])
    service = ConnectionService(db, registry, CredentialCipher([old]))
    one = await service.create(tenant_id, ConnectionCreate(connector="vault", name="a", credentials={"api_key": "apx_one"}))
    two = await service.create(tenant_id, ConnectionCreate(connector="vault", name="b", credentials={"api_key": "apx_two"}))
    assert "credentials" not in one and "apx_one" not in str(one)
    async with db.read() as conn:
        rows = {r.id: r for r in (await conn.execute(select(t.connections).where(t.connections.c.tenant_id == tenant_id))).all()}
    assert "apx_one" not in rows[one["id"]].credentials
    # Swapping ciphertexts between rows does not hand one connection the other's credentials.
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.connections).where(t.connections.c.id == one["id"])
                               .values(credentials=rows[two["id"]].credentials))
    with pytest.raises(DecryptionError):
        await service.connector_for(tenant_id, one["id"])
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.connections).where(t.connections.c.id == one["id"])
                               .values(credentials=rows[one["id"]].credentials))
    # Rotation: the new key first, the old one still listed; rotate; then the old key can go.
    rotating = ConnectionService(db, registry, CredentialCipher([new, old]))
    changed, undecryptable = await rotating.rotate_credentials()
    assert changed >= 2 and one["id"] not in undecryptable and two["id"] not in undecryptable
    after = ConnectionService(db, registry, CredentialCipher([new]))
    assert (await after.connector_for(tenant_id, one["id"])).context.credentials == {"api_key": "apx_one"}
    assert (await after.connector_for(tenant_id, two["id"])).context.credentials == {"api_key": "apx_two"}


async def test_per_key_rate_limit_answers_429_with_retry_after(db, tenant):
    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(new_key()).decode()],
                        api_rate_limit="5/minute")
    app = create_app(settings, services=Services.build(settings, db=db))
    other = await create_key(db, tenant[0], name="second")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        statuses = [(await http.get("/v1/connectors", headers={"Authorization": f"Bearer {tenant[1]}"})).status_code
                    for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        limited = await http.get("/v1/connectors", headers={"Authorization": f"Bearer {tenant[1]}"})
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        # The limit is per key: another key of the same tenant is unaffected; health is not limited.
        assert (await http.get("/v1/connectors", headers={"Authorization": f"Bearer {other.secret}"})).status_code == 200
        assert (await http.get("/healthz")).status_code == 200


async def test_revoked_key_is_refused_by_the_api(client, services, tenant):
    assert (await client.get("/v1/connectors")).status_code == 200
    async with services.db.read() as conn:
        key_row = (await conn.execute(select(t.api_keys.c.id).where(t.api_keys.c.tenant_id == tenant[0]))).first()
    await revoke_key(services.db, key_row.id)
    services.keys._cache.clear()  # the cache would otherwise trust the key for api_key_cache_seconds
    response = await client.get("/v1/connectors")
    assert response.status_code == 401 and response.json()["code"] == "invalid_api_key"
