"""The /v1 contract: auth, tenancy, problem documents, connections, lists and cursors, system routes."""

from __future__ import annotations

import httpx
import pytest

from gateway.services.tenants import create_tenant

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"].endswith(code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_missing_and_bad_keys_are_401(client):
    anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://tillgate.test")
    assert_problem(await anonymous.get("/v1/connections"), 401, "missing_api_key")
    assert_problem(await anonymous.get("/v1/connections", headers={"Authorization": "Basic abc"}), 401, "invalid_api_key")
    bad = "tgk_0123456789abcdef_" + "x" * 40
    assert_problem(await anonymous.get("/v1/connections", headers={"Authorization": f"Bearer {bad}"}), 401,
                   "invalid_api_key")


async def test_connectors_lists_local_with_schemas(client):
    response = await client.get("/v1/connectors")
    assert response.status_code == 200
    local = {c["name"]: c for c in response.json()["data"]}["local"]
    assert local["settings_schema"]["type"] == "object"
    assert local["capabilities"]["orders"]["write"] == ["create", "refund", "void"]


async def test_connection_crud_never_returns_credentials(client, local_connection):
    con = local_connection
    assert con["id"].startswith("con_") and con["connector"] == "local"
    assert "credentials" not in con and con["settings"]["currency"] == "GBP"
    fetched = (await client.get(f"/v1/connections/{con['id']}")).json()
    assert fetched == con
    patched = await client.patch(f"/v1/connections/{con['id']}", json={"name": "Renamed", "settings": {"safety_stock": "2"}})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Renamed" and patched.json()["settings"]["safety_stock"] == "2"
    listed = (await client.get("/v1/connections")).json()
    assert [c["id"] for c in listed["data"]] == [con["id"]] and listed["next_cursor"] is None
    assert (await client.delete(f"/v1/connections/{con['id']}")).json()["status"] == "deleted"
    assert_problem(await client.get(f"/v1/connections/{con['id']}"), 404, "not_found")
    assert_problem(await client.get(f"/v1/connections/{con['id']}/locations"), 404, "not_found")


async def test_connection_validation_errors(client):
    body = assert_problem(await client.post("/v1/connections", json={"connector": "nope", "name": "x"}), 422,
                          "unknown_connector")
    assert body["errors"][0]["loc"] == ["body", "connector"]
    body = assert_problem(await client.post("/v1/connections", json={
        "connector": "local", "name": "x", "settings": {"currency": "pounds", "bogus": 1}}), 422, "validation_error")
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "settings", "currency"), ("body", "settings")}
    body = assert_problem(await client.post("/v1/connections", json={"connector": "local", "name": "x",
                                                                      "credentials": {"password": "hunter2"}}),
                          422, "validation_error")
    assert "hunter2" not in str(body)


async def test_foreign_tenant_ids_answer_404(client, services, local_connection):
    _, other = await create_tenant(services.db, "other")
    headers = {"Authorization": f"Bearer {other.secret}"}
    con = local_connection["id"]
    assert_problem(await client.get(f"/v1/connections/{con}", headers=headers), 404, "not_found")
    assert_problem(await client.get(f"/v1/connections/{con}/locations", headers=headers), 404, "not_found")
    location = (await client.get(f"/v1/connections/{con}/locations")).json()["data"][0]
    assert_problem(await client.get(f"/v1/connections/{con}/locations/{location['id']}", headers=headers), 404,
                   "not_found")
    assert (await client.get("/v1/events", headers=headers)).json()["data"] == []


async def test_new_local_connection_has_main_location(client, local_connection):
    page = (await client.get(f"/v1/connections/{local_connection['id']}/locations")).json()
    assert [loc["name"] for loc in page["data"]] == ["Main"]
    location = page["data"][0]
    assert location["id"].startswith("loc_") and location["kind"] == "store"
    assert location["remote_id"] and location["connection_id"] == local_connection["id"]
    one = await client.get(f"/v1/connections/{local_connection['id']}/locations/{location['id']}")
    assert one.json() == location
    raw = (await client.get(f"/v1/connections/{local_connection['id']}/locations/{location['id']}?expand=raw")).json()
    assert "raw" in raw


async def test_keyset_pagination_walks_every_record_once(client, local_connection):
    con = local_connection["id"]
    for n in range(7):
        response = await client.post(f"/v1/connections/{con}/locations", json={"name": f"Store {n}"})
        assert response.status_code == 201, response.text
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"/v1/connections/{con}/locations", params=params)).json()
        seen += [loc["id"] for loc in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8 and len(set(seen)) == 8
    updated = [loc["updated_at"] for loc in (await client.get(f"/v1/connections/{con}/locations")).json()["data"]]
    assert updated == sorted(updated)


@pytest.mark.parametrize("query,code", [
    ("limit=0", "invalid_parameter"), ("limit=201", "invalid_parameter"), ("limit=99999999999999999999", "invalid_parameter"),
    ("limit=abc", "invalid_parameter"), ("cursor=garbage", "invalid_cursor"), ("cursor=W10", "invalid_cursor"),
    ("cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwieCJd", None),
    ("updated_after=yesterday", "invalid_parameter"), ("include_deleted=maybe", "invalid_parameter"),
    ("expand=everything", "invalid_parameter"),
])
async def test_bad_list_parameters_are_400(client, local_connection, query, code):
    if code is None:  # a well-formed cursor of a naive time is taken as UTC
        assert (await client.get(f"/v1/connections/{local_connection['id']}/locations?{query}")).status_code == 200
        return
    assert_problem(await client.get(f"/v1/connections/{local_connection['id']}/locations?{query}"), 400, code)


async def test_bad_bodies(client, local_connection):
    con = local_connection["id"]
    url = f"/v1/connections/{con}/locations"
    assert_problem(await client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400,
                   "malformed_json")
    assert_problem(await client.post(url, content=b"[1,2]", headers={"content-type": "application/json"}), 422,
                   "validation_error")
    assert_problem(await client.post(url, content=b'{"name": "x"}', headers={"content-type": "text/plain"}), 415,
                   "unsupported_media_type")
    body = assert_problem(await client.post(url, json={"name": 5, "kind": "moon"}), 422, "validation_error")
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "name"), ("body", "kind")}
    assert_problem(await client.post(url, content=b"{" + b'"a":1,' * 200_000 + b"}",
                                     headers={"content-type": "application/json"}), 413, "payload_too_large")
    assert_problem(await client.get(f"/v1/connections/{con}/widgets"), 404, "unknown_entity")
    assert_problem(await client.get("/v1/nothing-here"), 404, "route_not_found")
    assert_problem(await client.delete("/v1/connectors"), 405, "method_not_allowed")


async def test_idempotency_key_replays_and_refuses_reuse(client, local_connection):
    url = f"/v1/connections/{local_connection['id']}/locations"
    first = await client.post(url, json={"name": "Depot", "kind": "warehouse"}, headers={"Idempotency-Key": "k-1"})
    again = await client.post(url, json={"name": "Depot", "kind": "warehouse"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert_problem(await client.post(url, json={"name": "Other"}, headers={"Idempotency-Key": "k-1"}), 422,
                   "idempotency_key_reused")
    names = [loc["name"] for loc in (await client.get(url)).json()["data"]]
    assert names.count("Depot") == 1
    assert_problem(await client.post(url, json={"name": "x"}, headers={"Idempotency-Key": "x" * 256}), 400,
                   "invalid_idempotency_key")


async def test_events_are_gap_free_and_filterable(client, local_connection):
    con = local_connection["id"]
    for n in range(3):
        await client.post(f"/v1/connections/{con}/locations", json={"name": f"S{n}"})
    page = (await client.get("/v1/events")).json()
    seqs = [event["seq"] for event in page["data"]]
    assert seqs == list(range(1, len(seqs) + 1)) and page["next_after"] == seqs[-1]
    assert all(event["type"] == "location.created" for event in page["data"])
    assert page["data"][-1]["data"]["name"] == "S2"
    tail = (await client.get(f"/v1/events?after={seqs[-2]}")).json()
    assert [e["seq"] for e in tail["data"]] == [seqs[-1]]
    assert (await client.get("/v1/events?type=product.*")).json()["data"] == []
    assert len((await client.get(f"/v1/events?type=location.*&connection_id={con}")).json()["data"]) == len(seqs)
    assert_problem(await client.get("/v1/events?after=-1"), 400, "invalid_parameter")


async def test_system_routes(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    await client.get("/v1/connectors")
    metrics = (await client.get("/metrics")).text
    assert 'tillgate_http_requests_total{method="GET",route="/v1/connectors",status="200"}' in metrics
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1") and "/v1/events" in spec["paths"]
    docs = await client.get("/docs")
    assert "swagger-ui-bundle.js" in docs.text
    asset = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000


async def test_read_cache_never_serves_a_stale_page(client, services, local_connection):
    """SQLite reads are cached until any commit; a write must show up on the very next read."""
    url = f"/v1/connections/{local_connection['id']}/locations"
    before = (await client.get(url)).json()["data"]
    assert (await client.get(url)).json()["data"] == before
    await client.post(url, json={"name": "Fresh"})
    after = (await client.get(url)).json()["data"]
    assert [loc["name"] for loc in after] == [loc["name"] for loc in before] + ["Fresh"]


async def test_expired_idempotency_keys_are_purged_and_reusable(client, services, local_connection):
    from datetime import timedelta

    from sqlalchemy import select, update

    from gateway.jsonutil import utcnow
    from gateway.services.idempotency import purge_expired
    from gateway.storage import tables as t

    url = f"/v1/connections/{local_connection['id']}/locations"
    assert (await client.post(url, json={"name": "A"}, headers={"Idempotency-Key": "old-key"})).status_code == 201
    async with services.db.transaction() as uow:
        await uow.conn.execute(update(t.idempotency_keys).where(t.idempotency_keys.c.key == "old-key")
                               .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await purge_expired(services.db) >= 1
    async with services.db.read() as conn:
        assert (await conn.execute(select(t.idempotency_keys).where(t.idempotency_keys.c.key == "old-key"))).first() is None
    # After expiry the key is free again: the same key with another body is a new request.
    assert (await client.post(url, json={"name": "B"}, headers={"Idempotency-Key": "old-key"})).status_code == 201


async def test_connection_health_is_not_taken_for_an_entity(client, local_connection):
    response = await client.get(f"/v1/connections/{local_connection['id']}/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok" and response.json()["connector"] == "local"


async def test_read_cache_sees_commits_of_other_processes(client, tenant, local_connection, database_url):
    """Another process (another engine on the same database) commits; the next read shows it."""
    from gateway.services import records
    from gateway.storage.db import Database

    url = f"/v1/connections/{local_connection['id']}/locations"
    first = (await client.get(url)).json()["data"]
    assert (await client.get(url)).json()["data"] == first  # now served from the read cache on SQLite
    other = Database(database_url)
    try:
        async with other.transaction(tenant[0]) as uow:
            await records.upsert(uow, connection_id=local_connection["id"], entity="locations", remote_id="elsewhere",
                                 body={"name": "Opened elsewhere", "kind": "store", "address": None, "timezone": None})
    finally:
        await other.dispose()
    names = [loc["name"] for loc in (await client.get(url)).json()["data"]]
    assert names[-1] == "Opened elsewhere" and len(names) == len(first) + 1

