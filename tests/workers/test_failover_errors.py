"""A persist worker whose connections reach a server that refuses writes (a primary demoted
while they were open, as after a failover) writes the batch again on new connections instead
of giving the messages back to the broker (whose delivery limit would dead-letter them): the
registration is stored once, nothing dead-lettered."""

from __future__ import annotations

import urllib.parse
import uuid

import aio_pika
import asyncpg

from core import topology
from core.settings import Settings
from tests.support import inprocess
from tests.support.people import person
from tests.support.stored import stored_once
from tests.support.waiting import eventually
from workers.persist import PersistWorker


async def test_a_batch_refused_by_a_read_only_server_is_written_again_on_new_connections(
    settings: Settings, db: asyncpg.Pool
) -> None:
    database = urllib.parse.urlsplit(settings.database_url).path.lstrip("/")
    # New connections to the test's database start read-only: the worker's pool, made now,
    # holds connections to "a demoted primary".
    await db.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=2)
    finally:
        await db.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
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
