"""Beyond its capacity a simulator refuses at once (503, 429) or hangs, as configured.

Slow calls are held by a long latency and released by switching the latency off at run time,
so that every assertion is about outcomes and counts, never about how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from simulators.behaviour import Behaviour
from simulators.server import Running
from tests.simulators.sim_support import StartSimulators
from tests.support.waiting import eventually

SLOW_MS = 60_000.0  # far longer than any test; ended by a behaviour change
NIK = {"nik": "3171011705900001"}


async def _lookup(http: aiohttp.ClientSession, running: Running) -> tuple[int, str | None]:
    async with http.post(f"{running.urls['dtks']}/v1/recipients/lookup", json=NIK) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


async def _until(stats: Callable[[], dict[str, Any]], holds: Callable[[Any], bool]) -> None:
    async def probe() -> dict[str, Any]:
        return stats()

    await eventually(probe, holds)


async def test_capacity_two_serves_two_and_refuses_eight_with_503(
    start_simulators: StartSimulators, http: aiohttp.ClientSession
) -> None:
    slow = Behaviour(capacity=2, queue_limit=0, overload="503", latency_median_ms=SLOW_MS)
    async with start_simulators(dtks=slow) as running:
        calls = asyncio.gather(*(_lookup(http, running) for _ in range(10)))
        await _until(
            lambda: running.stats("dtks"),
            lambda s: s["rejected_overload"] == 8 and s["in_flight"] == 2,
        )
        running.set_behaviour("dtks", latency_median_ms=0.0)
        results = await calls
    assert sorted(results) == [(200, None)] * 2 + [(503, "1")] * 8
    final = running.stats("dtks")
    assert (final["calls"], final["served"], final["rejected_overload"]) == (10, 2, 8)
    assert (final["in_flight"], final["max_in_flight"]) == (0, 2)


async def test_429_mode(start_simulators: StartSimulators, http: aiohttp.ClientSession) -> None:
    slow = Behaviour(
        capacity=1, queue_limit=0, overload="429", latency_median_ms=SLOW_MS, retry_after_s=5
    )
    async with start_simulators(dtks=slow) as running:
        first = asyncio.create_task(_lookup(http, running))
        await _until(lambda: running.stats("dtks"), lambda s: s["in_flight"] == 1)
        assert await _lookup(http, running) == (429, "5")
        running.set_behaviour("dtks", latency_median_ms=0.0)
        assert await first == (200, None)


async def test_the_queue_holds_calls_until_a_slot_frees(
    start_simulators: StartSimulators, http: aiohttp.ClientSession
) -> None:
    slow = Behaviour(capacity=1, queue_limit=2, latency_median_ms=SLOW_MS)
    async with start_simulators(dtks=slow) as running:
        calls = asyncio.gather(*(_lookup(http, running) for _ in range(4)))
        await _until(
            lambda: running.stats("dtks"),
            lambda s: s["in_flight"] == 1 and s["queued"] == 2 and s["rejected_overload"] == 1,
        )
        running.set_behaviour("dtks", latency_median_ms=0.0)
        results = await calls
    assert sorted(status for status, _ in results) == [200, 200, 200, 503]
    final = running.stats("dtks")
    assert (final["served"], final["max_queued"], final["max_in_flight"]) == (3, 2, 1)


async def test_hang_mode_ends_by_the_clients_timeout(
    start_simulators: StartSimulators, http: aiohttp.ClientSession
) -> None:
    slow = Behaviour(capacity=1, queue_limit=0, overload="hang", latency_median_ms=SLOW_MS)
    async with start_simulators(dtks=slow) as running:
        first = asyncio.create_task(_lookup(http, running))
        await _until(lambda: running.stats("dtks"), lambda s: s["in_flight"] == 1)
        url = f"{running.urls['dtks']}/v1/recipients/lookup"
        with pytest.raises(TimeoutError):
            # The client's own timeout is what ends the call: the server never answers.
            async with http.post(url, json=NIK, timeout=aiohttp.ClientTimeout(total=0.5)):
                pass
        assert running.stats("dtks")["rejected_overload"] == 1
        running.set_behaviour("dtks", latency_median_ms=0.0)
        assert await first == (200, None)
    assert running.stats("dtks")["served"] == 1


async def test_a_hang_is_bounded_server_side(
    start_simulators: StartSimulators, http: aiohttp.ClientSession
) -> None:
    hang = Behaviour(outage=True, outage_mode="hang", max_hang_s=0.2)
    async with start_simulators(dtks=hang) as running:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _lookup(http, running)  # the connection is closed after max_hang_s
    assert running.stats("dtks")["rejected_outage"] == 1
