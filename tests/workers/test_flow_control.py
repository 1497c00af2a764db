"""The lane's flow control as pure logic: the adaptive limit, the circuit breaker, the gate."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from prometheus_client import REGISTRY

from core import metrics
from core.controls import BreakerMode
from core.settings import Settings, SettingsError
from core.verification import Failure, Retry
from workers.flow import (
    AdaptiveLimit,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    LaneGate,
    LimitConfig,
    SharedRateCap,
    Signal,
    classify,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _server_rtt(limit: float, capacity: int, latency_s: float) -> float:
    """Mean round trip at a server serving ``capacity`` calls at once, with ``limit`` of ours
    in flight: beyond its capacity, calls wait their turn."""
    return latency_s * max(1.0, limit / capacity)


def _drive(
    limit: AdaptiveLimit, clock: Clock, capacity: int, latency_s: float, seconds: float
) -> list[float]:
    """Feed the limit with what a saturated server of ``capacity`` answers; return the limits."""
    seen = []
    end = clock.now + seconds
    while clock.now < end:
        current = limit.limit
        rtt = _server_rtt(current, capacity, latency_s)
        inflight = max(1, int(current))
        for _ in range(inflight):
            limit.on_sample(rtt, inflight, Signal.OK)
        clock.now += rtt
        if not limit.probing:
            seen.append(limit.limit)
    return seen


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read afresh (a property that changes with time and calls)."""
    return breaker.state


def test_classify_reads_the_failures_kind_not_its_wording() -> None:
    assert classify(None) is Signal.OK
    for reason in ("overloaded", "timeout", "worded as nobody expected"):
        assert classify(Retry(reason, failure=Failure.OVERLOAD)) is Signal.OVERLOAD
    assert classify(Retry("gone", failure=Failure.UNREACHABLE)) is Signal.FAILURE
    assert classify(Retry("answered 502", failure=Failure.BROKEN)) is Signal.FAILURE
    # Worded like a failure of the service, but not one: our own error.
    assert classify(Retry("unreachable:ClientConnectorError")) is Signal.NEUTRAL
    assert classify(Retry("internal:KeyError", failure=Failure.LOCAL)) is Signal.NEUTRAL


def test_the_limit_settles_just_above_the_servers_capacity() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitConfig(initial=2, probe_interval_s=5), clock)
    seen = _drive(limit, clock, capacity=20, latency_s=0.1, seconds=60)
    late = seen[len(seen) // 2 :]
    # Always at least the capacity (the server stays busy) and never far beyond it (a small
    # queue, not a full one).
    assert min(late) >= 20 * 0.9
    assert max(late) <= 20 + 12


def test_the_limit_falls_when_latency_rises_and_climbs_back_when_it_recovers() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitConfig(initial=2, probe_interval_s=1000), clock)
    _drive(limit, clock, capacity=20, latency_s=0.05, seconds=30)
    before = limit.limit
    # The service becomes four times slower for every call (not more capacity-bound).
    for _ in range(3):
        current = limit.limit
        rtt = 0.2 * max(1.0, current / 20)
        clock.now += rtt
        for _ in range(max(8, int(current))):
            limit.on_sample(rtt, int(current), Signal.OK)
    during = limit.limit
    assert during < before / 2
    _drive(limit, clock, capacity=20, latency_s=0.05, seconds=30)
    assert limit.limit >= 20 * 0.9


def test_overload_cuts_the_limit_multiplicatively_once_per_window() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitConfig(initial=40, backoff=0.75), clock)
    limit.on_sample(0.1, 40, Signal.OVERLOAD)
    assert limit.limit == pytest.approx(30)
    # Calls that started before the cut were sent under the old limit: no second cut.
    limit.on_sample(0.1, 40, Signal.OVERLOAD)
    assert limit.limit == pytest.approx(30)
    clock.now += 0.2
    limit.on_sample(0.1, 30, Signal.NEUTRAL)  # our own errors say nothing
    assert limit.limit == pytest.approx(30)
    limit.on_sample(0.1, 30, Signal.OVERLOAD)
    assert limit.limit == pytest.approx(22.5)


def test_an_idle_lane_does_not_grow_its_limit() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitConfig(initial=10), clock)
    for _ in range(100):
        clock.now += 0.05
        limit.on_sample(0.05, 1, Signal.OK)  # one call at a time: the limit is not the bound
    assert limit.windows >= 10
    assert limit.limit == 10


def test_the_breaker_opens_probes_one_at_a_time_and_closes_after_successes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(window=20, min_calls=10, open_s=5, probes=3), clock)
    for _ in range(9):
        assert breaker.allow()
        breaker.record(Signal.FAILURE, probe=False)
    assert state_of(breaker) is BreakerState.CLOSED  # fewer than min_calls known
    assert breaker.allow()
    breaker.record(Signal.FAILURE, probe=False)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 6.1  # past the wait, jitter included
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record(Signal.FAILURE, probe=True)
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 7.0  # the wait doubled: still open
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 6.0
    for _ in range(3):
        assert breaker.allow()
        breaker.record(Signal.OK, probe=True)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.probes == 4
    assert breaker.opened == 2


def test_successes_keep_the_breaker_closed_and_neutral_outcomes_do_not_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(window=20, min_calls=10, failure_rate=0.5))
    for i in range(40):
        breaker.allow()
        breaker.record(Signal.FAILURE if i % 3 == 0 else Signal.OK, probe=False)
    for _ in range(40):
        breaker.allow()
        breaker.record(Signal.NEUTRAL, probe=False)
    assert breaker.state is BreakerState.CLOSED


async def test_the_gate_holds_calls_beyond_the_limit_until_one_ends() -> None:
    gate = LaneGate(
        AdaptiveLimit(LimitConfig(initial=2, min_limit=2, max_limit=2)), CircuitBreaker()
    )
    first, second = await gate.acquire(), await gate.acquire()
    third = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.05)
    assert not third.done()
    gate.release(first, Signal.OK)
    permit = await asyncio.wait_for(third, 5)
    assert gate.inflight == 2
    gate.release(second, Signal.OK)
    gate.release(permit, Signal.OK)
    assert gate.inflight == 0
    assert gate.calls == 3


def _applied(gate: LaneGate) -> BreakerState:
    return gate.state


async def test_an_operator_forces_the_gate_open_and_closed() -> None:
    breaker = CircuitBreaker(BreakerConfig(window=20, min_calls=10, open_s=60))
    gate = LaneGate(AdaptiveLimit(LimitConfig(initial=4, min_limit=4, max_limit=4)), breaker)
    # Forced open: no permit at all, though the breaker is closed and the limit has room; a
    # permit granted before ends normally. Back to auto, the waiting call goes through.
    held = await gate.acquire()
    gate.force(BreakerMode.OPEN)
    assert _applied(gate) is BreakerState.OPEN
    assert breaker.state is BreakerState.CLOSED
    waiting = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    gate.release(held, Signal.OK)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    gate.force(BreakerMode.AUTO)
    gate.release(await asyncio.wait_for(waiting, 5), Signal.OK)
    # Forced closed: failures go unrecorded, the breaker never opens and calls go on.
    gate.force(BreakerMode.CLOSED)
    for _ in range(50):
        gate.release(await asyncio.wait_for(gate.acquire(), 5), Signal.FAILURE)
    assert breaker.opened == 0
    assert _applied(gate) is BreakerState.CLOSED
    # Auto again: the same failures open it.
    gate.force(BreakerMode.AUTO)
    for _ in range(10):
        gate.release(await asyncio.wait_for(gate.acquire(), 5), Signal.FAILURE)
    assert breaker.opened == 1
    assert _applied(gate) is BreakerState.OPEN
    # Forcing it closed resets an open breaker: calls at once, none waits out the open period.
    gate.force(BreakerMode.CLOSED)
    assert breaker.state is BreakerState.CLOSED
    gate.release(await asyncio.wait_for(gate.acquire(), 1), Signal.OK)
    assert gate.snapshot()["forced_breaker"] == "closed"


async def test_a_rate_cap_is_shared_by_every_worker_of_the_lane(db: asyncpg.Pool) -> None:
    """Two workers' caps on one lane together get no more than the agreed rate. The bucket
    starts empty and refills at ``rate`` per second, so ``n`` tokens take at least ``n / rate``
    seconds, however slow the machine (a lower bound: it cannot fail by being slow)."""
    rate, wanted = 100.0, 60
    caps = [SharedRateCap(db, "dukcapil", rate), SharedRateCap(db, "dukcapil", rate)]
    taken = [0, 0]

    async def take(i: int) -> None:
        for _ in range(wanted // 2):
            await caps[i].take()
            taken[i] += 1

    started = time.monotonic()
    await asyncio.gather(take(0), take(1))
    elapsed = time.monotonic() - started
    assert taken == [wanted // 2, wanted // 2]
    assert elapsed >= 0.9 * wanted / rate
    other = SharedRateCap(db, "dtks", rate)  # another lane has its own bucket
    await other.take()
    assert await db.fetchval("SELECT count(*) FROM rate_buckets") == 2


def test_rate_caps_are_read_from_the_settings() -> None:
    settings = Settings(lane_rate_caps="dukcapil=200, dtks=12.5")
    assert settings.rate_caps() == {"dukcapil": 200.0, "dtks": 12.5}
    for bad in ("dukcapil", "dukcapil=0", "=5", "dtks=fast", "kemenkes=10"):
        with pytest.raises(SettingsError, match="INTAKE_LANE_RATE_CAPS"):
            Settings(lane_rate_caps=bad).check()


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_lanes_gate_exports_its_state_and_counts_its_breaker_transitions() -> None:
    lane = "gate_under_test"  # a lane of its own: other tests' gates share this registry
    clock = Clock()
    gate = LaneGate(
        AdaptiveLimit(LimitConfig(initial=4, min_limit=4, max_limit=4), clock),
        CircuitBreaker(BreakerConfig(window=20, min_calls=10, open_s=5, probes=1), clock),
        clock=clock,
        lane=lane,
    )
    # Every series known in advance exists from the start.
    for outcome in metrics.LANE_OUTCOMES:
        assert _sample("intake_lane_tasks_total", lane=lane, outcome=outcome) == 0
    for signal in metrics.SIGNALS:
        assert _sample("intake_service_call_duration_seconds_count", lane=lane, signal=signal) == 0

    def breaker() -> dict[str, float | None]:
        return {
            state: _sample("intake_lane_breaker_workers", lane=lane, state=state)
            for state in metrics.BREAKER_STATES
        }

    def transitions() -> dict[str, float | None]:
        return {
            state: _sample("intake_lane_breaker_transitions_total", lane=lane, state=state)
            for state in metrics.BREAKER_STATES
        }

    assert breaker() == {"closed": 1, "open": 0, "half_open": 0}
    assert _sample("intake_lane_concurrency_limit", lane=lane) == 4
    permit = await gate.acquire()
    assert _sample("intake_lane_inflight_calls", lane=lane) == 1
    gate.release(permit, Signal.FAILURE)
    assert _sample("intake_lane_inflight_calls", lane=lane) == 0
    for _ in range(9):
        gate.release(await gate.acquire(), Signal.FAILURE)
    assert breaker() == {"closed": 0, "open": 1, "half_open": 0}
    clock.now += 6.1  # the wait is over: the next export shows it half-open
    gate.export()
    assert breaker() == {"closed": 0, "open": 0, "half_open": 1}
    gate.release(await gate.acquire(), Signal.OK)  # the probe that closes it
    assert breaker() == {"closed": 1, "open": 0, "half_open": 0}
    assert transitions() == {"closed": 1, "open": 1, "half_open": 1}


def test_a_gate_without_a_lane_exports_nothing() -> None:
    before = {
        (m.name, s.name, tuple(sorted(s.labels.items())))
        for m in REGISTRY.collect()
        for s in m.samples
    }
    LaneGate(AdaptiveLimit(), CircuitBreaker()).export()
    after = {
        (m.name, s.name, tuple(sorted(s.labels.items())))
        for m in REGISTRY.collect()
        for s in m.samples
    }
    assert after == before
