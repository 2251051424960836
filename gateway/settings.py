"""Runtime settings, read from ``TILLGATE_*`` environment variables (or passed explicitly).

Every setting has a default that lets ``tillgate serve`` run with no other server: a SQLite
file in the working directory, no Redis, and a secret key file created on first use.
"""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway configuration.

    Attributes:
        database_url: SQLAlchemy URL; ``sqlite:///path`` or ``postgresql://user@host/db``. Async
            drivers (aiosqlite, psycopg) are chosen automatically.
        redis_url: ``redis://...`` for the arq job doorbell; ``None`` runs the in-process worker.
        secret_keys: comma-separated 32-byte url-safe base64 keys for credential encryption; the
            first encrypts, all decrypt (rotation). When empty, ``secret_key_file`` is used.
        secret_key_file: where a generated key is kept when ``secret_keys`` is empty.
        api_rate_limit: per-API-key limit on ``/v1`` in the ``limits`` notation (``"1200/minute"``).
        api_key_cache_seconds: how long a verified API key is trusted without a database read; a
            revocation reaches other processes within this time.
        idempotency_ttl_hours: how long ``Idempotency-Key`` responses are kept (at least 24).
        read_cache_size: SQLite read results kept in memory until the next commit (0: off).
        scheduler_interval_seconds: how often the embedded worker looks for due polls and sweeps.
        queue_name: the arq queue on Redis (scale-out mode).
        job_lease_seconds: how long a running job is its worker's; after that (the worker died)
            another worker may take it over.
        worker_max_jobs: jobs one ``tillgate worker`` process runs at once.
        webhook_retry_schedule: seconds before each retry of a failed outbound delivery
            (``TILLGATE_WEBHOOK_RETRY_SCHEDULE``, comma-separated); after the last one the delivery
            is ``failed``. Default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts in all).
        webhook_allow_private: deliver to loopback, private, link-local and other non-global
            addresses (``TILLGATE_WEBHOOK_ALLOW_PRIVATE``); off by default (SSRF guard).
        webhook_timeout_seconds: the whole time one delivery attempt may take.
        webhook_concurrency: endpoints one process delivers to at once (each in ``seq`` order).
        webhook_poll_seconds: how often a delivery worker looks for due deliveries when no
            doorbell rang (work queued by other processes, retries coming due).
        log_level: Python logging level name.
    """

    model_config = SettingsConfigDict(env_prefix="TILLGATE_", extra="ignore")

    database_url: str = "sqlite:///./tillgate.db"
    redis_url: str | None = None
    secret_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    secret_key_file: Path = Path("./tillgate.key")
    api_rate_limit: str = "6000/minute"
    api_key_cache_seconds: float = 5.0
    idempotency_ttl_hours: int = 24
    read_cache_size: int = Field(default=512, ge=0)
    scheduler_interval_seconds: float = Field(default=5.0, gt=0)
    queue_name: str = "tillgate:jobs"
    job_lease_seconds: float = Field(default=300.0, gt=0)
    worker_max_jobs: int = Field(default=10, ge=1)
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=32, ge=1, le=1000)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return [float(part) for part in value.split(",") if part.strip()]
            except ValueError as exc:
                raise ValueError("TILLGATE_WEBHOOK_RETRY_SCHEDULE is comma-separated seconds, e.g. 5,300,1800") from exc
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(step < 0 for step in value) or len(value) > 50:
            raise ValueError("the webhook retry schedule is at most 50 non-negative delays in seconds")
        return value

    @field_validator("idempotency_ttl_hours")
    @classmethod
    def _at_least_a_day(cls, value: int) -> int:
        if value < 24:
            raise ValueError("idempotency keys are kept at least 24 hours")
        return value

    def resolved_secret_keys(self) -> list[bytes]:
        """Return the raw 32-byte encryption keys, primary first.

        Falls back to ``secret_key_file``, creating it (mode 0600) with a fresh random key when
        neither the setting nor the file exists.

        Raises:
            ValueError: a configured key is not 32 bytes of url-safe base64.
        """
        encoded = list(self.secret_keys)
        if not encoded:
            path = self.secret_key_file
            if not path.exists():
                key = base64.urlsafe_b64encode(os.urandom(32)).decode()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(key + "\n")
            encoded = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        keys = []
        for item in encoded:
            try:
                raw = base64.urlsafe_b64decode(item + "=" * (-len(item) % 4))
            except ValueError as exc:
                raise ValueError("TILLGATE_SECRET_KEYS entries must be url-safe base64") from exc
            if len(raw) != 32:
                raise ValueError("TILLGATE_SECRET_KEYS entries must decode to 32 bytes")
            keys.append(raw)
        return keys


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings read from the environment (cached)."""
    return Settings()
