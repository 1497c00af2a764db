"""A worker's probes (core/health.py, served beside its metrics) tell a stuck consumer from a
live process: on real RabbitMQ and PostgreSQL, reached through a proxy the test cuts or stalls.

- a broker that cannot be reached: the worker is unready and stays alive (it reconnects;
  restarting it would not bring the broker back), and is ready again once the broker is back;
- a broker connection whose server side went silent (what a stuck consumer sees): the lane's
  loop hangs on the broker and its liveness probe fails; once the traffic flows again the lane
  subscribes afresh and is alive and ready;
- a database write that never returns: the persist worker holds its messages, its liveness
  probe fails; once the write completes it is alive again and the registration is stored once.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from core import broker, topology
from core.health import Health
from core.keys import Keyring
from core.metrics_http import MetricsEndpoint
from core.settings import Settings
from core.verification import Check, Task
from tests.support import inprocess
from tests.support.people import person
from tests.support.proxy import TcpProxy, broker_proxy
from tests.support.stored import stored_once
from tests.support.waiting import eventually
from verifiers import registry
from workers.lane import LaneWorker
from workers.sessions import STALL_S


class Probes:
    def __init__(self, address: str, http: aiohttp.ClientSession) -> None:
        self._address, self._http = address, http

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self._http.get(f"{self._address}{path}") as response:
            return response.status, await response.json()

    async def ready(self) -> int:
        return (await self.get("/readyz"))[0]

    async def live(self) -> int:
        return (await self.get("/healthz"))[0]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Health, Probes]]:
    """A worker's Health and the probes that read it, served on a port of their own."""
    health = Health(stuck_after_s=2.0)
    endpoint = MetricsEndpoint("127.0.0.1", 0, registry=CollectorRegistry(), health=health)
    await endpoint.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield health, Probes(endpoint.address, http)
    finally:
        await endpoint.close()


def _lane(
    settings: Settings, pool: asyncpg.Pool, http: aiohttp.ClientSession, health: Health
) -> LaneWorker:
    verifier = registry.build(Check.DUKCAPIL, settings, http, pool)
    return LaneWorker(
        settings, Keyring.from_secret(settings.secret_key), pool, verifier, health=health
    )


async def test_a_worker_whose_broker_is_unreachable_is_unready_and_stays_alive(
    settings: Settings, db: asyncpg.Pool
) -> None:
    health = Health(stuck_after_s=8.0)  # above the reconnect backoff's longest wait (7.5 s)
    endpoint = MetricsEndpoint("127.0.0.1", 0, registry=CollectorRegistry(), health=health)
    await endpoint.start()
    async with broker_proxy(settings) as (proxy, through), aiohttp.ClientSession() as http:
        probes = Probes(endpoint.address, http)
        await proxy.cut()  # nothing listens where the worker's broker should be
        lane = _lane(through, db, http, health)
        running = asyncio.create_task(lane.run())
        try:
            seen: set[tuple[int, int]] = set()
            watched_until = time.monotonic() + 10.0
            while time.monotonic() < watched_until:
                seen.add((await probes.ready(), await probes.live()))
                await asyncio.sleep(0.25)
            assert seen == {(503, 200)}  # unready, never restarted
            assert (await probes.get("/readyz"))[1] == {"ok": False, "reason": "no broker session"}
            await proxy.restore()
            await eventually(probes.ready, lambda status: status == 200, timeout_s=15)
            assert await probes.live() == 200
        finally:
            lane.stop()
            await asyncio.wait_for(running, 30)
            await endpoint.close()


async def test_a_lane_whose_broker_went_silent_fails_its_liveness_probe_then_recovers(
    settings: Settings, db: asyncpg.Pool, served: tuple[Health, Probes]
) -> None:
    health, probes = served
    # The client's default heartbeat (60 s): the lane's own heartbeat (workers.sessions) would
    # give the silent connection up by itself before the probe is asked.
    patient = settings.replace(amqp_url=broker.with_heartbeat(settings.amqp_url, 60))
    # Lane queues are not emptied between tests: count only this test's tasks.
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        lanes = await topology.declare_lanes(await connection.channel(), settings, ("dukcapil",))
        await lanes.queues[Check.DUKCAPIL].purge()
    async with broker_proxy(patient) as (proxy, through), aiohttp.ClientSession() as http:
        lane = _lane(through, db, http, health)
        running = asyncio.create_task(lane.run())
        try:
            await eventually(probes.ready, lambda status: status == 200)
            await asyncio.sleep(3.0)  # idle for longer than stuck_after_s: not stuck
            assert await probes.live() == 200
            proxy.stall()  # the broker's side of the lane's connection goes silent
            connection = await aio_pika.connect(settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                # Lane queues are not emptied between tests: count only this test's tasks.
                queue = await channel.declare_queue(topology.lane_queue("dukcapil"), passive=True)
                await queue.purge()
                for _ in range(3 * settings.lane_prefetch):  # more than the lane may hold
                    task = Task(uuid.uuid4(), Check.DUKCAPIL, 1)  # nothing stored: skipped
                    await channel.default_exchange.publish(
                        aio_pika.Message(task.to_json()), topology.lane_queue("dukcapil")
                    )
            # Deliveries never arrive; after STALL_S the lane asks the broker about its queue
            # and that call hangs too: the loop stops turning.
            _status, body = await eventually(
                lambda: probes.get("/healthz"),
                lambda answer: answer[0] == 503,
                timeout_s=STALL_S + 15,
            )
            assert body["reason"].startswith("loop has not turned for")
            assert await probes.ready() == 503
            proxy.release()
            # The held answer says its queue holds ready messages: a stall, a fresh subscription.
            await eventually(lambda: lane.stalls, lambda stalls: stalls == 1, timeout_s=15)
            await eventually(
                lambda: lane.processed, lambda n: n == 3 * settings.lane_prefetch, timeout_s=30
            )
            assert (await probes.live(), await probes.ready()) == (200, 200)
            assert health.stalls == 0  # deliveries arrived again after the stall
        finally:
            proxy.release()
            lane.stop()
            await asyncio.wait_for(running, 30)


async def test_a_persist_worker_whose_database_write_hangs_fails_its_liveness_probe(
    settings: Settings, db: asyncpg.Pool, served: tuple[Health, Probes]
) -> None:
    health, probes = served
    dsn = urllib.parse.urlsplit(settings.database_url)
    proxy = TcpProxy(dsn.hostname or "127.0.0.1", dsn.port or 5432)
    await proxy.start()
    through = dsn._replace(netloc=f"{dsn.username}@127.0.0.1:{proxy.port}").geturl()
    pool = await asyncpg.create_pool(through, min_size=1, max_size=2)
    try:
        async with pool, inprocess.edge(settings) as client:
            async with inprocess.persist_worker(settings, pool, health) as worker:
                await eventually(probes.ready, lambda status: status == 200)
                await asyncio.sleep(3.0)  # idle for longer than stuck_after_s: not stuck
                assert await probes.live() == 200
                proxy.stall()  # the database's answers stop coming
                response = await client.post("/v1/registrations", json=person(7))
                assert response.status == 202
                accepted = uuid.UUID((await response.json())["id"])
                _status, body = await eventually(
                    lambda: probes.get("/healthz"), lambda answer: answer[0] == 503
                )
                assert body["reason"].startswith("loop has not turned for")
                assert worker.stats.messages == 0  # held, not stored, not acknowledged
                proxy.release()
                await eventually(lambda: worker.stats.messages, lambda n: n == 1)
                await eventually(probes.live, lambda status: status == 200)
            await stored_once(db, {accepted})
    finally:
        await proxy.close()
