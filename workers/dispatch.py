"""The dispatcher: turns stored state into verification tasks, without ever losing one.

Two outboxes, both rows written in the same transaction as the state they follow from, so a
task can never be lost between a commit and a publish:

- registrations stored and not yet started (``registrations.dispatched_at IS NULL``): the
  dispatcher creates their check rows (email, phone and Dukcapil pending, the photo waiting
  for its upload) and marks the registration started, in one transaction. Doing this here
  rather than in the persist worker keeps the intake peak's write path to one row per
  registration; the fan-out follows at the pace of verification;
- pending check rows not yet published (``checks.dispatched_at IS NULL``: the ones just
  created, and those started later, e.g. Dapodik and DTKS after a Dukcapil match): their task
  is published and the row marked.

The check rows are committed before their tasks are published, so a lane never receives a task
whose row it cannot see yet.

Each round takes up to ``dispatch_batch_max`` rows with ``FOR UPDATE SKIP LOCKED`` (several
dispatchers share the work), publishes with confirms, marks the confirmed ones and commits (when
some publishes of a round fail, the confirmed ones are marked all the same). A crash after a
publish and before the commit publishes those tasks again: duplicates are harmless, every step
is idempotent. It wakes on ``NOTIFY intake_outbox`` and polls once a second otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal

import aio_pika
import asyncpg
from aio_pika.abc import AbstractExchange

from core import broker, checks, database, metrics, metrics_http, topology
from core.checks import OUTBOX_CHANNEL
from core.funnel import FunnelCollector
from core.health import Health
from core.queues import QueueCollector
from core.retention import Periods
from core.retention_metrics import RetentionCollector
from core.settings import Settings
from core.status import HOLD_SIGNAL, RELEASE_SIGNAL
from core.verification import Check, Task
from core.wave_metrics import WaveCollector
from workers.sessions import CONFIRM_TIMEOUT_S, HEARTBEAT_S, keep_running

log = logging.getLogger(__name__)

POLL_S = 1.0


class Dispatcher:
    """Moves tasks from the outbox to the lanes until :meth:`stop`."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, health: Health | None = None
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.dispatched = 0
        # Held back (intake supervise, while an edge sheds or is late): the outbox waits in
        # PostgreSQL.
        self.held = False
        self.health = health if health is not None else Health()  # what its probes read
        metrics.init_dispatch()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def hold(self, held: bool) -> None:
        """Hold back (publish nothing from the outbox) or let go again."""
        if held != self.held:
            self.held = held
            self._wake.set()
            log.info("dispatcher held back" if held else "dispatcher resumes")

    async def run(self) -> None:
        """Dispatch until stopped, starting again when the broker or the database goes away."""
        await keep_running(
            self._failover_aware_session,
            self._stopping,
            "dispatcher",
            also=(asyncpg.PostgresError, *database.FAILOVER),
            health=self.health,
        )

    async def _failover_aware_session(self) -> None:
        try:
            await self._session()
        except database.FAILOVER as exc:
            # The next session's connections go to the primary of then (core/database.py).
            await database.expire_on_failover(self._pool, exc)
            raise

    async def _session(self) -> None:
        connection = await broker.connect(self._settings.amqp_url, heartbeat_s=HEARTBEAT_S)
        listener = await self._pool.acquire()
        try:
            await listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
            async with connection:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                lanes = await topology.declare_lanes(
                    channel, self._settings, tuple(c.value for c in Check)
                )
                log.info("dispatcher running")
                self.health.serving(True)
                while not self._stopping.is_set():
                    self.health.beat()
                    self._wake.clear()
                    if not self.held and await self.dispatch_once(lanes.verify_exchange):
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_S)
        finally:
            try:
                with contextlib.suppress(asyncpg.InterfaceError, OSError):
                    await listener.remove_listener(OUTBOX_CHANNEL, self._on_notify)
            finally:
                # Whatever the UNLISTEN raised: a connection never released holds the pool's
                # close, and so the worker's exit after SIGTERM, for ever.
                await self._pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def dispatch_once(self, exchange: AbstractExchange) -> int:
        """One round of both outboxes; return how many tasks were published."""
        started = await self._start_registrations()
        return started + await self._publish_pending(exchange)

    async def _start_registrations(self) -> int:
        """Create the first check rows of registrations not started yet; return how many."""
        async with self._pool.acquire() as connection, connection.transaction():
            ids = await checks.start_registrations(connection, self._settings.dispatch_batch_max)
        return len(ids)

    async def _publish_pending(self, exchange: AbstractExchange) -> int:
        """Publish a batch of pending checks' tasks and mark those the broker confirmed. When
        some publishes fail (a nack, a return, the channel lost mid-batch), the confirmed ones
        are still marked and committed before the failure ends the session: marking none
        would publish them again in the next round (a ministry called twice)."""
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await checks.take_pending(connection, self._settings.dispatch_batch_max)
            if not rows:
                return 0
            tasks = [
                Task(row["registration_id"], Check(row["check_name"]), row["attempts"] + 1)
                for row in rows
            ]
            results = await asyncio.gather(
                *(publish_task(exchange, task) for task in tasks), return_exceptions=True
            )
            published = [t for t, result in zip(tasks, results, strict=True) if result is None]
            if published:
                await checks.mark_published(
                    connection, [(t.registration_id, t.check) for t in published]
                )
        self.dispatched += len(published)
        for lane, count in collections.Counter(t.check.value for t in published).items():
            metrics.DISPATCHED.labels(lane).inc(count)  # committed: published once here
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the rest stay pending, for the next session
        return len(published)


async def publish_task(
    exchange: AbstractExchange,
    task: Task,
    routing_key: str | None = None,
    expiration_s: float | None = None,
    timeout_s: float = CONFIRM_TIMEOUT_S,
) -> None:
    """Publish a task persistent and mandatory and wait for the broker's confirm, at most
    ``timeout_s`` (``TimeoutError`` then)."""
    await exchange.publish(
        aio_pika.Message(
            task.to_json(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"{task.registration_id}:{task.check}:{task.attempt}",
            expiration=expiration_s,
        ),
        routing_key or task.check.value,
        mandatory=True,
        timeout=timeout_s,
    )


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker dispatch``. With ``INTAKE_METRICS_PORT`` set it also
    serves the funnel, the waves and the retention job's record (from PostgreSQL) and the queue
    depths (from RabbitMQ): the dispatcher runs once per deployment, so a cluster has those
    figures once."""
    health = Health()
    queues = QueueCollector(settings.amqp_url)
    # The probes answer from the start; the funnel joins the scrape once there is a pool.
    async with metrics_http.serving(settings, collectors=[queues], health=health) as endpoint:
        pool = await database.create_pool(
            settings.database_url,
            name="intake-dispatch",
            min_size=1,
            max_size=3,
            attempted=health.beat,
        )
        if endpoint is not None:
            endpoint.add(FunnelCollector(pool))
            endpoint.add(WaveCollector(pool))
            endpoint.add(RetentionCollector(pool, Periods.from_settings(settings)))
        try:
            dispatcher = Dispatcher(settings, pool, health)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, dispatcher.stop)
            loop.add_signal_handler(HOLD_SIGNAL, dispatcher.hold, True)
            loop.add_signal_handler(RELEASE_SIGNAL, dispatcher.hold, False)
            await dispatcher.run()
        finally:
            await queues.close()
            await database.close_pool(pool)
