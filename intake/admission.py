"""Admission by time: every registration is answered within a deadline, the excess at once.

Counting what waits for the broker (``edge_max_pending``) does not see the queue that matters
when the edge is short of CPU: requests wait in the kernel's socket buffers and accept queue,
and in the event loop's ready queue, for a loop that is busy with earlier ones. Their wait is
the loop's *lag*: how late a timer set for now fires. :class:`LoopMonitor` measures it with a
timer every ``probe_interval_s``; a request read now has waited about as long as the loop's
current iteration has been running, which the monitor knows without being called
(:meth:`LoopMonitor.delay_s`).

:class:`QueueDelayRule` turns the delay into a decision with the rule that Facebook's servers
use for their request queues (CoDel adapted to servers, B. Maurer, "Fail at Scale", ACM Queue
2015). A queue that empties now and then is a burst being absorbed; a queue that has not
emptied for a whole ``interval_s`` is a standing queue, which only adds latency. So:

- while the delay has been at or under ``target_s`` at least once in the last ``interval_s``,
  a request is admitted unless it has already waited ``burst_s`` (the edge: half its deadline;
  a burst, or a machine busy for a moment, is absorbed, and answered within the deadline);
- otherwise (a standing queue) a request is admitted only if it waited ``target_s`` or less.

Before any of that, a loop late beyond the target for half an interval is **late**
(:meth:`QueueDelayRule.late`): the edge is short of CPU, and will shed if it stays so for the
other half. The gate tells ``intake supervise`` at once (the edge's status file), which holds
verification back so that the edge gets the CPU before it has to shed (workers/pressure.py).

Under overload the loop therefore settles near the target: while it is late the new requests
are shed at a fraction of an accepted one's cost (:mod:`intake.protocol`), the loop catches up
within an iteration or two, and the next requests are admitted. Goodput stays at what the CPU
can accept, and what is admitted has waited at most ``target_s`` plus an iteration.

:class:`RetrySpread` is the ``Retry-After`` of a request shed for its wait: the clients told to
come back are given successive slots at the rate this edge accepts, so that their retries
return spread over the coming seconds at the rate they can be taken instead of together.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# The edge's accepted rate, for RetrySpread: a moving average of windows this long (short:
# at a wave's opening the rate under load is learnt within a second).
RATE_WINDOW_S = 0.25
# The rate assumed before anything was measured (a fraction of what one edge process takes),
# and its floor: an edge that accepts nothing still spreads its retries at the floor.
INITIAL_RATE_PER_S = 500.0
MIN_RATE_PER_S = 20.0
# Per RATE_WINDOW_S, how much of the capacity estimate is kept when less is accepted.
CAPACITY_DECAY = 0.995
# Admitted registrations that may always wait for their handler, whatever the estimates.
MIN_QUEUED = 8


class QueueDelayRule:
    """CoDel for a server's request queue: the longest wait a request may have had to be
    admitted, ``burst_s`` normally and ``target_s`` during a standing queue (see the module)."""

    def __init__(
        self, target_s: float, interval_s: float, burst_s: float | None = None, now_s: float = 0.0
    ) -> None:
        burst_s = interval_s if burst_s is None else burst_s
        if not 0 < target_s <= interval_s <= burst_s:
            raise ValueError("need 0 < target_s <= interval_s <= burst_s")
        self.target_s = target_s
        self.interval_s = interval_s
        self.burst_s = burst_s
        self._last_short_s = now_s

    def observe(self, now_s: float, delay_s: float) -> None:
        """One measured queueing delay (the loop's lag at ``now_s``)."""
        if delay_s <= self.target_s:
            self._last_short_s = now_s

    def standing(self, now_s: float) -> bool:
        """Whether the delay has stayed above the target for a whole interval."""
        return now_s - self._last_short_s > self.interval_s

    def late(self, now_s: float) -> bool:
        """Whether the delay has stayed above the target for half an interval: a standing
        queue forming, time enough to act before it stands."""
        return now_s - self._last_short_s > self.interval_s / 2

    def limit_s(self, now_s: float) -> float:
        """The longest wait a request may have had at ``now_s`` and still be admitted."""
        return self.target_s if self.standing(now_s) else self.burst_s

    def admits(self, now_s: float, waited_s: float) -> bool:
        """Whether a request that has waited ``waited_s`` is admitted at ``now_s``."""
        return waited_s <= self.limit_s(now_s)


class LoopMonitor:
    """The event loop's lag, measured by a timer every ``probe_interval_s``, fed to a
    :class:`QueueDelayRule`; and this edge's **capacity**: the most registrations it has
    accepted per second lately (a quarter-second window; at first a prior). The capacity
    sizes two things: how many admitted registrations may wait for their handler at once
    (:meth:`queue_full`), and the retry slots (:class:`RetrySpread`)."""

    def __init__(self, rule: QueueDelayRule, probe_interval_s: float = 0.005) -> None:
        self.rule = rule
        self.probe_interval_s = probe_interval_s
        self.lag_s = 0.0
        self.max_lag_s = 0.0  # since the last read of take_max_lag_s()
        self.accepted = 0  # registrations accepted, counted by the caller
        self.rate_per_s = INITIAL_RATE_PER_S  # accepted per second, moving average
        self.capacity_per_s = INITIAL_RATE_PER_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due_s = 0.0
        self._rate_since_s = 0.0
        self._rate_accepted = 0
        # Called at a probe that finds the loop late (QueueDelayRule.late), at every such probe.
        self.on_late: Callable[[], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start probing on ``loop`` (the running loop by default)."""
        self._loop = loop or asyncio.get_running_loop()
        self.reset(self._loop.time())
        self._handle = self._loop.call_at(self._due_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        self.probe(self._loop.time())
        self._handle = self._loop.call_at(self._due_s, self._tick)

    def reset(self, now_s: float) -> None:
        """Start afresh at ``now_s``: no lag, the first probe due an interval later."""
        self.rule.observe(now_s, 0.0)
        self._rate_since_s, self._rate_accepted = now_s, self.accepted
        self._due_s = now_s + self.probe_interval_s

    def probe(self, now_s: float) -> None:
        """The probe due at ``_due_s`` runs at ``now_s``: it was this late; the next is due
        an interval later (the timer calls it; tests too)."""
        lag_s = max(0.0, now_s - self._due_s)
        self.lag_s = lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)
        rule = self.rule
        rule.observe(now_s, lag_s)
        if lag_s > rule.target_s and self.on_late is not None and rule.late(now_s):
            self.on_late()
        self._due_s = now_s + self.probe_interval_s
        elapsed_s = now_s - self._rate_since_s
        if elapsed_s >= RATE_WINDOW_S:
            instant = (self.accepted - self._rate_accepted) / elapsed_s
            self.rate_per_s = max(MIN_RATE_PER_S, 0.5 * instant + 0.5 * self.rate_per_s)
            # The most it has accepted lately, forgotten slowly (half in about half a minute):
            # not what it accepts while it sheds, which admission itself decides (an estimate
            # that followed it would shrink the queue it allows, and itself, to nothing).
            self.capacity_per_s = max(instant, CAPACITY_DECAY * self.capacity_per_s)
            self._rate_since_s, self._rate_accepted = now_s, self.accepted

    def delay_s(self, now_s: float) -> float:
        """How long a request read at ``now_s`` has waited for the loop, about: the lag of the
        last probe, or, if the next probe is overdue, how overdue it is (the loop is still in
        an iteration that started before it was due)."""
        return max(self.lag_s, now_s - self._due_s)

    def shed(self, now_s: float) -> bool:
        """Whether a request read at ``now_s`` is to be shed for its wait (asked for every
        registration: :meth:`delay_s` and :meth:`QueueDelayRule.admits`, inlined)."""
        overdue_s = now_s - self._due_s
        delay_s = self.lag_s if self.lag_s > overdue_s else overdue_s
        rule = self.rule
        if delay_s <= rule.target_s:
            return False
        return delay_s > rule.burst_s or rule.standing(now_s)

    def queue_full(self, now_s: float, queued: int) -> bool:
        """Whether ``queued`` admitted registrations, not yet handled, are already as many as
        the edge handles within the target in a standing queue, else within the interval:
        the lag bounds the wait *before* a request is read, this the wait *after*; admitting
        every request read in one iteration would queue all of them behind each other for the
        next, and the one after would have to shed them all."""
        rule = self.rule
        allowed = self.capacity_per_s * (rule.target_s if rule.standing(now_s) else rule.interval_s)
        return queued >= max(MIN_QUEUED, allowed)

    def take_max_lag_s(self) -> float:
        """The largest lag since the last call (for the metrics)."""
        value, self.max_lag_s = self.max_lag_s, 0.0
        return value


class RetrySpread:
    """Slots for the retries of the clients shed for want of time: a virtual queue. Each is
    told to come back after everyone told before them, at the rate the edge accepts: the wait
    is (the clients still ahead + 1) / rate, and the clients ahead drain at that rate.

    Without it every client shed in the same second is told the same wait, and they all come
    back in the same second, to be shed again. With it the retries come back at about the rate
    the edge takes registrations: a growing crowd is told a growing wait, honestly. Counting
    clients rather than seconds keeps the waits right when the rate is learnt: the first
    clients of a wave are shed before the edge has measured what it accepts under load.
    """

    def __init__(self) -> None:
        self._ahead = 0.0
        self._at_s = 0.0

    def wait_s(self, now_s: float, rate_per_s: float, maximum_s: float, jitter: float) -> float:
        """The wait to give the next client shed at ``now_s`` (seconds, not rounded). The queue
        holds at most ``maximum_s`` of clients: the clients beyond it are told a wait spread
        over its upper half (``jitter`` in ``[0, 1)``); when they come back and are shed
        again, they take a slot then (counting them now would count them twice)."""
        rate = max(rate_per_s, 1e-9)
        self._ahead = max(0.0, self._ahead - (now_s - self._at_s) * rate)
        self._at_s = now_s
        if self._ahead + 1 > rate * maximum_s:
            return maximum_s * (1 - jitter / 2)
        self._ahead += 1
        return self._ahead / rate

    def backlog(self, now_s: float, rate_per_s: float) -> float:
        """The clients told to come back who are still ahead at ``now_s``."""
        return max(0.0, self._ahead - (now_s - self._at_s) * max(rate_per_s, 1e-9))


def retry_after_header(wait_s: float, maximum_s: int) -> int:
    """A slot's wait as a ``Retry-After`` in whole seconds, in ``[1, maximum_s]``. No jitter:
    the slots are already spread, and a client is never told to come before its slot."""
    if math.isnan(wait_s):
        return maximum_s
    return max(1, min(maximum_s, math.ceil(wait_s)))
