"""The edge's admission gate: one answer to "take this registration now?", asked twice.

First as the request is parsed (:mod:`intake.protocol`, the cheap early 503), then in the
handler (:func:`intake.app.register`) for what could not be answered early. A registration is
shed, in this order, while the edge is shutting down, while the broker is unreachable, at the
in-process bound, while the persist queue is full (see :class:`~intake.publisher.BatchPublisher`)
and when it has waited too long for the CPU (``queue_delay``, see :mod:`intake.admission`).
An admitted one is answered within ``edge_deadline_s`` of being read: if the broker's confirm
has not come by then, ``deadline`` (its retry, with the same ``Idempotency-Key``, is stored
once whatever became of the first attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator

import orjson
from prometheus_client import Counter

from core import metrics, status
from core.settings import Settings
from intake import admission
from intake.httpmetrics import Deferred
from intake.problems import unavailable_body
from intake.protocol import HttpDate
from intake.publisher import BatchPublisher
from intake.registering import REGISTRATIONS_PATH

log = logging.getLogger(__name__)

# How often the early 503s are added to the counters, the gauges and the status file written.
GAUGE_INTERVAL_S = 0.25
# Sheds that mean this edge is short of time or room (not a broker down or a full queue).
PRESSURE_REASONS = frozenset({"queue_delay", "deadline", "overloaded"})


class Gate:
    """Admission of registrations for one edge process; implements
    :class:`intake.protocol.Shedder`."""

    def __init__(self, settings: Settings, publisher: BatchPublisher) -> None:
        self.max_body_bytes = settings.edge_max_body_bytes
        self.deadline_s = settings.edge_deadline_s
        # Outside a standing queue, a registration that waited half the deadline is shed.
        self.burst_s = max(settings.edge_queue_interval_s, settings.edge_deadline_s / 2)
        self._retry_after_max_s = settings.edge_retry_after_max_s
        self._publisher = publisher
        self.monitor = admission.LoopMonitor(
            admission.QueueDelayRule(
                settings.edge_queue_target_s, settings.edge_queue_interval_s, self.burst_s
            )
        )
        self.queued = 0  # admitted as they were read, their handler not yet run
        self._spread = admission.RetrySpread()
        self._date = HttpDate()
        self._bodies = {
            reason: orjson.dumps(unavailable_body(reason)) for reason in metrics.SHED_REASONS
        }
        self._shed: dict[str, Counter] = {}
        self.early = 0  # registrations answered 503 before aiohttp saw them
        self.pressed = 0  # registrations shed for want of time or room in this edge
        status_dir = settings.edge_status_dir
        self._status_path = (
            os.path.join(status_dir, f"edge-{os.getpid()}.json") if status_dir else ""
        )
        self._uncounted: dict[str, int] = {}
        # The early 503s in the requests' counter and the duration histogram, flushed with the rest.
        self._answered = Deferred(REGISTRATIONS_PATH, "POST", 503)
        self.late = 0  # probes that found this edge's loop late (admission.QueueDelayRule.late)
        self.monitor.on_late = self._late
        self._said_pressed = False  # whether the status file says late or shedding now

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Probe the loop and report the gauges while the edge runs."""
        self.monitor.start()
        gauges = asyncio.create_task(self._report(), name="admission-gauges")
        try:
            yield
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges
            self.flush()
            self.monitor.stop()
            metrics.EDGE_STANDING_QUEUE.set(0)
            if self._status_path:
                status.remove_status(self._status_path)

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        lag_s = 0.0
        ticks = 0
        pressed, late = self.pressed, self.late
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            self.flush()
            if self._status_path:
                standing = self.monitor.rule.standing(loop.time())
                shedding = standing or self.pressed > pressed
                self._write_status(shedding, standing, self.late > late)
                self._said_pressed = shedding or self.late > late
                pressed, late = self.pressed, self.late
            lag_s = max(lag_s, self.monitor.take_max_lag_s())
            ticks += 1
            if ticks * GAUGE_INTERVAL_S >= 1.0:  # the gauge's "over the last second"
                metrics.EDGE_LOOP_LAG.set(lag_s)
                lag_s, ticks = 0.0, 0
            metrics.EDGE_STANDING_QUEUE.set(int(self.monitor.rule.standing(loop.time())))

    def _write_status(self, shedding: bool, standing: bool, late: bool) -> None:
        """The edge's status file, for ``intake supervise`` (workers/pressure.py)."""
        snapshot: dict[str, object] = {
            "kind": "edge",
            "pid": os.getpid(),
            "shedding": shedding,
            "standing": standing,
            "late": late,
            "capacity_per_s": round(self.monitor.capacity_per_s, 1),
        }
        try:
            status.write_status(self._status_path, snapshot)
        except OSError as exc:
            log.debug("edge status not written: %s", type(exc).__name__)

    def flush(self) -> None:
        """Add the early 503s answered since the last flush to the metrics."""
        uncounted, self._uncounted = self._uncounted, {}
        for reason, count in uncounted.items():
            self._counter(reason).inc(count)
        self._answered.flush()

    # --- the early path (intake.protocol.Shedder) ------------------------------------------

    def early_reason(self, now_s: float) -> str | None:
        reason = self._publisher.refusal()
        if reason is not None:
            return reason
        monitor = self.monitor
        if monitor.shed(now_s):
            return "queue_delay"
        if monitor.queue_full(now_s, self.queued):
            return "queue_delay"
        self.queued += 1
        return None

    def release(self) -> None:
        """A registration admitted early will not reach its handler (its connection closed)."""
        self.queued -= 1

    def handling(self) -> None:
        """The handler of a registration admitted early starts."""
        self.queued -= 1

    def delay_s(self, now_s: float) -> float:
        return self.monitor.delay_s(now_s)

    def answer(self, reason: str, now_s: float) -> bytes:
        self.early += 1
        # Counted into the metrics every GAUGE_INTERVAL_S: a counter's inc() (a lock, and a
        # write to a shared file in multiprocess mode) would be a fair share of the answer.
        self._uncounted[reason] = self._uncounted.get(reason, 0) + 1
        # Its wait, as the other answers': from when it was read, backdated by how long it
        # waited for the loop to read it, to now (it is written at once).
        self._answered.add(self.monitor.delay_s(now_s))
        if reason in PRESSURE_REASONS:
            self._pressed()
        self._publisher.count_shed(reason)  # refused without a publish, as its own sheds
        return self.unavailable(reason, now_s)

    def unavailable(self, reason: str, now_s: float) -> bytes:
        """The whole ``503`` response (with its ``Retry-After``) for a registration shed for
        ``reason`` at ``now_s``; counts nothing."""
        body = self._bodies[reason]
        return (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: application/problem+json\r\n"
            b"Content-Length: %d\r\nRetry-After: %d\r\nDate: %b\r\nServer: intake\r\n\r\n%b"
            % (len(body), self.retry_after_s(reason, now_s), self._date(), body)
        )

    # --- both paths ------------------------------------------------------------------------

    def count(self, reason: str) -> None:
        """Count one registration shed for ``reason`` (by the handler)."""
        self._counter(reason).inc()
        if reason in PRESSURE_REASONS:
            self._pressed()

    def _pressed(self) -> None:
        """One registration shed for want of time or room. The first of a spell is reported
        at once, not at the next tick: the sooner ``intake supervise`` holds verification
        back, the shorter the spell."""
        self.pressed += 1
        if not self._said_pressed and self._status_path:
            self._said_pressed = True
            now_s = asyncio.get_running_loop().time()
            self._write_status(True, self.monitor.rule.standing(now_s), self.late > 0)

    def _late(self) -> None:
        """A probe found the loop late: short of CPU, about to shed. Reported at once too, so
        that verification is held back *before* the edge sheds, often instead."""
        self.late += 1
        if not self._said_pressed and self._status_path:
            self._said_pressed = True
            self._write_status(False, False, True)

    def _counter(self, reason: str) -> Counter:
        counter = self._shed.get(reason)
        if counter is None:
            counter = self._shed[reason] = metrics.REGISTRATIONS_SHED.labels(reason)
        return counter

    def retry_after_s(self, reason: str, now_s: float) -> int:
        """The ``Retry-After`` for a registration shed for ``reason`` at ``now_s``: a slot of
        the :class:`~intake.admission.RetrySpread` for ``queue_delay`` and ``deadline``
        (the edge is short of time: come back when it will have some), the publisher's
        estimate for the rest (see :meth:`~intake.publisher.BatchPublisher.retry_after_s`)."""
        if reason in ("queue_delay", "deadline"):
            maximum_s = self._retry_after_max_s
            jitter = random.random()  # noqa: S311 - jitter, not a secret
            wait_s = self._spread.wait_s(now_s, self.monitor.capacity_per_s, maximum_s, jitter)
            return admission.retry_after_header(wait_s, maximum_s)
        return self._publisher.retry_after_s(reason)

    def accepted(self) -> None:
        """Count one registration answered 202 (the accepted rate sizes the retry slots)."""
        self.monitor.accepted += 1
