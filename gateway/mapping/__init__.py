"""The mapping engine: declarative field translation between vendor JSON and the unified model.

Files ``mappings/<connector>/<entity>.yaml`` (format: ``schemas/mapping.schema.json``) are loaded
and compiled once with :func:`load_mapping`; :meth:`MappingSpec.read` maps a vendor record to
``(remote_id, unified body)`` and :meth:`MappingSpec.write` a unified request body to the
vendor's. Named transforms (decimal, minor units, thousandths, basis points, enum maps, dates,
id references, ...) live in one registry, :data:`TRANSFORMS`.
"""

from gateway.mapping.context import MappingContext, currency_exponent
from gateway.mapping.engine import MappingSpec, compile_mapping, load_connector_mappings, load_mapping
from gateway.mapping.errors import MappingError, TransformError
from gateway.mapping.transforms import TRANSFORMS, Transform
from gateway.mapping.vendor_json import dumps_vendor_body

__all__ = [
    "TRANSFORMS",
    "MappingContext",
    "MappingError",
    "MappingSpec",
    "Transform",
    "TransformError",
    "compile_mapping",
    "currency_exponent",
    "dumps_vendor_body",
    "load_connector_mappings",
    "load_mapping",
]
