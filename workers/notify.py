"""``intake worker notify``: each joiner of a closed wave gets its outcome, once by email and
once by SMS.

The selection writes two ``notifications`` rows per joiner in its transaction (the outbox).
A round takes due rows (``FOR UPDATE SKIP LOCKED``, ``INTAKE_NOTIFY_BATCH_MAX`` at a time, so
several notifiers share the work) and commits the *intent* before anything leaves: ``state =
'sending'``, ``attempts + 1``, ``next_at = now() + INTAKE_NOTIFY_LEASE_S``. Then it sends and
marks each row ``sent``. A failed send puts its row back to ``pending`` with an exponential,
jittered backoff in ``next_at``.

**Exactly once, as the registrant sees it.** A notifier killed after a send and before its mark
leaves the row ``sending``; once the lease has passed, the row is due again and is sent again,
under the same idempotency key: the email with a ``Message-ID`` and the SMS with an
``Idempotency-Key`` header, both derived from (wave, registration, channel). A mailbox keeps one
message per ``Message-ID`` (Gmail does) and the gateway answers a repeated key like the first
without sending, so the person gets each message once. This differs from the verification
secrets (:mod:`verifiers.contact`, at most once): a second outcome message carries nothing new,
so sending again is safe, and a lost one must not stay lost.

Each channel's sends pass a gate like a lane's (:mod:`workers.flow`: circuit breaker and
adaptive concurrency limit), so a slow mail server or gateway is not hammered; its failures
trip the breaker, and the rows wait in PostgreSQL meanwhile. The texts are in Bahasa Indonesia
with an English line; no personal data is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

import aiohttp
import asyncpg

from core import database, metrics, metrics_http
from core.checks import load_subject
from core.health import Health
from core.keys import Keyring
from core.settings import Settings
from core.verification import Failure, Retry, Subject
from core.waves import WIB, Waves, wave_from_row
from verifiers.contact import NotSent
from verifiers.email import send_mail
from verifiers.ministry import post_json
from workers import flow
from workers.rounds import run_rounds

log = logging.getLogger(__name__)

POLL_S = 1.0
PENDING_EVERY_S = 5.0  # how often the pending gauge is counted again
CHANNELS = ("email", "sms")
EMAIL_SUBJECT = "Hasil seleksi Kartu Prakerja"
MESSAGE_ID_DOMAIN = "notify.prakerja.example"

_TAKE_SQL = """
WITH due AS (
    SELECT wave_id, registration_id, channel FROM notifications
    WHERE state <> 'sent' AND next_at <= now()
    ORDER BY next_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications n
SET state = 'sending', attempts = n.attempts + 1, next_at = now() + make_interval(secs => $2)
FROM due
WHERE (n.wave_id, n.registration_id, n.channel) = (due.wave_id, due.registration_id, due.channel)
RETURNING n.wave_id, n.registration_id, n.channel, n.outcome, n.attempts
"""
_SENT_SQL = """
UPDATE notifications SET state = 'sent', sent_at = now()
WHERE wave_id = $1 AND registration_id = $2 AND channel = $3 AND state <> 'sent'
"""
_FAILED_SQL = """
UPDATE notifications SET state = 'pending', next_at = now() + make_interval(secs => $4)
WHERE wave_id = $1 AND registration_id = $2 AND channel = $3 AND state = 'sending'
"""
_PENDING_SQL = "SELECT channel, count(*) FROM notifications WHERE state <> 'sent' GROUP BY 1"
_SIGNALS = {
    None: flow.Signal.OK,
    Failure.OVERLOAD: flow.Signal.OVERLOAD,
    Failure.UNREACHABLE: flow.Signal.FAILURE,
    Failure.BROKEN: flow.Signal.FAILURE,
    Failure.LOCAL: flow.Signal.NEUTRAL,
}


@dataclass(frozen=True, slots=True)
class Due:
    """One notification taken for sending."""

    wave_id: int
    registration_id: uuid.UUID
    channel: str
    outcome: str
    attempts: int


def idempotency_key(wave_id: int, registration_id: uuid.UUID, channel: str) -> str:
    """The key of one notification, the same at every attempt: it names nobody."""
    return hashlib.sha256(f"outcome:{wave_id}:{registration_id}:{channel}".encode()).hexdigest()


def message_id(wave_id: int, registration_id: uuid.UUID) -> str:
    """The email's fixed ``Message-ID``: a mailbox keeps one message per id."""
    return f"<{idempotency_key(wave_id, registration_id, 'email')[:40]}@{MESSAGE_ID_DOMAIN}>"


@dataclass(frozen=True, slots=True)
class WaveInfo:
    """What a message says about the wave: its name, and the next wave's opening if any."""

    name: str
    next_opens_at: dt.datetime | None


def texts(outcome: str, wave: WaveInfo) -> tuple[str, str]:
    """The message of ``outcome``: (email body, SMS text). Bahasa Indonesia, then English."""
    name = wave.name
    if outcome == "selected":
        indonesian = (
            f"Selamat! Anda terpilih sebagai peserta Kartu Prakerja {name}. Langkah berikutnya:"
            " masuk ke akun Anda, sambungkan nomor rekening atau dompet digital, lalu pilih"
            " pelatihan pertama Anda."
        )
        english = (
            f"Congratulations: you were selected for Kartu Prakerja {name}. Next: sign in,"
            " link your bank account or e-wallet, and choose your first training."
        )
    elif outcome == "not_selected":
        if wave.next_opens_at is not None:
            at = wave.next_opens_at.astimezone(WIB).strftime("%d-%m-%Y %H:%M WIB")
            next_id, next_en = f"Gelombang berikutnya dibuka {at}.", f"The next wave opens {at}."
        else:
            next_id = "Gelombang berikutnya akan diumumkan."
            next_en = "The next wave will be announced."
        indonesian = (
            f"Anda belum terpilih di Kartu Prakerja {name}. Anda dapat bergabung kembali di"
            f" gelombang berikutnya tanpa mendaftar ulang. {next_id}"
        )
        english = f"You were not selected in {name}; you may join the next wave. {next_en}"
    else:
        indonesian = (
            f"Anda tidak memenuhi syarat Kartu Prakerja {name}: pendaftaran belum terverifikasi,"
            " usia di luar batas gelombang, status penerima bantuan sosial (DTKS) yang tidak"
            " diikutsertakan, atau Anda sudah pernah menerima manfaat Kartu Prakerja."
        )
        english = (
            f"You were not eligible for {name} (registration not verified, age, social"
            " assistance status, or the benefit already received)."
        )
    return f"{indonesian}\n\n{english}\n", f"Prakerja: {indonesian} / EN: {english}"


def backoff_s(settings: Settings, attempts: int) -> float:
    """The wait after a failed send: doubling per attempt, full jitter, capped."""
    ceiling = min(settings.notify_retry_max_s, settings.notify_retry_base_s * 2 ** (attempts - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


def build_gate(settings: Settings, channel: str) -> flow.LaneGate:
    """The channel's gate: breaker and adaptive limit, as a lane's (no rate cap)."""
    return flow.LaneGate(
        flow.AdaptiveLimit(
            flow.LimitConfig(
                initial=min(float(settings.lane_limit_initial), float(settings.lane_prefetch)),
                max_limit=float(settings.lane_prefetch),
                probe_interval_s=settings.lane_limit_probe_interval_s,
            )
        ),
        flow.CircuitBreaker(
            flow.BreakerConfig(
                failure_rate=settings.breaker_failure_rate,
                open_s=settings.breaker_open_s,
                open_max_s=settings.breaker_open_max_s,
                probes=settings.breaker_probes,
            )
        ),
        lane=f"notify_{channel}",
    )


Send = Callable[[Due, Subject, WaveInfo], Awaitable[None]]


class Notifier:
    """Sends due notifications until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        http: aiohttp.ClientSession,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._http = http
        self._keyring = Keyring.from_secret(settings.secret_key)
        self._stopping = asyncio.Event()
        self._gates = {channel: build_gate(settings, channel) for channel in CHANNELS}
        self._senders: dict[str, Send] = {"email": self._send_email, "sms": self._send_sms}
        self._waves: dict[int, WaveInfo] = {}
        self._counted_at = 0.0
        self.health = health if health is not None else Health()
        self.sent = 0
        self.failed = 0
        metrics.init_notify()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await run_rounds(
            "notification", self._pool, self.health, self._stopping, POLL_S, self._step
        )

    async def _step(self) -> bool:
        await self._count_pending()
        return bool(await self.round())

    async def round(self) -> int:
        """Take a batch of due notifications, commit the intent, send them; how many taken."""
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                _TAKE_SQL, self._settings.notify_batch_max, self._settings.notify_lease_s
            )
        if not rows:
            return 0
        taken = [Due(*row) for row in rows]
        results = await asyncio.gather(
            *(self._deliver(due) for due in taken), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):  # that row's lease runs out; it is taken again
                log.warning("notification not recorded: %s", type(result).__name__)
        return len(taken)

    async def _deliver(self, due: Due) -> None:
        """Send one notification through its channel's gate and record the result."""
        key = (due.wave_id, due.registration_id, due.channel)
        try:
            async with self._pool.acquire() as connection:
                subject = await load_subject(connection, self._keyring, due.registration_id)
            wave = await self._wave(due.wave_id)
        except Exception as exc:  # the database, or a row that cannot be read: not now
            log.warning("notification not prepared: %s", type(exc).__name__)
            return  # the lease runs out and the row is taken again
        if subject is None:  # erased since: nobody to tell
            await self._pool.execute(_SENT_SQL, *key)
            return
        gate = self._gates[due.channel]
        permit = await gate.acquire()
        failure: Failure | None = None
        try:
            await self._senders[due.channel](due, subject, wave)
        except NotSent as exc:
            failure = exc.failure
        except Retry as exc:
            failure = exc.failure
        except Exception as exc:  # the outcome is unknown: the same key makes a resend safe
            failure = Failure.UNREACHABLE
            log.warning("notification send failed: %s", type(exc).__name__)
        finally:
            gate.release(permit, _SIGNALS[failure])
        if failure is None:
            await self._pool.execute(_SENT_SQL, *key)
            self.sent += 1
            metrics.NOTIFICATIONS.labels(due.channel, "sent").inc()
        else:
            await self._pool.execute(_FAILED_SQL, *key, backoff_s(self._settings, due.attempts))
            self.failed += 1
            metrics.NOTIFICATIONS.labels(due.channel, "failed").inc()

    async def _wave(self, wave_id: int) -> WaveInfo:
        info = self._waves.get(wave_id)
        if info is None:
            row = await self._pool.fetchrow(
                "SELECT id, name, opens_at, closes_at, quota, policy, closed_at FROM waves"
                " WHERE id = $1",
                wave_id,
            )
            wave = wave_from_row(row)
            following = await Waves(self._pool).next_after(wave.opens_at)
            info = WaveInfo(wave.name, None if following is None else following.opens_at)
            self._waves[wave_id] = info
        return info

    async def _send_email(self, due: Due, subject: Subject, wave: WaveInfo) -> None:
        body, _ = texts(due.outcome, wave)
        message = EmailMessage()
        message["From"] = self._settings.notify_mail_from
        message["To"] = subject.email
        message["Subject"] = EMAIL_SUBJECT
        message["Message-ID"] = message_id(due.wave_id, due.registration_id)
        message.set_content(f"Halo {subject.full_name},\n\n{body}")
        await asyncio.to_thread(
            send_mail, self._settings, self._settings.notify_mail_from, message, subject.email
        )

    async def _send_sms(self, due: Due, subject: Subject, wave: WaveInfo) -> None:
        _, text = texts(due.outcome, wave)
        await post_json(
            self._http,
            self._settings.sms_url.rstrip("/") + "/v1/messages",
            {"to": subject.phone, "text": text},
            timeout_s=self._settings.ministry_timeout_s,
            expected=frozenset({202}),
            headers={"Idempotency-Key": idempotency_key(due.wave_id, due.registration_id, "sms")},
        )

    async def _count_pending(self) -> None:
        """The pending gauge, counted every few seconds (an alert sees a stalled outbox)."""
        if time.monotonic() - self._counted_at < PENDING_EVERY_S:
            return
        counts = dict.fromkeys(CHANNELS, 0)
        counts.update({row[0]: row[1] for row in await self._pool.fetch(_PENDING_SQL)})
        for channel, count in counts.items():
            metrics.NOTIFICATIONS_PENDING.labels(channel).set(count)
        self._counted_at = time.monotonic()


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker notify``: send notifications until SIGTERM."""
    health = Health()
    async with metrics_http.serving(settings, health=health):
        pool = await database.create_pool(
            settings.database_url,
            name="intake-notify",
            min_size=1,
            max_size=3,  # workers.scaling counts it
            attempted=health.beat,
        )
        connector = aiohttp.TCPConnector(limit=settings.lane_prefetch)
        async with database.closing(pool), aiohttp.ClientSession(connector=connector) as http:
            notifier = Notifier(settings, pool, http, health)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, notifier.stop)
            await notifier.run()
