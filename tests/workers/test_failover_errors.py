"""Workers whose connections reach a server that refuses writes (a primary demoted while they
were open, as after a failover) do the same work again on new connections (core/database.py):
the persist worker writes the batch again instead of giving its messages back to the broker
(whose delivery limit would dead-letter them), a lane records its result again instead of
calling the ministry again."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import aiohttp
import asyncpg
import pytest

from core import topology
from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import Process, free_port
from tests.support.proxy import TcpProxy
from tests.support.stored import stored_once
from tests.support.waiting import eventually
from verifiers import registry
from workers.flow import Signal
from workers.lane import LaneWorker
from workers.persist import PersistWorker


async def _read_only_pool(settings: Settings, db: asyncpg.Pool) -> asyncpg.Pool:
    """A pool whose connections refuse writes, as those to a primary demoted while they were
    open: made while new connections to the test's database start read-only; any it opens
    later do not."""
    database = urllib.parse.urlsplit(settings.database_url).path.lstrip("/")
    await db.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        return await asyncpg.create_pool(settings.database_url, min_size=2, max_size=2)
    finally:
        await db.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')


async def test_a_batch_refused_by_a_read_only_server_is_written_again_on_new_connections(
    settings: Settings, db: asyncpg.Pool
) -> None:
    pool = await _read_only_pool(settings, db)
    accepted: set[uuid.UUID] = set()
    async with pool, inprocess.edge(settings) as client:
        # The pool's connections are read-only; any it opens from now on are not.
        assert await pool.fetchval("SHOW default_transaction_read_only") == "on"
        async with inprocess.persist_worker(settings, pool) as worker:
            response = await client.post("/v1/registrations", json=person(5))
            assert response.status == 202
            accepted.add(uuid.UUID((await response.json())["id"]))
            await stored_once(db, accepted, only=True)
            assert isinstance(worker, PersistWorker)
            await eventually(lambda: worker.stats.received, lambda n: n == 1)
        assert await pool.fetchval("SHOW default_transaction_read_only") == "off"
    amqp = await aio_pika.connect(settings.amqp_url)
    async with amqp:
        channel = await amqp.channel()
        dlq = await channel.declare_queue(topology.PERSIST_DLQ, passive=True)
        assert dlq.declaration_result.message_count == 0


@pytest.fixture
async def dukcapil() -> AsyncIterator[Running]:
    people = population(6, seed=41, today=today_wib(), invalid_share=0.0, duplicate_share=0.0)
    fast = Behaviour(latency_median_ms=2, latency_p99_ms=10)
    config = SimulatorConfig(ports=Ports.ephemeral(), people=people, behaviours={"dukcapil": fast})
    async with run_simulators(config) as running:
        yield running


async def test_a_lane_records_its_result_again_on_new_connections_without_calling_again(
    settings: Settings, db: asyncpg.Pool, dukcapil: Running
) -> None:
    # The lane's pool holds connections to "a demoted primary": it reads the task's
    # registration, calls Dukcapil, and its record is refused. Giving the message back would
    # call Dukcapil again (and count towards the queue's delivery limit); the record is
    # retried in place instead.
    wired = dukcapil.wire(settings)
    ids = await inprocess.registered(wired, db, (p.form for p in dukcapil.people))
    pool = await _read_only_pool(settings, db)
    async with (
        pool,
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, pool, (Check.DUKCAPIL,)),
    ):
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM checks WHERE registration_id = ANY($1)"
                " AND check_name = 'dukcapil' AND state IN ('passed', 'failed')",
                ids,
            ),
            lambda n: n == len(ids),
            60,
        )
        assert await pool.fetchval("SHOW default_transaction_read_only") == "off"
    assert dukcapil.stats("dukcapil")["calls"] == len(ids)  # one call per registration


async def test_the_dispatcher_starts_again_on_new_connections(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with inprocess.edge(settings) as client:
        response = await client.post("/v1/registrations", json=person(8))
        assert response.status == 202
        registration = uuid.UUID((await response.json())["id"])
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, {registration})
    pool = await _read_only_pool(settings, db)
    async with pool, inprocess.dispatcher(settings, pool) as dispatcher:
        # Its first session's writes are refused; the next one's connections are new.
        await eventually(lambda: dispatcher.dispatched, lambda n: n > 0, 30)
        assert await pool.fetchval("SHOW default_transaction_read_only") == "off"
    published = await db.fetchval(
        "SELECT count(*) FROM checks WHERE registration_id = $1 AND state <> 'pending'",
        registration,
    )
    assert published > 0


async def test_a_worker_started_while_no_database_answers_waits_for_one(
    settings: Settings, db: asyncpg.Pool, spawn: Callable[..., Process]
) -> None:
    # Started during a failover (or before the database), a persist worker waits for a primary
    # instead of exiting: here PostgreSQL is behind a proxy that does not listen yet.
    url = urllib.parse.urlsplit(settings.database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    proxy.port = free_port()
    userinfo = url.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    behind = settings.replace(
        database_url=urllib.parse.urlunsplit((url.scheme, netloc, url.path, url.query, ""))
    )
    worker = spawn(["worker", "persist"], behind, name="persist-waiting")
    async with inprocess.edge(settings) as client:
        response = await client.post("/v1/registrations", json=person(9))
        assert response.status == 202
        registration = uuid.UUID((await response.json())["id"])
    await eventually(lambda: "no database primary yet" in worker.log(), bool, 30)
    assert worker.alive()
    await proxy.start()
    try:
        await stored_once(db, {registration})
    finally:
        await proxy.close()


async def test_a_permit_granted_to_a_task_cancelled_while_waiting_is_given_back(
    settings: Settings, db: asyncpg.Pool
) -> None:
    # A lane's tasks are cancelled when their connection is lost (a broker node dies). One
    # cancelled while waiting for the gate must not take the slot it was waiting for: the
    # lane of one slot would then wait for ever (seen after kill -9 of a RabbitMQ node).
    one_slot = settings.replace(lane_limit_fixed=1)
    async with aiohttp.ClientSession() as http:
        verifier = registry.build(Check.DAPODIK, one_slot, http, db)
        worker = LaneWorker(one_slot, Keyring.from_secret(settings.secret_key), db, verifier)
        held = await worker.gate.acquire()
        waiting = asyncio.create_task(worker._permit())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        worker.gate.release(held, Signal.NEUTRAL)  # the slot the cancelled wait wanted
        await asyncio.sleep(0.05)
        assert worker.gate.inflight == 0
        permit = await asyncio.wait_for(worker._permit(), 5)  # the lane still works
        assert permit is not None
        worker.gate.release(permit, Signal.NEUTRAL)
