"""The participation worker: test answers and wave joins from RabbitMQ into PostgreSQL.

It consumes ``intake.tests`` and ``intake.joins`` (``core/topology.py``), published by the edge
(``intake/participation_routes.py``) with its receive time, and writes each once:

- a submission is scored with the question bank and written with ``UPDATE test_attempts ...
  WHERE score IS NULL``, only if the edge received it before the attempt's deadline (a late
  one is refused here too, whatever the edge said: the message's time decides, not when the
  worker gets to it);
- a join is inserted into ``wave_joins`` (``ON CONFLICT DO NOTHING``) only if the wave was open
  at the join's receive time, and its selection has not run yet (a join delayed in the queue
  past the selection would otherwise be a join nobody ranked).

Each message is acknowledged after its transaction committed, so a crash (``kill -9``) at any
point leads to a redelivery, and the idempotent writes make that one write. A message that
cannot be opened or read is returned to the queue (``nack``, requeue): the quorum queue counts
its deliveries and dead-letters it past the delivery limit (``intake.tests.dlq``,
``intake.joins.dlq``). PostgreSQL unreachable: the message is retried with backoff,
unacknowledged, until it works or the worker stops (then the broker redelivers it).
Outcomes are counted (``intake_test_submissions_total``, ``intake_wave_joins_total``): no ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter

from core import broker, database, metrics, metrics_http, questions, topology
from core.health import Health
from core.keys import Keyring
from core.migrate import wait_until_migrated
from core.participation import Join, MessageError, Submission
from core.questions import Bank
from core.settings import Settings
from core.status import HOLD_SIGNAL, RELEASE_SIGNAL, reporting
from workers.sessions import BROKER_GONE, HEARTBEAT_S, keep_running

log = logging.getLogger(__name__)

T = TypeVar("T")

# The attempt, locked: a redelivery racing its first delivery (after a consumer's connection
# was lost) waits, then finds it scored.
_ATTEMPT_SQL = """
SELECT questions, deadline_at, score FROM test_attempts
WHERE registration_id = $1 AND wave_id = $2 AND attempt = $3 FOR UPDATE
"""
_SCORE_SQL = """
UPDATE test_attempts
SET submitted_at = $4, answers = $5, correct = $6, score = $7, scored_at = now()
WHERE registration_id = $1 AND wave_id = $2 AND attempt = $3 AND score IS NULL
  AND $4 < deadline_at
"""
# The join, if the wave was open at its receive time ($4) and not selected yet. Of two joins
# of one registrant (both answered 202 before either was stored), the one the edge received
# first is kept, whatever the order they are stored in (a worker handles several messages at
# once): a later-stored earlier join replaces the row, once, before any selection.
_JOIN_SQL = """
INSERT INTO wave_joins AS j (wave_id, registration_id, situation, joined_at)
SELECT w.id, $2, $3, $4 FROM waves w
WHERE w.id = $1 AND w.opens_at <= $4 AND w.closes_at > $4
  AND (w.closed_at IS NULL OR w.closed_at > $4)
  AND NOT EXISTS (SELECT 1 FROM wave_selections s WHERE s.wave_id = w.id)
ON CONFLICT (wave_id, registration_id) DO UPDATE
    SET situation = excluded.situation, joined_at = excluded.joined_at
    WHERE excluded.joined_at < j.joined_at AND j.outcome IS NULL
RETURNING xmax = 0 AS inserted
"""


async def score(connection: asyncpg.Connection, bank: Bank, submission: Submission) -> str:
    """Score and write ``submission`` in the caller's transaction; its outcome."""
    key = (submission.registration_id, submission.wave_id, submission.attempt)
    row = await connection.fetchrow(_ATTEMPT_SQL, *key)
    if row is None:
        return "unknown_attempt"
    if row["score"] is not None:
        return "already_scored"
    if submission.received_at >= row["deadline_at"]:
        return "late"
    asked: list[str] = orjson.loads(row["questions"])
    answers = {qid: index for qid, index in submission.answers.items() if qid in asked}
    correct, result = bank.score(asked, answers)
    await connection.execute(
        _SCORE_SQL, *key, submission.received_at, orjson.dumps(answers).decode(), correct, result
    )
    return "scored"


async def join(connection: asyncpg.Connection, message: Join) -> str:
    """Write ``message`` in the caller's transaction; its outcome."""
    stored = await connection.fetchval(
        _JOIN_SQL,
        message.wave_id,
        message.registration_id,
        message.situation.value,
        message.received_at,
    )
    if stored:  # inserted (True); an earlier join replacing a later one (False) is a repeat
        return "joined"
    if await connection.fetchval(
        "SELECT 1 FROM wave_joins WHERE wave_id = $1 AND registration_id = $2",
        message.wave_id,
        message.registration_id,
    ):
        return "already_joined"
    if await connection.fetchval(
        "SELECT 1 FROM wave_selections WHERE wave_id = $1", message.wave_id
    ):
        return "after_selection"
    return "wave_not_open"


class ParticipationWorker:
    """Consumes ``intake.tests`` and ``intake.joins`` until :meth:`stop`; see the module."""

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        pool: asyncpg.Pool,
        bank: Bank,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._pool = pool
        self._bank = bank
        self._stopping = asyncio.Event()
        self._held = 0  # delivered and not yet acked or nacked
        self._idle = asyncio.Event()
        self._idle.set()
        self.processed = 0
        self.health = health if health is not None else Health()
        metrics.init_participation()

    def stop(self) -> None:
        """Stop consuming, finish what was delivered, then return from :meth:`run`."""
        self._stopping.set()

    def status(self) -> dict[str, object]:
        """The worker's status file (``core.status``): messages handled and in hand."""
        return {
            "kind": "participation",
            "pid": os.getpid(),
            "processed": self.processed,
            "inflight": self._held,
        }

    async def run(self) -> None:
        """Consume until stopped, reconnecting to the broker with backoff when it goes away."""
        await keep_running(self._session, self._stopping, "participation", health=self.health)

    async def _session(self) -> None:
        connection = await broker.connect(self._settings.amqp_url, heartbeat_s=HEARTBEAT_S)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._settings.participation_prefetch)
            declared = await topology.declare(channel, self._settings)
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_: lost.set())
            consumers = [
                (declared.tests_queue, await declared.tests_queue.consume(self._on_test)),
                (declared.joins_queue, await declared.joins_queue.consume(self._on_join)),
            ]
            log.info("participation worker consuming")
            self.health.serving(True)
            ended = [asyncio.create_task(e.wait()) for e in (self._stopping, lost)]
            try:
                while not any(task.done() for task in ended):
                    # Waiting for deliveries is not being stuck.
                    self.health.beat()
                    await asyncio.wait(ended, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in ended:
                    task.cancel()
            if not lost.is_set():
                # Graceful stop: no new deliveries, then finish (and ack) those in hand.
                for queue, tag in consumers:
                    await queue.cancel(tag)
                await self._idle.wait()
            log.info("participation worker stopped consuming")

    async def _on_test(self, message: AbstractIncomingMessage) -> None:
        await self._handle(message, Submission.open, self._score, metrics.TEST_SUBMISSIONS)

    async def _on_join(self, message: AbstractIncomingMessage) -> None:
        await self._handle(message, Join.open, join, metrics.WAVE_JOINS)

    async def _score(self, connection: asyncpg.Connection, submission: Submission) -> str:
        return await score(connection, self._bank, submission)

    async def _handle(
        self,
        message: AbstractIncomingMessage,
        opener: Callable[[Keyring, bytes], T],
        write: Callable[[asyncpg.Connection, T], Awaitable[str]],
        counter: Counter,
    ) -> None:
        self._held += 1
        self._idle.clear()
        self.health.delivered()
        try:
            try:
                item = opener(self._keyring, message.body)
            except MessageError as exc:
                log.warning("unreadable participation message: %s", exc)
                counter.labels("unreadable").inc()
                await message.nack(requeue=True)
                return
            try:
                outcome = await self._write(write, item)
            except asyncpg.PostgresError as exc:
                # Not a passing failure (e.g. a registration or wave that does not exist):
                # back to the queue, dead-lettered past the delivery limit.
                log.warning("participation write refused: %s", type(exc).__name__)
                counter.labels("unreadable").inc()
                await message.nack(requeue=True)
                return
            if outcome is None:
                return  # stopping with the database away: the broker redelivers it
            try:
                await message.ack()
            except BROKER_GONE as exc:
                # Committed, not acknowledged: redelivered, and found written then.
                log.warning("ack lost: %s", type(exc).__name__)
                return
            counter.labels(outcome).inc()
            self.processed += 1
        finally:
            self._held -= 1
            if not self._held:
                self._idle.set()

    async def _write(
        self, write: Callable[[asyncpg.Connection, T], Awaitable[str]], item: T
    ) -> str | None:
        """The outcome of ``write`` in a transaction of its own, retried with backoff while
        PostgreSQL is unreachable; None if the worker stops meanwhile."""
        delay_s = 0.1
        while True:
            try:
                async with self._pool.acquire() as connection, connection.transaction():
                    return await write(connection, item)
            except database.TRANSIENT as exc:
                if self._stopping.is_set():
                    return None
                log.warning("database unavailable (%s): retrying", type(exc).__name__)
            await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
            delay_s = min(delay_s * 2, 5.0)


async def serve(settings: Settings) -> None:
    """Entry point of ``intake worker participation``: consume until SIGTERM, exit."""
    keyring = Keyring.from_secret(settings.secret_key)
    bank = questions.load(settings.test_bank)
    health = Health()
    async with metrics_http.serving(settings, health=health):
        pool = await database.create_pool(
            settings.database_url,
            name="intake-participation",
            min_size=1,
            max_size=4,
            attempted=health.beat,
        )
        async with database.closing(pool):
            async with pool.acquire() as connection:
                await wait_until_migrated(connection, waited=health.beat)
            worker = ParticipationWorker(settings, keyring, pool, bank, health)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            # intake supervise holds verification back while an edge sheds (a signal, and the
            # lowest CPU priority): this worker takes the priority but not the hold (its writes
            # are small, and a registrant waits for a score), so the signals do nothing here.
            for sig in (HOLD_SIGNAL, RELEASE_SIGNAL):
                loop.add_signal_handler(sig, lambda: None)
            async with reporting(settings.worker_status_file, worker.status):
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.run()
