"""One immutable settings object, built from the environment in ``main()`` and passed down.

Every variable is prefixed ``INTAKE_``; every duration carries its unit in the name. Nothing
reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A development key, public by construction. ``Settings.from_env`` refuses it when
# INTAKE_ENV=production so that a deployment cannot silently run with it.
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-0000000000000000"  # noqa: S105 - public on purpose


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of every process of the system. See the README's configuration table."""

    env: str = "development"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/intake"
    database_url: str = "postgresql://intake:intake@127.0.0.1:5432/intake"
    # Master secret; per-purpose keys (NIK HMAC, encryption, access tokens, message
    # sealing) are derived from it with HKDF, see core.keys.
    secret_key: str = field(default=DEV_SECRET_KEY, repr=False)
    log_level: str = "INFO"

    # Edge.
    edge_host: str = "127.0.0.1"
    edge_port: int = 8080
    edge_max_body_bytes: int = 8 * 1024
    edge_publish_timeout_s: float = 2.0
    edge_max_pending: int = 20_000
    edge_batch_max_items: int = 500
    # Two batches in flight: one being confirmed while the next fills. More in flight means
    # smaller batches at moderate load, each paying the per-message publish cost (measured at
    # 1,333/s: p99 12 ms with 2, 27 ms with 4, same throughput).
    edge_max_inflight_batches: int = 2
    edge_retry_after_s: int = 2
    edge_shutdown_timeout_s: float = 10.0
    edge_reconnect_max_delay_s: float = 2.0
    edge_access_log: bool = True

    # Queue topology.
    # Both bounds count: messages (a message holds a batch of registrations) and bytes
    # (roughly 400 bytes per registration, so 2 GiB is about five million registrations).
    persist_queue_max_length: int = 200_000
    persist_queue_max_bytes: int = 2 * 1024**3
    delivery_limit: int = 5

    # Verification lanes.
    lane_queue_max_length: int = 1_000_000
    lane_prefetch: int = 64
    # Database connections per lane worker process. Tasks in flight share them; keep
    # (processes x connections) well under PostgreSQL's max_connections (100 by default).
    lane_db_connections: int = 6
    lane_max_attempts: int = 8
    retry_base_delay_s: float = 1.0
    ministry_timeout_s: float = 5.0
    dispatch_batch_max: int = 500
    dukcapil_url: str = "http://127.0.0.1:8101"
    dapodik_url: str = "http://127.0.0.1:8102"
    dtks_url: str = "http://127.0.0.1:8103"
    sms_url: str = "http://127.0.0.1:8104"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    mail_from: str = "verifikasi@prakerja.example"
    # Where registrants reach the edge: the base of the links in verification emails.
    public_base_url: str = "http://127.0.0.1:8080"
    email_link_ttl_s: int = 48 * 3600
    otp_ttl_s: int = 300
    otp_max_attempts: int = 5
    # A registrant may ask for a new email link or OTP this often, and this many times.
    resend_cooldown_s: int = 60
    resend_max: int = 3

    # Photo check. Blobs are content-addressed files (core.blobs); a relative path is resolved
    # from the working directory (for development; mount a volume in production).
    blob_dir: str = ".intake-blobs"
    photo_max_bytes: int = 5 * 1024 * 1024
    # Processes analysing photos in each photo lane worker (about 10 photos/s per process).
    photo_workers: int = 1

    # Persist worker.
    # Unacknowledged messages per worker. It must cover about two batches of messages, or the
    # next batch cannot arrive while one is being written (the acks free the window): with 10
    # registrations per message and 2,000-row batches, 400. Memory bound: prefetch times
    # edge_batch_max_items times ~0.5 KB.
    persist_prefetch: int = 400
    persist_batch_max_rows: int = 2_000
    persist_batch_linger_s: float = 0.05

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``INTAKE_*`` variables, converting each to its field's type."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("INTAKE_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse configurations that are unsafe or cannot work."""
        if self.env == "production" and self.secret_key == DEV_SECRET_KEY:
            raise SettingsError("INTAKE_SECRET_KEY must be set in production")
        if len(self.secret_key) < 32:
            raise SettingsError("INTAKE_SECRET_KEY must be at least 32 characters")
        if self.edge_batch_max_items < 1 or self.edge_max_inflight_batches < 1:
            raise SettingsError("edge batch sizes must be positive")
        if self.delivery_limit < 1:
            raise SettingsError("INTAKE_DELIVERY_LIMIT must be positive")
        if self.photo_max_bytes < 1 or self.photo_workers < 1:
            raise SettingsError("INTAKE_PHOTO_MAX_BYTES and INTAKE_PHOTO_WORKERS must be positive")

    def to_env(self) -> dict[str, str]:
        """The ``INTAKE_*`` variables that reproduce these settings in another process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env["INTAKE_" + f.name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the demo use it)."""
        return dataclasses.replace(self, **changes)


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _convert(name: str, type_name: object, raw: str) -> object:
    try:
        if type_name in ("bool", bool):
            if raw.lower() not in _BOOLEANS:
                raise ValueError(raw)
            return _BOOLEANS[raw.lower()]
        if type_name in ("int", int):
            return int(raw.replace("_", ""))
        if type_name in ("float", float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"INTAKE_{name.upper()}: not a valid {type_name}: {raw!r}") from None
    return raw
