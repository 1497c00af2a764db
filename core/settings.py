"""One immutable settings object, built from the environment in ``main()`` and passed down.

Every variable is prefixed ``INTAKE_``; every duration carries its unit in the name. Nothing
reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import broker
from core.verification import Check

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
    # One RabbitMQ node, or several nodes of one cluster separated by commas (core/broker.py).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/intake"
    database_url: str = "postgresql://intake:intake@127.0.0.1:5432/intake"
    # Master secret, version 1; per-purpose keys (NIK HMAC, encryption, access tokens, message
    # sealing, photos) are derived from it with HKDF, see core.keys. The look-up and signing
    # keys stay on it for ever, so it is never removed.
    secret_key: str = field(default=DEV_SECRET_KEY, repr=False)
    # Later master secrets after a rotation, comma-separated VERSION:SECRET (versions 2..255),
    # e.g. "2:...". New ciphertexts are made under secret_key_current (0: the newest listed);
    # every listed version is read. See docs/privacy.md.
    secret_keys: str = field(default="", repr=False)
    secret_key_current: int = 0
    log_level: str = "INFO"

    # Edge.
    edge_host: str = "127.0.0.1"
    edge_port: int = 8080
    # The listen backlog: connections the kernel completes before the edge accepts them. At a
    # wave's opening thousands of browsers connect at once; with aiohttp's default of 128 the
    # kernel drops the SYNs beyond it and the browsers retry after 1, 3, 7 s (capped by
    # net.core.somaxconn).
    edge_backlog: int = 4096
    edge_max_body_bytes: int = 8 * 1024
    edge_publish_timeout_s: float = 2.0
    edge_max_pending: int = 20_000
    edge_batch_max_items: int = 500
    # Two batches in flight: one being confirmed while the next fills. More in flight means
    # smaller batches at moderate load, each paying the per-message publish cost (measured at
    # 1,333/s: p99 12 ms with 2, 27 ms with 4, same throughput).
    edge_max_inflight_batches: int = 2
    # Retry-After of a 503 when there is no backlog to measure (intake.publisher, retry_after_s);
    # a measured one (queue full, over edge_max_pending) is at most edge_retry_after_max_s.
    edge_retry_after_s: int = 2
    edge_retry_after_max_s: int = 60
    # While the persist queue is full, one registration is let through this often to find out
    # whether it has room again; every other one is shed without a publish.
    edge_full_probe_interval_s: float = 0.2
    # Admission by time (intake.admission): every registration is answered within
    # edge_deadline_s of being read, 202 or 503. A request that waited for the CPU longer than
    # half the deadline is shed; once the edge's loop has been late beyond edge_queue_target_s
    # for a whole edge_queue_interval_s (a standing queue), one that waited longer than the
    # target is shed too.
    edge_deadline_s: float = 1.0
    edge_queue_target_s: float = 0.02
    edge_queue_interval_s: float = 0.1
    edge_shutdown_timeout_s: float = 10.0
    # Where each edge writes its status file (edge-<pid>.json: whether it sheds) and where
    # intake supervise reads them, to hold verification back while an edge sheds. Empty: none.
    edge_status_dir: str = ""
    edge_reconnect_max_delay_s: float = 2.0
    edge_access_log: bool = True
    # Simple registrations accepted straight from the connection, without aiohttp's request
    # machinery (intake/express.py); false: every request through aiohttp.
    edge_express: bool = True
    # A registrant's place in line (intake/line.py): each lane's drain rate is measured over
    # its handlings of the last line_window_s (at most 2,000 of them) and cached in each edge
    # process for line_rate_cache_s; a lane that handled nothing for line_stall_s while an item
    # waited in its line is stopped, and gets no estimate.
    line_window_s: float = 60.0
    line_rate_cache_s: float = 1.0
    line_stall_s: float = 10.0

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
    # Flow control of each lane (workers.flow): an adaptive concurrency limit per worker
    # process, starting here and never above lane_prefetch; 0 = adaptive, N > 0 = a fixed
    # limit of N calls in flight (for comparison; not recommended).
    lane_limit_initial: int = 8
    lane_limit_fixed: int = 0
    # How often the limit re-measures the service's no-load latency (one window at half).
    lane_limit_probe_interval_s: float = 10.0
    # Circuit breaker: opens when this share of the last 20 calls failed (at least 10 known),
    # stays open breaker_open_s (doubling up to breaker_open_max_s while probes fail), closes
    # after breaker_probes successful probes in a row.
    breaker_failure_rate: float = 0.5
    breaker_open_s: float = 5.0
    breaker_open_max_s: float = 60.0
    breaker_probes: int = 3
    # How often each lane worker reads its operator controls (core.controls: a forced breaker,
    # a maintenance window); a failed read keeps the last state known.
    lane_control_poll_s: float = 1.0
    # A task held in hand while its lane is forced open (by an operator, or a maintenance
    # window) is published again to its queue and acknowledged after this long: a long window
    # then holds nothing unacknowledged (RabbitMQ closes a channel that holds a delivery
    # longer than its consumer_timeout, 30 minutes by default).
    lane_control_hand_back_s: float = 60.0
    # Fixed rate caps agreed with a service, calls per second per lane across all its
    # workers, e.g. "dukcapil=200,dtks=50". Empty: none.
    lane_rate_caps: str = ""
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

    # Limits per person and per client (core/limits.py, intake/limits.py), over fixed windows,
    # shared by every edge in PostgreSQL; 0 turns a limit off. Per NIK (its keyed HMAC):
    # registrations and resends, across all of its registrations. Per client address: requests
    # to the status, OTP, resend, photo, test and wave routes (generous: many registrants share
    # a carrier's NAT address). An answer of 5xx (a fault of ours, a ministry's or a gateway's)
    # is never counted.
    limit_nik_attempts: int = 10
    limit_nik_window_s: int = 3600
    limit_client_requests: int = 300
    limit_client_window_s: int = 60
    # Addresses (or CIDR networks) of the proxies whose X-Forwarded-For is believed, separated
    # by commas; the client is the last address in the chain that is not one of them.
    limit_trusted_proxies: str = ""
    # How often each edge reads the NIKs over their limit (registrations are counted by the
    # persist worker, per batch: the accept path adds no database round trip).
    limit_refresh_s: float = 1.0

    # Waves: the selection at a close and the outcome notifications.
    # After a wave closed and intake.joins is drained, the selector waits this long more (for
    # edges' clocks and a join in a worker's hands) before it selects.
    wave_close_grace_s: float = 3.0
    notify_batch_max: int = 100
    # A notification taken for sending is someone's for this long; past it (its sender died)
    # it is sent again under the same idempotency key.
    notify_lease_s: float = 60.0
    # First wait after a failed send; doubles per attempt, jittered, at most notify_retry_max_s.
    notify_retry_base_s: float = 5.0
    notify_retry_max_s: float = 600.0
    notify_mail_from: str = "info@prakerja.example"

    # Retention (core/retention.py, `intake retention run`, docs/privacy.md): how long personal
    # data is kept once its purpose ended, in days. Rejected: since the decision (or storing, for
    # a duplicate). Abandoned: a registration still waiting for its registrant (an email link, a
    # code, a photo) with nothing changed for this long (far past a link's or code's life).
    # Unselected: verified and never selected, since the later of its verification and the close
    # of the last wave it joined. Selected: since the selection that granted the benefit (the
    # programme's own retention period).
    retention_rejected_days: int = 30
    retention_abandoned_days: int = 30
    retention_unselected_days: int = 365
    retention_selected_days: int = 1825
    # Registrations erased per transaction.
    retention_batch: int = 500

    # Photo check. Blobs are content-addressed files (core.blobs); a relative path is resolved
    # from the working directory (for development; mount a volume in production).
    blob_dir: str = ".intake-blobs"
    photo_max_bytes: int = 5 * 1024 * 1024
    # Processes analysing photos in each photo lane worker (about 10 photos/s per process).
    photo_workers: int = 1

    # The intake test and joining a wave (core/questions.py, intake/participation_routes.py,
    # workers/participation.py). The bank: a JSON file, empty = the bundled one. An attempt
    # draws test_questions questions and is timed from the moment they are served.
    test_bank: str = ""
    test_questions: int = 19
    test_time_limit_s: float = 1500.0
    # Length limit of intake.tests and of intake.joins (reject-publish: the edge answers 503).
    participation_queue_max_length: int = 1_000_000
    # Unacknowledged messages per participation worker (one transaction each).
    participation_prefetch: int = 64

    # Persist worker.
    # Unacknowledged messages per worker. It must cover about two batches of messages, or the
    # next batch cannot arrive while one is being written (the acks free the window): with 10
    # registrations per message and 2,000-row batches, 400. Memory bound: prefetch times
    # edge_batch_max_items times ~0.5 KB.
    persist_prefetch: int = 400
    persist_batch_max_rows: int = 2_000
    persist_batch_linger_s: float = 0.05
    # Whether the persist worker applies the migrations at start (local stacks, the demo); where
    # they are applied apart (intake migrate, the Kubernetes migration Job: k8s/migrate.yaml) it
    # waits until they are.
    persist_migrate: bool = True

    # The worker fleet on one machine (intake supervise, workers.supervisor): per kind between
    # min and max processes, so that a backlog drains within supervise_target_drain_s.
    # supervise_worker_limits overrides the bounds per kind, e.g. "persist=1-2,photo=1-2";
    # the dispatcher is always exactly one.
    supervise_min_workers: int = 1
    supervise_max_workers: int = 4
    supervise_worker_limits: str = ""
    supervise_target_drain_s: float = 60.0
    supervise_interval_s: float = 2.0
    # A kind loses one worker once its queue has needed fewer for this long, and no faster.
    supervise_cooldown_s: float = 30.0
    # A worker asked to stop (SIGTERM) finishes what it holds; it is killed after this long.
    supervise_stop_grace_s: float = 60.0
    # PostgreSQL connections the supervised workers' pools may open together at most: scaling
    # up stops there (PostgreSQL allows 100 by default; the edge and tools need some too).
    supervise_db_connections: int = 80
    # The nice value of the dispatcher and the verification lanes (not the persist worker): on
    # a machine they share with the edge, deferrable verification yields the CPU to taking
    # registrations (0 = the supervisor's own priority).
    supervise_verification_nice: int = 10
    # Set by intake supervise for each worker it starts; empty = no status file.
    worker_status_file: str = ""

    # Prometheus metrics (core.metrics, core.metrics_http): GET /metrics on this address, never
    # on the edge's public port. 0 = the process serves no metrics (intake supervise sets it
    # for its workers and serves theirs).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    # The operators' admin API (admin/, `intake admin`): its own listener, never the edge's
    # public port. Credentials: comma-separated NAME:SHA256 entries, each the name an action is
    # audited under and the hex SHA-256 of its bearer token (`intake admin token NAME` makes
    # one); empty = every request refused.
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_tokens: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``INTAKE_*`` variables, converting each to its field's type.
        ``INTAKE_<NAME>_FILE`` names a file that holds the value instead (its content, one
        trailing newline dropped): how an orchestrator hands over a secret without putting
        it in the environment, e.g. a Kubernetes Secret mounted as files."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = "INTAKE_" + f.name.upper()
            raw = env.get(name)
            path = env.get(name + "_FILE")
            if path is not None:
                if raw is not None:
                    raise SettingsError(f"{name} and {name}_FILE are both set: set one")
                raw = _read_setting_file(name, path)
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
        secrets = self.master_secrets()  # raises on a malformed INTAKE_SECRET_KEYS
        if self.secret_key_current and self.secret_key_current not in secrets:
            raise SettingsError("INTAKE_SECRET_KEY_CURRENT must be a listed key version (or 0)")
        try:
            broker.nodes(self.amqp_url)
        except ValueError as exc:
            raise SettingsError(f"INTAKE_AMQP_URL: {exc}") from None
        if self.edge_batch_max_items < 1 or self.edge_max_inflight_batches < 1:
            raise SettingsError("edge batch sizes must be positive")
        if self.edge_retry_after_max_s < 1 or not self.edge_full_probe_interval_s > 0:
            raise SettingsError(
                "INTAKE_EDGE_RETRY_AFTER_MAX_S, INTAKE_EDGE_FULL_PROBE_INTERVAL_S must be positive"
            )
        if self.delivery_limit < 1:
            raise SettingsError("INTAKE_DELIVERY_LIMIT must be positive")
        if not 0 <= self.supervise_verification_nice <= 19:
            raise SettingsError("INTAKE_SUPERVISE_VERIFICATION_NICE must be in 0..19")
        if not 0 < self.edge_queue_target_s <= self.edge_queue_interval_s < self.edge_deadline_s:
            raise SettingsError(
                "need 0 < INTAKE_EDGE_QUEUE_TARGET_S <= INTAKE_EDGE_QUEUE_INTERVAL_S"
                " < INTAKE_EDGE_DEADLINE_S"
            )
        if not (self.line_window_s > 0 and self.line_rate_cache_s >= 0 and self.line_stall_s > 0):
            raise SettingsError(
                "INTAKE_LINE_WINDOW_S and INTAKE_LINE_STALL_S must be positive,"
                " INTAKE_LINE_RATE_CACHE_S at least 0"
            )
        if self.edge_backlog < 1:
            raise SettingsError("INTAKE_EDGE_BACKLOG must be positive")
        if self.lane_limit_initial < 1 or self.lane_limit_fixed < 0:
            raise SettingsError("INTAKE_LANE_LIMIT_INITIAL must be positive")
        if not 0 < self.breaker_failure_rate <= 1 or self.breaker_probes < 1:
            raise SettingsError("INTAKE_BREAKER_FAILURE_RATE must be in (0, 1]")
        if not 0 < self.lane_control_poll_s <= 60:
            raise SettingsError("INTAKE_LANE_CONTROL_POLL_S must be in (0, 60]")
        if not 0 < self.lane_control_hand_back_s <= 1200:
            raise SettingsError("INTAKE_LANE_CONTROL_HAND_BACK_S must be in (0, 1200]")
        self.rate_caps()  # raises on a malformed INTAKE_LANE_RATE_CAPS
        if not (
            0 <= self.supervise_min_workers <= self.supervise_max_workers
            and self.supervise_target_drain_s > 0
            and self.supervise_interval_s > 0
            and self.supervise_cooldown_s >= 0
            and self.supervise_stop_grace_s >= 0
        ):
            raise SettingsError(
                "INTAKE_SUPERVISE_*: need 0 <= MIN_WORKERS <= MAX_WORKERS, positive"
                " TARGET_DRAIN_S and INTERVAL_S, COOLDOWN_S and STOP_GRACE_S >= 0"
            )
        self.worker_limits()  # raises on a malformed INTAKE_SUPERVISE_WORKER_LIMITS
        if not 0 <= self.metrics_port <= 65_535:
            raise SettingsError("INTAKE_METRICS_PORT must be a port number (0: no metrics)")
        if self.admin_port == self.edge_port:
            raise SettingsError("INTAKE_ADMIN_PORT must not be the edge's public port")
        self.admin_credentials()  # raises on a malformed INTAKE_ADMIN_TOKENS
        if self.photo_max_bytes < 1 or self.photo_workers < 1:
            raise SettingsError("INTAKE_PHOTO_MAX_BYTES and INTAKE_PHOTO_WORKERS must be positive")
        if self.test_questions < 1 or not self.test_time_limit_s > 0:
            raise SettingsError(
                "INTAKE_TEST_QUESTIONS and INTAKE_TEST_TIME_LIMIT_S must be positive"
            )
        if (
            min(self.limit_nik_window_s, self.limit_client_window_s) < 1
            or min(self.limit_nik_attempts, self.limit_client_requests) < 0
        ):
            raise SettingsError(
                "INTAKE_LIMIT_NIK_WINDOW_S and INTAKE_LIMIT_CLIENT_WINDOW_S must be positive,"
                " INTAKE_LIMIT_NIK_ATTEMPTS and INTAKE_LIMIT_CLIENT_REQUESTS at least 0"
            )
        if not self.limit_refresh_s > 0:
            raise SettingsError("INTAKE_LIMIT_REFRESH_S must be positive")
        self.trusted_proxies()  # raises on a malformed INTAKE_LIMIT_TRUSTED_PROXIES
        if self.participation_prefetch < 1:
            raise SettingsError("INTAKE_PARTICIPATION_PREFETCH must be positive")
        if (
            min(
                self.retention_rejected_days,
                self.retention_abandoned_days,
                self.retention_unselected_days,
                self.retention_selected_days,
            )
            < 1
            or self.retention_batch < 1
        ):
            raise SettingsError("INTAKE_RETENTION_* must be positive")

    def master_secrets(self) -> dict[int, str]:
        """The master secrets by version: ``secret_key`` is 1, ``secret_keys`` adds the later
        ones (never echoed in an error: they are secrets)."""
        found = {1: self.secret_key}
        for item in filter(None, (part.strip() for part in self.secret_keys.split(","))):
            version, _, secret = item.partition(":")
            if not re.fullmatch(r"[0-9]{1,3}", version) or not 2 <= int(version) <= 255:
                raise SettingsError("INTAKE_SECRET_KEYS: entries are VERSION:SECRET, 2..255")
            if int(version) in found:
                raise SettingsError(f"INTAKE_SECRET_KEYS: version {int(version)} is listed twice")
            if len(secret) < 32:
                raise SettingsError("INTAKE_SECRET_KEYS: each secret needs 32+ characters")
            if self.env == "production" and secret == DEV_SECRET_KEY:
                raise SettingsError("INTAKE_SECRET_KEYS must not list the development key")
            found[int(version)] = secret
        return found

    def trusted_proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``limit_trusted_proxies`` parsed: the networks (an address is a /32 or /128)."""
        try:
            return tuple(
                ipaddress.ip_network(item, strict=False)
                for item in filter(None, (p.strip() for p in self.limit_trusted_proxies.split(",")))
            )
        except ValueError:
            raise SettingsError(
                "INTAKE_LIMIT_TRUSTED_PROXIES: addresses or CIDR networks, separated by commas"
            ) from None

    def admin_credentials(self) -> dict[str, bytes]:
        """``admin_tokens`` parsed: name → SHA-256 digest of its bearer token."""
        found: dict[str, bytes] = {}
        for item in filter(None, (part.strip() for part in self.admin_tokens.split(","))):
            name, _, digest = item.partition(":")
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) or not re.fullmatch(
                r"[0-9a-f]{64}", digest
            ):
                raise SettingsError("INTAKE_ADMIN_TOKENS: entries are NAME:<64 hex digits>")
            if name in found:
                raise SettingsError(f"INTAKE_ADMIN_TOKENS: {name} is listed twice")
            found[name] = bytes.fromhex(digest)
        return found

    def rate_caps(self) -> dict[str, float]:
        """``lane_rate_caps`` parsed: lane name → calls per second."""
        caps: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.lane_rate_caps.split(","))):
            lane, _, value = item.partition("=")
            try:
                rate = float(value)
            except ValueError:
                rate = 0.0
            if lane.strip() not in set(Check) or not rate > 0:
                raise SettingsError(f"INTAKE_LANE_RATE_CAPS: expected lane=calls_per_s: {item!r}")
            caps[lane.strip()] = rate
        return caps

    def worker_limits(self) -> dict[str, tuple[int, int]]:
        """``supervise_worker_limits`` parsed: worker kind → (min, max) processes."""
        limits: dict[str, tuple[int, int]] = {}
        for item in filter(
            None, (part.strip() for part in self.supervise_worker_limits.split(","))
        ):
            kind, _, bounds = item.partition("=")
            low, _, high = bounds.partition("-")
            try:
                pair = (int(low), int(high))
            except ValueError:
                pair = (-1, -1)
            if not kind.strip() or not 0 <= pair[0] <= pair[1]:
                raise SettingsError(
                    f"INTAKE_SUPERVISE_WORKER_LIMITS: expected kind=min-max: {item!r}"
                )
            limits[kind.strip()] = pair
        return limits

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


def _read_setting_file(name: str, path: str) -> str:
    """The value of ``name`` from the file at ``path`` (never echoed: it may be a secret)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE: cannot read {path}: {type(exc).__name__}") from None
    return text[:-1] if text.endswith("\n") else text


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
