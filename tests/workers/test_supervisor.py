"""``intake supervise``: the scaling rule on its own, and the supervisor running real
``intake worker`` processes against the real RabbitMQ and PostgreSQL.

The persist worker is the kind under test: its backlog is easy to make (registrations published
straight to its queue) and to hold (a table lock keeps its workers holding their messages), and
its status file is wired. Everything published must be stored exactly once, whatever the
supervisor did to the workers meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import aio_pika
import asyncpg
import orjson
import pytest

from benchmarks.persist import unique_nik
from core import envelope, topology
from core.envelope import Envelope, Registration
from core.ids import uuid7
from core.keys import Keyring
from core.settings import Settings, SettingsError
from core.status import HOLD_SIGNAL, read_status, report_forever, write_status
from tests.support.processes import Process, stop
from tests.support.waiting import eventually
from workers.pressure import RELEASE_AFTER_S, EdgePressure, signal_all
from workers.pressure import handles as pressure_handles
from workers.scaling import (
    Limits,
    Load,
    RateEstimator,
    desired_workers,
    next_workers,
    worker_limits,
)
from workers.supervisor import Supervisor

T = TypeVar("T")

# --- the rule, as pure functions -------------------------------------------------------------

LIMITS = Limits(1, 8)


def test_desired_workers_serve_arrivals_and_drain_the_backlog_within_the_target() -> None:
    # 6,000 waiting, 50/s per worker, nothing arriving: 2 workers drain it in 60 s.
    assert desired_workers(Load(6_000, 50.0, 0.0), 1, LIMITS, 60) == 2
    # 100/s arriving as well: 100 + 6,000/60 = 200/s, 4 workers.
    assert desired_workers(Load(6_000, 50.0, 100.0), 1, LIMITS, 60) == 4
    # Just enough is enough (no rounding up of an exact fit).
    assert desired_workers(Load(3_000, 50.0, 50.0), 1, LIMITS, 60) == 2
    # Clamped to the bounds either way.
    assert desired_workers(Load(1_000_000, 50.0, 0.0), 1, LIMITS, 60) == 8
    assert desired_workers(Load(0, 50.0, 0.0), 5, Limits(2, 8), 60) == 2


def test_without_a_measured_rate_only_a_lasting_backlog_adds_workers() -> None:
    assert desired_workers(Load(500, None, sustained=True), 3, LIMITS, 60) == 6
    assert desired_workers(Load(500, None, sustained=False), 3, LIMITS, 60) == 3
    assert desired_workers(Load(0, None), 3, LIMITS, 60) == 1


def _step(current: int, desired: int, limits: Limits = LIMITS, *, breaker_open: bool) -> int:
    """One step with no calm yet (no scale-down due)."""
    return next_workers(
        current, desired, limits, breaker_open=breaker_open, calm_s=0.0, cooldown_s=30.0
    )


def test_scaling_up_is_prompt_but_at_most_doubles() -> None:
    assert _step(1, 8, breaker_open=False) == 2
    assert _step(2, 8, breaker_open=False) == 4
    assert _step(4, 5, breaker_open=False) == 5
    assert _step(0, 3, Limits(0, 8), breaker_open=False) == 1


def test_an_open_breaker_prevents_scaling_up_but_not_the_minimum() -> None:
    assert _step(2, 8, breaker_open=True) == 2
    assert _step(0, 8, Limits(1, 8), breaker_open=True) == 1
    # An open breaker does not keep idle workers either.
    assert next_workers(4, 1, LIMITS, breaker_open=True, calm_s=31.0, cooldown_s=30.0) == 3


def test_scaling_down_waits_for_the_cooldown_and_goes_one_at_a_time() -> None:
    assert next_workers(6, 1, LIMITS, breaker_open=False, calm_s=29.9, cooldown_s=30.0) == 6
    assert next_workers(6, 1, LIMITS, breaker_open=False, calm_s=30.0, cooldown_s=30.0) == 5
    assert next_workers(6, 6, LIMITS, breaker_open=False, calm_s=300.0, cooldown_s=30.0) == 6
    # Bounds changed under it: back inside at once.
    assert next_workers(9, 9, LIMITS, breaker_open=False, calm_s=0.0, cooldown_s=30.0) == 8


def _status(pid: int, processed: float, at: float, **more: object) -> dict[str, object]:
    return {"kind": "dukcapil", "pid": pid, "processed": processed, "at": at, **more}


def test_the_estimator_takes_rates_from_status_files_and_depth() -> None:
    estimator = RateEstimator(window_s=10)
    # Two workers at 100 tasks/s each; the backlog shrinks by 50/s: 150/s arrive.
    for second in range(4):
        load = estimator.observe(
            1000.0 + second,
            10_000 - 50 * second,
            [_status(1, 100 * second, 1000.0 + second), _status(2, 100 * second, 1000.0 + second)],
            workers=2,
        )
    assert load.per_worker_rate == pytest.approx(100)
    assert load.arrival_rate == pytest.approx(150)
    assert load.net_drain_rate == pytest.approx(50)
    assert load.sustained
    assert not load.breaker_open
    # desired = (150 + 9,850/60) / 100 = 3.1: four workers.
    assert desired_workers(load, 2, LIMITS, 60) == 4


def test_the_estimator_falls_back_to_depth_and_remembers_capacity() -> None:
    estimator = RateEstimator(window_s=10)
    # No status files; two workers drain 40/s: at least 20/s each.
    for second in range(3):
        load = estimator.observe(2000.0 + second, 1_000 - 40 * second, [], workers=2)
    assert load.per_worker_rate == pytest.approx(20)
    # Once the queue is empty the capacity learnt under the backlog still holds.
    for second in range(3, 20):
        load = estimator.observe(2000.0 + second, 0, [], workers=2)
    assert load.per_worker_rate == pytest.approx(20)
    assert desired_workers(load, 2, LIMITS, 60) == 1


def test_workers_that_keep_up_show_arrivals_not_capacity() -> None:
    estimator = RateEstimator(window_s=10)
    # Three workers at 10/s each, the queue empty but for a message now and then.
    for second in range(6):
        load = estimator.observe(
            3000.0 + second,
            second % 2,
            [_status(pid, 10 * second, 3000.0 + second) for pid in (1, 2, 3)],
            workers=3,
        )
        assert load.per_worker_rate is None  # idle at times: not what they could do
        assert desired_workers(load, 3, LIMITS, 60) <= 3  # no flapping up on a passing message
    assert load.arrival_rate == pytest.approx(30, abs=1)


def test_the_estimator_reports_an_open_breaker() -> None:
    estimator = RateEstimator(window_s=10)
    load = estimator.observe(5.0, 300, [_status(1, 0, 5.0, breaker="open")], workers=1)
    assert load.breaker_open
    load = estimator.observe(6.0, 300, [_status(1, 0, 6.0, breaker="closed")], workers=1)
    assert not load.breaker_open


def test_limits_come_from_settings_with_one_dispatcher() -> None:
    settings = Settings(
        supervise_min_workers=1, supervise_max_workers=4, supervise_worker_limits="persist=2-3"
    )
    limits = worker_limits(settings, ["persist", "dispatch", "dukcapil"])
    assert limits == {
        "persist": Limits(2, 3),
        "dispatch": Limits(1, 1),
        "dukcapil": Limits(1, 4),
    }
    # A bound for a kind this supervisor does not run is no error (one setting, many machines).
    assert worker_limits(Settings(supervise_worker_limits="photo=1-2"), ["persist"]) == {
        "persist": Limits(1, 4)
    }
    with pytest.raises(SettingsError, match="unknown kinds"):
        worker_limits(Settings(supervise_worker_limits="postman=1-2"), ["persist"])
    with pytest.raises(SettingsError, match="dispatcher"):
        worker_limits(Settings(supervise_worker_limits="dispatch=2-2"), ["dispatch"])
    with pytest.raises(SettingsError, match="WORKER_LIMITS"):
        Settings.from_env({"INTAKE_SUPERVISE_WORKER_LIMITS": "persist=3-1"})


async def test_a_status_file_is_written_atomically_and_removed_at_the_end(tmp_path: Path) -> None:
    path = str(tmp_path / "w.json")
    counter = {"processed": 0}
    stopping = asyncio.Event()

    def snapshot() -> dict[str, object]:
        counter["processed"] += 1
        return {"kind": "persist", "pid": os.getpid(), **counter, "inflight": 0}

    reporter = asyncio.create_task(report_forever(path, snapshot, stopping, interval_s=0.01))
    status = await eventually(_status_of(path), lambda s: _number(s, "processed") >= 3, 10)
    assert status is not None
    assert status["kind"] == "persist"
    assert isinstance(status["at"], float)
    stopping.set()
    await reporter
    assert read_status(path) is None
    assert os.listdir(tmp_path) == []
    write_status(path, {"processed": 1})
    assert _number(read_status(path), "processed") == 1
    assert os.listdir(tmp_path) == ["w.json"]  # no temporary file left


def _status_of(path: str | Path) -> Callable[[], Awaitable[dict[str, object] | None]]:
    async def probe() -> dict[str, object] | None:
        return read_status(path)

    return probe


def _number(status: dict[str, object] | None, key: str) -> float:
    """A number from a status file (-1 when there is none)."""
    value = (status or {}).get(key)
    return float(value) if isinstance(value, int | float) else -1.0


# --- the supervisor with real workers ---------------------------------------------------------


async def _publish(settings: Settings, count: int, first: int = 0) -> list[uuid.UUID]:
    """``count`` registrations, one per message, sealed and confirmed as the edge publishes;
    their NIKs are the ``first``-th and following."""
    keyring = Keyring.from_secret(settings.secret_key)
    now = dt.datetime.now(dt.UTC)
    ids = [uuid7() for _ in range(count)]
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await topology.declare(channel, settings)
        window = asyncio.Semaphore(256)

        async def publish(index: int, registration_id: uuid.UUID) -> None:
            item = Envelope(
                registration_id,
                now,
                Registration(
                    nik=unique_nik(index),
                    full_name="Siti Rahayu",
                    birth_place="Jakarta",
                    birth_date=dt.date(1990, 5, 17),
                    email=f"peserta{index}@example.com",
                    phone=f"+628{1_000_000_000 + index}",
                ),
            ).to_json()
            body = keyring.seal_message(envelope.join_batch([item]), envelope.BATCH_SEAL_CONTEXT)
            message = aio_pika.Message(
                body,
                content_type=envelope.BATCH_CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"schema_version": envelope.SCHEMA_VERSION, "count": 1},
            )
            async with window:
                await declared.exchange.publish(
                    message, topology.PERSIST_ROUTING_KEY, mandatory=True
                )

        await asyncio.gather(*(publish(first + i, rid) for i, rid in enumerate(ids)))
    return ids


async def _stored(db: asyncpg.Pool) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM registrations")
    return count


async def _assert_stored_exactly_once(
    db: asyncpg.Pool, settings: Settings, ids: Sequence[uuid.UUID]
) -> None:
    rows = await db.fetch("SELECT id, status FROM registrations")
    stored = [row["id"] for row in rows]
    assert len(stored) == len(ids) == len(set(stored))
    assert set(stored) == set(ids)
    assert {row["status"] for row in rows} == {"received"}
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (topology.PERSIST_QUEUE, topology.PERSIST_DLQ):
            queue = await channel.declare_queue(name, passive=True)
            assert queue.declaration_result.message_count == 0, name


def _fleet(settings: Settings, limits: str, **more: object) -> Settings:
    """Settings for a quick supervisor: small ticks, a short cooldown, a low drain target."""
    values: dict[str, object] = {
        "supervise_worker_limits": limits,
        "supervise_target_drain_s": 1.0,
        "supervise_interval_s": 0.25,
        "supervise_cooldown_s": 1.0,
        "supervise_stop_grace_s": 60.0,
        "log_level": "INFO",
        **more,
    }
    return settings.replace(**values)


@contextlib.asynccontextmanager
async def _supervising(
    settings: Settings, tmp_path: Path, kinds: Sequence[str] = ("persist",)
) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(settings, tmp_path / "run", kinds, log_dir=tmp_path / "logs")
    running = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        supervisor.stop()
        try:
            await asyncio.wait_for(running, 120)
        finally:
            for plan in supervisor.plan().values():  # only if it could not stop them
                for pid in (*plan.running, *plan.stopping):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def _running(supervisor: Supervisor) -> int:
    return len(supervisor.plan()["persist"].running)


def _reported(supervisor: Supervisor) -> list[dict[str, object]]:
    """The status files of the running persist workers (those written so far)."""
    found = []
    for pid in supervisor.plan()["persist"].running:
        path = supervisor.status_path(pid)
        status = read_status(path) if path is not None else None
        if status is not None:
            found.append(status)
    return found


@contextlib.asynccontextmanager
async def _registrations_locked(settings: Settings) -> AsyncIterator[None]:
    """Hold a lock that blocks every insert into ``registrations``: the persist workers keep
    the messages they were given, unacknowledged, until it is released."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("LOCK TABLE registrations IN SHARE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


async def test_a_backlog_adds_workers_and_they_go_when_it_has_drained(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    # Small transactions make one worker slow enough that a 1 s drain target needs three.
    fleet = _fleet(settings, "persist=1-3", persist_prefetch=10, persist_batch_max_rows=5)
    ids = await _publish(fleet, 2_000)
    async with _supervising(fleet, tmp_path) as supervisor:
        # Registrations keep coming (a publisher outpaces a worker) until the supervisor has
        # added every worker it may: however fast this machine, the backlog lasts until then.
        while _running(supervisor) < 3:
            assert len(ids) < 100_000, supervisor.decisions
            ids += await _publish(fleet, 500, first=len(ids))
        await eventually(lambda: _stored(db), lambda n: n == len(ids), 120)
        await eventually(
            lambda: (_running(supervisor), supervisor.plan()["persist"].stopping),
            lambda state: state == (1, ()),
            60,
        )
    ups = [d for d in supervisor.decisions if d.after > d.before]
    downs = [d for d in supervisor.decisions if d.after < d.before]
    assert max(d.after for d in ups) == 3
    assert all(d.before < d.after <= 2 * d.before and d.depth > 0 for d in ups)
    assert downs
    assert all(d.after == d.before - 1 for d in downs)
    assert supervisor.decisions[-1].after == 1
    # Every worker stopped when asked (scale-down and shutdown), cleanly; none crashed.
    assert len(supervisor.exits) >= 3
    assert {(e.expected, e.code) for e in supervisor.exits} == {(True, 0)}
    await _assert_stored_exactly_once(db, fleet, ids)


async def test_scaling_down_a_worker_that_holds_messages_loses_nothing(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    fleet = _fleet(settings, "persist=1-3", persist_prefetch=20)
    async with _supervising(fleet, tmp_path) as supervisor:
        await eventually(partial(_reported, supervisor), lambda found: len(found) == 1, 60)
        async with _registrations_locked(fleet):
            # 50 messages for workers that hold 20 each and cannot store them: the backlog
            # does not move, so the supervisor adds workers until all are held.
            ids = await _publish(fleet, 50)
            await eventually(partial(_running, supervisor), lambda n: n == 3, 60)
            # Nothing waits in the queue any more: after the cooldown one worker is asked to
            # stop (the one holding the least), and it cannot finish yet.
            stopping = await eventually(
                lambda: supervisor.plan()["persist"].stopping,
                lambda pids: len(pids) >= 1,
                60,
            )
            victim = stopping[0]
            path = supervisor.status_path(victim)
            assert path is not None
            held = await eventually(_status_of(path), lambda s: _number(s, "inflight") > 0, 30)
            assert _number(held, "processed") == 0
            assert victim in supervisor.plan()["persist"].stopping  # still finishing its work
            assert await _stored(db) == 0
        # The lock is gone: the stopping worker stores and acknowledges what it held, and exits.
        await eventually(
            lambda: [(e.code, e.expected) for e in supervisor.exits if e.pid == victim],
            lambda exits: exits == [(0, True)],
            60,
        )
        await eventually(lambda: _stored(db), lambda n: n == len(ids), 60)
        await eventually(partial(_running, supervisor), lambda n: n == 1, 60)
    await _assert_stored_exactly_once(db, fleet, ids)


async def test_a_killed_worker_is_replaced_and_its_messages_are_stored_once(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    fleet = _fleet(settings, "persist=2-2", persist_prefetch=20)
    async with _supervising(fleet, tmp_path) as supervisor:
        await eventually(partial(_reported, supervisor), lambda found: len(found) == 2, 60)
        before = set(supervisor.plan()["persist"].running)
        async with _registrations_locked(fleet):
            ids = await _publish(fleet, 100)
            # Both workers hold messages they cannot store yet.
            await eventually(
                partial(_reported, supervisor),
                lambda found: len(found) == 2 and all(_number(s, "inflight") == 20 for s in found),
                30,
            )
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            after = await eventually(
                lambda: set(supervisor.plan()["persist"].running),
                lambda pids: len(pids) == 2 and victim not in pids,
                30,
            )
            assert len(after - before) == 1
            assert [(e.pid, e.code, e.expected) for e in supervisor.exits] == [
                (victim, -signal.SIGKILL, False)
            ]
            await eventually(partial(_reported, supervisor), lambda found: len(found) == 2, 60)
        await eventually(lambda: _stored(db), lambda n: n == len(ids), 60)
    assert supervisor.decisions == []  # a fixed count: replacing is not scaling
    await _assert_stored_exactly_once(db, fleet, ids)


def test_intake_supervise_runs_the_workers_and_stops_them_on_sigterm(
    settings: Settings, tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    run_dir = tmp_path / "run"
    fleet = _fleet(settings, "")
    process = spawn(
        ["supervise", "persist", f"--run-dir={run_dir}", f"--log-dir={tmp_path}"], fleet
    )

    found = asyncio.run(eventually(_status_of(run_dir / "persist-1.json"), bool, 60))
    assert found is not None
    assert found["kind"] == "persist"
    assert isinstance(found["pid"], int)
    assert found["pid"] != process.pid
    assert process.terminate(60) == 0
    # The worker stopped too, by itself: it removed its status file on the way out.
    assert list(run_dir.iterdir()) == []
    assert "worker stopped" in process.log()


def test_the_workers_do_not_outlive_a_killed_supervisor(
    settings: Settings, tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    run_dir = tmp_path / "run"
    process = spawn(["supervise", "persist", f"--run-dir={run_dir}"], _fleet(settings, ""))
    found = asyncio.run(eventually(_status_of(run_dir / "persist-1.json"), bool, 60))
    assert found is not None
    process.kill()  # kill -9: the supervisor cannot stop anyone
    # The worker is told by the kernel (SIGTERM), stops gracefully and removes its file.
    asyncio.run(eventually(_status_of(run_dir / "persist-1.json"), lambda s: s is None, 60))


def test_verification_workers_yield_the_cpu_to_the_accept_path(
    settings: Settings, tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    """The dispatcher and the lanes run niced, the persist worker does not: on a machine they
    share with the edge, taking registrations comes first."""
    run_dir = tmp_path / "run"
    fleet = _fleet(settings, "", supervise_verification_nice=7)
    process = spawn(["supervise", "persist", "dispatch", f"--run-dir={run_dir}"], fleet)
    # The dispatcher writes no status file (it is always one): its pid is in the log.
    asyncio.run(eventually(_status_of(run_dir / "persist-1.json"), bool, 60))
    started = asyncio.run(eventually(lambda: _started(process), lambda found: len(found) == 2, 60))
    nice = {kind: _nice_of(pid) - _nice_of(process.pid) for kind, pid in started.items()}
    assert nice == {"persist": 0, "dispatch": 7}
    # Each worker has a session of its own: where the kernel groups a session's scheduling,
    # the group is niced too, or the worker's own nice value would change nothing.
    groups = {kind: _autogroup_nice(pid) for kind, pid in started.items()}
    if groups["persist"] is not None:
        assert groups == {"persist": 0, "dispatch": 7}
    assert process.terminate(60) == 0


def _started(process: Process) -> dict[str, int]:
    """Worker kind → pid, from the supervisor's "worker started" log lines."""
    found = {}
    for line in process.log().splitlines():
        with contextlib.suppress(ValueError):
            entry = orjson.loads(line)
            if entry.get("msg") == "worker started":
                found[str(entry["kind"])] = int(entry["pid"])
    return found


def _autogroup_nice(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-85 nice 7"
    except OSError:
        return None
    return int(text.split()[-1])


def _nice_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])  # field 19 of proc(5): the nice value


def test_verification_is_held_back_while_an_edge_sheds(
    settings: Settings, tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    """An edge's status file says it sheds: the dispatcher and the lanes stop taking work and
    drop to the lowest priority; some seconds after it stops shedding, they go on as before."""
    run_dir, edges = tmp_path / "run", tmp_path / "edges"
    edges.mkdir()
    fleet = _fleet(settings, "", supervise_verification_nice=7, edge_status_dir=str(edges))
    process = spawn(["supervise", "persist", "dispatch", "dukcapil", f"--run-dir={run_dir}"], fleet)
    lane = run_dir / "dukcapil-1.json"
    asyncio.run(eventually(_status_of(lane), bool, 60))
    started = asyncio.run(eventually(lambda: _started(process), lambda found: len(found) == 3, 60))
    base = _nice_of(process.pid)
    edge = edges / "edge-4242.json"

    def edge_says(shedding: bool) -> Callable[[], Awaitable[dict[str, object] | None]]:
        async def probe() -> dict[str, object] | None:
            write_status(str(edge), {"kind": "edge", "pid": 4242, "shedding": shedding})
            return await _status_of(lane)()

        return probe

    assert read_status(lane) is not None
    assert read_status(lane)["held"] is False  # type: ignore[index]
    asyncio.run(eventually(edge_says(True), lambda status: bool(status and status["held"]), 30))
    for kind in ("dispatch", "dukcapil"):
        assert _nice_of(started[kind]) == 19
    assert _nice_of(started["persist"]) == base  # it stores what the edges accepted
    assert "verification held back" in process.log()

    asyncio.run(
        eventually(edge_says(False), lambda status: bool(status and not status["held"]), 30)
    )
    for kind in ("dispatch", "dukcapil"):
        assert _nice_of(started[kind]) - base == 7

    # A hold that arrives after the release (two signals taken in the wrong order): the
    # supervisor says the current state again within a second or two, and the lane goes on.
    holds = process.log().count('"lane held back"')
    resumes = process.log().count('"lane resumes"')
    os.kill(started["dukcapil"], HOLD_SIGNAL)

    async def log_counts() -> tuple[int, int]:
        log = process.log()
        return log.count('"lane held back"'), log.count('"lane resumes"')

    asyncio.run(eventually(log_counts, lambda counts: counts == (holds + 1, resumes + 1), 10))
    asyncio.run(
        eventually(_status_of(lane), lambda status: bool(status and not status["held"]), 10)
    )
    assert process.terminate(60) == 0


def test_edge_pressure_holds_at_the_first_shed_and_lets_go_after_a_quiet_while(
    tmp_path: Path,
) -> None:
    pressure = EdgePressure(str(tmp_path))
    edge = tmp_path / "edge-1.json"
    write_status(str(edge), {"kind": "edge", "pid": 1, "shedding": False})
    now = read_status(edge)["at"]  # type: ignore[index]
    assert isinstance(now, float)
    assert not pressure.update(now)
    assert not pressure.held
    write_status(str(edge), {"kind": "edge", "pid": 1, "shedding": True})
    assert pressure.update(now)
    assert pressure.held
    assert not pressure.update(now + 1.0)  # still shedding as far as it is known: held
    # A stale file (its edge stopped) does not count; a quiet while after the last shed seen
    # (at now + 1), let go.
    assert not pressure.update(now + 1.0 + RELEASE_AFTER_S - 0.5)
    assert pressure.held
    assert pressure.update(now + 1.0 + RELEASE_AFTER_S + 0.5)
    assert not pressure.held
    # No directory configured: never held.
    assert not EdgePressure("").update(now)


def test_edge_pressure_holds_while_an_edge_is_late_before_it_sheds(tmp_path: Path) -> None:
    pressure = EdgePressure(str(tmp_path))
    edge = tmp_path / "edge-1.json"
    write_status(str(edge), {"kind": "edge", "pid": 1, "shedding": False, "late": False})
    now = read_status(edge)["at"]  # type: ignore[index]
    assert isinstance(now, float)
    assert not pressure.update(now)
    write_status(str(edge), {"kind": "edge", "pid": 1, "shedding": False, "late": True})
    assert pressure.update(now)
    assert pressure.held
    write_status(str(edge), {"kind": "edge", "pid": 1, "shedding": False, "late": False})
    assert not pressure.update(now + RELEASE_AFTER_S - 0.5)
    assert pressure.update(now + RELEASE_AFTER_S + 0.5)
    assert not pressure.held


def test_the_hold_signal_never_reaches_a_worker_before_it_handles_it() -> None:
    """A worker still starting has the signal's default action (libuv resets what was set
    before its exec): asked to hold then, it would die. It is asked once it handles it."""
    with contextlib.ExitStack() as running:  # each stopped and reaped, whatever happens
        starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        running.callback(stop, starting)
        ready = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, sys, time\n"
                f"signal.signal({HOLD_SIGNAL}, lambda *_: sys.exit(7))\n"
                "print('ready', flush=True)\n"
                "time.sleep(30)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        running.callback(stop, ready)
        assert ready.stdout is not None
        running.callback(ready.stdout.close)
        assert ready.stdout.readline() == "ready\n"
        assert not pressure_handles(starting.pid, HOLD_SIGNAL)
        assert pressure_handles(ready.pid, HOLD_SIGNAL)
        assert signal_all([starting.pid, ready.pid], held=True) == [ready.pid]
        assert ready.wait(10) == 7  # it got the signal, through its handler
        assert starting.poll() is None  # still alive
