"""The edge's publisher: group commit of registrations into confirmed batch messages.

A publisher confirm costs the same whether it covers one registration or five hundred, and
aio-pika's per-message overhead (~250 µs of CPU per publish here) would cap one edge core far
below the HTTP ceiling. So requests do not publish; they :meth:`BatchPublisher.submit` their
envelope and await a future. A flusher packs whatever is waiting into one sealed message, up to
``edge_batch_max_items``, while at most ``edge_max_inflight_batches`` batches await their
confirms. At low load a batch holds one registration and is published at once (no linger, no
added latency); under load batches grow by themselves while earlier ones are being confirmed.

Promises:
- a submit's future resolves only after the broker confirmed the batch holding it: the
  message is routed (``mandatory``: a return is a failure) and durable in a quorum queue;
- it fails with :class:`Unavailable` on a nack (the queue is at its length limit), a return, a
  confirm that does not arrive within ``edge_publish_timeout_s``, or a lost connection, and it
  fails *at once* while the broker is unreachable or too much is pending. It never hangs.
- the connection is re-established in the background with capped exponential backoff.

aio-pika's ``RobustConnection`` is deliberately not used: it has known hangs on publish while
reconnecting (aio-pika #556, #636, #689); a plain connection that fails fast, plus our own
reconnect loop, keeps every outcome bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange

from core import envelope, topology
from core.keys import Keyring
from core.settings import Settings

log = logging.getLogger(__name__)

Connector = Callable[[str], Awaitable[AbstractConnection]]


class Unavailable(Exception):
    """The registration was not confirmed and must be answered with 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _connect(url: str) -> AbstractConnection:
    return await aio_pika.connect(url, timeout=5)


class BatchPublisher:
    """Publishes registration envelopes in confirmed batches; see the module docstring."""

    def __init__(self, settings: Settings, keyring: Keyring, connect: Connector = _connect):
        self._settings = settings
        self._keyring = keyring
        self._connect = connect
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._inflight = 0
        self._flush_scheduled = False
        self._exchange: AbstractExchange | None = None
        self._connection: AbstractConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._closing = False
        self._connected = asyncio.Event()
        self.stats = PublisherStats()

    @property
    def ready(self) -> bool:
        """Whether the broker is connected and the topology declared."""
        return self._exchange is not None

    @property
    def pending(self) -> int:
        """Registrations submitted and not yet answered (waiting or in flight)."""
        return len(self._pending) + self.stats.inflight_items

    async def start(self) -> None:
        """Start connecting in the background; :attr:`ready` turns true once connected."""
        self._supervisor = asyncio.create_task(self._supervise(), name="amqp-supervisor")

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected, at most ``timeout_s``; return whether connected."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self.ready

    def submit(self, item: bytes) -> asyncio.Future[None]:
        """Queue one serialised envelope; the future resolves once the broker confirmed it.

        Raises :class:`Unavailable` immediately when the broker is not connected or more than
        ``edge_max_pending`` registrations are already waiting: shedding costs nothing.
        """
        if self._closing:
            raise Unavailable("shutting_down")
        if self._exchange is None:
            raise Unavailable("broker_unreachable")
        if self.pending >= self._settings.edge_max_pending:
            raise Unavailable("overloaded")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        # call_soon lets every request already parsed in this loop iteration join the batch.
        if not self._flush_scheduled and self._inflight < self._settings.edge_max_inflight_batches:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        limit = self._settings.edge_batch_max_items
        while self._pending and self._inflight < self._settings.edge_max_inflight_batches:
            batch, self._pending = self._pending[:limit], self._pending[limit:]
            self._inflight += 1
            task = asyncio.create_task(self._publish(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _publish(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        self.stats.inflight_items += len(batch)
        started = time.perf_counter()
        error: Unavailable | None = None
        try:
            error = await self._send(batch)
        finally:
            self.stats.inflight_items -= len(batch)
            self._inflight -= 1
        self.stats.record(len(batch), time.perf_counter() - started, error)
        for _, future in batch:
            if future.done():  # the request's handler was cancelled (client went away)
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if self._pending:
            self._schedule_flush()

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> Unavailable | None:
        exchange = self._exchange
        if exchange is None:
            return Unavailable("broker_unreachable")
        body = self._keyring.seal_message(
            envelope.join_batch([item for item, _ in batch]), envelope.BATCH_SEAL_CONTEXT
        )
        message = aio_pika.Message(
            body,
            content_type=envelope.BATCH_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"schema_version": envelope.SCHEMA_VERSION, "count": len(batch)},
        )
        try:
            async with asyncio.timeout(self._settings.edge_publish_timeout_s):
                await exchange.publish(message, topology.PERSIST_ROUTING_KEY, mandatory=True)
        except TimeoutError:
            return Unavailable("confirm_timeout")
        except aio_pika.exceptions.DeliveryError:
            # A nack: the quorum queue is at its length limit (reject-publish).
            return Unavailable("queue_full")
        except aio_pika.exceptions.PublishError:
            return Unavailable("unroutable")
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            return Unavailable("broker_unreachable")
        return None

    async def _supervise(self) -> None:
        delay_s = 0.05
        while not self._closing:
            try:
                connection = await self._connect(self._settings.amqp_url)
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                log.warning("broker connection failed: %s", type(exc).__name__)
                await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
                delay_s = min(delay_s * 2, self._settings.edge_reconnect_max_delay_s)
                continue
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                declared = await topology.declare(channel, self._settings)
            except (aio_pika.exceptions.AMQPError, OSError) as exc:
                log.warning("broker setup failed: %s", type(exc).__name__)
                await connection.close()
                await asyncio.sleep(delay_s)
                continue
            # aio-pika resolves ``closed()`` only on a deliberate close; a lost connection is
            # reported through the close callbacks.
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
            self._connection, self._exchange = connection, declared.exchange
            delay_s = 0.05
            self._connected.set()
            log.info("broker connected")
            await lost.wait()
            self._connected.clear()
            self._exchange = self._connection = None
            if not self._closing:
                log.warning("broker connection lost")

    async def close(self) -> None:
        """Stop accepting, let everything submitted be confirmed or fail, then disconnect."""
        self._closing = True
        deadline = time.monotonic() + self._settings.edge_shutdown_timeout_s
        while (self._pending or self._batches) and time.monotonic() < deadline:
            self._schedule_flush()
            await asyncio.sleep(0.01)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._connection is not None:
            await self._connection.close()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Unavailable("shutting_down"))


class PublisherStats:
    """Counters the edge reports through its metrics."""

    def __init__(self) -> None:
        self.inflight_items = 0
        self.batches = 0
        self.items = 0
        self.failures: dict[str, int] = {}
        self.last_confirm_s = 0.0

    def record(self, items: int, elapsed_s: float, error: Unavailable | None) -> None:
        self.batches += 1
        self.items += items
        self.last_confirm_s = elapsed_s
        if error is not None:
            self.failures[error.reason] = self.failures.get(error.reason, 0) + items
