"""What the parts of ``benchmarks.backpressure`` share: their rig (its own RabbitMQ vhost and
PostgreSQL database), the constants and the small statistics of their samples."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks._support import (
    RESULTS_DIR,
    BenchError,
    progress,
)
from benchmarks.rig import Rig
from core.settings import Settings
from simulators.population import Registrant

VHOST = "intake_bench_backpressure"
DATABASE = "intake_bench_backpressure"
LOG_DIR = RESULTS_DIR / "logs" / "backpressure"
NIK_LANES = ("dukcapil", "dapodik", "dtks")
PRIME_CONCURRENCY = 64
SAMPLE_S = 0.5


class WaveRig(Rig):
    """The rig of this benchmark, with its own vhost and database."""

    def __init__(self, base: Settings, name: str) -> None:
        super().__init__(base, name, VHOST, DATABASE, LOG_DIR)

    async def prime(self, people: Sequence[Registrant]) -> None:
        """Store every registration and publish its first checks' tasks: the persist worker,
        the dispatcher and the edge run; the forms are POSTed, 64 at a time."""
        self.stack.start("worker-persist", "worker", "persist")
        self.stack.start("worker-dispatch", "worker", "dispatch")
        await self.start_edge()
        statuses: collections.Counter[int] = collections.Counter()
        bodies = [orjson.dumps(p.form) for p in people]
        url = f"{self.base_url}/v1/registrations"
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()

        async def client(session: aiohttp.ClientSession) -> None:
            while bodies:
                body = bodies.pop()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                statuses[response.status] += 1

        connector = aiohttp.TCPConnector(limit=PRIME_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(PRIME_CONCURRENCY)))
        progress(
            f"  {len(people):,} POSTed in {time.perf_counter() - started:.1f} s: {dict(statuses)}"
        )
        if statuses[202] != len(people):
            raise BenchError(f"{self.name}: the edge accepted {statuses[202]}/{len(people)}")
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            await self.wait_count(
                connection,
                "initial checks published",
                "SELECT count(*) FROM checks WHERE dispatched_at IS NOT NULL",
                3 * len(people),  # email, phone, Dukcapil; the photo check waits for its upload
                180,
            )
        finally:
            await connection.close()


def first_reaching(samples: Sequence[dict[str, Any]], key: str, at_least: float) -> dict[str, Any]:
    return next((s for s in samples if s[key] >= at_least), samples[-1])


def mean_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def median_of(values: Iterable[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def series_of(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = (
        "t",
        "served",
        "rejected",
        "calls",
        "decided",
        "retries",
        "limit",
        "lane_inflight",
        "prefetch",
        "breaker",
        "sim_in_flight",
        "sim_queued",
        "cpu_busy",
    )
    return {key: [s[key] for s in samples] for key in keys}
