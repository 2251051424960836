"""``tillgate connector new``: the scaffolded package is a plugin the gateway finds, and it passes
the conformance checks its manifest generates, live and from recorded cassettes.

The package is installed into a throwaway ``--target`` folder, never into the shared venv, and
everything that needs it installed runs in a subprocess whose ``PYTHONPATH`` holds that folder
(``importlib.metadata`` then finds its entry points there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.scaffold import FILES
from gateway.sdk.registry import manifest_schema
from gateway.testing.conformance import RECORD_ENV

BIN = Path(sys.executable).parent
TEMPLATES = Path(__file__).resolve().parents[1] / "gateway" / "scaffold" / "templates"

#: run in the plugin's environment: the connectors ``GET /v1/connectors`` lists, as JSON
LIST_CONNECTORS = """
import asyncio, base64, json, os, sys

import httpx

from gateway.api.app import create_app
from gateway.services.tenants import create_tenant
from gateway.settings import Settings
from gateway.storage.db import Database
from gateway.storage.migrate import upgrade

url = sys.argv[1]
upgrade(url)


async def main():
    db = Database(url)
    _, key = await create_tenant(db, "scaffold")
    await db.dispose()
    settings = Settings(database_url=url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()])
    api = create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://tillgate.test",
                                     headers={"Authorization": f"Bearer {key.secret}"}) as http:
            answer = await http.get("/v1/connectors")
    finally:
        await api.state.services.db.dispose()
    assert answer.status_code == 200, answer.text
    print(json.dumps(answer.json()["data"]))


asyncio.run(main())
"""


def new(*args: str) -> tuple[int, str]:
    """``tillgate connector new ARGS``: (exit code, output)."""
    result = CliRunner().invoke(app, ["connector", "new", *args], catch_exceptions=False)
    return result.exit_code, result.output


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; it must succeed."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_connector_new_makes_a_plugin_that_passes_conformance(tmp_path: Path) -> None:
    code, output = new("acme", "--dir", str(tmp_path))
    assert code == 0, output
    root = tmp_path / "tillgate-connector-acme"
    package = root / "tillgate_connector_acme"
    for relative in ("pyproject.toml", "README.md", "tests/test_conformance.py", "tests/conftest.py"):
        assert (root / relative).is_file(), relative
    for relative in ("__init__.py", "connector.py", "sandbox.py", "manifest.json", "mappings/acme/products.yaml"):
        assert (package / relative).is_file(), relative
    generated = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in generated if "TODO" in p.read_text(encoding="utf-8")]
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(manifest_schema()).validate(manifest)
    assert manifest["name"] == "acme" and list(manifest["capabilities"]) == ["products"]
    mapping = yaml.safe_load((package / "mappings/acme/products.yaml").read_text(encoding="utf-8"))
    assert (mapping["connector"], mapping["entity"]) == ("acme", "products")

    # lint-clean under its own ruff settings
    run([str(BIN / "ruff"), "check", "--no-cache", "."], env=dict(os.environ), cwd=root)

    # installed into a throwaway folder, offline, with the venv's setuptools
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(root)], env=dict(os.environ), cwd=tmp_path)
    assert (site / "tillgate_connector_acme" / "mappings" / "acme" / "products.yaml").is_file()
    env = {k: v for k, v in os.environ.items() if k != RECORD_ENV and not k.startswith("TILLGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "200"

    # the gateway finds it: GET /v1/connectors and `tillgate connector list`
    listed = run([sys.executable, "-c", LIST_CONNECTORS, f"sqlite:///{tmp_path / 'gateway.db'}"], env=env, cwd=tmp_path)
    connectors = {c["name"]: c for c in json.loads(listed.stdout.strip().splitlines()[-1])}
    assert {"acme", "local", "apex"} <= set(connectors), sorted(connectors)
    assert connectors["acme"]["capabilities"] == {"products": {"read": True, "incremental": False, "webhooks": False}}
    listing = run([str(BIN / "tillgate"), "connector", "list"], env=env, cwd=tmp_path).stdout
    assert "acme" in listing and "tillgate-connector-acme" in listing, listing

    # its own conformance tests pass: live against the sandbox, then recorded, then replayed
    pytest_cmd = [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "-rA"]
    checks = ["test_bad_credentials_are_rejected", "test_full_sync_reads_every_record",
              "test_resync_of_unchanged_data_writes_nothing", "test_record_deleted_at_vendor_is_soft_deleted[products]",
              "test_cached_records_are_valid", "test_sync_survives_rate_limits_and_5xx"]
    live = run(pytest_cmd, env=env, cwd=root).stdout
    assert "6 passed" in live and all(f"PASSED tests/test_conformance.py::TestAcmeConnectorConformance::{c}" in live
                                       for c in checks), live
    run(pytest_cmd, env={**env, RECORD_ENV: "1"}, cwd=root)
    cassettes = sorted(p.name for p in (root / "tests" / "cassettes").glob("*.yaml"))
    assert cassettes == ["bad_credentials_are_rejected.yaml", "cached_records_are_valid.yaml",
                         "full_sync_reads_every_record.yaml", "record_deleted_at_vendor_is_soft_deleted-products.yaml",
                         "resync_of_unchanged_data_writes_nothing.yaml"], cassettes
    assert "acme_sandbox_key" not in "".join((root / "tests" / "cassettes" / c).read_text() for c in cassettes)
    replayed = run(pytest_cmd, env=env, cwd=root).stdout
    assert "6 passed" in replayed, replayed


@pytest.mark.parametrize("name", ["Acme", "a", "acme-pos", "1acme", "acme_", "ac__me", "x" * 33, "acme pos", "a[b]"])
def test_connector_new_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    code, output = new(name, "--dir", str(tmp_path))
    assert code == 1 and "invalid connector name" in output, output
    assert list(tmp_path.iterdir()) == []


def test_connector_new_refuses_an_installed_name_and_an_existing_target(tmp_path: Path) -> None:
    code, output = new("apex", "--dir", str(tmp_path))
    assert code == 1 and "already installed" in output, output
    (tmp_path / "tillgate-connector-acme").mkdir()
    code, output = new("acme", "--dir", str(tmp_path))
    assert code == 1 and "already exists" in output, output
    assert list((tmp_path / "tillgate-connector-acme").iterdir()) == []  # nothing written into it
    (tmp_path / "file").write_text("")
    code, output = new("acme", "--dir", str(tmp_path / "file"))
    assert code == 1 and "not a directory" in output, output


def test_every_template_is_rendered() -> None:
    assert sorted(p.name for p in TEMPLATES.iterdir()) == sorted(FILES)


def test_connector_new_defaults_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = new("acme_pos")
    assert code == 0, output
    connector = (tmp_path / "tillgate-connector-acme-pos" / "tillgate_connector_acme_pos" / "connector.py").read_text()
    assert "class AcmePosConnector(RemoteConnector):" in connector
    manifest = json.loads((tmp_path / "tillgate-connector-acme-pos" / "tillgate_connector_acme_pos" /
                           "manifest.json").read_text())
    assert (manifest["name"], manifest["title"]) == ("acme_pos", "Acme POS")
