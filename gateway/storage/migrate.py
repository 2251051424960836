"""Schema migrations with Alembic, configured in code (no alembic.ini needed).

``tillgate migrate`` calls :func:`upgrade`; developers create a revision with
``python -m gateway.storage.migrate revision "message"`` after changing ``tables.py``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config for ``database_url`` pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate ``database_url`` to ``revision`` (default: the newest).

    Safe to call from inside a running event loop: Alembic's async env runs in its own thread.
    """
    error: list[BaseException] = []

    def run() -> None:
        try:
            command.upgrade(alembic_config(database_url), revision)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller thread
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]


if __name__ == "__main__":  # pragma: no cover - developer tool
    if len(sys.argv) >= 3 and sys.argv[1] == "revision":
        url = sys.argv[3] if len(sys.argv) > 3 else "sqlite:///./.alembic-autogen.db"
        upgrade(url)
        command.revision(alembic_config(url), message=sys.argv[2], autogenerate=True)
    else:
        print("usage: python -m gateway.storage.migrate revision MESSAGE [DATABASE_URL]")
