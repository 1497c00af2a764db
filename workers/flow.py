"""Flow control of a lane: how many calls a ministry gets, and when it gets none.

A lane worker asks its :class:`LaneGate` for a permit before each call to its external service
and reports the call's round-trip time and outcome when it ends. The gate combines three things:

- :class:`AdaptiveLimit`, a concurrency limit that follows the service's measured latency (a
  Vegas-style estimate of the queue the lane keeps at the service, with periodic re-measurement
  of the no-load latency, see its docstring); overload answers (429, 503, timeouts) cut it
  multiplicatively;
- :class:`CircuitBreaker`, closed / open / half-open: when most recent calls failed the breaker
  opens and no call is made at all until a wait has passed; then single probes test the service;
- an optional fixed rate cap (an agreement with a ministry), a token bucket shared by every
  worker of the lane through PostgreSQL (:class:`SharedRateCap`).

The lane worker turns the gate's state into consumer prefetch (it follows the limit) and stops
consuming while the breaker is open: the backlog waits in RabbitMQ, not in retries.

A gate built for a lane (``LaneGate(..., lane="dukcapil")``) exports its state as Prometheus
gauges (``core.metrics``: the limit, the calls in flight, its breaker's state) whenever they
change and whenever :meth:`LaneGate.export` is called (the lane does, every second), and counts
its breaker's transitions.

Only the service's own signals count. A registration that fails a check, or a bug in our code,
says nothing about the ministry's health; see :func:`classify`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from core import metrics
from core.controls import BreakerMode
from core.verification import Failure, Retry

Clock = Callable[[], float]


class Signal(enum.Enum):
    """What a call's outcome says about the service."""

    OK = "ok"  # it answered (whatever the answer)
    OVERLOAD = "overload"  # it said it is overloaded (429/503) or did not answer in time
    FAILURE = "failure"  # it is unreachable or broken (refused, reset, 5xx)
    NEUTRAL = "neutral"  # nothing about the service (our own error, bad data)


_SIGNALS = {
    Failure.OVERLOAD: Signal.OVERLOAD,
    Failure.UNREACHABLE: Signal.FAILURE,
    Failure.BROKEN: Signal.FAILURE,
    Failure.LOCAL: Signal.NEUTRAL,
}


def classify(retry: Retry | None) -> Signal:
    """The signal of a call that ended with ``retry`` (None: it did not retry), from the
    failure's kind, whatever its reason's wording."""
    return Signal.OK if retry is None else _SIGNALS[retry.failure]


@dataclass(frozen=True, slots=True)
class LimitConfig:
    initial: float = 8.0
    min_limit: float = 1.0
    max_limit: float = 256.0
    # A measurement window closes after this many calls (or ``limit`` calls, if more).
    window_min_samples: int = 8
    # How often the no-load latency is measured again, by holding the limit at half for one
    # window (jittered by ±20 %), so that a service that became slower is not mistaken for
    # a queue forever, and a queue the lane built is not mistaken for the service's latency.
    probe_interval_s: float = 10.0
    # Multiplicative cut on overload, at most once per window.
    backoff: float = 0.75


class AdaptiveLimit:
    """A concurrency limit that keeps a small queue at the service, measured by latency.

    Vegas (Brakmo & Peterson; Netflix concurrency-limits' ``VegasLimit``): with ``limit`` calls
    in flight, a mean round trip ``rtt`` and a no-load round trip ``base``, the service holds
    about ``queue = limit * (1 - base / rtt)`` of our calls waiting. Per window of samples:

    - overload seen (429/503/timeout): ``limit *= backoff``;
    - ``queue > beta``: drop the excess at once, ``limit = limit * base / rtt + alpha``
      (Gradient's rule: the limit that would leave ``alpha`` queued);
    - ``queue < alpha`` and the limit is in use: ``limit += max(1, log10(limit))``;
    - otherwise keep it. ``alpha = max(2, 3 log10 limit)``, ``beta = max(4, 6 log10 limit)``.

    ``base`` falls with any lower window but only rises at a *probe*: every ``probe_interval_s``
    one window runs at half the limit, which drains the queue we keep at the service, and its
    mean becomes the new base. A window only counts calls that started after it began (calls
    started under the previous limit measure that limit), and a probe's window begins once our
    calls in flight are down to its limit. Keeping a queue of a few calls keeps the service
    busy (goodput at its capacity) without filling its own queue (no overload rejections).
    """

    def __init__(self, config: LimitConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or LimitConfig()
        self._clock = clock
        self._limit = float(self.config.initial)
        self._base: float | None = None
        self._samples: list[float] = []
        self._dropped = False
        self._max_inflight = 0
        self._probing = False
        self._next_probe = self._clock() + self._probe_gap()
        # Samples of calls started before the current window began are ignored: they measure
        # the previous limit. None: a probe waits for our queue at the service to drain.
        self._window_start: float | None = -math.inf
        self.windows = 0

    @property
    def limit(self) -> float:
        """The current limit (during a probe, half of it)."""
        return max(self.config.min_limit, self._limit / 2) if self._probing else self._limit

    @property
    def steady(self) -> float:
        """The limit outside probes (what the consumer's prefetch follows)."""
        return self._limit

    @property
    def probing(self) -> bool:
        """Whether a window at half the limit is re-measuring the no-load latency."""
        return self._probing

    @property
    def base_rtt_s(self) -> float | None:
        return self._base

    def _probe_gap(self) -> float:
        return self.config.probe_interval_s * random.uniform(0.8, 1.2)  # noqa: S311 - jitter

    def on_sample(self, rtt_s: float, inflight: int, signal: Signal) -> None:
        """One call ended after ``rtt_s`` with ``inflight`` calls in flight (itself included)."""
        if signal is Signal.NEUTRAL:
            return
        now = self._clock()
        if self._window_start is None:
            if inflight <= self.limit:  # the probe's limit is reached: measure from now on
                self._window_start = now
            return
        if now - rtt_s < self._window_start:
            return
        if signal is Signal.OVERLOAD:
            self._dropped = True
        elif signal is Signal.OK:
            self._samples.append(rtt_s)
        self._max_inflight = max(self._max_inflight, inflight)
        needed = max(self.config.window_min_samples, math.ceil(self.limit))
        if self._dropped or len(self._samples) >= needed:
            self._close_window()

    def _close_window(self) -> None:
        self.windows += 1
        samples, self._samples = self._samples, []
        dropped, self._dropped = self._dropped, False
        used, self._max_inflight = self._max_inflight, 0
        cfg = self.config
        now = self._clock()
        self._window_start = now
        if self._probing:
            self._probing = False
            self._next_probe = now + self._probe_gap()
            if samples and not dropped:
                self._base = sum(samples) / len(samples)
            return
        limit = self._limit
        if dropped:
            limit *= cfg.backoff
        elif samples:
            rtt = sum(samples) / len(samples)
            if self._base is None or rtt < self._base:
                self._base = rtt
            log_limit = math.log10(max(limit, 1.0))
            alpha, beta = max(2.0, 3 * log_limit), max(4.0, 6 * log_limit)
            queue = limit * (1 - self._base / rtt) if rtt > 0 else 0.0
            if queue > beta:
                limit = limit * self._base / rtt + alpha
            elif queue < alpha and used * 2 >= limit:
                limit += max(1.0, log_limit)
        self._limit = min(cfg.max_limit, max(cfg.min_limit, limit))
        if not dropped and now >= self._next_probe:
            self._probing = True
            self._window_start = None


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    # The failure rate over the last ``window`` calls that opens the breaker, once at least
    # ``min_calls`` of them are known (Resilience4j's count-based sliding window).
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    # Open for this long, doubled after each failed probe up to the maximum, jittered ±20 %.
    open_s: float = 5.0
    open_max_s: float = 60.0
    # Consecutive successful probes that close it again; probes run one at a time.
    probes: int = 3


class CircuitBreaker:
    """Closed → open (failure rate too high) → half-open after a wait → closed after
    ``probes`` successes in a row, or open again (for longer) at the first failure."""

    def __init__(self, config: BreakerConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=self.config.window)
        self._open_until = 0.0
        self._open_s = self.config.open_s
        self._probe_busy = False
        self._probe_successes = 0
        self.opened = 0  # times it opened
        self.probes = 0  # calls let through while half-open
        self.changed = asyncio.Event()
        # Called with the new state at every transition (the gate's metrics).
        self.on_change: Callable[[BreakerState], None] | None = None

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose wait has passed is half-open."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._probe_successes = 0
            self._probe_busy = False
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self.changed.set()
            if self.on_change is not None:
                self.on_change(state)

    def open_remaining_s(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a call may start now; a half-open breaker lets one probe at a time."""
        state = self.state
        if state is BreakerState.OPEN:
            return False
        if state is BreakerState.HALF_OPEN:
            if self._probe_busy:
                return False
            self._probe_busy = True
            self.probes += 1
        return True

    def record(self, signal: Signal, *, probe: bool) -> None:
        """The outcome of a call that :meth:`allow` let through (``probe``: while half-open)."""
        if signal is Signal.NEUTRAL:
            if probe:
                self._probe_busy = False
            return
        failed = signal is not Signal.OK
        if probe and self.state is BreakerState.HALF_OPEN:
            self._probe_busy = False
            if failed:
                self._open_s = min(self._open_s * 2, self.config.open_max_s)
                self._trip()
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.config.probes:
                    self._outcomes.clear()
                    self._open_s = self.config.open_s
                    self._set(BreakerState.CLOSED)
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call started before the breaker opened
        self._outcomes.append(failed)
        known = len(self._outcomes)
        if (
            known >= self.config.min_calls
            and sum(self._outcomes) / known >= self.config.failure_rate
        ):
            self._trip()

    def reset(self) -> None:
        """Closed, with a fresh window and the first open period (an operator forced it)."""
        self._outcomes.clear()
        self._open_s = self.config.open_s
        self._probe_busy = False
        self._probe_successes = 0
        self._set(BreakerState.CLOSED)

    def _trip(self) -> None:
        self.opened += 1
        self._outcomes.clear()
        self._open_until = self._clock() + self._open_s * random.uniform(0.8, 1.2)  # noqa: S311
        self._set(BreakerState.OPEN)


class SharedRateCap:
    """A token bucket of ``rate_per_s`` calls shared by every worker of a lane, kept in one
    PostgreSQL row. Each worker takes tokens in small chunks (a tenth of a second's worth) and
    spends them locally, so the database sees about ten small updates per second per worker.
    The bucket holds at most a fifth of a second's worth: no burst after a quiet period beyond
    that."""

    _TAKE_SQL = """
        WITH bucket AS (
            SELECT LEAST($3::float8,
                         tokens + EXTRACT(EPOCH FROM clock_timestamp() - refilled_at) * $2
                   ) AS available
            FROM rate_buckets WHERE lane = $1 FOR UPDATE
        )
        UPDATE rate_buckets AS r
        SET tokens = bucket.available - LEAST(FLOOR(bucket.available), $4),
            refilled_at = clock_timestamp()
        FROM bucket WHERE r.lane = $1
        RETURNING LEAST(FLOOR(bucket.available), $4)::int AS granted, bucket.available
    """

    def __init__(self, pool: asyncpg.Pool, lane: str, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._pool = pool
        self._lane = lane
        self.rate_per_s = rate_per_s
        self._burst = max(1.0, rate_per_s / 5)
        self._chunk = max(1, int(rate_per_s / 10))
        self._tokens = 0
        self._lock = asyncio.Lock()
        self._created = False

    async def take(self) -> None:
        """Wait for one token."""
        async with self._lock:
            while self._tokens == 0:
                granted, available = await self._take_chunk()
                if granted == 0:
                    await asyncio.sleep(max(0.005, (1 - available) / self.rate_per_s))
                self._tokens += granted
            self._tokens -= 1

    async def _take_chunk(self) -> tuple[int, float]:
        if not self._created:
            await self._pool.execute(
                "INSERT INTO rate_buckets (lane, tokens, refilled_at)"
                " VALUES ($1, 0, clock_timestamp()) ON CONFLICT (lane) DO NOTHING",
                self._lane,
            )
            self._created = True
        row = await self._pool.fetchrow(
            self._TAKE_SQL, self._lane, self.rate_per_s, self._burst, self._chunk
        )
        assert row is not None
        return int(row["granted"]), float(row["available"])


class Permit:
    """One call let through by a :class:`LaneGate`; give it back with :meth:`LaneGate.release`."""

    __slots__ = ("probe", "started")

    def __init__(self, started: float, probe: bool) -> None:
        self.started = started
        self.probe = probe


class _GateGauges:
    """One lane's gauges and breaker transition counters, written only when a value changed
    (in multiprocess mode each write is a write to a memory-mapped file)."""

    def __init__(self, lane: str) -> None:
        metrics.init_lane(lane)
        self._limit = metrics.LANE_LIMIT.labels(lane)
        self._inflight = metrics.LANE_INFLIGHT.labels(lane)
        self._states: dict[BreakerState, Gauge] = {
            state: metrics.LANE_BREAKER.labels(lane, state.value) for state in BreakerState
        }
        self._transitions: dict[BreakerState, Counter] = {
            state: metrics.LANE_BREAKER_TRANSITIONS.labels(lane, state.value)
            for state in BreakerState
        }
        self._last: tuple[float, int, BreakerState | None] = (-1.0, -1, None)

    def write(self, limit: float, inflight: int, state: BreakerState) -> None:
        last_limit, last_inflight, last_state = self._last
        if limit != last_limit:
            self._limit.set(limit)
        if inflight != last_inflight:
            self._inflight.set(inflight)
        if state is not last_state:
            for each, gauge in self._states.items():
                gauge.set(1 if each is state else 0)
        self._last = (limit, inflight, state)

    def transition(self, state: BreakerState) -> None:
        self._transitions[state].inc()


class LaneGate:
    """Admission of calls to one lane's service: breaker, adaptive limit, rate cap."""

    def __init__(
        self,
        limit: AdaptiveLimit,
        breaker: CircuitBreaker,
        rate_cap: SharedRateCap | None = None,
        clock: Clock = time.monotonic,
        lane: str | None = None,
    ) -> None:
        self.limit = limit
        self.breaker = breaker
        self.rate_cap = rate_cap
        self._clock = clock
        self.inflight = 0
        self._wakeup = asyncio.Event()
        self.calls = 0
        # The operator's mode (core.controls): open, no permit at all; closed, the breaker is
        # neither asked nor told; auto, the breaker decides.
        self.forced = BreakerMode.AUTO
        self.forced_since = clock()  # when the mode last changed
        self._gauges = _GateGauges(lane) if lane is not None else None
        if self._gauges is not None:
            breaker.on_change = self._on_breaker_change
            self.export()

    def export(self) -> None:
        """Write the gauges (no-op for a gate without a lane). Reading the breaker's state
        also turns an open breaker whose wait has passed half-open."""
        if self._gauges is not None:
            self._gauges.write(self.limit.limit, self.inflight, self.breaker.state)

    def _on_breaker_change(self, state: BreakerState) -> None:
        assert self._gauges is not None
        self._gauges.transition(state)
        self.export()

    def force(self, mode: BreakerMode) -> None:
        """Apply an operator's mode. Forced closed starts from a closed breaker with a fresh
        window (an open one would otherwise be waited out after ``auto``); forced open lets
        calls in flight end but starts none."""
        if mode is self.forced:
            return
        self.forced = mode
        self.forced_since = self._clock()
        if mode is BreakerMode.CLOSED:
            self.breaker.reset()
        self._wakeup.set()
        self.breaker.changed.set()  # the lane re-sets its consumer at once
        self.export()

    @property
    def state(self) -> BreakerState:
        """The breaker's state as the lane applies it: the operator's, when forced."""
        if self.forced is BreakerMode.OPEN:
            return BreakerState.OPEN
        if self.forced is BreakerMode.CLOSED:
            return BreakerState.CLOSED
        return self.breaker.state

    async def acquire(self) -> Permit:
        """Wait until a call may start: the breaker allows it (or the operator forced it
        closed) and the limit has room; never while the operator forces it open."""
        while True:
            room = self.inflight < max(1, math.floor(self.limit.limit))
            if self.forced is BreakerMode.CLOSED:
                if room:
                    probe = False
                    break
            elif self.forced is BreakerMode.AUTO:
                probing = self.breaker.state is BreakerState.HALF_OPEN
                if (room or probing) and self.breaker.allow():
                    probe = self.breaker.state is BreakerState.HALF_OPEN
                    break
            self._wakeup.clear()
            forced = self.forced is not BreakerMode.AUTO
            wait_s = (0.0 if forced else self.breaker.open_remaining_s()) or 1.0
            try:
                async with asyncio.timeout(max(0.01, wait_s)):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        self.inflight += 1
        try:
            if self.rate_cap is not None:
                await self.rate_cap.take()
        except BaseException:
            self.inflight -= 1
            if probe:
                self.breaker.record(Signal.NEUTRAL, probe=True)
            self._wakeup.set()
            self.export()
            raise
        self.calls += 1
        self.export()
        return Permit(self._clock(), probe)

    def release(self, permit: Permit, signal: Signal) -> None:
        """The call of ``permit`` ended with ``signal``."""
        rtt_s = self._clock() - permit.started
        self.limit.on_sample(rtt_s, self.inflight, signal)
        self.inflight -= 1
        if self.forced is BreakerMode.CLOSED:
            # Not told: it must not open. A probe let through before still frees its slot.
            if permit.probe:
                self.breaker.record(Signal.NEUTRAL, probe=True)
        else:
            self.breaker.record(signal, probe=permit.probe)
        self._wakeup.set()
        self.export()

    def snapshot(self) -> dict[str, object]:
        return {
            "limit": round(self.limit.limit, 2),
            "inflight": self.inflight,
            "breaker": self.state.value,  # as applied: intake supervise holds scale-ups on it
            "forced_breaker": self.forced.value,
            "breaker_opened": self.breaker.opened,
            "probes": self.breaker.probes,
            "calls": self.calls,
        }
