"""The persist worker: registration batches from RabbitMQ into PostgreSQL.

Delivery guarantee: a message is acknowledged only after every registration it carries is
committed (or was already stored), so a crash at any point leads to redelivery, and the store's
idempotent writes turn redelivery into exactly one row per registration id.

Messages are gathered until ``persist_batch_max_rows`` registrations, or until
``persist_batch_linger_s`` has passed, or until the worker holds its whole prefetch window (no
more can arrive before an ack). Each batch is written in one transaction. Two stages overlap: while
PostgreSQL writes batch *n*, the worker opens and encrypts batch *n + 1*; writes and acks stay in
delivery order, one transaction at a time.

Failure handling:

- a message that cannot be opened or parsed is returned to the queue (``nack`` with requeue);
  the quorum queue counts its deliveries and dead-letters it past ``x-delivery-limit``, while
  the messages behind it go on being stored;
- an envelope that parses as a batch but breaks the contract is dead-lettered on its own,
  confirmed, with an ``x-intake-reason`` header, and the rest of its message is stored;
- PostgreSQL unreachable: the batch is retried with backoff, unacknowledged, until it works or
  the worker stops (then the broker redelivers it elsewhere);
- any other database error: the batch is split and each message written alone, so that only
  the message that fails is returned to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from core import broker, database, envelope, metrics, metrics_http, topology
from core.envelope import Envelope, EnvelopeError
from core.health import Health
from core.keys import DecryptionError, Keyring
from core.migrate import migrate, wait_until_migrated
from core.settings import Settings
from core.status import reporting
from workers.sessions import (
    HEARTBEAT_S,
    STALL_S,
    ConsumerStalled,
    keep_running,
    ready_messages,
    resubscribe_reason,
)
from workers.store import RegistrationStore, Rows, prepare

log = logging.getLogger(__name__)

# A batch whose write failed with one of these is written again, whole (core/database.py): a
# failover's errors among them, the commit whose outcome was lost included (the write is
# idempotent: what the lost commit stored is found stored).
_DB_UNAVAILABLE = database.TRANSIENT


@dataclass
class _Batch:
    """Readable messages of one batch, in delivery order, with their prepared rows."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    rows: list[Rows] = field(default_factory=list)

    def all_rows(self) -> Rows:
        merged = Rows()
        for rows in self.rows:
            merged.extend(rows)
        return merged


@dataclass
class PersistStats:
    """Running totals, logged at shutdown and exported as metrics."""

    messages: int = 0
    received: int = 0
    duplicates: int = 0
    already_stored: int = 0
    poison: int = 0
    dead_lettered: int = 0


class PersistWorker:
    """Consumes ``intake.registrations`` until :meth:`stop`; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        store: RegistrationStore,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._store = store
        self._stopping = asyncio.Event()
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._held = 0  # delivered and not yet acked or nacked
        self._last_delivery_s = 0.0  # when the last message was delivered (monotonic)
        self.stats = PersistStats()
        self.health = health if health is not None else Health()  # what its probes read
        metrics.init_persist()

    def stop(self) -> None:
        """Stop consuming, store what was already delivered, then return from :meth:`run`."""
        self._stopping.set()
        self._inbox.put_nowait(None)

    def status(self) -> dict[str, object]:
        """The worker's status file (``core.status``). ``processed`` and ``inflight`` count
        messages, the unit of the queue's depth (each message carries a batch of
        registrations): messages stored and acknowledged, and messages delivered and not yet
        acknowledged. ``registrations`` counts the registrations those messages carried
        (stored now, or found stored already)."""
        stats = self.stats
        return {
            "kind": "persist",
            "pid": os.getpid(),
            "processed": stats.messages,
            "inflight": self._held,
            "registrations": stats.received + stats.duplicates + stats.already_stored,
        }

    async def run(self) -> None:
        """Consume until stopped, reconnecting to the broker with backoff when it goes away."""
        await keep_running(self._session, self._stopping, "persist", health=self.health)

    async def _session(self) -> None:
        connection = await broker.connect(self._settings.amqp_url, heartbeat_s=HEARTBEAT_S)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self._settings.persist_prefetch)
            declared = await topology.declare(channel, self._settings)
            self._inbox, self._held = asyncio.Queue(), 0
            # aio-pika reports a lost connection only through its close callbacks.
            lost = asyncio.Event()
            inbox = self._inbox

            def on_close(*_: object) -> None:
                lost.set()
                inbox.put_nowait(None)

            connection.close_callbacks.add(on_close)
            consumer_tag = await declared.persist_queue.consume(self._deliver)
            log.info("persist worker consuming")
            self.health.serving(True)
            self._last_delivery_s = time.monotonic()
            stalled = asyncio.Event()
            watchdog = asyncio.create_task(self._watch(connection, stalled, on_close))
            writing: asyncio.Task[None] | None = None
            try:
                while not self._stopping.is_set() and not lost.is_set():
                    messages = await self._collect()
                    self.health.beat()
                    if not messages:
                        continue
                    batch = await self._prepare(channel, messages)  # overlaps the write
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write_and_ack(batch, lost))
                if writing is not None:
                    await writing
                if not lost.is_set():
                    # Graceful stop: no new deliveries, then store what was already delivered.
                    await declared.persist_queue.cancel(consumer_tag)
                    rest = self._drain()
                    if rest:
                        await self._write_and_ack(await self._prepare(channel, rest), lost)
            finally:
                watchdog.cancel()
                if writing is not None and not writing.done():
                    writing.cancel()
            log.info("persist worker stopped consuming", extra={"fields": vars(self.stats)})
            if stalled.is_set():
                raise ConsumerStalled(topology.PERSIST_QUEUE)

    async def _watch(
        self,
        connection: aio_pika.abc.AbstractConnection,
        stalled: asyncio.Event,
        end: Callable[[], None],
    ) -> None:
        """Every second: with nothing in hand, the loop is waiting, not stuck (``Health``).
        Every ``STALL_S``: with nothing in hand and no delivery for that long while the
        queue holds ready messages (stuck), or for ``IDLE_RESUBSCRIBE_S`` at all, end the
        session (``end``) so that another connection subscribes afresh
        (workers.sessions.ConsumerStalled)."""
        next_check_s = time.monotonic() + STALL_S
        while True:
            await asyncio.sleep(1.0)
            if not self._held:
                # Nothing in hand: the loop waits for a delivery, which is not being stuck.
                self.health.beat()
            if time.monotonic() < next_check_s:
                continue
            next_check_s = time.monotonic() + STALL_S
            reason = await resubscribe_reason(
                time.monotonic() - self._last_delivery_s,
                bool(self._held),
                lambda: ready_messages(connection, topology.PERSIST_QUEUE),
            )
            if reason is None:
                continue
            if reason == "stalled":
                self.health.stalled()
                log.warning("persist consumer stalled: reconnecting")
            metrics.CONSUMER_RESUBSCRIPTIONS.labels("persist", reason).inc()
            stalled.set()
            end()
            return

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._last_delivery_s = time.monotonic()
        self.health.delivered()
        self._held += 1
        self._inbox.put_nowait(message)

    async def _collect(self) -> list[AbstractIncomingMessage]:
        """Wait for a first message, then gather more until the batch is full, the linger time
        is over, or the whole prefetch window is held (nothing more can arrive)."""
        first = await self._inbox.get()
        if first is None:
            return []
        batch = [first]
        rows = _count(first)
        deadline = time.monotonic() + self._settings.persist_batch_linger_s
        while rows < self._settings.persist_batch_max_rows:
            if self._inbox.empty() and self._held >= self._settings.persist_prefetch:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = await asyncio.wait_for(self._inbox.get(), remaining)
            except TimeoutError:
                break
            if message is None:
                self._inbox.put_nowait(None)  # let the outer loop see the stop too
                break
            batch.append(message)
            rows += _count(message)
        return batch

    def _drain(self) -> list[AbstractIncomingMessage]:
        rest = []
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            if message is not None:
                rest.append(message)
        return rest

    async def _prepare(
        self, channel: AbstractChannel, messages: list[AbstractIncomingMessage]
    ) -> _Batch:
        """Open, parse and encrypt; poison messages are returned to the queue on the way."""
        batch = _Batch()
        for message in messages:
            envelopes = await self._parse(channel, message)
            if envelopes is not None:
                batch.messages.append(message)
                batch.rows.append(prepare(self._keyring, envelopes))
        return batch

    async def _parse(
        self, channel: AbstractChannel, message: AbstractIncomingMessage
    ) -> list[Envelope] | None:
        try:
            body = self._keyring.open_message(message.body, envelope.BATCH_SEAL_CONTEXT)
            raw_items = envelope.split_batch(body)
        except (DecryptionError, EnvelopeError) as exc:
            self.stats.poison += 1
            log.warning(
                "unreadable message returned to the queue",
                extra={"fields": {"error": str(exc), "redelivered": message.redelivered}},
            )
            await self._settle(message, ack=False)
            return None
        envelopes = []
        for raw in raw_items:
            try:
                envelopes.append(Envelope.from_obj(raw))
            except EnvelopeError as exc:
                await self._dead_letter(channel, raw, str(exc))
        return envelopes

    async def _dead_letter(self, channel: AbstractChannel, raw: object, reason: str) -> None:
        """Send one broken envelope to the dead-letter queue, sealed, and wait for the confirm."""
        sealed = self._keyring.seal_message(
            envelope.join_batch([orjson.dumps(raw)]), envelope.BATCH_SEAL_CONTEXT
        )
        exchange = await channel.get_exchange(topology.DEAD_LETTER_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                sealed,
                content_type=envelope.BATCH_CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-intake-reason": reason},
            ),
            routing_key=topology.PERSIST_QUEUE,
        )
        self.stats.dead_lettered += 1
        metrics.PERSISTED.labels("dead_lettered").inc()
        log.warning("envelope dead-lettered", extra={"fields": {"reason": reason}})

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=True)
        self._held -= 1

    async def _write_and_ack(self, batch: _Batch, lost: asyncio.Event) -> None:
        if not batch.messages:
            return
        delay_s = 0.1
        while True:
            try:
                await self._write(batch.all_rows())
                break
            except _DB_UNAVAILABLE as exc:
                log.warning("database unavailable, retrying: %s", type(exc).__name__)
            except asyncpg.PostgresError as exc:
                log.error("batch write failed: %s; writing messages one by one", type(exc).__name__)
                await self._write_one_by_one(batch)
                return
            if self._stopping.is_set() or lost.is_set():
                return  # unacknowledged: the broker redelivers the batch
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
        # One ack for the whole batch. ``multiple`` acknowledges every delivery up to the last
        # message's tag; batches are contiguous in delivery order and written one at a time,
        # and unreadable messages in between were nacked on their own, so that is exactly
        # this batch.
        await batch.messages[-1].ack(multiple=True)
        self._held -= len(batch.messages)
        self.stats.messages += len(batch.messages)

    async def _write_one_by_one(self, batch: _Batch) -> None:
        for message, rows in zip(batch.messages, batch.rows, strict=True):
            try:
                await self._write(rows)
            except asyncpg.PostgresError as exc:
                log.error("message write failed: %s; returned to the queue", type(exc).__name__)
                await self._settle(message, ack=False)
                continue
            await self._settle(message, ack=True)
            self.stats.messages += 1

    async def _write(self, rows: Rows) -> None:
        started = time.perf_counter()
        result = await self._store.write(rows)  # committed when it returns
        metrics.PERSIST_BATCH.observe(time.perf_counter() - started)
        self.stats.received += result.received
        self.stats.duplicates += result.duplicates
        self.stats.already_stored += result.already_stored
        for outcome, count in (
            ("stored", result.received),
            ("duplicate", result.duplicates),
            ("benefit_received", result.benefit_received),
            ("already_stored", result.already_stored),
        ):
            if count:
                metrics.PERSISTED.labels(outcome).inc(count)


def _count(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("count", 1)
    return count if isinstance(count, int) and count > 0 else 1


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker persist``: migrate (or wait for ``intake migrate``:
    ``persist_migrate``), consume until SIGTERM, exit."""
    keyring = Keyring.from_settings(settings)
    health = Health()
    async with metrics_http.serving(settings, health=health):  # probes answer from the start
        pool = await database.create_pool(
            settings.database_url,
            name="intake-persist",
            min_size=1,
            max_size=2,
            attempted=health.beat,
        )
        async with database.closing(pool):
            async with pool.acquire() as connection:
                if settings.persist_migrate:
                    await migrate(connection)
                else:
                    await wait_until_migrated(connection, waited=health.beat)
            await _serve(
                settings,
                PersistWorker(
                    settings, keyring, RegistrationStore.configured(pool, settings), health
                ),
            )


async def _serve(settings: Settings, worker: PersistWorker) -> None:
    """Run ``worker`` until SIGTERM, with the status file of ``intake supervise``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    # The status file (set by ``intake supervise``) lasts until the worker has stored and
    # acknowledged what it held, not just until SIGTERM.
    async with reporting(settings.worker_status_file, worker.status):
        with contextlib.suppress(asyncio.CancelledError):
            await worker.run()
