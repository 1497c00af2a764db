"""A dispatch round in which some publishes fail marks the ones the broker confirmed: the next
round publishes only the rest, so no lane receives a task twice (and no ministry is called
twice) because another task of the same round failed. On a real broker: one lane's queue is
unbound, so its task comes back unroutable (mandatory) while the others are confirmed."""

from __future__ import annotations

import aio_pika
import asyncpg
import pytest

from core import topology
from core.settings import Settings
from core.verification import Check
from tests.support import inprocess
from tests.support.people import person
from tests.support.waiting import eventually
from workers.dispatch import Dispatcher


async def _depths(channel: aio_pika.abc.AbstractChannel) -> dict[str, int]:
    depths = {}
    for check in (Check.EMAIL, Check.PHONE, Check.DUKCAPIL):
        queue = await channel.declare_queue(topology.lane_queue(check.value), passive=True)
        depths[check.value] = queue.declaration_result.message_count or 0
    return depths


async def _published(db: asyncpg.Pool) -> dict[str, bool]:
    rows = await db.fetch("SELECT check_name, dispatched_at IS NOT NULL AS published FROM checks")
    return {row["check_name"]: row["published"] for row in rows}


async def test_a_round_with_a_failed_publish_marks_the_confirmed_ones(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with inprocess.edge(settings) as client, inprocess.persist_worker(settings, db):
        response = await client.post("/v1/registrations", json=person(11))
        assert response.status == 202
        await eventually(
            lambda: db.fetchval("SELECT count(*) FROM registrations"), lambda n: n == 1
        )
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        lanes = await topology.declare_lanes(channel, settings, tuple(c.value for c in Check))
        for queue in lanes.queues.values():
            await queue.purge()
        dukcapil = lanes.queues[Check.DUKCAPIL]
        keys = (Check.DUKCAPIL.value, f"*.{Check.DUKCAPIL.value}")
        for key in keys:
            await dukcapil.unbind(lanes.verify_exchange, key)
        dispatcher = Dispatcher(settings, db)
        try:
            with pytest.raises(aio_pika.exceptions.PublishError):
                await dispatcher.dispatch_once(lanes.verify_exchange)  # dukcapil's is returned
        finally:
            for key in keys:
                await dukcapil.bind(lanes.verify_exchange, key)
        assert await _published(db) == {
            "email": True,
            "phone": True,
            "dukcapil": False,
            "photo": False,  # waits for its upload: not a task yet
        }
        assert await _depths(channel) == {"email": 1, "phone": 1, "dukcapil": 0}
        # The next round publishes only what is still pending.
        assert await dispatcher.dispatch_once(lanes.verify_exchange) == 1
        assert await _depths(channel) == {"email": 1, "phone": 1, "dukcapil": 1}
        assert dispatcher.dispatched == 3
