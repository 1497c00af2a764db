"""The NIK checks end to end: edge, persist worker, dispatcher, the Dukcapil, Dapodik and DTKS
lanes, against the project's ministry simulators and the population's ground truth."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from prometheus_client import REGISTRY

from core import topology
from core.settings import Settings
from core.verification import Check
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import Proportions, Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.waiting import eventually

NIK_CHECKS = (Check.DUKCAPIL, Check.DAPODIK, Check.DTKS)
# Larger shares than the defaults, so that a small population has every kind of person.
MIXED = Proportions(
    not_found=0.1,
    mismatch_full_name=0.08,
    mismatch_birth_place=0.08,
    mismatch_birth_date=0.08,
    student=0.15,
    welfare=0.3,
)


def _people(count: int, seed: int) -> list[Registrant]:
    return population(
        count,
        seed=seed,
        today=today_wib(),
        invalid_share=0.0,
        duplicate_share=0.05,
        proportions=MIXED,
    )


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    fast = Behaviour(latency_median_ms=2, latency_p99_ms=20)
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        people=_people(160, seed=77),
        behaviours={"dukcapil": fast, "dapodik": fast, "dtks": fast},
    )
    async with run_simulators(config) as running:
        yield running


def _wired(settings: Settings, running: Running) -> Settings:
    return running.wire(settings).replace(
        retry_base_delay_s=0.05,
        ministry_timeout_s=2.0,
    )


async def _submit(settings: Settings, people: list[Registrant]) -> dict[uuid.UUID, Registrant]:
    submitted = {}
    async with inprocess.edge(settings) as client:
        for person in people:
            response = await client.post("/v1/registrations", json=person.form)
            assert response.status == 202
            submitted[uuid.UUID((await response.json())["id"])] = person
    return submitted


async def _lane_queue(settings: Settings, check: Check) -> tuple[int, int]:
    """(messages ready, consumers) of a lane's queue."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.lane_queue(check), passive=True)
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0


def _expected(person: Registrant) -> tuple[str, str | None]:
    """(status, reason) once the NIK checks are done; the other checks are still open."""
    if person.kind == "duplicate":
        return "rejected", "duplicate_nik"
    truth = person.truth
    if truth.dukcapil == "not_found":
        return "rejected", "nik_not_found"
    if truth.dukcapil.startswith("mismatch_"):
        return "rejected", "nik_data_mismatch"
    if truth.student:
        return "rejected", "in_education"
    return "received", None


def _lane_counts() -> dict[tuple[str, str], float]:
    """Tasks the NIK lanes of this process finished as passed or rejected, so far."""
    return {
        (check.value, outcome): REGISTRY.get_sample_value(
            "intake_lane_tasks_total", {"lane": check.value, "outcome": outcome}
        )
        or 0.0
        for check in NIK_CHECKS
        for outcome in ("passed", "rejected")
    }


async def _settled(db: asyncpg.Pool, ids: list[uuid.UUID]) -> int:
    """Registrations whose NIK checks are over: rejected, or all three checks passed."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM registrations r WHERE r.id = ANY($1::uuid[]) AND"
        " (r.status = 'rejected' OR (SELECT count(*) FROM checks c WHERE c.registration_id = r.id"
        "  AND c.check_name IN ('dukcapil', 'dapodik', 'dtks') AND c.state = 'passed') = 3)",
        ids,
    )
    return count


async def test_each_person_ends_as_the_ministries_say(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = _wired(settings, simulators)
    before = _lane_counts()
    submitted = await _submit(wired, list(simulators.people))
    ids = list(submitted)
    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, NIK_CHECKS),
    ):
        await eventually(lambda: _settled(db, ids), lambda n: n == len(ids), 90)

    # The lanes' counters say what the checks table says (this process's registry: the
    # difference is this test's).
    after = _lane_counts()
    counted = {key: after[key] - before.get(key, 0.0) for key in after}
    checks = await db.fetch(
        "SELECT check_name, state, count(*) AS n FROM checks"
        " WHERE check_name = ANY($1::text[]) AND state IN ('passed', 'failed') GROUP BY 1, 2",
        [c.value for c in NIK_CHECKS],
    )
    assert {key: n for key, n in counted.items() if n} == {
        (row["check_name"], "rejected" if row["state"] == "failed" else "passed"): row["n"]
        for row in checks
    }

    rows = await db.fetch(
        "SELECT id, status, reject_reason, priority FROM registrations WHERE id = ANY($1)", ids
    )
    kinds_seen = set()
    for row in rows:
        person = submitted[row["id"]]
        assert (row["status"], row["reject_reason"]) == _expected(person), person.truth
        kinds_seen.add(_expected(person)[1])
        if _expected(person) == ("received", None):
            assert row["priority"] == (1 if person.truth.welfare else 0)
    assert kinds_seen == {
        None,
        "duplicate_nik",
        "nik_not_found",
        "nik_data_mismatch",
        "in_education",
    }
    # A NIK Dukcapil does not know is never sent to the two other ministries.
    valid = [p for p in submitted.values() if p.kind == "valid"]
    assert simulators.stats("dapodik")["served"] == sum(
        1 for p in valid if p.truth.dukcapil == "match"
    )
    assert any(p.truth.dukcapil != "match" for p in valid)
    photos = await db.fetchval(
        "SELECT count(*) FROM checks WHERE check_name = 'photo' AND state = 'waiting'"
    )
    assert photos == sum(1 for p in submitted.values() if p.kind == "valid")


async def test_an_outage_opens_the_breaker_the_ministry_sees_only_probes_and_nothing_is_lost(
    settings: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    wired = _wired(settings, simulators).replace(breaker_open_s=0.5, breaker_open_max_s=1.0)
    matches = [
        p
        for p in simulators.people
        if p.kind == "valid" and p.truth.dukcapil == "match" and not p.truth.student
    ]
    simulators.set_behaviour("dukcapil", outage=True)
    submitted = await _submit(wired, matches[:40])
    ids = list(submitted)
    async with (
        inprocess.persist_worker(wired, db),
        inprocess.dispatcher(wired, db),
        inprocess.lanes(wired, db, NIK_CHECKS) as lanes,
    ):
        gate = lanes[Check.DUKCAPIL].gate
        await eventually(lambda: gate.breaker.opened, lambda n: n >= 1, 60)
        await eventually(lambda: gate.inflight, lambda n: n == 0, 30)
        probes_before = gate.breaker.probes
        calls_before = simulators.stats("dukcapil")["calls"]
        assert isinstance(calls_before, int)
        assert calls_before < len(ids)  # the breaker opened before every task was tried
        # While it is open the lane does not consume (it consumes one task at a time for the
        # probes while half-open): the work waits in the queue.
        await eventually(
            lambda: _lane_queue(wired, Check.DUKCAPIL), lambda queue: queue[1] == 0, 30
        )
        await eventually(lambda: gate.breaker.probes, lambda n: n >= probes_before + 3, 60)
        depth, _ = await _lane_queue(wired, Check.DUKCAPIL)
        assert depth > 0
        calls_after = simulators.stats("dukcapil")["calls"]
        assert isinstance(calls_after, int)
        # Only the probes reached the ministry while the breaker was open.
        assert 0 < calls_after - calls_before <= gate.breaker.probes - probes_before
        simulators.set_behaviour("dukcapil", outage=False)
        await eventually(lambda: _settled(db, ids), lambda n: n == len(ids), 120)
        assert gate.breaker.state.value == "closed"
    statuses = await db.fetch("SELECT status FROM registrations WHERE id = ANY($1)", ids)
    assert {r["status"] for r in statuses} == {"received"}
    # Each decided exactly once: as many Dukcapil answers served as registrations.
    assert simulators.stats("dukcapil")["served"] == len(ids)
    waited = await db.fetchval(
        "SELECT min(finished_at - created_at) FROM checks WHERE check_name = 'dukcapil'"
    )
    assert waited > dt.timedelta(0)
