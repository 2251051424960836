"""Tillgate: an open-source unified integration gateway for point-of-sale systems.

The public surface is small: :func:`gateway.api.app.create_app` builds the ASGI app, the
``tillgate`` CLI (:mod:`gateway.cli`) runs it, and :mod:`gateway.sdk` is what connector
plugins build on.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
