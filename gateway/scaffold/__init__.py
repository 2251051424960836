"""``tillgate connector new NAME``: scaffold a standalone, pip-installable connector package.

The package is rendered from the templates in ``gateway/scaffold/templates/`` (data files shipped
with the gateway, filled in with :class:`string.Template`): a :class:`~gateway.sdk.remote.RemoteConnector`
that checks its credentials against the vendor's ping endpoint and reads one entity (products)
through a paginator and a mapping file, a manifest, a sandbox serving what the connector calls,
and a conformance test module. It passes every conformance check its manifest generates from
the start; docs/writing-a-connector.md is the guide for what comes next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from string import Template

from gateway import __version__
from gateway.sdk.registry import GROUP

__all__ = ["FILES", "NAME_PATTERN", "Scaffold", "ScaffoldError", "render", "scaffold_connector", "validate_name"]

#: a connector name: what ``schemas/connector-manifest.schema.json`` allows, a Python identifier
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,31}$")

#: template file -> path in the generated project (``$package`` and ``$name`` are substituted)
FILES: dict[str, str] = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "init.py.tmpl": "$package/__init__.py",
    "connector.py.tmpl": "$package/connector.py",
    "sandbox.py.tmpl": "$package/sandbox.py",
    "manifest.json.tmpl": "$package/manifest.json",
    "products.yaml.tmpl": "$package/mappings/$name/products.yaml",
    "conftest.py.tmpl": "tests/conftest.py",
    "test_conformance.py.tmpl": "tests/test_conformance.py",
}


class ScaffoldError(Exception):
    """The connector cannot be scaffolded (a bad name, an existing target); the message says why."""


@dataclass(frozen=True)
class Scaffold:
    """What :func:`scaffold_connector` made: the project directory and the files in it (relative)."""

    root: Path
    files: list[str]
    package: str


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a connector, else raise :class:`ScaffoldError` saying why.

    A name is 2 to 32 characters: a lowercase letter, then lowercase letters, digits or ``_``
    (the manifest schema's ``name`` pattern; it is also the Python package's suffix). The name of
    an installed connector is refused: two plugins under one name would shadow each other.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(
            f"invalid connector name {name!r}: use 2 to 32 characters, a lowercase letter first, then "
            "lowercase letters, digits or _ (e.g. acme or acme_pos)")
    if name.endswith("_") or "__" in name:
        raise ScaffoldError(f"invalid connector name {name!r}: no trailing or doubled _")
    installed = {ep.name for ep in entry_points(group=GROUP)}
    if name in installed:
        raise ScaffoldError(f"a connector named {name!r} is already installed; choose another name")
    return name


def _variables(name: str) -> dict[str, str]:
    words = name.split("_")
    camel = "".join(word[:1].upper() + word[1:] for word in words)
    return {
        "name": name,
        "title": " ".join([*(word[:1].upper() + word[1:] for word in (words[:-1] if words[-1] == "pos" else words)),
                           "POS"]),
        "class_name": f"{camel}Connector",
        "package": f"tillgate_connector_{name}",
        "dist": f"tillgate-connector-{name.replace('_', '-')}",
        "gateway_version": __version__,
        "env_name": name.upper(),
    }


def render(template: str, variables: dict[str, str]) -> str:
    """The text of ``templates/<template>`` with ``$variables`` substituted (``$$`` is a literal ``$``).

    Raises:
        KeyError: the template uses a variable not in ``variables``.
    """
    text = resources.files(__package__).joinpath("templates", template).read_text(encoding="utf-8")
    return Template(text).substitute(variables)


def scaffold_connector(name: str, directory: str | Path = ".") -> Scaffold:
    """Write the project ``<directory>/tillgate-connector-<name>/`` for a new connector ``name``.

    Raises:
        ScaffoldError: ``name`` is invalid or taken (:func:`validate_name`), ``directory`` is not a
            directory, or the project directory exists already (nothing is overwritten).
    """
    validate_name(name)
    variables = _variables(name)
    parent = Path(directory)
    if parent.exists() and not parent.is_dir():
        raise ScaffoldError(f"{parent} is not a directory")
    root = parent / variables["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} already exists; remove it or choose another --dir")
    rendered = {Template(target).substitute(variables): render(template, variables) for template, target in FILES.items()}
    for relative, text in rendered.items():  # everything rendered first: a template error writes nothing
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Scaffold(root=root, files=list(rendered), package=variables["package"])
