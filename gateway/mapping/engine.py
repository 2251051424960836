"""Load, validate, compile and run declarative mapping files (``mappings/<connector>/<entity>.yaml``).

A file is validated against ``schemas/mapping.schema.json`` and compiled once into a
:class:`MappingSpec`; unknown transforms, bad transform args and bad paths are load errors.
Per record, every field spec is evaluated in this order:

1. ``when`` — conditions on the current object; when one fails the field is ``otherwise``
   (default ``null``) and nothing else runs;
2. the source — ``from`` (a path, or a list of paths: the first non-null wins), ``const``,
   ``setting`` (a connection setting), or, with none of these, the current object itself;
3. ``default`` when the source is missing or ``null`` (a source-side value: it still goes
   through the steps below);
4. the shape — ``each`` (map every element of a list), ``fields`` (build an object whose fields
   read from the value) or ``list`` (a fixed list of element specs); ``null`` elements are dropped;
5. ``transform`` with ``args``.

In an object, a field with ``omit_if_null: true`` whose result is ``null`` is left out
(write bodies: "send only the fields you want to update").
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from gateway.mapping.context import MappingContext, Scope
from gateway.mapping.errors import MappingError, TransformError
from gateway.mapping.paths import MISSING, compile_path, resolve_path
from gateway.mapping.paths import Path as KeyPath
from gateway.mapping.transforms import TRANSFORMS, Transform

REPO_DIR = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_DIR / "schemas" / "mapping.schema.json"
MAPPINGS_DIR = REPO_DIR / "mappings"


@functools.cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@dataclass(frozen=True)
class _Condition:
    path: KeyPath
    values: tuple[Any, ...] | None  # None: "is present and not null"

    def holds(self, source: Any, scope: Scope | None) -> bool:
        found = resolve_path(source, self.path, scope)
        if found is MISSING or found is None:
            return False
        return self.values is None or found in self.values


@dataclass
class _Field:
    """A compiled field spec (see the module docstring for the evaluation order)."""

    where: str
    paths: tuple[KeyPath, ...] = ()
    const: Any = MISSING
    setting: str | None = None
    default: Any = MISSING
    when: tuple[_Condition, ...] = ()
    otherwise: Any = None
    each: _Field | None = None
    fields: dict[str, _Field] | None = None
    items: list[_Field] | None = None
    transform: Transform | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    omit_if_null: bool = False


class _Run:
    """One read or write call: carries the file name for errors."""

    __slots__ = ("file",)

    def __init__(self, file: str) -> None:
        self.file = file

    def value(self, spec: _Field, source: Any, ctx: MappingContext, at: str) -> Any:
        scope = ctx.scope
        for cond in spec.when:
            if not cond.holds(source, scope):
                return copy.deepcopy(spec.otherwise)
        if spec.paths:
            value = None
            for path in spec.paths:
                found = resolve_path(source, path, scope)
                if found is not MISSING and found is not None:
                    value = found
                    break
        elif spec.const is not MISSING:
            value = copy.deepcopy(spec.const)
        elif spec.setting is not None:
            value = ctx.settings.get(spec.setting, MISSING)
            if value is MISSING:
                if spec.default is MISSING:
                    raise MappingError(f"connection setting {spec.setting!r} is not set", file=self.file, field=at)
                value = None
        else:
            value = source
        if value is None and spec.default is not MISSING:
            value = copy.deepcopy(spec.default)
        if spec.each is not None:
            value = self._each(spec.each, value, ctx, at)
        elif spec.fields is not None:
            value = None if value is None else self.obj(spec.fields, value, ctx, at)
        elif spec.items is not None:
            out = (self.value(item, value, ctx, f"{at}[{i}]") for i, item in enumerate(spec.items))
            value = [v for v in out if v is not None]
        if spec.transform is not None and (value is not None or spec.transform.nulls):
            try:
                value = spec.transform.fn(value, spec.args, ctx)
            except TransformError as exc:
                raise MappingError(f"{spec.transform.name}: {exc}", file=self.file, field=at, value=value) from exc
        return value

    def _each(self, element_spec: _Field, value: Any, ctx: MappingContext, at: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise MappingError("each: expected a list", file=self.file, field=at, value=value)
        root = ctx.scope.root if ctx.scope is not None else value
        out = []
        for i, element in enumerate(value):
            mapped = self.value(element_spec, element, replace(ctx, scope=Scope(root, i)), f"{at}[{i}]")
            if mapped is not None:
                out.append(mapped)
        return out

    def obj(self, fields: dict[str, _Field], source: Any, ctx: MappingContext, at: str) -> dict[str, Any]:
        if not isinstance(source, dict):
            raise MappingError("fields: expected an object", file=self.file, field=at, value=source)
        out: dict[str, Any] = {}
        for name, spec in fields.items():
            mapped = self.value(spec, source, ctx, f"{at}.{name}" if at else name)
            if mapped is None and spec.omit_if_null:
                continue
            out[name] = mapped
        return out


class MappingSpec:
    """A compiled mapping file for one connector and entity.

    Attributes:
        connector, entity: from the file (``entity`` is a unified entity: ``products``, ...).
        file: where it was loaded from (used in error messages).
        has_read, has_write: which directions the file defines.
        digest: SHA-256 hex of the file's canonical JSON: changes whenever the mapping does
            (part of a page fingerprint, so an edited mapping re-maps every page).
    """

    def __init__(self, *, connector: str, entity: str, file: str, remote_id: _Field | None,
                 read_fields: dict[str, _Field] | None, write_fields: dict[str, _Field] | None,
                 digest: str = "") -> None:
        self.connector = connector
        self.entity = entity
        self.file = file
        self.digest = digest
        self._remote_id = remote_id
        self._read = read_fields
        self._write = write_fields

    @property
    def has_read(self) -> bool:
        """Whether the file has a ``read`` direction."""
        return self._read is not None

    @property
    def has_write(self) -> bool:
        """Whether the file has a ``write`` direction."""
        return self._write is not None

    def read(self, record: Mapping[str, Any], context: MappingContext | None = None) -> tuple[str, dict[str, Any]]:
        """Map one vendor record to ``(remote_id, unified body)``.

        The body has the entity's fields except the common ones (``id``, ``connection_id``,
        ``remote_id``, ``created_at``, ``updated_at``), which the sync fills in. Numbers are
        ``Decimal``, times aware UTC ``datetime``.

        Raises:
            MappingError: the file has no ``read``, or the record does not fit (bad number,
                unknown enum value, missing id...), naming the field path and the vendor value.
        """
        if self._read is None or self._remote_id is None:
            raise MappingError("this mapping has no read direction", file=self.file)
        ctx = replace(context or MappingContext(), scope=Scope(record))
        run = _Run(self.file)
        if not isinstance(record, dict):
            raise MappingError("expected a vendor record object", file=self.file, field="read", value=record)
        remote_id = run.value(self._remote_id, record, ctx, "remote_id")
        if not isinstance(remote_id, str) or not remote_id:
            raise MappingError("remote_id must map to a non-empty string (use transform: id_string)",
                               file=self.file, field="remote_id", value=remote_id)
        return remote_id, run.obj(self._read, record, ctx, "")

    def write(self, body: Mapping[str, Any], context: MappingContext | None = None) -> dict[str, Any]:
        """Map a unified request body (e.g. ``ProductCreate.model_dump()``) to the vendor's body.

        Decimals the vendor wants as numbers are :class:`gateway.jsonutil.JsonNumber`; encode
        the result with :func:`gateway.mapping.dumps_vendor_body`.

        Raises:
            MappingError: the file has no ``write``, or the body cannot be expressed (e.g. an
                enum value the vendor lacks, an id unknown at this connection).
        """
        if self._write is None:
            raise MappingError("this mapping has no write direction", file=self.file)
        if not isinstance(body, dict):
            raise MappingError("expected a request body object", file=self.file, field="write", value=body)
        ctx = replace(context or MappingContext(), scope=Scope(body))
        return _Run(self.file).obj(self._write, body, ctx, "")

    def __repr__(self) -> str:
        return f"MappingSpec({self.connector}/{self.entity})"


class _Compiler:
    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, where: str, reason: str) -> MappingError:
        return MappingError(reason, file=self.file, field=where)

    def path(self, where: str, text: str) -> KeyPath:
        try:
            return compile_path(text)
        except TransformError as exc:
            raise self.error(where, str(exc)) from exc

    def fields(self, where: str, raw: dict[str, Any]) -> dict[str, _Field]:
        return {name: self.field(f"{where}.{name}", spec) for name, spec in raw.items()}

    def field(self, where: str, raw: dict[str, Any]) -> _Field:
        spec = _Field(where=where)
        if "from" in raw:
            sources = raw["from"] if isinstance(raw["from"], list) else [raw["from"]]
            spec.paths = tuple(self.path(f"{where}.from", s) for s in sources)
        if "const" in raw:
            spec.const = raw["const"]
        spec.setting = raw.get("setting")
        if "default" in raw:
            spec.default = raw["default"]
        when = raw.get("when")
        if when is not None:
            conds = when if isinstance(when, list) else [when]
            spec.when = tuple(self.condition(f"{where}.when", c) for c in conds)
        spec.otherwise = raw.get("otherwise")
        if "each" in raw:
            spec.each = self.field(f"{where}.each", raw["each"])
        if "fields" in raw:
            spec.fields = self.fields(f"{where}.fields", raw["fields"])
        if "list" in raw:
            spec.items = [self.field(f"{where}.list[{i}]", item) for i, item in enumerate(raw["list"])]
        spec.omit_if_null = bool(raw.get("omit_if_null", False))
        if "transform" in raw:
            spec.transform, spec.args = self.transform(where, raw["transform"], raw.get("args") or {})
        elif "args" in raw:
            raise self.error(f"{where}.args", "args without a transform")
        return spec

    def condition(self, where: str, raw: Any) -> _Condition:
        if isinstance(raw, str):
            return _Condition(self.path(where, raw), None)
        values = raw.get("in", [raw["equals"]] if "equals" in raw else None)
        return _Condition(self.path(f"{where}.path", raw["path"]), None if values is None else tuple(values))

    def transform(self, where: str, name: str, args: dict[str, Any]) -> tuple[Transform, dict[str, Any]]:
        transform = TRANSFORMS.get(name)
        if transform is None:
            raise self.error(f"{where}.transform", f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}")
        if transform.args is not None:
            unknown = sorted(map(str, set(args) - transform.args))
            if unknown:
                raise self.error(f"{where}.args", f"{name} does not take {', '.join(unknown)}; it takes {sorted(transform.args) or 'no args'}")
        missing = sorted(transform.required - set(args))
        if missing:
            raise self.error(f"{where}.args", f"{name} needs {', '.join(missing)}")
        if transform.check is not None:
            try:
                transform.check(args)
            except TransformError as exc:
                raise self.error(f"{where}.args", f"{name}: {exc}") from exc
        return transform, args


def compile_mapping(document: Any, file: str = "<mapping>") -> MappingSpec:
    """Validate a parsed mapping document against ``schemas/mapping.schema.json`` and compile it.

    Raises:
        MappingError: naming ``file`` and the location (``read.fields.price.transform``) of the
            first problem: schema violation, unknown transform, bad args, bad path.
    """
    error = best_match(_validator().iter_errors(document))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise MappingError(f"does not follow mapping.schema.json: {error.message}", file=file, field=where)
    compiler = _Compiler(file)
    read = document.get("read")
    write = document.get("write")
    return MappingSpec(
        connector=document["connector"],
        entity=document["entity"],
        file=file,
        remote_id=compiler.field("read.remote_id", read["remote_id"]) if read else None,
        read_fields=compiler.fields("read.fields", read["fields"]) if read else None,
        write_fields=compiler.fields("write.fields", write["fields"]) if write else None,
        digest=hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest(),
    )


def load_mapping(path: str | Path) -> MappingSpec:
    """Load ``mappings/<connector>/<entity>.yaml`` (YAML or JSON) and compile it once.

    When the file sits in a folder named after a connector, its ``connector`` and ``entity``
    must match the folder and file names.

    Raises:
        MappingError: unreadable file, YAML syntax error, or an invalid mapping (see
            :func:`compile_mapping`); the message names the file and the location.
    """
    path = Path(path)
    file = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"cannot read: {exc.strerror or exc}", file=file) from exc
    except yaml.YAMLError as exc:
        raise MappingError(f"not valid YAML: {exc}", file=file) from exc
    spec = compile_mapping(document, file)
    if path.parent.parent.resolve() == MAPPINGS_DIR.resolve():
        if spec.connector != path.parent.name:
            raise MappingError(f"connector {spec.connector!r} does not match the folder {path.parent.name!r}", file=file, field="connector")
        if spec.entity != path.stem:
            raise MappingError(f"entity {spec.entity!r} does not match the file name {path.stem!r}", file=file, field="entity")
    return spec


def load_connector_mappings(connector: str, root: str | Path = MAPPINGS_DIR) -> dict[str, MappingSpec]:
    """Load every ``<root>/<connector>/*.yaml`` into ``{entity: MappingSpec}``.

    Raises:
        MappingError: the folder does not exist or a file is invalid.
    """
    folder = Path(root) / connector
    if not folder.is_dir():
        raise MappingError(f"no mappings folder for connector {connector!r}", file=str(folder))
    specs = (load_mapping(p) for p in sorted(folder.glob("*.yaml")))
    return {spec.entity: spec for spec in specs}
