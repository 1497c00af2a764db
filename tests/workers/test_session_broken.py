"""A lane whose publish is never confirmed ends its session instead of waiting for ever.

RabbitMQ 3.10 can leave a confirm unanswered for good when a quorum queue's leader dies under
the publish; the handler holding the delivery would then wait for ever, its message
unacknowledged on a channel that otherwise looks alive, and the lane would never look idle
enough to subscribe afresh. Here the lane's connection goes through a proxy that holds back
everything the broker sends on it (its confirms, its heartbeats) while new connections flow,
with a client heartbeat long enough that the heartbeat cannot be what saves it: past
``CONFIRM_TIMEOUT_S`` the session ends, a new connection subscribes, and the task (given back
when the wedged connection closed) is handled again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

import workers.lane
from core import broker, topology
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.proxy import broker_proxy
from tests.support.waiting import eventually

CONFIRM_TIMEOUT_S = 1.0


@pytest.fixture
async def failing_dukcapil() -> AsyncIterator[Running]:
    """Dukcapil answering every call with a 500 after a second: each call is a retry."""
    people = population(1, seed=43, today=today_wib(), invalid_share=0.0, duplicate_share=0.0)
    slow = Behaviour(latency_median_ms=1000, latency_p99_ms=1000, error_rate=1.0)
    config = SimulatorConfig(ports=Ports.ephemeral(), people=people, behaviours={"dukcapil": slow})
    async with run_simulators(config) as running:
        yield running


async def test_a_publish_never_confirmed_ends_the_lane_session_and_the_task_comes_back(
    settings: Settings,
    db: asyncpg.Pool,
    failing_dukcapil: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers.lane, "CONFIRM_TIMEOUT_S", CONFIRM_TIMEOUT_S)
    wired = failing_dukcapil.wire(settings)
    amqp = await aio_pika.connect(settings.amqp_url)
    async with amqp:  # lane queues are not emptied between tests
        lanes = await topology.declare_lanes(await amqp.channel(), settings, ("dukcapil",))
        await lanes.queues[Check.DUKCAPIL].purge()
    [accepted] = await inprocess.registered(wired, db, [failing_dukcapil.people[0].form])
    # A client heartbeat of a minute: aiormq would give the wedged connection up only after
    # three of them, long after this test's waits.
    patient = wired.replace(amqp_url=broker.with_heartbeat(wired.amqp_url, 60))

    def calls() -> object:
        return failing_dukcapil.stats("dukcapil")["calls"]

    async with (
        broker_proxy(patient) as (proxy, through),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(through, db, (Check.DUKCAPIL,)) as running,
    ):
        lane = running[Check.DUKCAPIL]
        # The first call is under way: the broker's side of the lane's connection goes
        # silent. The verdict (a retry) is recorded and the next attempt published; its
        # confirm never arrives.
        await eventually(calls, lambda n: isinstance(n, int) and n >= 1)
        proxy.stall(new_connections=False)
        await eventually(lambda: lane.sessions_broken, lambda n: n == 1, timeout_s=30)
        # A new connection took over while the old one is still wedged: the task given back
        # and the next attempt are handled on it.
        await eventually(calls, lambda n: isinstance(n, int) and n >= 2, timeout_s=30)
        await eventually(lambda: lane.processed, lambda n: n >= 1, timeout_s=30)
        attempts = await db.fetchval(
            "SELECT attempts FROM checks WHERE registration_id = $1 AND check_name = 'dukcapil'",
            accepted,
        )
        assert attempts >= 2
        proxy.release()
