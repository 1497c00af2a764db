"""The lane runtime: consumes one check's queue and runs its verifier on each task.

Outcomes map to state, acknowledgements and retries here, in one place:

- :class:`~core.verification.Passed`: the check is recorded (passed, or waiting for the
  registrant) with its follow-up checks and the registration's decision, in one transaction;
  then the task is acknowledged;
- :class:`~core.verification.Reject`: the check failed, the registration is rejected with the
  reason; then ack;
- :class:`~core.verification.Review`: the check is final ('failed' with the reason) and the
  registration goes to 'review' for a person; then ack;
- :class:`~core.verification.Retry` (or any unexpected error): the next attempt is published to
  a delay queue with exponential backoff and full jitter, confirmed, the check recorded as
  retrying; then ack. Nothing sits unacknowledged while it waits. After ``lane_max_attempts`` the
  task is dead-lettered to the lane's DLQ with ``x-intake-reason`` and the check stays retrying,
  for an operator to replay;
- a task that cannot be parsed is returned to the queue and dead-lettered by RabbitMQ past the
  delivery limit; a task whose check is already final is acknowledged without calling anyone.

Deliveries are at least once; every step is idempotent (the check row is locked and its state
read before anything is recorded), so a redelivered task never applies an outcome twice.

Each call to the verifier passes the lane's gate first (``workers/flow.py``: adaptive
concurrency limit, circuit breaker, optional shared rate cap). The consumer follows the gate:
its prefetch is the limit plus a little headroom, re-set when the limit has moved enough; while
the breaker is open the lane cancels its consumer (the backlog waits in the queue, tasks already
in hand wait for the breaker), and a half-open breaker consumes one task at a time for probes.
An operator can force the breaker open or closed, and a registry's maintenance window forces it
open (``core/controls.py``, applied by ``workers/controls.py``): the lane then behaves as with
its breaker open, without a call or an attempt counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
import aiohttp
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from core import broker, checks, database, metrics, metrics_http, topology
from core.checks import FINAL_STATES
from core.controls import BreakerMode, LaneControls
from core.health import Health
from core.keys import DecryptionError, Keyring
from core.settings import Settings
from core.status import HOLD_SIGNAL, RELEASE_SIGNAL, reporting
from core.verification import (
    Check,
    Passed,
    Reject,
    Retry,
    Review,
    Subject,
    Task,
    TaskError,
    Verifier,
)
from workers import flow
from workers.controls import ControlWatcher
from workers.dispatch import publish_task
from workers.sessions import (
    BROKER_GONE,
    CONFIRM_TIMEOUT_S,
    HEARTBEAT_S,
    STALL_S,
    ConsumerStalled,
    SessionBroken,
    keep_running,
    ready_messages,
    resubscribe_reason,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class HeldOpen(Exception):
    """Raised by :meth:`LaneWorker._permit` when the lane has been forced open for
    ``lane_control_hand_back_s`` while the task waited: it goes back to its queue."""


class LaneWorker:
    """Runs one verifier on its lane until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        pool: asyncpg.Pool,
        verifier: Verifier,
        gate: flow.LaneGate | None = None,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._pool = pool
        self._verifier = verifier
        self._check = verifier.check
        self.gate = gate if gate is not None else build_gate(settings, verifier.check, pool)
        self._stopping = asyncio.Event()
        # Set by a handler whose publish or ack failed: the session ends (SessionBroken).
        self._broken = asyncio.Event()
        self._lanes: topology.LaneTopology | None = None
        # The deliveries in hand: each one's handler, with its stage and since when (status).
        self._in_hand: dict[asyncio.Task[None], tuple[str, float]] = {}
        # This session's deliveries not acknowledged (or given back) yet, by delivery tag.
        self._unsettled: dict[int, AbstractIncomingMessage] = {}
        # Tasks to publish again in the next session (see _orphaned).
        self._orphans: list[bytes] = []
        self.republished = 0
        self.handed_back = 0  # tasks given back to the queue while the lane was forced open
        self.outcomes: dict[str, int] = {}  # tasks finished, by outcome (metrics.LANE_OUTCOMES)
        self.processed = 0
        lane = self._check.value
        metrics.init_lane(lane)
        self._tasks = {o: metrics.LANE_TASKS.labels(lane, o) for o in metrics.LANE_OUTCOMES}
        self._task_duration = metrics.LANE_TASK_DURATION.labels(lane)
        self._in_hand_gauge = metrics.LANE_IN_HAND.labels(lane)
        self._calls = {s: metrics.SERVICE_CALLS.labels(lane, s.value) for s in flow.Signal}
        self.prefetch = 0  # the consumer's prefetch; 0 while not consuming
        self._last_delivery_s = 0.0  # when the last task was delivered (monotonic)
        self.stalls = 0  # sessions ended because the consumer was stuck (see _stalled)
        self.sessions_broken = 0  # sessions ended because a publish or an ack failed
        # Held back (intake supervise, while an edge sheds or is late): no new deliveries, the
        # tasks in hand finish; the backlog waits in the queue.
        self.held = False
        self._held_changed = asyncio.Event()
        self.health = health if health is not None else Health()  # what its probes read
        # The operators' controls (a forced breaker, a maintenance window), applied to the gate.
        self.controls = ControlWatcher(
            LaneControls(pool),
            self._check,
            self.gate,
            settings.lane_control_poll_s,
            on_change=self._held_changed.set,
        )

    def status(self) -> dict[str, object]:
        """What ``intake supervise`` reads from the worker's status file."""
        return {
            "kind": self._check.value,
            "pid": os.getpid(),
            "processed": self.processed,
            "prefetch": self.prefetch,
            "held": self.held,
            "maintenance": self.controls.control.window is not None,
            **self.gate.snapshot(),
            **self._in_hand_status(),
        }

    @property
    def in_hand(self) -> int:
        """The deliveries in hand now."""
        return len(self._in_hand)

    def _in_hand_status(self) -> dict[str, object]:
        """The deliveries in hand by stage, and how long the oldest has been in hand: a task
        stuck in one stage (a confirm that never comes, a gate that never opens) shows here."""
        now = time.monotonic()
        stages = collections.Counter(stage for stage, _ in self._in_hand.values())
        oldest = min((since for _, since in self._in_hand.values()), default=now)
        return {"in_hand": dict(stages), "oldest_in_hand_s": round(now - oldest, 1)}

    def _stage(self, stage: str) -> None:
        """Record the stage the current delivery's handler has reached."""
        current = asyncio.current_task()
        if current in self._in_hand:
            self._in_hand[current] = (stage, self._in_hand[current][1])

    def stop(self) -> None:
        self._stopping.set()

    def hold(self, held: bool) -> None:
        """Hold back (stop taking tasks, finish those in hand) or let go again."""
        if held != self.held:
            self.held = held
            self._held_changed.set()
            log.info(
                "lane held back" if held else "lane resumes",
                extra={"fields": {"lane": self._check.value}},
            )

    async def run(self) -> None:
        # The controls are read before the first delivery: a lane starting during a
        # maintenance window must not make a call first.
        await self.controls.refresh()
        gauges = asyncio.create_task(self._export_gauges())
        controls = asyncio.create_task(self.controls.run())
        try:
            await self._run()
        finally:
            for task in (gauges, controls):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            close = getattr(self._verifier, "close", None)
            if close is not None:
                await close()  # e.g. the photo verifier's process pool

    async def _export_gauges(self) -> None:
        """The gate writes its gauges when they change; this writes them at least once a
        second too (and so turns an open breaker half-open in them when its wait is over)."""
        while True:
            self.gate.export()
            await asyncio.sleep(1.0)

    async def _run(self) -> None:
        await keep_running(self._session, self._stopping, f"lane {self._check}", health=self.health)

    async def _session(self) -> None:
        connection = await broker.connect(self._settings.amqp_url, heartbeat_s=HEARTBEAT_S)
        self._broken.clear()
        try:
            async with connection:
                await self._consume(connection)
        finally:
            # Whatever is still in hand belongs to a channel that is closed now: its messages
            # go back to the queue. Its handlers are cancelled, so that none lingers into the
            # next session (one stuck for good would keep the lane from ever looking stalled).
            leftover = set(self._in_hand)
            for handler in leftover:
                handler.cancel()
            if leftover:
                await asyncio.wait(leftover, timeout=5)
        if self._broken.is_set():
            self.sessions_broken += 1
            metrics.CONSUMER_RESUBSCRIPTIONS.labels(self._check.value, "broken").inc()
            raise SessionBroken(f"{self._check.value}: a publish or an acknowledgement failed")

    async def _consume(self, connection: aio_pika.abc.AbstractConnection) -> None:
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._lanes = await topology.declare_lanes(channel, self._settings, (self._check,))
        await self._republish_orphans()
        self._unsettled = {}
        consumer = _Consumer(channel, self._lanes.queues[self._check], self._on_message)
        log.info("lane consuming", extra={"fields": {"lane": self._check.value}})
        self.health.serving(True)
        self._last_delivery_s = time.monotonic()
        next_check_s = self._last_delivery_s + STALL_S
        ended = (self._stopping, lost, self._broken)
        try:
            while not any(event.is_set() for event in ended):
                self.health.beat()
                self.prefetch = await consumer.follow(self._wanted_prefetch())
                await self._wait_for_change(lost)
                if time.monotonic() >= next_check_s:
                    next_check_s = time.monotonic() + STALL_S
                    why = await self._stalled(connection)
                    if why == "stalled":
                        self.stalls += 1
                        self.health.stalled()
                        log.warning(
                            "lane consumer stalled: reconnecting",
                            extra={"fields": {"lane": self._check.value}},
                        )
                    if why is not None:
                        metrics.CONSUMER_RESUBSCRIPTIONS.labels(self._check.value, why).inc()
                        raise ConsumerStalled(f"{self._check.value} {why}")
        finally:
            self.prefetch = 0
            if lost.is_set() or connection.is_closed:
                self._orphaned(consumer.cancelled)
        if self._stopping.is_set() and not (lost.is_set() or self._broken.is_set()):
            # Graceful stop: no new deliveries; finish the tasks in hand, then close.
            await consumer.follow(0)
            if self._in_hand:
                await asyncio.wait(set(self._in_hand), timeout=30)

    def _orphaned(self, cancelled: set[str]) -> None:
        """The connection was lost: keep, to publish again, the deliveries not settled
        that came through a consumer cancelled meanwhile (the lane cancels and subscribes
        afresh to move its prefetch, and whenever its breaker opens or it is held back). Their
        handlers may be gone already: the channel's close cancels them.

        RabbitMQ 3.10's quorum queues give back what a consumer held when its node goes away
        only if the consumer was still up (``rabbit_fifo``, ``{down, Pid, noconnection}``); a
        cancelled one keeps its deliveries checked out, unacknowledged for good (until the
        queue's leader changes), and its tasks would never be handled. Publishing them again
        costs at worst a duplicate, which every step tolerates (the state is read first, a
        contact is sent once per generation)."""
        for message in self._unsettled.values():
            if message.consumer_tag in cancelled:
                self._orphans.append(message.body)
        self._unsettled = {}

    async def _republish_orphans(self) -> None:
        """Publish again the tasks kept by :meth:`_orphaned` (each confirmed, else kept for
        the next session)."""
        assert self._lanes is not None
        count = len(self._orphans)
        while self._orphans:
            body = self._orphans[0]
            try:
                task = Task.from_json(body)
            except TaskError:
                self._orphans.pop(0)  # it came in unreadable; the queue had dead-lettered it
                continue
            await publish_task(self._lanes.verify_exchange, task, timeout_s=CONFIRM_TIMEOUT_S)
            self._orphans.pop(0)
            self.republished += 1
            metrics.LANE_REPUBLISHED.labels(self._check.value).inc()
        if count:
            log.info(
                "tasks held under a cancelled consumer published again",
                extra={"fields": {"lane": self._check.value, "count": count}},
            )

    async def _stalled(self, connection: aio_pika.abc.AbstractConnection) -> str | None:
        """Why the consumer should subscribe afresh (workers.sessions.resubscribe_reason)."""
        queue = topology.lane_queue(self._check.value)
        return await resubscribe_reason(
            time.monotonic() - self._last_delivery_s,
            self.prefetch == 0 or bool(self._in_hand),
            lambda: ready_messages(connection, queue),
        )

    def _wanted_prefetch(self) -> int:
        """Deliveries to hold: none while the breaker is open (or forced open by an operator,
        or a maintenance window is on), one per probe while half-open, else the limit plus a
        quarter (at least two) so that the next task is at hand."""
        state = self.gate.state
        if state is flow.BreakerState.OPEN or self.held:
            return 0
        if state is flow.BreakerState.HALF_OPEN:
            return 1
        limit = math.ceil(self.gate.limit.steady)
        return min(self._settings.lane_prefetch, limit + max(2, math.ceil(limit / 4)))

    async def _wait_for_change(self, lost: asyncio.Event) -> None:
        """Until the breaker changes state, a second passes, or the session ends."""
        changed = self.gate.breaker.changed
        changed.clear()
        self._held_changed.clear()
        events = (changed, self._held_changed, lost, self._stopping, self._broken)
        waits = [asyncio.create_task(event.wait()) for event in events]
        remaining = self.gate.breaker.open_remaining_s()
        timeout = min(1.0, remaining + 0.01) if remaining else 1.0
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs each delivery in a task of its own; prefetch bounds how many at once.
        current = asyncio.current_task()
        assert current is not None
        self._last_delivery_s = time.monotonic()
        self.health.delivered()
        self._in_hand[current] = ("load", time.monotonic())
        self._in_hand_gauge.inc()
        unsettled = self._unsettled  # this session's
        if message.delivery_tag is not None:
            unsettled[message.delivery_tag] = message
        started = time.perf_counter()
        try:
            outcome = await self._handle(message)
            unsettled.pop(message.delivery_tag or 0, None)  # acknowledged, or given back
        except BROKER_GONE as exc:
            # No confirm for a publish, or the channel gone under an ack: the message stays
            # unacknowledged; the session ends, and its close gives the message back.
            log.warning(
                "lane session broken: %s",
                type(exc).__name__,
                extra={"fields": {"lane": self._check.value}},
            )
            self._broken.set()
            outcome = None
        finally:
            self._in_hand.pop(current, None)
            self._in_hand_gauge.dec()
        if outcome is not None:  # finished and acknowledged
            self._count(outcome)
            self._task_duration.observe(time.perf_counter() - started)

    async def _handle(self, message: AbstractIncomingMessage) -> str | None:
        """Handle one delivery; return the task's outcome (``metrics.LANE_OUTCOMES``) once it
        is acknowledged, None when it was not (returned to the queue, or the worker stops)."""
        try:
            task = Task.from_json(message.body)
        except TaskError as exc:
            log.warning(
                "unreadable task returned to the queue", extra={"fields": {"error": str(exc)}}
            )
            await message.nack(requeue=True)
            return None
        state, subject = await self._db(functools.partial(self._load, task))
        if state is None or state in FINAL_STATES:
            await message.ack()
            self.processed += 1
            return "skipped"
        if subject is None:
            log.error("registration data unreadable; task dead-lettered")
            await self._dead_letter(task, "unreadable_registration")
            await message.ack()
            self.processed += 1
            return "dead_lettered"
        self._stage("permit")
        try:
            permit = await self._permit()
        except HeldOpen:
            await self._hand_back(task, message)
            return None
        if permit is None:
            return None  # stopping: the task goes back to the queue when the channel closes
        outcome: Passed | Reject | Review | Retry
        called = time.perf_counter()
        self._stage("verify")
        try:
            outcome = await self._verifier.verify(task, subject)
        except (Reject, Review, Retry) as exc:
            outcome = exc
        except Exception as exc:  # a verifier bug must not lose the task: retry it
            log.exception("verifier failed: %s", type(exc).__name__)
            outcome = Retry(f"internal:{type(exc).__name__}")
        except BaseException:  # cancelled mid-call: the service said nothing
            self.gate.release(permit, flow.Signal.NEUTRAL)
            self._calls[flow.Signal.NEUTRAL].observe(time.perf_counter() - called)
            raise
        signal = flow.classify(outcome if isinstance(outcome, Retry) else None)
        self._calls[signal].observe(time.perf_counter() - called)
        self.gate.release(permit, signal)
        if isinstance(outcome, Retry):
            self._stage("retry")
            result = await self._retry(task, outcome)
        else:
            self._stage("record")
            result = await self._db(functools.partial(self._record, task, outcome))
        self._stage("ack")
        await message.ack()
        self.processed += 1
        return result

    async def _db(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` (reads, or one transaction) until it completes. A failover's
        errors and the other transient ones (core/database.py) are retried here, in place,
        with backoff, on fresh connections: never by leaving the message unacknowledged (the
        lane would hold it until its channel closed) or giving it back (its redelivery would
        call the service, or send the email or SMS, again, and count towards the queue's
        delivery limit). While the worker stops, the error is raised: the message goes back."""
        delay_s = 0.1
        while True:
            try:
                return await operation()
            except database.TRANSIENT as exc:
                await database.expire_on_failover(self._pool, exc)
                if self._stopping.is_set():
                    raise
                log.warning("database unavailable, retrying: %s", type(exc).__name__)
            await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
            delay_s = min(delay_s * 2, 5.0)

    async def _load(self, task: Task) -> tuple[str | None, Subject | None]:
        """The check's state, and the subject to verify unless the check is final already
        (None when the registration's data cannot be read)."""
        async with self._pool.acquire() as connection:
            state = await checks.state_of(connection, task.registration_id, task.check)
            if state is None or state in FINAL_STATES:
                return state, None
            try:
                subject = await checks.load_subject(connection, self._keyring, task.registration_id)
            except DecryptionError:
                subject = None
            return state, subject

    async def _permit(self) -> flow.Permit | None:
        """Wait for the gate, unless the worker stops first (None), or the lane has been
        forced open for ``lane_control_hand_back_s`` while this task waited (:exc:`HeldOpen`).
        A permit granted to a wait that was abandoned (the worker stops, or this task is
        cancelled: its connection was lost) is given back at once: kept, it would be a slot of
        the limit lost for good, and a lane whose slots were all lost that way waits for ever."""
        acquire = asyncio.ensure_future(self.gate.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        held_open = asyncio.ensure_future(self._held_open(time.monotonic()))
        try:
            await asyncio.wait({acquire, stop, held_open}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(acquire)
            raise
        finally:
            stop.cancel()
            held_open.cancel()
        if acquire.done():
            return acquire.result()
        self._abandon(acquire)
        if held_open.done() and not held_open.cancelled():
            raise HeldOpen
        return None

    async def _held_open(self, since: float) -> None:
        """Until the gate has been forced open for ``lane_control_hand_back_s``, counted from
        ``since`` at the earliest."""
        wait_s = self._settings.lane_control_hand_back_s
        while True:
            if self.gate.forced is BreakerMode.OPEN:
                left = max(since, self.gate.forced_since) + wait_s - time.monotonic()
                if left <= 0:
                    return
            else:
                left = wait_s
            await asyncio.sleep(min(1.0, left))

    async def _hand_back(self, task: Task, message: AbstractIncomingMessage) -> None:
        """Give a task the lane cannot start back to its queue: published again (confirmed),
        then acknowledged. A fresh message, so nothing counts towards the queue's delivery
        limit; no call was made, so no attempt is counted. At worst (a crash between the two)
        the task is there twice, which every step tolerates."""
        self._stage("hand_back")
        assert self._lanes is not None
        await publish_task(self._lanes.verify_exchange, task, timeout_s=CONFIRM_TIMEOUT_S)
        await message.ack()
        self.handed_back += 1
        metrics.LANE_HANDED_BACK.labels(self._check.value).inc()

    def _abandon(self, acquire: asyncio.Future[flow.Permit]) -> None:
        """Give up a wait for a permit; release the permit if it was (or is being) granted."""

        def release(future: asyncio.Future[flow.Permit]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.gate.release(future.result(), flow.Signal.NEUTRAL)

        acquire.add_done_callback(release)
        acquire.cancel()

    async def _record(self, task: Task, outcome: Passed | Reject | Review) -> str:
        """Record the outcome; return it as a task outcome (once committed)."""
        async with self._pool.acquire() as connection, connection.transaction():
            state = await checks.lock_state(connection, task.registration_id, task.check)
            if state is None or state in FINAL_STATES:
                return "skipped"  # a redelivery raced an earlier delivery: the first stands
            if isinstance(outcome, Passed):
                await checks.record_passed(connection, task.registration_id, task.check, outcome)
                result = "waiting" if outcome.waiting else "passed"
            elif isinstance(outcome, Review):
                await checks.record_review(
                    connection, task.registration_id, task.check, outcome.reason
                )
                result = "review"
            else:
                await checks.record_failed(
                    connection, task.registration_id, task.check, outcome.reason
                )
                result = "rejected"
        if isinstance(outcome, Reject | Review):
            metrics.LANE_REJECTIONS.labels(
                self._check.value, metrics.reason_label(outcome.reason)
            ).inc()
        return result

    async def _retry(self, task: Task, retry: Retry) -> str:
        """Send the next attempt to a delay queue (or the task to the dead letters once its
        attempts are spent); return the task outcome.

        The check is recorded ``retrying`` *before* the next attempt exists: recorded after,
        a record held back by the database (a failover: it is retried in place) could land
        after the next attempt had already finished the check, and put a finished check back
        to ``retrying`` with no attempt left to finish it. If the publish fails after the
        record, the message is not acknowledged and comes back: one more attempt, none lost."""
        exhausted = task.attempt >= self._settings.lane_max_attempts
        reason = f"dead_lettered:{retry.reason}" if exhausted else retry.reason
        await self._db(functools.partial(self._mark_retrying, task, reason))
        if exhausted:
            await self._dead_letter(task, f"attempts_exhausted:{retry.reason}")
            return "dead_lettered"
        delay_s = retry.after_s if retry.after_s is not None else self.backoff_s(task.attempt)
        tier_s = topology.retry_tier(delay_s)
        assert self._lanes is not None
        await publish_task(
            self._lanes.delay_exchange,
            Task(task.registration_id, task.check, task.attempt + 1),
            routing_key=f"{tier_s}.{task.check}",
            expiration_s=min(delay_s, tier_s),
            timeout_s=CONFIRM_TIMEOUT_S,
        )
        metrics.LANE_RETRIES.labels(self._check.value, metrics.reason_label(reason)).inc()
        return "retry"

    async def _mark_retrying(self, task: Task, reason: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            state = await checks.lock_state(connection, task.registration_id, task.check)
            if state is not None and state not in FINAL_STATES:
                await checks.record_retrying(connection, task.registration_id, task.check, reason)

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS architecture blog): uniform in
        [0, base * 2^(attempt-1)], capped by the largest delay tier."""
        ceiling = min(
            self._settings.retry_base_delay_s * 2 ** (attempt - 1), topology.RETRY_TIERS_S[-1]
        )
        return max(0.05, random.uniform(0, ceiling))  # noqa: S311 - jitter, not secrecy

    async def _dead_letter(self, task: Task, reason: str) -> None:
        assert self._lanes is not None
        await self._lanes.dead_letter_exchange.publish(
            aio_pika.Message(
                task.to_json(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-intake-reason": reason},
            ),
            routing_key=topology.lane_queue(task.check),
            timeout=CONFIRM_TIMEOUT_S,
        )
        metrics.LANE_DEAD_LETTERED.labels(self._check.value).inc()
        log.warning(
            "task dead-lettered", extra={"fields": {"lane": task.check.value, "reason": reason}}
        )

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self._tasks[outcome].inc()


class _Consumer:
    """The lane's consumer, whose prefetch can change while it runs.

    RabbitMQ applies a per-consumer prefetch to consumers started *after* ``basic.qos``, and
    quorum queues have no channel-wide ("global") prefetch; so a new prefetch is cancel, qos,
    consume. Deliveries already in hand stay unacknowledged on the channel and are acknowledged
    as usual. Small changes are ignored, and changes come at most once a second, so that the
    consumer is not restarted on every window of the limit."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._callback = callback
        self._tag: str | None = None
        self._changed_at = -math.inf
        self.prefetch = 0
        self.cancelled: set[str] = set()  # the consumer tags cancelled on this channel

    async def follow(self, wanted: int) -> int:
        """Consume with prefetch ``wanted`` (0: stop consuming); return the prefetch now."""
        if wanted == self.prefetch:
            return wanted
        if self._tag is not None:
            if wanted > 0 and (
                abs(wanted - self.prefetch) < max(2, self.prefetch / 4)
                or time.monotonic() - self._changed_at < 1.0
            ):
                return self.prefetch
            self.cancelled.add(self._tag)
            await self._queue.cancel(self._tag)
            self._tag = None
            self.prefetch = 0
        if wanted > 0:
            await self._channel.set_qos(prefetch_count=wanted)
            self._tag = await self._queue.consume(self._callback)
            self.prefetch = wanted
        self._changed_at = time.monotonic()
        return self.prefetch


def build_gate(settings: Settings, check: Check, pool: asyncpg.Pool) -> flow.LaneGate:
    """The lane's gate as configured: limit (adaptive, or fixed), breaker, rate cap."""
    ceiling = float(settings.lane_prefetch)
    if settings.lane_limit_fixed:
        fixed = float(min(settings.lane_limit_fixed, settings.lane_prefetch))
        limit_config = flow.LimitConfig(initial=fixed, min_limit=fixed, max_limit=fixed)
    else:
        limit_config = flow.LimitConfig(
            initial=min(float(settings.lane_limit_initial), ceiling),
            max_limit=ceiling,
            probe_interval_s=settings.lane_limit_probe_interval_s,
        )
    breaker_config = flow.BreakerConfig(
        failure_rate=settings.breaker_failure_rate,
        open_s=settings.breaker_open_s,
        open_max_s=settings.breaker_open_max_s,
        probes=settings.breaker_probes,
    )
    rate = settings.rate_caps().get(check.value)
    return flow.LaneGate(
        flow.AdaptiveLimit(limit_config),
        flow.CircuitBreaker(breaker_config),
        flow.SharedRateCap(pool, check.value, rate) if rate else None,
        lane=check.value,
    )


async def serve(settings: Settings, check: Check) -> None:
    """Entry point of ``intake worker <check>``: run that lane until SIGTERM."""
    from verifiers import registry  # the composition root picks the verifier

    keyring = Keyring.from_settings(settings)
    health = Health()
    async with metrics_http.serving(settings, health=health):  # probes answer from the start
        pool = await database.create_pool(
            settings.database_url,
            name=f"intake-{check}",
            min_size=1,
            max_size=settings.lane_db_connections,
            attempted=health.beat,
        )
        connector = aiohttp.TCPConnector(limit=settings.lane_prefetch)
        async with database.closing(pool), aiohttp.ClientSession(connector=connector) as http:
            verifier = registry.build(check, settings, http, pool)
            await _serve(settings, LaneWorker(settings, keyring, pool, verifier, health=health))


async def _serve(settings: Settings, worker: LaneWorker) -> None:
    """Run ``worker`` until SIGTERM, with the signals and the status file of ``intake
    supervise``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    loop.add_signal_handler(HOLD_SIGNAL, worker.hold, True)
    loop.add_signal_handler(RELEASE_SIGNAL, worker.hold, False)
    # The status file (set by ``intake supervise``) lasts until the tasks in hand are done.
    async with reporting(settings.worker_status_file, worker.status):
        await worker.run()
