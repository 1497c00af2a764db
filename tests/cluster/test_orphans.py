"""Tasks a lane holds under a cancelled consumer when its RabbitMQ node dies are handled.

A lane cancels its consumer and subscribes afresh whenever its prefetch moves, its breaker
opens or it is held back; the deliveries in hand stay checked out to the cancelled consumer
until acknowledged. RabbitMQ 3.10's quorum queues give back what a consumer held when its
node goes away only if the consumer was still up (``rabbit_fifo``: ``{down, Pid,
noconnection}`` skips cancelled consumers, and ``nodeup`` re-monitors only the suspected
ones): a cancelled consumer's deliveries stay checked out for good, until the queue's leader
changes. Here a lane connected to a node that does not lead its queue holds three tasks, is
held back (its consumer cancelled), and its node is killed with ``kill -9`` and started again:
the lane publishes the three tasks again on its next session, and every check is settled.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from cluster.local import VHOST, Cluster
from core import topology
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.waiting import eventually

PEOPLE = 3


@pytest.fixture
async def slow_dukcapil() -> AsyncIterator[Running]:
    """Dukcapil answering each call after three seconds: the tasks stay in hand a while."""
    people = population(PEOPLE, seed=47, today=today_wib(), invalid_share=0.0, duplicate_share=0.0)
    slow = Behaviour(latency_median_ms=3000, latency_p99_ms=3000)
    config = SimulatorConfig(ports=Ports.ephemeral(), people=people, behaviours={"dukcapil": slow})
    async with run_simulators(config) as running:
        yield running


async def test_tasks_held_under_a_cancelled_consumer_are_handled_after_their_node_died(
    local_cluster: Cluster, settings: Settings, db: asyncpg.Pool, slow_dukcapil: Running
) -> None:
    everyone = slow_dukcapil.wire(settings.replace(amqp_url=local_cluster.amqp_url()))
    queue = topology.lane_queue(Check.DUKCAPIL.value)
    amqp = await aio_pika.connect(local_cluster.rabbits[0].url(VHOST))
    async with amqp:
        lanes = await topology.declare_lanes(await amqp.channel(), everyone, ("dukcapil",))
        await lanes.queues[Check.DUKCAPIL].purge()
    leader = await asyncio.to_thread(local_cluster.leading, queue)
    assert leader is not None
    # The lane's node is not the queue's leader: no election follows its death (one would
    # give the held deliveries back by itself).
    node = next(n for n in local_cluster.rabbits if n.name != leader.name)
    on_node = everyone.replace(amqp_url=node.url(VHOST))

    ids = await inprocess.registered(everyone, db, (p.form for p in slow_dukcapil.people))

    async def settled() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM checks WHERE registration_id = ANY($1)"
                " AND check_name = 'dukcapil' AND state = 'passed'",
                ids,
            )
        )

    async with (
        inprocess.dispatcher(everyone, db),
        inprocess.lanes(on_node, db, (Check.DUKCAPIL,)) as running,
    ):
        lane = running[Check.DUKCAPIL]
        await eventually(lambda: lane.in_hand, lambda n: n == PEOPLE)
        lane.hold(True)  # its consumer is cancelled; the three calls go on
        await eventually(lambda: lane.prefetch, lambda n: n == 0)
        assert node.signal(signal.SIGKILL)
        await eventually(node.pid, lambda pid: pid is None)
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(node.wait)
        lane.hold(False)
        await eventually(settled, lambda n: n == PEOPLE, timeout_s=120)
        assert lane.republished == PEOPLE
    await eventually(
        lambda: asyncio.to_thread(local_cluster.rabbit_running),
        lambda names: sorted(names) == sorted(n.name for n in local_cluster.rabbits),
        120,
    )
