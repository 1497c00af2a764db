"""The Behaviour configuration and the Gate's bookkeeping, without a network."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable

import pytest

from simulators.behaviour import Behaviour, BehaviourError, Gate, Refused
from tests.support.waiting import eventually


def test_latency_is_lognormal_with_the_configured_median_and_p99() -> None:
    behaviour = Behaviour(latency_median_ms=80, latency_p99_ms=900)
    rng = random.Random(1)
    samples = sorted(behaviour.latency_s(rng) for _ in range(40_000))
    assert statistics.median(samples) == pytest.approx(0.080, rel=0.05)
    assert samples[int(len(samples) * 0.99)] == pytest.approx(0.900, rel=0.10)


def test_a_p99_at_the_median_is_a_fixed_delay_and_zero_is_none() -> None:
    rng = random.Random(1)
    assert Behaviour(latency_median_ms=50).latency_s(rng) == 0.05
    assert Behaviour(latency_median_ms=50, latency_p99_ms=50).latency_s(rng) == 0.05
    assert Behaviour().latency_s(rng) == 0.0


def test_latency_is_capped_by_the_max_hang() -> None:
    behaviour = Behaviour(latency_median_ms=60_000, max_hang_s=2.0)
    assert behaviour.latency_s(random.Random(1)) == 2.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"capacity": 0}, "capacity"),
        ({"queue_limit": -1}, "queue_limit"),
        ({"overload": "502"}, "overload"),
        ({"outage_mode": "slow"}, "outage_mode"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"max_hang_s": 0.0}, "max_hang_s"),
        ({"latency_median_ms": -1.0}, "latency"),
        ({"colour": "blue"}, "unknown"),
    ],
)
def test_invalid_behaviour_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BehaviourError, match=message):
        Behaviour().replace(**changes)


def test_json_changes_are_type_checked() -> None:
    behaviour = Behaviour().apply_json({"capacity": 5, "latency_median_ms": 20, "outage": True})
    assert (behaviour.capacity, behaviour.latency_median_ms, behaviour.outage) == (5, 20.0, True)
    with pytest.raises(BehaviourError, match="capacity must be of type int"):
        Behaviour().apply_json({"capacity": 2.5})
    with pytest.raises(BehaviourError, match="outage must be of type bool"):
        Behaviour().apply_json({"outage": 1})
    with pytest.raises(BehaviourError, match="error_rate must be of type float"):
        Behaviour().apply_json({"error_rate": True})
    assert Behaviour.apply_json(behaviour, {}) == behaviour


async def test_the_counters_add_up_through_every_outcome() -> None:
    gate = Gate("unit", Behaviour(capacity=1, queue_limit=1, latency_median_ms=60_000))
    first = asyncio.create_task(_call(gate))
    second = asyncio.create_task(_call(gate))
    await _until(lambda: gate.counters.in_flight == 1 and gate.counters.queued == 1)
    with pytest.raises(Refused) as refused:
        await _call(gate)  # beyond capacity and queue
    assert (refused.value.reason, refused.value.answer) == ("overload", "503")
    second.cancel()  # a waiting call given up by its client
    await asyncio.gather(second, return_exceptions=True)
    gate.update(latency_median_ms=0.0)  # ends the first call's delay
    await first
    gate.update(error_rate=1.0)
    with pytest.raises(Refused, match="error"):
        await _call(gate)
    gate.update(error_rate=0.0, outage=True)
    with pytest.raises(Refused, match="outage"):
        await _call(gate)
    counters = gate.counters
    assert (counters.calls, counters.served, counters.errors) == (5, 1, 1)
    assert (counters.rejected_overload, counters.rejected_outage, counters.cancelled) == (1, 1, 1)
    assert (counters.in_flight, counters.queued, counters.max_in_flight) == (0, 0, 1)
    assert counters.max_queued == 1


async def test_a_larger_capacity_admits_waiting_calls_at_once() -> None:
    gate = Gate("unit", Behaviour(capacity=1, queue_limit=5, latency_median_ms=60_000))
    calls = [asyncio.create_task(_call(gate)) for _ in range(4)]
    await _until(lambda: gate.counters.queued == 3)
    gate.update(capacity=4)
    await _until(lambda: gate.counters.in_flight == 4)
    gate.close()  # ends every delay
    await asyncio.gather(*calls)
    assert gate.counters.served == 4


async def test_a_call_cancelled_while_queued_never_gets_a_slot() -> None:
    gate = Gate("unit", Behaviour(capacity=1, queue_limit=2, latency_median_ms=60_000))
    first, second, third = (asyncio.create_task(_call(gate)) for _ in range(3))
    await _until(lambda: gate.counters.queued == 2)
    second.cancel()  # its waiter is cancelled now, its task leaves the queue later
    gate.update(capacity=2)  # hands the freed queue place on at once
    assert gate.counters.in_flight == 2
    gate.close()
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    counters = gate.counters
    assert (counters.served, counters.cancelled, counters.in_flight, counters.queued) == (
        2,
        1,
        0,
        0,
    )


async def test_close_ends_hangs() -> None:
    gate = Gate("unit", Behaviour(outage=True, outage_mode="hang"))
    hanging = asyncio.create_task(_call(gate))
    await _until(lambda: gate.counters.rejected_outage == 1)
    gate.close()
    with pytest.raises(Refused) as refused:
        await asyncio.wait_for(hanging, 30)
    assert refused.value.answer == "refuse"


async def _call(gate: Gate) -> None:
    async with gate.admission():
        pass


async def _until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, bool)
