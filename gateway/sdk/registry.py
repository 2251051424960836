"""Finding connector plugins through the entry-point group ``tillgate.connectors``.

Each entry point names a :class:`~gateway.sdk.connector.Connector` subclass; its manifest is
validated against ``schemas/connector-manifest.schema.json`` when loaded. Built-in connectors are
registered in ``pyproject.toml`` like any third-party plugin.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema

from gateway.errors import ValidationFailed
from gateway.sdk.connector import Connector

GROUP = "tillgate.connectors"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


class UnknownConnector(ValidationFailed):
    """No installed connector has that name (422 ``unknown_connector``)."""

    code = "unknown_connector"


class ManifestInvalid(Exception):
    """A connector's manifest does not follow ``schemas/connector-manifest.schema.json``."""


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema connector manifests must follow."""
    return json.loads((SCHEMAS_DIR / "connector-manifest.schema.json").read_text())


class ConnectorRegistry:
    """The installed connectors, by name.

    Args:
        extra: connector classes to add (tests, embedding), beside the entry points.

    Raises:
        ManifestInvalid: an installed connector's manifest is invalid (at construction).
    """

    def __init__(self, extra: list[type[Connector]] | None = None, *, load_entry_points: bool = True) -> None:
        self._classes: dict[str, type[Connector]] = {}
        validator = jsonschema.Draft202012Validator(manifest_schema())
        found: list[type[Connector]] = []
        if load_entry_points:
            for ep in entry_points(group=GROUP):
                cls = ep.load()
                if cls.manifest.get("name") != ep.name:
                    raise ManifestInvalid(f"entry point {ep.name!r} loads a connector named {cls.manifest.get('name')!r}")
                found.append(cls)
        found.extend(extra or [])
        for cls in found:
            errors = sorted(validator.iter_errors(cls.manifest), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "(root)"
                raise ManifestInvalid(f"connector {cls.manifest.get('name')!r}: manifest {where}: {errors[0].message}")
            self._classes[cls.manifest["name"]] = cls

    def names(self) -> list[str]:
        """Installed connector names, sorted."""
        return sorted(self._classes)

    def get(self, name: str) -> type[Connector]:
        """The connector class called ``name``.

        Raises:
            UnknownConnector: none is installed under that name.
        """
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownConnector(
                f"no connector named {name!r}; installed: {', '.join(self.names()) or 'none'}",
                errors=[{"loc": ["body", "connector"], "msg": "unknown connector", "type": "unknown_connector"}],
            ) from None

    def describe(self, name: str) -> dict[str, Any]:
        """The public description ``GET /v1/connectors`` lists."""
        manifest = self.get(name).manifest
        return {
            "name": manifest["name"],
            "version": manifest["version"],
            "title": manifest["title"],
            "vendor_docs": manifest.get("vendor_docs"),
            "credentials_schema": manifest["credentials_schema"],
            "settings_schema": manifest["settings_schema"],
            "capabilities": manifest["capabilities"],
        }
