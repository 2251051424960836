"""The ``tillgate`` command line.

Commands print what they did; commands that create an API key print it on their last line.
Settings come from ``TILLGATE_*`` environment variables; ``--database-url`` overrides.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from gateway import jsonutil
from gateway.api.deps import Services
from gateway.errors import NotFound, TillgateError
from gateway.model import ConnectionCreate
from gateway.settings import Settings, get_settings
from gateway.storage import tables as t
from gateway.storage.migrate import upgrade

app = typer.Typer(help="Tillgate: a unified integration gateway for point-of-sale systems.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (API consumers).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
connections_app = typer.Typer(help="Connections to POS accounts.", no_args_is_help=True)
import_app = typer.Typer(help="Import data into a local connection.", no_args_is_help=True)
secrets_app = typer.Typer(help="Credential encryption keys.", no_args_is_help=True)
connector_app = typer.Typer(help="Connector plugins: scaffold one, list the installed ones.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(connections_app, name="connections")
app.add_typer(import_app, name="import")
app.add_typer(secrets_app, name="secrets")
app.add_typer(connector_app, name="connector")

console = Console(soft_wrap=True)
DEMO_TENANT = "demo"
DEMO_CONNECTION = "Demo shop"


def _settings(database_url: str | None) -> Settings:
    settings = get_settings()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


DatabaseOption = typer.Option(None, "--database-url", help="overrides TILLGATE_DATABASE_URL")


def _run(coro: Any) -> Any:
    from gateway.importers import ImportFileError

    try:
        return asyncio.run(coro)
    except TillgateError as exc:
        console.print(f"[red]error:[/red] {exc.detail} ({exc.code})")
        raise typer.Exit(code=1) from None
    except ImportFileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None


async def _with_services(settings: Settings, work: Any) -> Any:
    svc = Services.build(settings)
    try:
        return await work(svc)
    finally:
        await svc.db.dispose()


@app.command()
def migrate(database_url: str | None = DatabaseOption) -> None:
    """Create or upgrade the database schema (Alembic)."""
    settings = _settings(database_url)
    upgrade(settings.database_url)
    console.print(f"database migrated: {settings.database_url}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="TCP port"),
    database_url: str | None = DatabaseOption,
    workers: int = typer.Option(1, help="uvicorn worker processes"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the API (and, in embedded mode, everything else) on HOST:PORT."""
    import os

    import uvicorn

    if database_url:
        os.environ["TILLGATE_DATABASE_URL"] = database_url
    logging.basicConfig(level=get_settings().log_level.upper())
    uvicorn.run("gateway.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, proxy_headers=False)


@app.command()
def worker(database_url: str | None = DatabaseOption) -> None:
    """Run jobs from Redis (scale-out mode; needs TILLGATE_REDIS_URL). Embedded mode needs none:
    `tillgate serve` runs jobs itself when no Redis is configured."""
    import os

    from arq.worker import Worker

    from gateway.workers.arq_app import worker_options

    if database_url:
        os.environ["TILLGATE_DATABASE_URL"] = database_url
        get_settings.cache_clear()
    settings = get_settings()
    if not settings.redis_url:
        console.print("[red]error:[/red] set TILLGATE_REDIS_URL to run a worker; without Redis, "
                      "`tillgate serve` runs jobs in process")
        raise typer.Exit(code=1)
    logging.basicConfig(level=settings.log_level.upper())
    Worker(**worker_options(settings.redis_url, settings.queue_name, settings.worker_max_jobs)).run()


@app.command()
def sync(
    connection: str = typer.Argument(..., help="the connection id (con_...)"),
    mode: str = typer.Option("auto", help="auto, full or incremental"),
    entity: list[str] | None = typer.Option(None, "--entity", help="only these entities (repeatable)"),
    database_url: str | None = DatabaseOption,
) -> None:
    """Sync a connection now, in this process, with a progress bar per entity."""
    from gateway.sdk.connector import Connector
    from gateway.services.sync import SyncEngine

    if mode not in ("auto", "full", "incremental"):
        console.print("[red]error:[/red] --mode must be auto, full or incremental")
        raise typer.Exit(code=1)

    async def work(svc: Services) -> None:
        tenant_id = await _connection_tenant(svc, connection)
        connector = await svc.connections.connector_for(tenant_id, connection)
        if type(connector).fetch is Connector.fetch:
            console.print(f"[red]error:[/red] the {connector.name()} connector keeps its cache itself: nothing to sync")
            raise typer.Exit(code=1)
        engine = SyncEngine(svc.db, connector)
        readable = engine.entities()
        for name in entity or []:
            if name not in readable:
                console.print(f"[red]error:[/red] {connector.name()} cannot read {name!r}; it reads {', '.join(readable)}")
                raise typer.Exit(code=1)
        with Progress(TextColumn("[progress.description]{task.description}"), TextColumn("{task.fields[counts]}"),
                      TimeElapsedColumn(), console=console) as progress:
            for name in [e for e in readable if not entity or e in entity]:
                task = progress.add_task(name, total=None, counts="")

                def show(result: Any, task: Any = task) -> None:
                    progress.update(task, counts=f"{result.pages} pages, {result.seen} seen, {result.created} new, "
                                                 f"{result.updated} changed")

                result = await engine.run(name, mode=mode, on_page=show)
                progress.update(task, counts=f"{result.mode}: {result.seen} seen, {result.created} new, "
                                             f"{result.updated} changed, {result.unchanged} unchanged, "
                                             f"{result.deleted} deleted")

    _run(_with_services(_settings(database_url), work))


@app.command()
def sandbox(
    name: str = typer.Argument(..., help="the vendor, e.g. apex"),
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8100, help="TCP port"),
    seed_csv: Path | None = typer.Option(None, "--seed-csv", exists=True, dir_okay=False,
                                         help="seed from an Online Retail transaction CSV"),
    products: int | None = typer.Option(None, help="generate this many synthetic products"),
    seed: int | None = typer.Option(None, help="random seed (faults, synthetic data)"),
) -> None:
    """Serve a vendor sandbox: a fake POS that behaves as the vendor's docs describe."""
    from importlib.metadata import entry_points

    from gateway.testing.sandbox import run

    found = {ep.name: ep for ep in entry_points(group="tillgate.sandboxes")}
    if name not in found:
        console.print(f"[red]error:[/red] no sandbox named {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
        raise typer.Exit(code=1)
    options = {key: value for key, value in {"seed_csv": seed_csv, "products": products, "seed": seed}.items()
               if value is not None}
    run(found[name].load()(**options), host, port)


@connector_app.command("new")
def connector_new(
    name: str = typer.Argument(..., help="the connector's name: lowercase letters, digits and _, e.g. acme"),
    directory: Path = typer.Option(Path("."), "--dir", help="where to create tillgate-connector-NAME/"),
) -> None:
    """Scaffold a pip-installable connector package (connector, manifest, mapping, sandbox, tests)."""
    from rich.markup import escape

    from gateway.scaffold import ScaffoldError, scaffold_connector

    try:
        made = scaffold_connector(name, directory)
    except ScaffoldError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    console.print(f"created {made.root}/")
    for file in made.files:
        console.print(f"  {file}")
    console.print("next (docs/writing-a-connector.md):")
    console.print(f"  cd {made.root} && pip install -e '.[test]' && pytest", markup=False)
    console.print(f"  tillgate sandbox {name}")


@connector_app.command("list")
def connector_list() -> None:
    """List the installed connectors (entry points of ``tillgate.connectors``) and the package of each."""
    from importlib.metadata import entry_points

    from rich.markup import escape

    from gateway.sdk.registry import GROUP, ConnectorRegistry, ManifestInvalid

    packages = {ep.name: f"{ep.dist.name} {ep.dist.version}" if ep.dist else "" for ep in entry_points(group=GROUP)}
    try:
        registry = ConnectorRegistry()
    except ManifestInvalid as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    table = Table("name", "version", "title", "package")
    for name in registry.names():
        manifest = registry.get(name).manifest
        table.add_row(name, manifest["version"], manifest["title"], packages.get(name, ""))
    console.print(table)


@tenants_app.command("create")
def tenants_create(name: str, database_url: str | None = DatabaseOption) -> None:
    """Create a tenant and its first API key (printed once, on the last line)."""
    from gateway.services.tenants import create_tenant

    async def work(svc: Services) -> None:
        tenant_id, key = await create_tenant(svc.db, name)
        console.print(f"tenant {tenant_id} ({name}) created; its API key (shown once):")
        print(key.secret)

    _run(_with_services(_settings(database_url), work))


@tenants_app.command("list")
def tenants_list(database_url: str | None = DatabaseOption) -> None:
    """List tenants."""
    from gateway.services.tenants import list_tenants

    async def work(svc: Services) -> None:
        table = Table("id", "name", "created_at")
        for row in await list_tenants(svc.db):
            table.add_row(row["id"], row["name"], jsonutil.rfc3339(row["created_at"]))
        console.print(table)

    _run(_with_services(_settings(database_url), work))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="tenant id or name"),
    name: str = typer.Option("default", help="a label for the key"),
    database_url: str | None = DatabaseOption,
) -> None:
    """Create an API key for a tenant (printed once, on the last line)."""
    from gateway.services.tenants import create_key, find_tenant

    async def work(svc: Services) -> None:
        tenant_id = await find_tenant(svc.db, tenant)
        key = await create_key(svc.db, tenant_id, name=name)
        console.print(f"API key {key.id} for tenant {tenant_id} (shown once):")
        print(key.secret)

    _run(_with_services(_settings(database_url), work))


@keys_app.command("list")
def keys_list(tenant: str = typer.Option(..., "--tenant"), database_url: str | None = DatabaseOption) -> None:
    """List a tenant's keys (never the secrets)."""
    from gateway.services.tenants import find_tenant, list_keys

    async def work(svc: Services) -> None:
        table = Table("id", "key_id", "name", "created_at", "revoked_at")
        for row in await list_keys(svc.db, await find_tenant(svc.db, tenant)):
            table.add_row(row["id"], row["key_id"], row["name"], jsonutil.rfc3339(row["created_at"]),
                          jsonutil.rfc3339(row["revoked_at"]) or "")
        console.print(table)

    _run(_with_services(_settings(database_url), work))


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="key row id (key_...) or key_id"),
                database_url: str | None = DatabaseOption) -> None:
    """Revoke an API key."""
    from gateway.services.tenants import revoke_key

    async def work(svc: Services) -> None:
        await revoke_key(svc.db, key)
        console.print(f"revoked {key}")

    _run(_with_services(_settings(database_url), work))


@connections_app.command("list")
def connections_list(tenant: str | None = typer.Option(None, "--tenant", help="tenant id or name"),
                     database_url: str | None = DatabaseOption) -> None:
    """List connections (of one tenant, or all)."""
    from gateway.services.tenants import find_tenant

    async def work(svc: Services) -> None:
        query = select(t.connections).where(t.connections.c.deleted_at.is_(None)).order_by(t.connections.c.created_at)
        if tenant:
            query = query.where(t.connections.c.tenant_id == await find_tenant(svc.db, tenant))
        async with svc.db.read() as conn:
            rows = (await conn.execute(query)).all()
        table = Table("id", "tenant", "connector", "name", "status", "created_at")
        for row in rows:
            table.add_row(row.id, row.tenant_id, row.connector, row.name, row.status, jsonutil.rfc3339(row.created_at))
        console.print(table)

    _run(_with_services(_settings(database_url), work))


async def _connection_tenant(svc: Services, connection_id: str) -> str:
    async with svc.db.read() as conn:
        row = (await conn.execute(select(t.connections.c.tenant_id).where(
            t.connections.c.id == connection_id, t.connections.c.deleted_at.is_(None)))).first()
    if row is None:
        raise NotFound(f"no connection {connection_id!r}")
    return row[0]


async def _target_connector(svc: Services, connection: str | None, tenant: str | None, name: str) -> Any:
    from gateway.services.tenants import find_tenant

    if connection:
        tenant_id = await _connection_tenant(svc, connection)
    else:
        if not tenant:
            raise NotFound("give --connection or --tenant", code="missing_option")
        tenant_id = await find_tenant(svc.db, tenant)
        created = await svc.connections.create(tenant_id, ConnectionCreate(connector="local", name=name))
        connection = created["id"]
        console.print(f"created local connection {connection} ({name}) for tenant {tenant_id}")
    connector = await svc.connections.connector_for(tenant_id, connection)
    if connector.name() != "local":
        raise NotFound(f"connection {connection} uses the {connector.name()} connector; imports need a local one",
                       code="not_a_local_connection")
    return connector


def _import(importer: Any, unit: str, file: Path, connection: str | None, tenant: str | None,
            database_url: str | None) -> None:
    """Run ``importer(connector, file, progress=...)`` with a progress bar and print its summary."""

    async def work(svc: Services) -> None:
        connector = await _target_connector(svc, connection, tenant, file.stem)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(unit, total=None)
            summary = await importer(
                connector, file, progress=lambda done, total: progress.update(task, completed=done, total=total))
        console.print(summary.render())

    _run(_with_services(_settings(database_url), work))


FileArgument = typer.Argument(..., exists=True, dir_okay=False, readable=True)
ConnectionOption = typer.Option(None, "--connection", help="an existing local connection")
TenantOption = typer.Option(None, "--tenant", help="create a new local connection for this tenant")


@import_app.command("products")
def import_products(file: Path = FileArgument, connection: str | None = ConnectionOption,
                    tenant: str | None = TenantOption, database_url: str | None = DatabaseOption) -> None:
    """Import a products CSV (sku,name,price[,barcode,description,cost,currency,tax_rate,...])."""
    from gateway.importers.products_csv import import_products_csv

    _import(import_products_csv, "products", file, connection, tenant, database_url)


@import_app.command("retail")
def import_retail(file: Path = FileArgument, connection: str | None = ConnectionOption,
                  tenant: str | None = TenantOption, database_url: str | None = DatabaseOption) -> None:
    """Import the UCI Online Retail transaction CSV: products, customers, sales and credit notes."""
    from gateway.importers.online_retail import import_online_retail

    _import(import_online_retail, "lines", file, connection, tenant, database_url)


@app.command()
def demo(database_url: str | None = DatabaseOption) -> None:
    """Ensure the demo tenant and its local connection with the demo catalog; print a new API key last."""
    from gateway.importers.products_csv import load_demo_catalog
    from gateway.services.tenants import create_key, create_tenant, find_tenant

    async def work(svc: Services) -> None:
        try:
            tenant_id = await find_tenant(svc.db, DEMO_TENANT)
            key = await create_key(svc.db, tenant_id, name="make-run")
        except NotFound:
            tenant_id, key = await create_tenant(svc.db, DEMO_TENANT)
        async with svc.db.read() as conn:
            row = (await conn.execute(select(t.connections.c.id).where(
                t.connections.c.tenant_id == tenant_id, t.connections.c.name == DEMO_CONNECTION,
                t.connections.c.deleted_at.is_(None)))).first()
        if row is None:
            created = await svc.connections.create(tenant_id, ConnectionCreate(connector="local", name=DEMO_CONNECTION))
            connection_id = created["id"]
            connector = await svc.connections.connector_for(tenant_id, connection_id)
            summary = await load_demo_catalog(connector)
            console.print(summary.render())
        else:
            connection_id = row[0]
        console.print(f"demo tenant {tenant_id}; local connection {connection_id} ({DEMO_CONNECTION})")
        console.print(f"try: curl -H 'Authorization: Bearer <key>' "
                      f"http://127.0.0.1:8000/v1/connections/{connection_id}/products  (make run serves on port 8000)")
        console.print("API key for the demo tenant (shown once):")
        print(key.secret)

    _run(_with_services(_settings(database_url), work))


@secrets_app.command("rotate")
def secrets_rotate(database_url: str | None = DatabaseOption) -> None:
    """Re-encrypt every connection's credentials with the first key of TILLGATE_SECRET_KEYS."""

    async def work(svc: Services) -> None:
        changed, failed = await svc.connections.rotate_credentials()
        console.print(f"re-encrypted {changed} connection(s) with key {svc.cipher.primary_id}")
        if failed:
            console.print(f"[red]{len(failed)} connection(s) could not be decrypted with any configured key:[/red] "
                          + ", ".join(failed))
            raise typer.Exit(code=1)

    _run(_with_services(_settings(database_url), work))


def main() -> None:
    """Entry point of the ``tillgate`` script."""
    app()


if __name__ == "__main__":
    main()
