"""A lane against a slow ministry: its concurrency limit follows the ministry's latency, its
consumer prefetch follows the limit (as RabbitMQ itself reports it), and nothing is lost."""

from __future__ import annotations

import asyncio
import statistics
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core import topology
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess, services
from tests.support.waiting import eventually
from workers.lane import LaneWorker

PEOPLE = 1500
CAPACITY = 5


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    # Five calls served at once, 100 ms each: 50 calls/s, beyond what the lane gets to send.
    slow = Behaviour(latency_median_ms=100, latency_p99_ms=100, capacity=CAPACITY, queue_limit=1000)
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        people=population(
            PEOPLE, seed=5, today=today_wib(), invalid_share=0.0, duplicate_share=0.0
        ),
        behaviours={"dukcapil": slow},
    )
    async with run_simulators(config) as running:
        yield running


async def _submit(settings: Settings, people: list[Registrant]) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    async with inprocess.edge(settings) as client:
        for start in range(0, len(people), 50):

            async def post(person: Registrant) -> uuid.UUID:
                response = await client.post("/v1/registrations", json=person.form)
                assert response.status == 202
                return uuid.UUID((await response.json())["id"])

            ids += await asyncio.gather(*(post(p) for p in people[start : start + 50]))
    return ids


def _broker_prefetch(settings: Settings) -> list[int]:
    """The prefetch of every consumer of the Dukcapil lane, as RabbitMQ reports it."""
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(settings.amqp_url).path[1:])
    out = services.rabbitmqctl(
        "list_consumers", "--vhost", vhost, "--no-table-headers", "queue_name", "prefetch_count"
    )
    queue = topology.lane_queue(Check.DUKCAPIL)
    return [int(line.split()[1]) for line in out.splitlines() if line.split()[:1] == [queue]]


async def test_the_limit_falls_when_dukcapil_slows_down_and_climbs_back_when_it_recovers(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = simulators.wire(settings).replace(
        ministry_timeout_s=20.0,
        lane_limit_probe_interval_s=600.0,  # no re-measurement during the test
    )
    ids = await _submit(wired, list(simulators.people))
    samples: list[float] = []

    async def sample(worker: LaneWorker) -> None:
        while True:
            samples.append(worker.gate.limit.limit)

            await asyncio.sleep(0.05)

    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, (Check.DUKCAPIL,)) as lanes,
    ):
        worker = lanes[Check.DUKCAPIL]
        sampler = asyncio.create_task(sample(worker))
        try:
            # Phase 1: 100 ms calls. The limit settles around the five the ministry serves.
            await eventually(lambda: worker.processed, lambda n: n >= 300, 120)
            fast = statistics.median(samples[-40:])
            assert fast >= CAPACITY  # at least the ministry's concurrency: it is kept busy
            # Phase 2: every call takes a second. The same concurrency now means a queue.
            simulators.set_behaviour("dukcapil", latency_median_ms=1000, latency_p99_ms=1000)
            await eventually(lambda: worker.gate.limit.limit, lambda limit: limit < fast / 2, 60)
            slow = worker.gate.limit.limit
            # The consumer's prefetch follows: RabbitMQ itself reports the smaller prefetch.
            await eventually(
                lambda: asyncio.to_thread(_broker_prefetch, wired),
                lambda prefetch: prefetch == [worker.prefetch] and worker.prefetch <= slow + 4,
                30,
            )
            # Phase 3: fast again. The limit climbs back above the ministry's concurrency (a
            # small queue there keeps it busy; where exactly it settles depends on the latency
            # the lane measured, which CPU contention on this machine inflates).
            simulators.set_behaviour("dukcapil", latency_median_ms=100, latency_p99_ms=100)
            await eventually(
                lambda: worker.gate.limit.limit,
                lambda limit: limit >= min(fast, CAPACITY + 2) and limit > slow + 2,
                60,
            )
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM checks WHERE check_name = 'dukcapil'"
                    " AND registration_id = ANY($1) AND state IN ('passed', 'failed')",
                    ids,
                ),
                lambda n: n == len(ids),
                180,
            )
        finally:
            sampler.cancel()
    assert worker.gate.breaker.opened == 0  # slowness is not an outage
    stats = simulators.stats("dukcapil")
    assert stats["rejected_overload"] == 0
    # Every registration was decided once: as many Dukcapil calls served as checks.
    assert stats["served"] == len(ids)
