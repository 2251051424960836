"""The HTTP API: thin Starlette routes over :mod:`gateway.services`."""
