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

Every field spec is compiled at load time into a closure that runs only the steps it has (a
plain ``from: price`` is one ``dict.get``); constants, defaults and ``otherwise`` values are
deep-copied per use only when they are lists or objects. A record that does not fit raises
:class:`MappingError` naming the file, the field path (``lines[1].unit_price``) and the value.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from gateway.mapping import transforms
from gateway.mapping.context import MappingContext, Scope
from gateway.mapping.errors import MappingError, TransformError
from gateway.mapping.paths import INDEX, MISSING, ROOT, compile_path, resolve_path
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


@dataclass
class _Field:
    """A parsed field spec (see the module docstring for the evaluation order); :func:`_build` compiles it."""

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


# --- compiled evaluation -------------------------------------------------------------------------
#
# Every field spec is compiled once into a closure ``fn(source, ctx) -> value`` that does only the
# steps the spec has. On the success path nothing else runs: no error location is built, nothing
# immutable is copied, the context is rebuilt only where a ``$root``/``$index`` reader needs it.
# A record that does not fit raises ``_Fail`` (reason and value); the ``fields`` / ``each`` /
# ``list`` closures it passes through record the field name or element index, and
# ``MappingSpec.read`` / ``write`` turn it into a ``MappingError`` naming the field path.

_Fn = Callable[[Any, MappingContext], Any]

_NO_VALUE: Any = object()

# Values a constant, default or otherwise may hand out as is (``copy.deepcopy`` returns them as is
# too); anything else is deep-copied per use, so a record never shares a list with the mapping.
_IMMUTABLE = frozenset({type(None), str, int, bool, float, Decimal})

# Transforms that never read ``context.scope``: their context need not carry the current ``each``
# element's ``$index``. Any other transform gets a per-element context (conservative)...
_SCOPE_FREE = frozenset({
    transforms.t_decimal, transforms.t_decimal_to_number, transforms.t_minor_units,
    transforms.t_to_minor_units, transforms.t_thousandths, transforms.t_to_thousandths,
    transforms.t_basis_points, transforms.t_to_basis_points, transforms.t_to_integer, transforms.t_sum,
    transforms.t_enum_map, transforms.t_bool, transforms.t_string_strip, transforms.t_lower,
    transforms.t_upper, transforms.t_id_string, transforms.t_id_ref, transforms.t_id_ref_list,
    transforms.t_remote_ref, transforms.t_date,
})
# ... except these, which read it only to answer ``$root``/``$index`` paths in their args.
_SCOPE_FOR_ARG_PATHS = frozenset({transforms.t_multiply, transforms.t_composite_id, transforms.t_translations})


class _Fail(Exception):
    """A record does not fit: ``reason`` and ``value``, plus the field path collected on the way up.

    ``parts`` is filled innermost first with ``(False, name)`` (a field of an object) and
    ``(True, i)`` (an element of an ``each`` or ``list``). A transform's ``TransformError`` is
    the ``__cause__``.
    """

    def __init__(self, reason: str, value: Any = _NO_VALUE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value
        self.parts: list[tuple[bool, Any]] = []

    def error(self, file: str, at: str) -> MappingError:
        """The :class:`MappingError` for ``file``, the field path starting at ``at``."""
        for is_index, part in reversed(self.parts):
            if is_index:
                at = f"{at}[{part}]"
            else:
                at = f"{at}.{part}" if at else part
        if self.value is _NO_VALUE:
            return MappingError(self.reason, file=file, field=at)
        return MappingError(self.reason, file=file, field=at, value=self.value)


def _copier(value: Any) -> Callable[[], Any] | None:
    """``None`` when ``value`` can be handed out as is, else a function returning a deep copy."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return None
    if kind is list and all(type(v) in _IMMUTABLE for v in value):
        return value.copy  # a flat list: the shallow copy is the deep copy
    if kind is dict and all(type(k) in _IMMUTABLE and type(v) in _IMMUTABLE for k, v in value.items()):
        return value.copy
    return functools.partial(copy.deepcopy, value)


def _is_scope_path(path: KeyPath) -> bool:
    return path[0] == ROOT or path[0] == INDEX


def _mentions_scope(args: Any) -> bool:
    """Whether ``args`` holds a string that could be a ``$root``/``$index`` path."""
    if isinstance(args, str):
        return args.startswith("$")
    if isinstance(args, Mapping):
        return any(_mentions_scope(k) or _mentions_scope(v) for k, v in args.items())
    if isinstance(args, list | tuple):
        return any(_mentions_scope(v) for v in args)
    return False


def _needs_scope(spec: _Field) -> bool:
    """Whether evaluating ``spec`` may read ``context.scope`` (``$root``/``$index`` or a transform)."""
    if any(_is_scope_path(p) for p in spec.paths) or any(_is_scope_path(c.path) for c in spec.when):
        return True
    transform = spec.transform
    if transform is not None and transform.fn not in _SCOPE_FREE:
        if transform.fn not in _SCOPE_FOR_ARG_PATHS or _mentions_scope(spec.args):
            return True
    children: list[_Field] = []
    if spec.each is not None:
        children.append(spec.each)
    if spec.fields is not None:
        children.extend(spec.fields.values())
    if spec.items is not None:
        children.extend(spec.items)
    return any(_needs_scope(child) for child in children)


def _getter(path: KeyPath) -> _Fn:
    """``get(source, ctx)``: the value at ``path``, ``None`` when it is missing or ``null``."""
    if _is_scope_path(path) or any(type(token) is not str for token in path):
        def get_general(source: Any, ctx: MappingContext) -> Any:
            found = resolve_path(source, path, ctx.scope)
            return None if found is MISSING else found
        return get_general

    def slow(source: Any) -> Any:  # not a plain dict on the way: resolve_path's exact rules
        found = resolve_path(source, path)
        return None if found is MISSING else found

    if len(path) == 1:
        key = path[0]

        def get_key(source: Any, ctx: MappingContext) -> Any:
            return source.get(key) if type(source) is dict else slow(source)
        return get_key

    def get_keys(source: Any, ctx: MappingContext) -> Any:
        value = source
        for key in path:
            if type(value) is not dict:
                return None if value is None else slow(source)
            value = value.get(key)
        return value
    return get_keys


def _plain_key(path: KeyPath) -> str | None:
    """The key of a one-key path (``from: price``), else ``None``."""
    if len(path) == 1 and type(path[0]) is str and not _is_scope_path(path):
        return path[0]
    return None


def _condition(cond: _Condition) -> Callable[[Any, MappingContext], bool]:
    get = _getter(cond.path)
    values = cond.values
    if values is None:
        def present(source: Any, ctx: MappingContext) -> bool:
            return get(source, ctx) is not None
        return present

    def among(source: Any, ctx: MappingContext) -> bool:
        found = get(source, ctx)
        return found is not None and found in values
    return among


def _source(spec: _Field) -> tuple[_Fn, str | None, Any, Callable[[], Any] | None]:
    """Compile steps 2-3 (source, then ``default``) of ``spec``.

    Returns ``(src, key, dflt, fill)``: ``src(source, ctx)`` gives the value with the default
    applied; ``key`` is the plain key when the source is one (callers inline ``dict.get``), and
    then a missing value becomes ``dflt``, or ``fill()`` when ``fill`` is not ``None``.
    """
    has_default = spec.default is not MISSING
    dflt = spec.default if has_default else None
    fill = _copier(dflt)
    if spec.paths:
        getters = tuple(_getter(p) for p in spec.paths)
        key = _plain_key(spec.paths[0]) if len(spec.paths) == 1 else None
        if len(getters) == 1:
            get = getters[0]

            def src_path(source: Any, ctx: MappingContext) -> Any:
                value = get(source, ctx)
                if value is None:
                    return dflt if fill is None else fill()
                return value
            return src_path, key, dflt, fill

        def src_paths(source: Any, ctx: MappingContext) -> Any:
            for get in getters:
                value = get(source, ctx)
                if value is not None:  # the first non-null wins
                    return value
            return dflt if fill is None else fill()
        return src_paths, None, dflt, fill
    if spec.const is not MISSING:
        value = spec.const if spec.const is not None else dflt
        copy_value = _copier(value)
        if copy_value is not None:
            return (lambda source, ctx: copy_value()), None, dflt, fill
        return (lambda source, ctx: value), None, dflt, fill
    if spec.setting is not None:
        name = spec.setting

        def src_setting(source: Any, ctx: MappingContext) -> Any:
            value = ctx.settings.get(name, MISSING)
            if value is MISSING:
                if not has_default:
                    raise _Fail(f"connection setting {name!r} is not set")
                value = None
            if value is None:
                return dflt if fill is None else fill()
            return value
        return src_setting, None, dflt, fill

    def src_self(source: Any, ctx: MappingContext) -> Any:
        if source is None:
            return dflt if fill is None else fill()
        return source
    return src_self, None, dflt, fill


def _shape(spec: _Field) -> Callable[[Any, MappingContext], Any] | None:
    """Compile step 4 (``each``, ``fields`` or ``list``) of ``spec``, or ``None``."""
    if spec.each is not None:
        return _each(_build(spec.each), _needs_scope(spec.each))
    if spec.fields is not None:
        obj = _object(spec.fields)

        def fields(value: Any, ctx: MappingContext) -> Any:
            return None if value is None else obj(value, ctx)
        return fields
    if spec.items is not None:
        return _list(tuple(_build(item) for item in spec.items))
    return None


def _each(element: _Fn, scoped: bool) -> Callable[[Any, MappingContext], list[Any]]:
    """``each``: map every element (``null`` or missing: ``[]``); ``scoped`` gives each its ``$index``."""
    def each(value: Any, ctx: MappingContext) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _Fail("each: expected a list", value)
        out = []
        item_ctx = ctx
        if scoped:
            root = ctx.scope.root if ctx.scope is not None else value
            plain = type(ctx) is MappingContext  # else a subclass: keep its type and extra fields
            settings, resolve, remote = ctx.settings, ctx.resolve, ctx.remote
        for i, item in enumerate(value):
            if scoped:
                scope = Scope(root, i)
                if plain:
                    item_ctx = MappingContext(settings=settings, resolve=resolve, remote=remote, scope=scope)
                else:
                    item_ctx = replace(ctx, scope=scope)
            try:
                mapped = element(item, item_ctx)
            except _Fail as fail:
                fail.parts.append((True, i))
                raise
            if mapped is not None:
                out.append(mapped)
        return out
    return each


def _list(items: tuple[_Fn, ...]) -> Callable[[Any, MappingContext], list[Any]]:
    """``list``: every element spec evaluated on the value, ``null`` results dropped."""
    def list_(value: Any, ctx: MappingContext) -> list[Any]:
        out = []
        for i, item in enumerate(items):
            try:
                mapped = item(value, ctx)
            except _Fail as fail:
                fail.parts.append((True, i))
                raise
            if mapped is not None:
                out.append(mapped)
        return out
    return list_


def _static(spec: _Field) -> Any:
    """The value of a field that is always the same immutable constant, else ``_NO_VALUE``."""
    if (spec.const is MISSING or spec.paths or spec.when or spec.transform is not None
            or spec.each is not None or spec.fields is not None or spec.items is not None):
        return _NO_VALUE
    value = spec.const
    if value is None and spec.default is not MISSING:
        value = spec.default
    return value if type(value) in _IMMUTABLE else _NO_VALUE


def _object(fields: dict[str, _Field]) -> Callable[[Any, MappingContext], dict[str, Any]]:
    """``fields``: build an object; immutable constant fields are filled in from a template."""
    template: dict[str, Any] = {}
    dynamic: list[tuple[str, _Fn, bool]] = []
    for name, spec in fields.items():
        value = _static(spec)
        if value is _NO_VALUE:
            template[name] = None  # placeholder: keeps the field order
            dynamic.append((name, _build(spec), spec.omit_if_null))
        elif value is not None or not spec.omit_if_null:
            template[name] = value
    steps = tuple(dynamic)

    def obj_template(source: Any, ctx: MappingContext) -> dict[str, Any]:
        if not isinstance(source, dict):
            raise _Fail("fields: expected an object", source)
        out = template.copy()
        for name, fn, omit_if_null in steps:
            try:
                value = fn(source, ctx)
            except _Fail as fail:
                fail.parts.append((False, name))
                raise
            if value is None and omit_if_null:
                del out[name]
            else:
                out[name] = value
        return out
    return obj_template


def _transformed(transform: Transform, args: Mapping[str, Any], src: _Fn, key: str | None, dflt: Any,
                 fill: Callable[[], Any] | None) -> _Fn:
    """Steps 2-5 of a field without a shape: the source (see :func:`_source`), then ``transform``."""
    fn, nulls, label = transform.fn, transform.nulls, transform.name

    if key is not None and fill is None:  # `from: price` (the usual case): inline the dict lookup
        def run_key(source: Any, ctx: MappingContext) -> Any:
            if type(source) is dict:
                value = source.get(key)
                if value is None:
                    value = dflt
            else:
                value = src(source, ctx)
            if value is None and not nulls:
                return None
            try:
                return fn(value, args, ctx)
            except TransformError as exc:
                raise _Fail(f"{label}: {exc}", value) from exc
        return run_key

    def run(source: Any, ctx: MappingContext) -> Any:
        value = src(source, ctx)
        if value is None and not nulls:
            return None
        try:
            return fn(value, args, ctx)
        except TransformError as exc:
            raise _Fail(f"{label}: {exc}", value) from exc
    return run


def _build(spec: _Field) -> _Fn:
    """Compile a field spec into ``fn(source, ctx) -> value`` (raises ``_Fail``)."""
    src, key, dflt, fill = _source(spec)
    shape = _shape(spec)
    transform = spec.transform
    if shape is None and transform is None:
        if key is not None and fill is None:
            def run_key(source: Any, ctx: MappingContext) -> Any:
                if type(source) is dict:
                    value = source.get(key)
                    return dflt if value is None else value
                return src(source, ctx)
            fn = run_key
        else:
            fn = src
    elif shape is None:
        fn = _transformed(transform, spec.args, src, key, dflt, fill)
    else:
        tfn = transform.fn if transform is not None else None
        args = spec.args
        nulls = transform is not None and transform.nulls
        label = transform.name if transform is not None else ""

        def run_shaped(source: Any, ctx: MappingContext) -> Any:
            value = shape(src(source, ctx), ctx)
            if tfn is None or (value is None and not nulls):
                return value
            try:
                return tfn(value, args, ctx)
            except TransformError as exc:
                raise _Fail(f"{label}: {exc}", value) from exc
        fn = run_shaped
    if spec.when:
        fn = _guarded(spec, fn)
    return fn


def _guarded(spec: _Field, inner: _Fn) -> _Fn:
    """Step 1: ``when`` conditions in front of ``inner``; when one fails the field is ``otherwise``."""
    conditions = tuple(_condition(c) for c in spec.when)
    otherwise = spec.otherwise
    fill = _copier(otherwise)
    if len(conditions) == 1:
        holds = conditions[0]

        def when_one(source: Any, ctx: MappingContext) -> Any:
            if holds(source, ctx):
                return inner(source, ctx)
            return otherwise if fill is None else fill()
        return when_one

    def when_all(source: Any, ctx: MappingContext) -> Any:
        for holds in conditions:
            if not holds(source, ctx):
                return otherwise if fill is None else fill()
        return inner(source, ctx)
    return when_all


def _context(context: MappingContext | None, root: Any, scoped: bool) -> MappingContext:
    """The context a read or write runs with: ``scope`` set to ``root`` when anything reads it."""
    context = context or MappingContext()
    if not scoped:
        return context
    if type(context) is MappingContext:
        return MappingContext(settings=context.settings, resolve=context.resolve, remote=context.remote,
                              scope=Scope(root))
    return replace(context, scope=Scope(root))


class MappingSpec:
    """A compiled mapping file for one connector and entity.

    Built by :func:`compile_mapping`, which also compiles every field spec into a closure once,
    so mapping a record runs only the steps its fields have.

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
        self._remote_id_fn = _build(remote_id) if remote_id is not None else None
        self._read_fn = _object(read_fields) if read_fields is not None else None
        self._write_fn = _object(write_fields) if write_fields is not None else None
        read_specs = [*(read_fields or {}).values(), *([remote_id] if remote_id is not None else [])]
        self._read_scoped = any(_needs_scope(s) for s in read_specs)
        self._write_scoped = any(_needs_scope(s) for s in (write_fields or {}).values())

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
        if self._read_fn is None or self._remote_id_fn is None:
            raise MappingError("this mapping has no read direction", file=self.file)
        ctx = _context(context, record, self._read_scoped)
        if not isinstance(record, dict):
            raise MappingError("expected a vendor record object", file=self.file, field="read", value=record)
        try:
            remote_id = self._remote_id_fn(record, ctx)
        except _Fail as fail:
            raise fail.error(self.file, "remote_id") from fail.__cause__
        if not isinstance(remote_id, str) or not remote_id:
            raise MappingError("remote_id must map to a non-empty string (use transform: id_string)",
                               file=self.file, field="remote_id", value=remote_id)
        try:
            return remote_id, self._read_fn(record, ctx)
        except _Fail as fail:
            raise fail.error(self.file, "") from fail.__cause__

    def write(self, body: Mapping[str, Any], context: MappingContext | None = None) -> dict[str, Any]:
        """Map a unified request body (e.g. ``ProductCreate.model_dump()``) to the vendor's body.

        Decimals the vendor wants as numbers are :class:`gateway.jsonutil.JsonNumber`; encode
        the result with :func:`gateway.mapping.dumps_vendor_body`.

        Raises:
            MappingError: the file has no ``write``, or the body cannot be expressed (e.g. an
                enum value the vendor lacks, an id unknown at this connection).
        """
        if self._write_fn is None:
            raise MappingError("this mapping has no write direction", file=self.file)
        if not isinstance(body, dict):
            raise MappingError("expected a request body object", file=self.file, field="write", value=body)
        ctx = _context(context, body, self._write_scoped)
        try:
            return self._write_fn(body, ctx)
        except _Fail as fail:
            raise fail.error(self.file, "") from fail.__cause__

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
