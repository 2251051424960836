"""Importers: load catalogs and sales history from files into a connection.

* :func:`import_products_csv` / :func:`load_demo_catalog` (:mod:`.products_csv`): a generic products CSV.
* :func:`import_online_retail` (:mod:`.online_retail`): the UCI Online Retail transaction format.

Each returns an :class:`ImportSummary` (:mod:`.summary`) that accounts for every data line; a file
that cannot be imported at all raises :class:`ImportFileError`.
"""

from gateway.importers.online_retail import import_online_retail
from gateway.importers.products_csv import import_products_csv, load_demo_catalog
from gateway.importers.summary import ImportFileError, ImportSummary, SkippedLine

__all__ = [
    "ImportFileError", "ImportSummary", "SkippedLine", "import_online_retail", "import_products_csv",
    "load_demo_catalog",
]
