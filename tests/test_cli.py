"""The ``tillgate`` command line, run as a user would (typer's CliRunner, a temporary SQLite file)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cli import app
from gateway.settings import Settings, get_settings


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "TILLGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "TILLGATE_SECRET_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


async def get(path: str, key: str) -> httpx.Response:
    app = create_app(Settings())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            return await http.get(path)
    finally:
        await app.state.services.db.dispose()


def test_tenants_keys_and_connections(cli_env):
    run("migrate")
    key = last_line(run("tenants", "create", "acme"))
    assert key.startswith("tgk_")
    second = last_line(run("keys", "create", "--tenant", "acme", "--name", "ci"))
    assert second.startswith("tgk_") and second != key
    listing = run("keys", "list", "--tenant", "acme")
    assert "ci" in listing and key not in listing and second not in listing
    assert "acme" in run("tenants", "list")
    assert asyncio.run(get("/v1/connectors", second)).status_code == 200
    key_id = second.split("_")[1]
    run("keys", "revoke", key_id)
    assert asyncio.run(get("/v1/connectors", second)).status_code == 401
    failed = CliRunner().invoke(app, ["keys", "create", "--tenant", "nobody"])
    assert failed.exit_code == 1 and "no single tenant" in failed.output


def test_demo_creates_a_served_catalog_and_prints_a_key_last(cli_env):
    run("migrate")
    output = run("demo")
    key = last_line(output)
    connections = asyncio.run(get("/v1/connections", key)).json()["data"]
    assert [c["name"] for c in connections] == ["Demo shop"]
    products = asyncio.run(get(f"/v1/connections/{connections[0]['id']}/products?limit=200", key)).json()["data"]
    assert len(products) >= 30 and all(p["currency"] == "GBP" for p in products)
    # A second run keeps the catalog and prints a new working key.
    again = last_line(run("demo"))
    assert again != key and asyncio.run(get("/v1/connections", again)).json()["data"] == connections
    assert "Demo shop" in run("connections", "list", "--tenant", "demo")


def test_import_products_csv_into_a_new_connection(cli_env, tmp_path):
    run("migrate")
    key = last_line(run("tenants", "create", "shop"))
    csv_file = tmp_path / "catalog.csv"
    csv_file.write_text("sku,name,price,on_hand\nA-1,Mug,6.50,4\nA-2,Plate,not-a-price,1\n")
    output = run("import", "products", str(csv_file), "--tenant", "shop")
    assert "not-a-price" in output or "line 3" in output
    connections = asyncio.run(get("/v1/connections", key)).json()["data"]
    con = connections[0]["id"]
    products = asyncio.run(get(f"/v1/connections/{con}/products", key)).json()["data"]
    assert [(p["sku"], p["price"]) for p in products] == [("A-1", "6.50")]
    stock = asyncio.run(get(f"/v1/connections/{con}/inventory?product_id={products[0]['id']}", key)).json()["data"]
    assert [level["on_hand"] for level in stock] == ["4"]


def test_secrets_rotate_reencrypts_with_the_new_first_key(cli_env, monkeypatch):
    run("migrate")
    run("tenants", "create", "r")
    run("demo")
    old = cli_env["TILLGATE_SECRET_KEYS"]
    new = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("TILLGATE_SECRET_KEYS", f"{new},{old}")
    get_settings.cache_clear()
    assert "re-encrypted 1 connection" in run("secrets", "rotate")
    monkeypatch.setenv("TILLGATE_SECRET_KEYS", new)
    get_settings.cache_clear()
    key = last_line(run("demo"))
    connections = asyncio.run(get("/v1/connections", key)).json()["data"]
    assert asyncio.run(get(f"/v1/connections/{connections[0]['id']}/health", key)).json()["status"] == "ok"


def test_import_rejects_a_file_of_the_wrong_shape(cli_env, tmp_path):
    run("migrate")
    run("tenants", "create", "shop")
    bad = tmp_path / "orders.csv"
    bad.write_text("order,total\n1,2\n")
    result = CliRunner().invoke(app, ["import", "retail", str(bad), "--tenant", "shop"])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_sandbox_names_the_installed_ones_when_asked_for_another(cli_env):
    result = CliRunner().invoke(app, ["sandbox", "nope"])
    assert result.exit_code == 1 and "installed: aipos, apex" in result.output


def test_sync_refuses_a_connection_that_keeps_its_own_cache(cli_env):
    run("migrate")
    output = run("demo")  # "... local connection con_... (Demo shop)"
    connection = next(word for word in output.split() if word.startswith("con_"))
    result = CliRunner().invoke(app, ["sync", connection])
    assert result.exit_code == 1 and "nothing to sync" in result.output
    assert CliRunner().invoke(app, ["sync", connection, "--mode", "sideways"]).exit_code == 1
