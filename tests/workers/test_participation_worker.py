"""The participation worker as a process and as the supervisor sees it: ``intake worker
participation`` killed with ``kill -9`` in the middle of a stream of joins loses none and stores
none twice (it acknowledges after the commit, the broker redelivers what it held, the insert is
idempotent); its scaling signal is the sum of both its queues."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import Callable

import aio_pika
import asyncpg

from core import topology
from core.keys import Keyring
from core.participation import Join
from core.settings import Settings
from core.waves import Policy, Situation, Waves
from tests.support.processes import Process
from tests.support.waiting import eventually
from workers.depths import QueueDepths
from workers.scaling import queues_of

JOINS = 2_000


async def test_a_worker_killed_mid_stream_loses_no_join(
    settings: Settings, db: asyncpg.Pool, spawn: Callable[..., Process]
) -> None:
    now = dt.datetime.now(dt.UTC)
    wave = await Waves(db).create(
        "test",
        "gelombang-kill",
        now - dt.timedelta(hours=1),
        now + dt.timedelta(hours=1),
        10,
        Policy(),
    )
    ids = [uuid.uuid4() for _ in range(JOINS)]
    await db.executemany(
        "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status, submitted_at)"
        " VALUES ($1, $2, 'n', 'p', 'verified', now())",
        [(registration_id, os.urandom(32)) for registration_id in ids],
    )
    keyring = Keyring.from_secret(settings.secret_key)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EXCHANGE)
        for start in range(0, JOINS, 200):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            Join(registration_id, wave.id, Situation.LAID_OFF, now).seal(keyring)
                        ),
                        topology.JOINS_ROUTING_KEY,
                        mandatory=True,
                    )
                    for registration_id in ids[start : start + 200]
                )
            )

    async def stored() -> int:
        count: int = await db.fetchval("SELECT count(*) FROM wave_joins")
        return count

    slow = settings.replace(participation_prefetch=4)
    first = spawn(["worker", "participation"], slow, name="participation-1")
    await eventually(stored, lambda n: n >= 100, 60)
    first.kill()  # kill -9, messages in hand
    at_kill = await stored()
    assert at_kill < JOINS, "the worker finished before it was killed: not mid-stream"
    second = spawn(["worker", "participation"], settings, name="participation-2")
    await eventually(stored, lambda n: n == JOINS, 120)
    rows = await db.fetch("SELECT registration_id, count(*) AS n FROM wave_joins GROUP BY 1")
    assert {row["registration_id"]: row["n"] for row in rows} == dict.fromkeys(ids, 1)
    second.terminate()
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (topology.JOINS_QUEUE, f"{topology.JOINS_QUEUE}.dlq"):
            queue = await channel.declare_queue(name, passive=True)
            assert queue.declaration_result.message_count == 0, name


async def test_the_supervisor_scales_it_on_the_sum_of_both_queues(settings: Settings) -> None:
    assert queues_of("participation") == (topology.TESTS_QUEUE, topology.JOINS_QUEUE)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EXCHANGE)
        for key, count in ((topology.TESTS_ROUTING_KEY, 3), (topology.JOINS_ROUTING_KEY, 2)):
            for _ in range(count):
                await exchange.publish(aio_pika.Message(b"x"), key, mandatory=True)
    depths = QueueDepths(settings.amqp_url, {"participation": queues_of("participation")})
    try:
        assert await depths.read() == {"participation": 5}
    finally:
        await depths.close()
