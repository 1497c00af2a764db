"""The persist worker: registration batches from RabbitMQ into PostgreSQL.

Delivery guarantee: a message is acknowledged only after every registration it carries is
committed (or was already stored), so a crash at any point leads to redelivery, and the store's
idempotent writes turn redelivery into exactly one row per registration id.

Messages are gathered until ``persist_batch_max_rows`` registrations or
``persist_batch_linger_s`` have passed, and written in one transaction. Failure handling:

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
import random
import signal
import time
from dataclasses import dataclass, field

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from core import envelope, topology
from core.envelope import Envelope, EnvelopeError
from core.keys import DecryptionError, Keyring
from core.migrate import migrate
from core.settings import Settings
from workers.store import RegistrationStore

log = logging.getLogger(__name__)

_DB_UNAVAILABLE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@dataclass
class _Parsed:
    message: AbstractIncomingMessage
    envelopes: list[Envelope] = field(default_factory=list)


@dataclass
class PersistStats:
    """Running totals, logged periodically and exported as metrics."""

    messages: int = 0
    received: int = 0
    duplicates: int = 0
    already_stored: int = 0
    poison: int = 0
    dead_lettered: int = 0


class PersistWorker:
    """Consumes ``intake.registrations`` until :meth:`stop`; see the module docstring."""

    def __init__(self, settings: Settings, keyring: Keyring, store: RegistrationStore) -> None:
        self._settings = settings
        self._keyring = keyring
        self._store = store
        self._stopping = asyncio.Event()
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self.stats = PersistStats()

    def stop(self) -> None:
        """Stop consuming, store what was already delivered, then return from :meth:`run`."""
        self._stopping.set()
        self._inbox.put_nowait(None)

    async def run(self) -> None:
        delay_s = 0.1
        while not self._stopping.is_set():
            try:
                await self._session()
                delay_s = 0.1
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                log.warning("broker session ended: %s", type(exc).__name__)
            if not self._stopping.is_set():
                await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
                delay_s = min(delay_s * 2, 5.0)

    async def _session(self) -> None:
        connection = await aio_pika.connect(self._settings.amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self._settings.persist_prefetch)
            declared = await topology.declare(channel, self._settings)
            self._inbox = asyncio.Queue()
            # aio-pika reports a lost connection only through its close callbacks.
            lost = asyncio.Event()
            inbox = self._inbox

            def on_close(*_: object) -> None:
                lost.set()
                inbox.put_nowait(None)

            connection.close_callbacks.add(on_close)
            consumer_tag = await declared.persist_queue.consume(self._deliver)
            log.info("persist worker consuming")
            while not self._stopping.is_set() and not lost.is_set():
                batch = await self._collect()
                if batch:
                    await self._handle(channel, batch, lost)
            if not lost.is_set():
                # Graceful stop: no new deliveries, then store what was already delivered.
                await declared.persist_queue.cancel(consumer_tag)
                rest = self._drain()
                if rest:
                    await self._handle(channel, rest, lost)
            log.info("persist worker stopped consuming", extra={"fields": vars(self.stats)})

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def _collect(self) -> list[AbstractIncomingMessage]:
        """Wait for a first message, then gather more until the batch is full or lingered."""
        first = await self._inbox.get()
        if first is None:
            return []
        batch = [first]
        rows = _count(first)
        deadline = time.monotonic() + self._settings.persist_batch_linger_s
        while rows < self._settings.persist_batch_max_rows:
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

    async def _handle(
        self,
        channel: AbstractChannel,
        batch: list[AbstractIncomingMessage],
        lost: asyncio.Event,
    ) -> None:
        parsed: list[_Parsed] = []
        for message in batch:
            item = await self._parse(channel, message)
            if item is not None:
                parsed.append(item)
        if not parsed:
            return
        if not await self._write_with_retry(parsed, lost):
            return  # stopping or disconnected: unacked messages will be redelivered
        for item in parsed:
            await item.message.ack()
        self.stats.messages += len(parsed)

    async def _parse(
        self, channel: AbstractChannel, message: AbstractIncomingMessage
    ) -> _Parsed | None:
        try:
            body = self._keyring.open_message(message.body, envelope.BATCH_SEAL_CONTEXT)
            raw_items = envelope.split_batch(body)
        except (DecryptionError, EnvelopeError) as exc:
            self.stats.poison += 1
            log.warning(
                "unreadable message returned to the queue",
                extra={"fields": {"error": str(exc), "redelivered": message.redelivered}},
            )
            await message.nack(requeue=True)
            return None
        parsed = _Parsed(message)
        for raw in raw_items:
            try:
                parsed.envelopes.append(Envelope.from_obj(raw))
            except EnvelopeError as exc:
                await self._dead_letter(channel, raw, str(exc))
        return parsed

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
        log.warning("envelope dead-lettered", extra={"fields": {"reason": reason}})

    async def _write_with_retry(self, parsed: list[_Parsed], lost: asyncio.Event) -> bool:
        delay_s = 0.1
        while True:
            try:
                await self._write([e for item in parsed for e in item.envelopes])
                return True
            except _DB_UNAVAILABLE as exc:
                log.warning("database unavailable, retrying: %s", type(exc).__name__)
            except asyncpg.PostgresError as exc:
                log.error("batch write failed: %s; writing messages one by one", type(exc).__name__)
                await self._write_one_by_one(parsed)
                parsed.clear()  # each message was acked or returned individually
                return True
            if self._stopping.is_set() or lost.is_set():
                return False
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

    async def _write_one_by_one(self, parsed: list[_Parsed]) -> None:
        for item in parsed:
            try:
                await self._write(item.envelopes)
            except asyncpg.PostgresError as exc:
                log.error("message write failed: %s; returned to the queue", type(exc).__name__)
                await item.message.nack(requeue=True)
                continue
            await item.message.ack()
            self.stats.messages += 1

    async def _write(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        result = await self._store.write(envelopes)
        self.stats.received += result.received
        self.stats.duplicates += result.duplicates
        self.stats.already_stored += result.already_stored


def _count(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("count", 1)
    return count if isinstance(count, int) and count > 0 else 1


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker persist``: migrate, consume until SIGTERM, exit."""
    keyring = Keyring.from_secret(settings.secret_key)
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"application_name": "intake-persist"},
    )
    async with pool:
        async with pool.acquire() as connection:
            await migrate(connection)
        worker = PersistWorker(settings, keyring, RegistrationStore(pool, keyring))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        with contextlib.suppress(asyncio.CancelledError):
            await worker.run()
