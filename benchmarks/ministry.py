"""A simulated ministry as the benchmarks configure it, and the simulators' admin routes they
use (statistics, behaviour)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass(frozen=True, slots=True)
class Ministry:
    """A simulated ministry: ``capacity`` calls served at once, each taking ``latency_ms``
    (fixed), ``queue_limit`` more waiting, a ``503`` with ``Retry-After: 1`` beyond."""

    capacity: int
    latency_ms: float
    queue_limit: int

    @property
    def rate(self) -> float:
        """Its capacity in calls per second: capacity / latency."""
        return self.capacity / (self.latency_ms / 1000)

    def flags(self, name: str) -> list[str]:
        """``intake simulate`` flags giving simulator ``name`` this behaviour."""
        return [
            f"--{name}-capacity={self.capacity}",
            f"--{name}-queue-limit={self.queue_limit}",
            f"--{name}-latency-median-ms={self.latency_ms:g}",
            f"--{name}-latency-p99-ms=0",  # p99 <= median: a fixed latency
            f"--{name}-overload=503",
        ]

    def describe(self) -> dict[str, float]:
        return {
            "capacity": self.capacity,
            "latency_ms": self.latency_ms,
            "queue_limit": self.queue_limit,
            "calls_per_s": round(self.rate, 1),
        }


async def sim_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_sim/stats") as response:
        response.raise_for_status()
        body: dict[str, Any] = orjson.loads(await response.read())
        return body


async def set_behaviour(session: aiohttp.ClientSession, url: str, **changes: object) -> None:
    async with session.post(f"{url}/_sim/behaviour", json=changes) as response:
        response.raise_for_status()
