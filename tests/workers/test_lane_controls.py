"""Operator controls of a lane (core/controls.py, workers/controls.py) against the real edge,
RabbitMQ, PostgreSQL and the Dukcapil simulator (which counts every request it gets): a
maintenance window holds every call without an attempt or a dead letter, a breaker forced open
stops calls and ``auto`` resumes them, a breaker forced closed keeps calling through failures,
and a lane whose controls cannot be read keeps the state it knew."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from prometheus_client import REGISTRY

from core import topology
from core.controls import BreakerMode, LaneControls
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.waiting import eventually
from workers import flow
from workers.controls import ControlWatcher

NIK_CHECKS = (Check.DUKCAPIL, Check.DAPODIK, Check.DTKS)


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    fast = Behaviour(latency_median_ms=2, latency_p99_ms=20)
    people = population(120, seed=31, today=today_wib(), invalid_share=0.0, duplicate_share=0.0)
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        people=people,
        behaviours={"dukcapil": fast, "dapodik": fast, "dtks": fast},
    )
    async with run_simulators(config) as running:
        yield running


def _wired(settings: Settings, running: Running) -> Settings:
    return running.wire(settings).replace(retry_base_delay_s=0.05, ministry_timeout_s=2.0)


def _matches(running: Running, count: int) -> list[Registrant]:
    """People Dukcapil knows (each ends with a Dukcapil call served, and nothing else)."""
    people = [p for p in running.people if p.kind == "valid" and p.truth.dukcapil == "match"]
    assert len(people) >= count
    return people[:count]


async def _submit(settings: Settings, people: list[Registrant]) -> list[uuid.UUID]:
    ids = []
    async with inprocess.edge(settings) as client:
        for person in people:
            response = await client.post("/v1/registrations", json=person.form)
            assert response.status == 202
            ids.append(uuid.UUID((await response.json())["id"]))
    return ids


async def _queue(settings: Settings, name: str, purge: bool = False) -> tuple[int, int]:
    """(messages ready, consumers) of a queue (emptied first with ``purge``)."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        if purge:
            await queue.purge()
            queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def _fresh_lane_queues(settings: Settings) -> None:
    """The Dukcapil queue and its dead letters declared and empty (tests before may have left
    some)."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await topology.declare_lanes(await connection.channel(), settings, (Check.DUKCAPIL,))
    for name in (topology.lane_queue(Check.DUKCAPIL), topology.lane_dlq(Check.DUKCAPIL)):
        await _queue(settings, name, purge=True)


async def _dukcapil(db: asyncpg.Pool, ids: list[uuid.UUID]) -> asyncpg.Record:
    """The Dukcapil checks of ``ids``: how many are dispatched, done, and their attempts."""
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE dispatched_at IS NOT NULL) AS dispatched,"
        " count(*) FILTER (WHERE state IN ('passed', 'failed')) AS done,"
        " coalesce(sum(attempts), 0) AS attempts, max(attempts) AS max_attempts,"
        " min(finished_at) AS first_finished"
        " FROM checks WHERE check_name = 'dukcapil' AND registration_id = ANY($1)",
        ids,
    )
    assert row is not None
    return row


def _calls(running: Running) -> int:
    calls = running.stats("dukcapil")["calls"]
    assert isinstance(calls, int)
    return calls


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_maintenance_window_holds_every_call_without_an_attempt_or_a_dead_letter(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = _wired(settings, simulators)
    await _fresh_lane_queues(wired)
    controls = LaneControls(db)
    now = dt.datetime.now(dt.UTC)
    window = await controls.add_window(
        "ops-test",
        Check.DUKCAPIL,
        now - dt.timedelta(seconds=1),
        now + dt.timedelta(seconds=15),
        "Dukcapil database upgrade",
        now,
    )
    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, NIK_CHECKS) as lanes,
    ):
        worker = lanes[Check.DUKCAPIL]
        # The registrations, and so their Dukcapil tasks, arrive during the window.
        ids = await _submit(wired, _matches(simulators, 30))
        await eventually(lambda: _dukcapil(db, ids), lambda r: r["dispatched"] == len(ids), 30)
        queue = topology.lane_queue(Check.DUKCAPIL)
        # The lane does not consume: every task waits in the queue ...
        _, consumers = await eventually(
            lambda: _queue(wired, queue), lambda q: q[0] == len(ids), 30
        )
        assert consumers == 0
        assert worker.gate.state is flow.BreakerState.OPEN
        assert worker.status()["maintenance"] is True
        assert _gauge("intake_lane_maintenance", check="dukcapil") == 1
        assert _gauge("intake_lane_forced_breaker", check="dukcapil", state="auto") == 1
        # ... no call reaches the ministry and no attempt is counted.
        assert _calls(simulators) == 0
        during = await _dukcapil(db, ids)
        assert (during["done"], during["attempts"]) == (0, 0)
        assert dt.datetime.now(dt.UTC) < window.ends_at  # all this was inside the window
        # After the window, every task is done, each with a single call.
        after = await eventually(lambda: _dukcapil(db, ids), lambda r: r["done"] == len(ids), 60)
        assert _gauge("intake_lane_maintenance", check="dukcapil") == 0
    assert after["first_finished"] >= window.ends_at
    assert (after["attempts"], after["max_attempts"]) == (0, 0)
    assert simulators.stats("dukcapil")["served"] == _calls(simulators) == len(ids)
    assert await _queue(wired, topology.lane_dlq(Check.DUKCAPIL)) == (0, 0)
    passed = await db.fetchval(
        "SELECT count(*) FROM checks WHERE check_name = 'dukcapil' AND state = 'passed'"
        " AND registration_id = ANY($1)",
        ids,
    )
    assert passed == len(ids)


async def test_a_breaker_forced_open_stops_calls_and_auto_resumes_them(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    # Tasks held while the lane is forced open go back to the queue after 5 s.
    wired = _wired(settings, simulators).replace(lane_control_hand_back_s=5.0)
    await _fresh_lane_queues(wired)
    # Slow enough that tasks are still in hand when the operator acts.
    simulators.set_behaviour("dukcapil", latency_median_ms=300, latency_p99_ms=300, capacity=2)
    controls = LaneControls(db)
    ids = await _submit(wired, _matches(simulators, 40))
    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, (Check.DUKCAPIL,)) as lanes,
    ):
        worker = lanes[Check.DUKCAPIL]
        await eventually(lambda: _calls(simulators), lambda n: n >= 3, 60)
        assert await controls.set_breaker("ops-test", Check.DUKCAPIL, BreakerMode.OPEN) is (
            BreakerMode.AUTO
        )
        await eventually(lambda: worker.gate.state, lambda s: s is flow.BreakerState.OPEN, 10)
        await eventually(lambda: worker.gate.inflight, lambda n: n == 0, 10)
        stopped_at = _calls(simulators)
        # Tasks wait in hand for a permit, the rest in the queue: the lane cancelled its
        # consumer. After 5 s those in hand go back to the queue, without a call.
        assert worker.in_hand > 0
        await eventually(lambda: worker.prefetch, lambda n: n == 0, 10)
        await eventually(lambda: worker.in_hand, lambda n: n == 0, 10)
        assert worker.handed_back > 0
        queue = topology.lane_queue(Check.DUKCAPIL)
        left = len(ids) - (await _dukcapil(db, ids))["done"]
        assert left > 0
        await eventually(lambda: _queue(wired, queue), lambda q: q == (left, 0), 10)
        await asyncio.sleep(2)
        assert _calls(simulators) == stopped_at
        assert (await _queue(wired, queue))[0] == left  # nothing more delivered
        assert worker.gate.breaker.opened == 0  # the lane's own breaker never opened
        assert _gauge("intake_lane_forced_breaker", check="dukcapil", state="open") == 1
        assert (await _dukcapil(db, ids))["done"] < len(ids)
        await controls.set_breaker("ops-test", Check.DUKCAPIL, BreakerMode.AUTO)
        after = await eventually(lambda: _dukcapil(db, ids), lambda r: r["done"] == len(ids), 120)
        assert _gauge("intake_lane_forced_breaker", check="dukcapil", state="auto") == 1
    assert _calls(simulators) > stopped_at
    assert after["attempts"] == 0  # waiting for the operator is not an attempt
    assert simulators.stats("dukcapil")["served"] == len(ids)  # each called once, given back or not


async def test_a_breaker_forced_closed_keeps_calling_through_failures(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = _wired(settings, simulators).replace(
        lane_max_attempts=1000, breaker_open_s=0.5, breaker_open_max_s=1.0
    )
    await _fresh_lane_queues(wired)
    controls = LaneControls(db)
    await controls.set_breaker("ops-test", Check.DUKCAPIL, BreakerMode.CLOSED)
    simulators.set_behaviour("dukcapil", outage=True)
    ids = await _submit(wired, _matches(simulators, 10))
    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, (Check.DUKCAPIL,)) as lanes,
    ):
        gate = lanes[Check.DUKCAPIL].gate
        await eventually(lambda: gate.forced, lambda mode: mode is BreakerMode.CLOSED, 5)
        # Every call fails; the automatic breaker would have opened after 10 of them.
        await eventually(lambda: _calls(simulators), lambda n: n >= 40, 60)
        assert gate.breaker.opened == 0
        assert gate.breaker.state is flow.BreakerState.CLOSED
        await controls.set_breaker("ops-test", Check.DUKCAPIL, BreakerMode.AUTO)
        await eventually(lambda: gate.breaker.opened, lambda n: n >= 1, 30)
        simulators.set_behaviour("dukcapil", outage=False)
        await eventually(lambda: _dukcapil(db, ids), lambda r: r["done"] == len(ids), 120)
    assert await _queue(wired, topology.lane_dlq(Check.DUKCAPIL)) == (0, 0)


def _forced(gate: flow.LaneGate) -> BreakerMode:
    return gate.forced


async def test_a_lane_that_cannot_read_its_controls_keeps_the_last_state_known(
    settings: Settings, db: asyncpg.Pool
) -> None:
    gate = flow.LaneGate(flow.AdaptiveLimit(), flow.CircuitBreaker())
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    watcher = ControlWatcher(LaneControls(pool), Check.DTKS, gate, poll_s=0.05)
    try:
        assert await watcher.refresh()
        assert gate.forced is BreakerMode.AUTO
        await LaneControls(db).set_breaker("ops-test", Check.DTKS, BreakerMode.OPEN)
        assert await watcher.refresh()
        assert _forced(gate) is BreakerMode.OPEN
        # The database goes away for this worker: the lane keeps the breaker forced open.
        await pool.close()
        running = asyncio.create_task(watcher.run())
        await eventually(lambda: watcher.read_failures, lambda n: n >= 3, 10)
        assert not running.done()  # it did not fail
        assert _forced(gate) is BreakerMode.OPEN
        assert watcher.control.breaker is BreakerMode.OPEN
        running.cancel()
    finally:
        await pool.close()
