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
  fails *at once*, without a publish, while the broker is unreachable, too much is pending or
  the queue is known to be full. It never hangs.
- the connection is re-established in the background with capped exponential backoff.

aio-pika's ``RobustConnection`` is deliberately not used: it has known hangs on publish while
reconnecting (aio-pika #556, #636, #689); a plain connection that fails fast, plus our own
reconnect loop, keeps every outcome bounded.

Load shedding. :meth:`BatchPublisher.admit` is asked before a request's body is read, so that a
shed request costs a header check and a 503, nothing more. It sheds while the broker is
unreachable, while closing, at the in-process bound (``edge_max_pending``), and while the
persist queue is known to be full. Two mechanisms, each for what it does best:

- **The full state** decides admission. A nack (``reject-publish``) is the broker saying the
  queue is at its length limit, in messages or in bytes, whatever policy set it; the edge then
  stops publishing into it: every new request is shed at once, and what was waiting for a
  publish slot fails with ``queue_full`` without being sent. One registration at a time is let
  through as a *probe*, at most every ``edge_full_probe_interval_s``; the first confirmed
  publish made after the nack (a probe's) ends the state. The broker's answer is the truth, so
  the state needs no knowledge of the limits and ends within one probe interval of the queue
  having room.
- **A depth sampler** feeds the ``Retry-After`` estimate. Once a second, on a channel of its
  own, a passive declare of the persist queue reads its depth and consumer count; the
  :class:`~intake.shedding.DrainMeter` turns successive samples (and this edge's own confirmed
  publishes) into a drain rate. A shed ``queue_full`` is told to come back after depth / rate
  seconds, ``overloaded`` after the in-process backlog's time through the publish pipeline,
  ``broker_unreachable`` after the reconnect backoff; see :meth:`BatchPublisher.retry_after_s`.
  The sampler never decides admission: a depth read up to a second ago is not worth a 503, and
  it does not see a limit in bytes.
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

from core import broker, envelope, metrics, topology
from core.keys import Keyring
from core.settings import Settings
from intake import shedding

log = logging.getLogger(__name__)

Connector = Callable[[str], Awaitable[AbstractConnection]]

# How often the depth sampler reads the persist queue's depth (a passive declare).
DEPTH_SAMPLE_INTERVAL_S = 1.0
_SAMPLE_TIMEOUT_S = 5.0
# A nack ("queue full") while the queue's sampled depth is below this share of its length
# limit cannot be a full queue: the publishing channel is the one that is wrong (see
# BatchPublisher._track_fullness).
NACK_WITH_ROOM_SHARE = 0.01
# Weight of the newest batch in the moving average of confirm latencies.
_CONFIRM_SMOOTHING = 0.2
# The AMQP heartbeat the edge asks for. A node that goes silent (cut off from the network,
# or paused by its cluster as the minority of a partition: its close never arrives) is given
# up after three heartbeats and one more second without a frame from it (aiormq: 12 s here,
# 183 s with the default of 60 s), and the edge reconnects to the next node. Shorter than
# 3 s and a busy broker's heartbeats could be missed; the broker itself closes a connection
# silent for two heartbeats (the edge sends one every second).
HEARTBEAT_S = 3
# How often the pending gauge is written (it is also written after each batch).
PENDING_GAUGE_INTERVAL_S = 0.5

_Batch = list[tuple[bytes, "asyncio.Future[None]"]]


class Unavailable(Exception):
    """The registration was not confirmed and must be answered with 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _connect(url: str) -> AbstractConnection:
    return await broker.connect(url, heartbeat_s=HEARTBEAT_S)


class BatchPublisher:
    """Publishes registration envelopes in confirmed batches; see the module docstring."""

    def __init__(self, settings: Settings, keyring: Keyring, connect: Connector = _connect):
        self._settings = settings
        self._keyring = keyring
        self._connect = connect
        self._pending: _Batch = []
        self._inflight = 0
        self._flush_scheduled = False
        self._exchange: AbstractExchange | None = None
        self._connection: AbstractConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._gauge: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._closing = False
        self._connected = asyncio.Event()
        # Set to have the supervisor close the broker connection and open another.
        self._reconnect = asyncio.Event()
        self._reconnect_delay_s = 0.05
        # The full state: entered on a nack, left by the first ack of a batch published after it.
        self._full = False
        self._full_after_seq = 0
        self._full_since_s = 0.0
        self._publish_seq = 0
        self._probe_inflight = False
        self._next_probe_at = 0.0
        self._confirm_s: float | None = None
        self.drain = shedding.DrainMeter()
        self.stats = PublisherStats()

    @property
    def ready(self) -> bool:
        """Whether the broker is connected and the topology declared."""
        return self._exchange is not None

    @property
    def pending(self) -> int:
        """Registrations submitted and not yet answered (waiting or in flight)."""
        return len(self._pending) + self.stats.inflight_items

    @property
    def queue_full(self) -> bool:
        """Whether the persist queue is known to be full (the full state, see the module)."""
        return self._full

    async def start(self) -> None:
        """Start connecting in the background; :attr:`ready` turns true once connected."""
        self._supervisor = asyncio.create_task(self._supervise(), name="amqp-supervisor")
        self._gauge = asyncio.create_task(self._report_pending(), name="pending-gauge")

    async def _report_pending(self) -> None:
        """The pending gauge, every ``PENDING_GAUGE_INTERVAL_S`` (and after each batch):
        cheaper than on every request, and in multiprocess mode each process writes its own."""
        while True:
            metrics.EDGE_PENDING.set(self.pending)
            await asyncio.sleep(PENDING_GAUGE_INTERVAL_S)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected, at most ``timeout_s``; return whether connected."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self.ready

    def admit(self) -> bool:
        """Admission of one registration, decided before its body is read.

        Raises :class:`Unavailable` when it is to be shed: closing, broker unreachable, the
        in-process bound reached, or the queue known to be full and no probe due. Otherwise
        returns whether this registration is the full queue's probe (pass it to :meth:`submit`).
        Costs a few attribute reads; a shed request touches neither its body nor the broker.
        """
        reason = self.refusal()
        if reason is not None:
            raise self._shed(reason)
        if not self._full:
            return False
        # This one may probe; the next may not before an interval, whatever becomes of it.
        self._next_probe_at = time.monotonic() + self._settings.edge_full_probe_interval_s
        return True

    def refusal(self) -> str | None:
        """Why a registration would be shed now (see :meth:`admit`), or None; changes nothing
        and counts nothing (the early 503 of :mod:`intake.protocol` asks it)."""
        if self._closing:
            return "shutting_down"
        if self._exchange is None:
            return "broker_unreachable"
        if self.pending >= self._settings.edge_max_pending:
            return "overloaded"
        if self._full and (self._probe_inflight or time.monotonic() < self._next_probe_at):
            return "queue_full"
        return None

    def count_shed(self, reason: str) -> None:
        """Count a registration shed elsewhere (the early 503) in :attr:`stats`."""
        self.stats.shed[reason] = self.stats.shed.get(reason, 0) + 1

    def submit(self, item: bytes, *, probe: bool = False) -> asyncio.Future[None]:
        """Queue one serialised envelope; the future resolves once the broker confirmed it.

        Raises :class:`Unavailable` immediately when the broker is not connected, more than
        ``edge_max_pending`` registrations are already waiting, or the queue is known to be
        full and this is not its admitted ``probe``: shedding costs nothing.
        """
        if self._closing:
            raise self._shed("shutting_down")
        if self._exchange is None:
            raise self._shed("broker_unreachable")
        if self.pending >= self._settings.edge_max_pending:
            raise self._shed("overloaded")
        if self._full:
            if not probe or self._probe_inflight:
                raise self._shed("queue_full")
            self._probe_inflight = True
            self.stats.probes += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._schedule_flush()
        return future

    async def publish_one(self, routing_key: str, body: bytes) -> None:
        """Publish one message (a test's answers, a wave join: not a registration) to
        ``routing_key`` of the exchange, persistent, ``mandatory``, on the publishing channel,
        and return once the broker confirmed it. Raises :class:`Unavailable` with the same
        reasons as a batch (not connected, nack, return, no confirm in time); such messages
        are few (one per registrant and step), so they are not batched, and not counted as
        registrations."""
        if self._closing:
            raise Unavailable("shutting_down")
        exchange = self._exchange
        if exchange is None:
            raise Unavailable("broker_unreachable")
        message = aio_pika.Message(
            body,
            content_type="application/octet-stream",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            async with asyncio.timeout(self._settings.edge_publish_timeout_s):
                await exchange.publish(message, routing_key, mandatory=True)
        except TimeoutError:
            raise Unavailable("confirm_timeout") from None
        except aio_pika.exceptions.PublishError:
            raise Unavailable("unroutable") from None
        except aio_pika.exceptions.DeliveryError:
            raise Unavailable("queue_full") from None
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            raise Unavailable("broker_unreachable") from None

    def retry_after_s(self, reason: str) -> int:
        """The ``Retry-After`` (whole seconds) of a 503 for ``reason``, with jitter.

        - ``queue_full``: the persist queue's depth / its measured drain rate (the wait is the
          maximum while no consumer drains it);
        - ``overloaded``: the registrations pending here / what the publish pipeline moves per
          second (``edge_batch_max_items`` x ``edge_max_inflight_batches`` per confirm latency);
        - ``broker_unreachable``: the current reconnect backoff;
        - anything else, or no measurement yet: ``edge_retry_after_s``.

        Clamped to ``[1, edge_retry_after_max_s]`` and spread by
        :func:`~intake.shedding.retry_after_s`.
        """
        settings = self._settings
        seconds: float | None = None
        if reason == "queue_full":
            seconds = self.drain.drain_time_s()
        elif reason == "overloaded" and self._confirm_s is not None:
            per_round = settings.edge_batch_max_items * settings.edge_max_inflight_batches
            seconds = shedding.drain_time_s(self.pending, per_round / max(self._confirm_s, 1e-6))
        elif reason == "broker_unreachable":
            seconds = self._reconnect_delay_s
        if seconds is None:
            seconds = settings.edge_retry_after_s
        return shedding.retry_after_s(
            seconds,
            maximum_s=settings.edge_retry_after_max_s,
            jitter=random.random(),  # noqa: S311 - jitter, not a secret
        )

    def _shed(self, reason: str) -> Unavailable:
        self.count_shed(reason)
        return Unavailable(reason)

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
            self._publish_seq += 1
            task = asyncio.create_task(self._publish(batch, self._publish_seq, probe=self._full))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _publish(self, batch: _Batch, seq: int, *, probe: bool) -> None:
        self.stats.inflight_items += len(batch)
        started = time.perf_counter()
        error: Unavailable | None = None
        try:
            error = await self._send(batch)
        finally:
            self.stats.inflight_items -= len(batch)
            self._inflight -= 1
        elapsed_s = time.perf_counter() - started
        self.stats.record(len(batch), elapsed_s, error)
        metrics.PUBLISH_CONFIRM.observe(elapsed_s)
        metrics.PUBLISH_BATCH.observe(len(batch))
        self._confirm_s = (
            elapsed_s
            if self._confirm_s is None
            else _CONFIRM_SMOOTHING * elapsed_s + (1 - _CONFIRM_SMOOTHING) * self._confirm_s
        )
        self._track_fullness(seq, error, probe=probe)
        metrics.EDGE_PENDING.set(self.pending)
        for _, future in batch:
            if future.done():  # the request's handler was cancelled (client went away)
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if self._pending:
            self._schedule_flush()

    def _track_fullness(self, seq: int, error: Unavailable | None, *, probe: bool) -> None:
        if probe:
            self._probe_inflight = False
            self._next_probe_at = time.monotonic() + self._settings.edge_full_probe_interval_s
        if error is not None and error.reason == "queue_full" and probe and self._has_room():
            # RabbitMQ 3.10: a channel that first published to a quorum queue while its leader
            # was being elected can go on nacking every publish once a leader is elected (its
            # queue client holds the dead leader), while the queue is nearly empty. Another
            # connection (to the next node) has a queue client of its own.
            log.warning("publish refused while the queue has room: reconnecting to the broker")
            self._reconnect.set()
        if error is not None and error.reason == "queue_full" and not self._full:
            # Every batch issued so far went out before the nack was known; only an ack of a
            # later one (a probe) shows that the queue has room again.
            self._full, self._full_after_seq = True, self._publish_seq
            self._full_since_s = time.monotonic()
            self._next_probe_at = time.monotonic() + self._settings.edge_full_probe_interval_s
            waiting, self._pending = self._pending, []
            for _, future in waiting:  # never sent: no publish into a full queue
                if not future.done():
                    future.set_exception(self._shed("queue_full"))
            log.warning("persist queue full: shedding, probing for room")
        elif error is None and self._full and seq > self._full_after_seq:
            self._full = False
            log.info("persist queue has room again")

    def _has_room(self) -> bool:
        """Whether the queue, sampled since the full state began, is nearly empty."""
        depth, sampled_at_s = self.drain.depth, self.drain.sampled_at_s
        limit = self._settings.persist_queue_max_length * NACK_WITH_ROOM_SHARE
        fresh = sampled_at_s is not None and sampled_at_s > self._full_since_s
        return fresh and depth is not None and depth <= limit

    async def _send(self, batch: _Batch) -> Unavailable | None:
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
        except aio_pika.exceptions.PublishError:
            # A basic.return (unroutable). PublishError subclasses DeliveryError: test it first.
            return Unavailable("unroutable")
        except aio_pika.exceptions.DeliveryError:
            # A nack: the quorum queue is at its length limit (reject-publish).
            return Unavailable("queue_full")
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            return Unavailable("broker_unreachable")
        self.stats.confirmed_batches += 1
        return None

    async def _supervise(self) -> None:
        self._reconnect_delay_s = 0.05
        while not self._closing:
            try:
                connection = await self._connect(self._settings.amqp_url)
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                log.warning("broker connection failed: %s", type(exc).__name__)
                await self._backoff()
                continue
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                declared = await topology.declare(channel, self._settings)
            except (aio_pika.exceptions.AMQPError, OSError) as exc:
                log.warning("broker setup failed: %s", type(exc).__name__)
                await connection.close()
                await asyncio.sleep(self._reconnect_delay_s)
                continue
            # aio-pika resolves ``closed()`` only on a deliberate close; a lost connection is
            # reported through the close callbacks.
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
            self._connection, self._exchange = connection, declared.exchange
            self._reconnect_delay_s = 0.05
            self._reconnect.clear()
            self._connected.set()
            log.info("broker connected")
            sampler = asyncio.create_task(self._sample_depth(connection), name="depth-sampler")
            waits = [asyncio.create_task(e.wait()) for e in (lost, self._reconnect)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sampler, *waits):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not lost.is_set():  # asked to reconnect: this connection goes, another comes
                self._exchange = None
                with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError, RuntimeError):
                    await connection.close()
            self._connected.clear()
            self._exchange = self._connection = None
            if not self._closing:
                log.warning("broker connection lost")

    async def _backoff(self) -> None:
        await asyncio.sleep(self._reconnect_delay_s * (0.5 + random.random()))  # noqa: S311
        self._reconnect_delay_s = min(
            self._reconnect_delay_s * 2, self._settings.edge_reconnect_max_delay_s
        )

    async def _sample_depth(self, connection: AbstractConnection) -> None:
        """Once a second, read the persist queue's depth with a passive declare on a channel of
        its own (a failed passive declare closes its channel, never the publishing one)."""
        failures = (aio_pika.exceptions.AMQPError, OSError, RuntimeError, TimeoutError)
        channel: aio_pika.abc.AbstractChannel | None = None
        while True:
            try:
                async with asyncio.timeout(_SAMPLE_TIMEOUT_S):
                    if channel is None or channel.is_closed:
                        channel = await connection.channel(publisher_confirms=False)
                    underlay = await channel.get_underlay_channel()
                    declared = await underlay.queue_declare(topology.PERSIST_QUEUE, passive=True)
                self.drain.observe(
                    time.monotonic(),
                    declared.message_count or 0,
                    declared.consumer_count or 0,
                    self.stats.confirmed_batches,
                )
            except failures as exc:
                log.debug("persist queue depth not sampled: %s", type(exc).__name__)
                if channel is not None and not channel.is_closed:
                    with contextlib.suppress(*failures):
                        async with asyncio.timeout(_SAMPLE_TIMEOUT_S):
                            await channel.close()
                channel = None
            await asyncio.sleep(DEPTH_SAMPLE_INTERVAL_S)

    async def close(self) -> None:
        """Stop accepting, let everything submitted be confirmed or fail, then disconnect."""
        self._closing = True
        deadline = time.monotonic() + self._settings.edge_shutdown_timeout_s
        while (self._pending or self._batches) and time.monotonic() < deadline:
            self._schedule_flush()
            await asyncio.sleep(0.01)
        for task in (self._supervisor, self._gauge):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._connection is not None:
            await self._connection.close()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Unavailable("shutting_down"))
        metrics.EDGE_PENDING.set(0)


class PublisherStats:
    """Counters the edge reports through its metrics."""

    def __init__(self) -> None:
        self.inflight_items = 0
        self.batches = 0
        self.items = 0
        self.confirmed_batches = 0
        self.probes = 0
        self.failures: dict[str, int] = {}
        # Registrations refused without a publish, by reason (most before their body was read).
        self.shed: dict[str, int] = {}
        self.last_confirm_s = 0.0

    def record(self, items: int, elapsed_s: float, error: Unavailable | None) -> None:
        self.batches += 1
        self.items += items
        self.last_confirm_s = elapsed_s
        if error is not None:
            self.failures[error.reason] = self.failures.get(error.reason, 0) + items
