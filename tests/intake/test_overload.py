"""Admission by time: a stalled edge answers 503 at once instead of holding requests, every
answer comes within the deadline, a waiting connection is accepted in one go. Real RabbitMQ,
real PostgreSQL, the edge served as in production (its site, its connection protocol).

No wall clock decides a test: a stall is made on purpose (the event loop blocked), and what
happened is read from counters (answered early, shed by reason, published batches)."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from pathlib import Path
from typing import cast

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from core import metrics
from core.settings import Settings
from core.status import read_status
from intake import admission
from intake.gate import GAUGE_INTERVAL_S, Gate
from intake.httpmetrics import Deferred
from intake.protocol import _one_request
from intake.publisher import BatchPublisher
from tests.support import inprocess, openapi
from tests.support.people import person
from tests.support.proxy import broker_proxy
from tests.support.rawhttp import read_response
from tests.support.stored import stored_once
from tests.support.waiting import eventually

# --- the rules, without services -----------------------------------------------------------


def test_a_burst_is_absorbed_a_standing_queue_is_not() -> None:
    rule = admission.QueueDelayRule(target_s=0.02, interval_s=0.1, burst_s=0.5, now_s=0.0)
    # A burst: late, but the delay was short within the interval: only a wait past the
    # burst limit is refused.
    rule.observe(0.05, 0.06)
    assert not rule.standing(0.05)
    assert rule.admits(0.05, 0.45)
    assert not rule.admits(0.05, 0.55)
    # Late for a whole interval: a standing queue, the target applies.
    rule.observe(0.12, 0.03)
    assert rule.standing(0.12)
    assert rule.admits(0.12, 0.02)
    assert not rule.admits(0.12, 0.03)
    # One short delay ends it.
    rule.observe(0.13, 0.001)
    assert not rule.standing(0.13)
    assert rule.admits(0.13, 0.05)
    with pytest.raises(ValueError, match="target_s"):
        admission.QueueDelayRule(target_s=0.2, interval_s=0.1)
    with pytest.raises(ValueError, match="burst_s"):
        admission.QueueDelayRule(target_s=0.02, interval_s=0.1, burst_s=0.05)


def test_the_loop_monitor_sees_a_late_loop_before_its_probe_runs() -> None:
    rule = admission.QueueDelayRule(0.02, 0.1, burst_s=0.25)
    monitor = admission.LoopMonitor(rule, probe_interval_s=0.005)
    monitor.reset(1.0)
    assert monitor.delay_s(1.001) == 0.0
    assert not monitor.shed(1.001)
    # The probe is 300 ms overdue: the loop is in an iteration that started before it was due.
    assert monitor.delay_s(1.305) == pytest.approx(0.3)
    assert monitor.shed(1.305)
    # The probe then runs, 305 ms late, and says so until the next one is due.
    monitor.probe(1.31)
    assert monitor.lag_s == pytest.approx(0.305)
    assert monitor.delay_s(1.311) == pytest.approx(0.305)
    monitor.probe(1.315)  # on time
    assert monitor.delay_s(1.316) == 0.0
    assert monitor.take_max_lag_s() == pytest.approx(0.305)
    assert monitor.take_max_lag_s() == 0.0


def test_a_loop_late_for_half_an_interval_is_said_late_at_each_late_probe() -> None:
    # CoDel's first stage: a queue that has not emptied for half an interval is forming. The
    # edge says so before it sheds (Gate._late), so that verification is held back first.
    rule = admission.QueueDelayRule(0.02, 0.1, burst_s=0.5)
    monitor = admission.LoopMonitor(rule, probe_interval_s=0.005)
    lates: list[float] = []
    monitor.on_late = lambda: lates.append(monitor.lag_s)
    monitor.reset(0.0)
    monitor.probe(0.03)  # 25 ms late, but the loop was on time 30 ms ago
    assert not rule.late(0.03)
    monitor.probe(0.045)  # on time (10 ms late)
    monitor.probe(0.08)  # 30 ms late, on time 35 ms ago: not yet half an interval
    assert lates == []
    monitor.probe(0.11)  # 25 ms late, on time 65 ms ago: late, and said
    assert rule.late(0.11)
    assert not rule.standing(0.11)
    assert lates == [pytest.approx(0.025)]
    monitor.probe(0.116)  # on time: the spell is over, nothing said
    assert not rule.late(0.116)
    assert len(lates) == 1


def test_the_loop_monitor_measures_the_accepted_rate() -> None:
    monitor = admission.LoopMonitor(admission.QueueDelayRule(0.02, 0.1))
    monitor.reset(0.0)
    assert monitor.rate_per_s == admission.INITIAL_RATE_PER_S
    window = admission.RATE_WINDOW_S
    for step in range(1, 40):
        monitor.accepted += round(1_000 * window)
        monitor.probe(step * window)
    assert monitor.rate_per_s == pytest.approx(1_000, rel=0.01)
    monitor.probe(41 * window)  # nothing accepted for two windows: it falls, not below the floor
    assert admission.MIN_RATE_PER_S <= monitor.rate_per_s < 1_000


def _run(
    monitor: admission.LoopMonitor, t: float, seconds: float, rate: float, lag: float
) -> float:
    """Probes every 5 ms (each ``lag`` late) for ``seconds`` from ``t``, ``rate`` accepted/s."""
    end = t + seconds
    while t < end:
        step = monitor.probe_interval_s + lag
        t += step
        monitor.accepted += round(rate * step)
        monitor.probe(t)
    return t


def test_the_capacity_is_the_most_accepted_lately_forgotten_slowly() -> None:
    rule = admission.QueueDelayRule(0.02, 0.1, burst_s=0.5)
    monitor = admission.LoopMonitor(rule)
    monitor.reset(0.0)
    # 200/s: the capacity is not known to be lower than the prior.
    t = _run(monitor, 0.0, 3.0, rate=200, lag=0.0)
    assert monitor.capacity_per_s == pytest.approx(admission.INITIAL_RATE_PER_S, rel=0.1)
    assert monitor.rate_per_s == pytest.approx(200, rel=0.1)
    # 1,200/s once: it can that much.
    t = _run(monitor, t, 1.0, rate=1_200, lag=0.0)
    assert monitor.capacity_per_s == pytest.approx(1_200, rel=0.1)
    # Shedding, a standing queue, 300/s accepted: what admission lets through is not what it
    # can; the estimate is forgotten slowly, not followed down.
    t = _run(monitor, t, 4.0, rate=300, lag=0.03)
    assert rule.standing(t)
    assert 1_000 < monitor.capacity_per_s < 1_200
    # What may wait for a handler: the capacity's worth of the wait allowed now.
    allowed = monitor.capacity_per_s * 0.02
    assert not monitor.queue_full(t, math.floor(allowed) - 1)
    assert monitor.queue_full(t, math.ceil(allowed))
    t = _run(monitor, t, 0.01, rate=300, lag=0.0)  # on time again: an interval's worth
    assert not rule.standing(t)
    assert not monitor.queue_full(t, math.floor(monitor.capacity_per_s * 0.1) - 1)
    assert monitor.queue_full(t, math.ceil(monitor.capacity_per_s * 0.1))
    monitor.capacity_per_s = 1.0
    assert not monitor.queue_full(t, admission.MIN_QUEUED - 1)


def test_retry_slots_come_back_at_the_accepted_rate() -> None:
    spread = admission.RetrySpread()
    waits = [spread.wait_s(100.0, 50.0, 60, jitter=0.5) for _ in range(500)]
    # 500 shed in the same instant are given 500 successive slots 20 ms apart: 10 s in all.
    assert waits == sorted(waits)
    assert waits[0] == pytest.approx(0.02)
    assert waits[-1] == pytest.approx(10.0)
    headers = [admission.retry_after_header(w, 60) for w in waits]
    per_second = {s: headers.count(s) for s in set(headers)}
    assert set(per_second) == set(range(1, 11))
    assert max(per_second.values()) <= 51  # about 50 a second, the rate they can be taken
    # Time passes: those ahead drain at the rate, the next slot comes after the rest.
    assert spread.backlog(105.0, 50.0) == pytest.approx(250)
    assert spread.wait_s(105.0, 50.0, 60, jitter=0.5) == pytest.approx(5.02)
    # The rate learnt is ten times higher: the same clients ahead mean a tenth of the wait.
    assert spread.wait_s(105.0, 500.0, 60, jitter=0.5) == pytest.approx(252 / 500)
    # A crowd larger than the longest wait holds: those beyond it are spread over its upper
    # half, and not counted (they take a slot when they come back).
    beyond = [spread.wait_s(105.0, 50.0, 60, jitter=(j % 100) / 100) for j in range(3_100)]
    assert max(beyond) == pytest.approx(60.0)
    assert beyond[:2_000] == sorted(beyond[:2_000])  # slots, until the queue holds 60 s
    assert min(beyond[-100:]) >= 30.0
    assert len({round(w) for w in beyond[-100:]}) >= 25  # then spread over 30-60 s
    assert spread.backlog(105.0, 50.0) <= 50 * 60
    assert admission.retry_after_header(0.001, 60) == 1
    assert admission.retry_after_header(1e9, 60) == 60
    assert admission.retry_after_header(math.nan, 60) == 60


def test_the_shortcut_takes_only_one_whole_simple_request() -> None:
    body = b'{"a": 1}'
    head = b"POST /v1/registrations HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
    whole = head + b"Content-Length: 8\r\n\r\n" + body
    assert _one_request(whole)[0]
    assert _one_request(b"GET /healthz HTTP/1.1\r\nHost: e\r\n\r\n")[0]
    assert not _one_request(whole[:-1])[0]  # the body not all here
    assert not _one_request(whole + whole)[0]  # pipelined: two requests
    assert not _one_request(head)[0]  # the head not all here
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n8\r\n" + body + b"\r\n0\r\n\r\n"
    assert not _one_request(chunked)[0]
    closing = head + b"Connection: close\r\nContent-Length: 8\r\n\r\n" + body
    assert not _one_request(closing)[0]
    assert _one_request(head + b"connection: keep-alive\r\ncontent-length: 8\r\n\r\n" + body)[0]


def _histogram(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> dict[str, float]:
    """A histogram's buckets, count and sum, by sample name and bound."""
    return {
        f"{s.name.rpartition('_')[2]} {s.labels.get('le', '')}": s.value
        for m in registry.collect()
        if m.name == name
        for s in m.samples
        if s.labels.items() >= labels.items() and not s.name.endswith("_created")
    }


@pytest.mark.parametrize("bulk", [True, False], ids=["in-bulk", "one-by-one"])
def test_answers_deferred_are_what_observing_them_one_by_one_gives(bulk: bool) -> None:
    # The early 503s are added to the duration histogram in bulk, through prometheus-client's
    # internals: if an upgrade changes them, "in-bulk" fails (the edge then observes them one
    # by one, each bucket's at its mean: the same figures, at a higher cost).
    route = f"/test/deferred/{bulk}"
    deferred = Deferred(route, "POST", 503)
    if not bulk:
        deferred.bulk = False
    private = CollectorRegistry()
    one_by_one = Histogram("d", "", buckets=metrics.HTTP_BUCKETS, registry=private)
    waits = [0.0, 0.001, 0.0011, 0.02, 0.5, 0.5, 0.73, 2.0, 11.0, 60.0]
    for wait in waits:
        one_by_one.observe(wait)
        deferred.add(wait)
    assert deferred.flush() == len(waits)
    assert deferred.bulk == bulk
    assert deferred.flush() == 0  # nothing twice
    labels = {"route": route, "method": "POST"}
    expected = _histogram(private, "d", {})
    assert _histogram(REGISTRY, "intake_http_request_duration_seconds", labels) == pytest.approx(
        expected
    )
    assert expected["count "] == len(waits)
    counted = {**labels, "status_class": "5xx"}
    assert REGISTRY.get_sample_value("intake_http_requests_total", counted) == len(waits)


# --- the edge, served -------------------------------------------------------------------------


def _request(index: int, seed: int, key: str | None = None) -> bytes:
    payload = orjson.dumps(person(index, seed=seed))
    idempotency = b"Idempotency-Key: %s\r\n" % key.encode() if key else b""
    return (
        b"POST /v1/registrations HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (idempotency, len(payload), payload)
    )


def _shed(reason: str) -> float:
    value = REGISTRY.get_sample_value("intake_registrations_shed_total", {"reason": reason})
    return value or 0.0


REGISTRATIONS = {"route": "/v1/registrations", "method": "POST"}


def _answered() -> dict[str, float]:
    """The registrations' 5xx count and duration histogram (``count``, ``sum``, and each bucket
    by its bound), as the edge's metrics show them now."""
    figures = _histogram(REGISTRY, "intake_http_request_duration_seconds", REGISTRATIONS)
    counted = {**REGISTRATIONS, "status_class": "5xx"}
    figures["5xx"] = REGISTRY.get_sample_value("intake_http_requests_total", counted) or 0.0
    return figures


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


async def test_a_stalled_edge_answers_503_to_what_waited_and_never_holds_it(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    accepted: set[uuid.UUID] = set()
    settings = settings.replace(edge_status_dir=str(tmp_path))
    status_file = tmp_path / f"edge-{os.getpid()}.json"
    async with inprocess.served_edge(settings) as edge, inprocess.persist_worker(settings, db):
        connections = [await asyncio.open_connection(edge.host, edge.port) for _ in range(40)]
        try:
            # Warm: each connection has had one registration accepted. The in-process edge
            # shares its loop with the test and the persist worker, which may still be starting:
            # a 503 here is a busy moment of the warm-up, sent again as a client would.
            for i, (reader, writer) in enumerate(connections):
                for _ in range(50):
                    writer.write(_request(i, seed=71))
                    status, _, raw = await read_response(reader)
                    if status != 503:
                        break
                    await asyncio.sleep(0.1)
                assert status == 202, raw
                accepted.add(uuid.UUID(orjson.loads(raw)["id"]))
            early, batches = edge.gate.early, edge.publisher.stats.batches
            edge.gate.flush()  # (a 503 of the warm-up counted now, not among those below)
            answered = _answered()

            # Forty registrations sent, then the edge stalls (its loop blocked, as a CPU held
            # by something else would) for longer than half the deadline.
            for i, (_, writer) in enumerate(connections):
                writer.write(_request(100 + i, seed=71))
            time.sleep(0.8)  # noqa: ASYNC251 - the stall, past half the deadline, on purpose
            answers = [await read_response(reader) for reader, _ in connections]

            # Each was answered 503 queue_delay as it was read: no handler, no publish.
            for status, headers, raw in answers:
                assert status == 503, raw
                openapi.validate("UnavailableProblem", orjson.loads(raw))
                assert orjson.loads(raw)["reason"] == "queue_delay"
                assert headers["content-type"] == "application/problem+json"
                assert headers["retry-after"].isdigit()
                assert 1 <= int(headers["retry-after"]) <= settings.edge_retry_after_max_s
            assert edge.gate.early - early == 40
            assert edge.publisher.stats.batches == batches
            # The edge tells intake supervise that it sheds (workers/pressure.py).
            await eventually(
                lambda: read_status(status_file), lambda s: bool(s and s["shedding"]), 10
            )
            # Counted in bulk, four times a second, in the requests' counter and in the duration
            # histogram both (its count grows by exactly the 503s answered), each with its wait:
            # the stall, past half the deadline (shed for it), not the microseconds its answer
            # took once read.
            await eventually(_answered, lambda now: now["count "] - answered["count "] >= 40, 10)
            await asyncio.sleep(2 * GAUGE_INTERVAL_S)  # (a flush or two more: nothing else)
            grown = _grown(answered, _answered())
            assert (grown["5xx"], grown["count "], grown["bucket +Inf"]) == (40, 40, 40)
            assert grown["bucket 0.5"] == 0
            assert grown["sum "] >= 40 * 0.5

            # The stall over, the same connections are served again.
            async def accepted_again() -> int:
                reader, writer = connections[0]
                writer.write(_request(200 + len(accepted), seed=71))
                status, _, raw = await read_response(reader)
                if status == 202:
                    accepted.add(uuid.UUID(orjson.loads(raw)["id"]))
                return status

            await eventually(accepted_again, lambda status: status == 202, 30)
            for i, (reader, writer) in enumerate(connections[1:]):
                writer.write(_request(300 + i, seed=71))
                status, _, raw = await read_response(reader)
                assert status == 202, raw
                accepted.add(uuid.UUID(orjson.loads(raw)["id"]))
            # Shedding over, it says so.
            await eventually(
                lambda: read_status(status_file), lambda s: bool(s and not s["shedding"]), 10
            )
        finally:
            for _, writer in connections:
                writer.close()
        await stored_once(db, accepted, only=True)
    assert not status_file.exists()  # removed when the edge stops


async def test_pipelined_requests_are_answered_in_order_while_shedding(
    settings: Settings,
) -> None:
    async with inprocess.served_edge(settings) as edge:
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        try:
            early, answered = edge.gate.early, _answered()
            writer.write(
                b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
                + _request(1, seed=72)
                + b"GET /readyz HTTP/1.1\r\nHost: edge\r\n\r\n"
            )
            time.sleep(0.8)  # noqa: ASYNC251 - the stall, on purpose
            first, second, third = [await read_response(reader) for _ in range(3)]
            assert (first[0], first[2]) == (200, b'{"status":"ok"}')
            assert (second[0], orjson.loads(second[2])["reason"]) == (503, "queue_delay")
            assert (third[0], orjson.loads(third[2])["status"]) == (200, "ready")
            assert edge.gate.early == early  # not the shortcut: it keeps to one request
            # The handler's 503 is timed from when it was read, as the early ones: its wait
            # is the stall, not the microseconds the handler took.
            grown = _grown(answered, _answered())
            assert (grown["5xx"], grown["count "], grown["bucket 0.5"]) == (1, 1, 0)
        finally:
            writer.close()


@pytest.mark.uvloop  # its server accepts one connection per loop iteration; the edge's site, all
async def test_every_waiting_connection_is_accepted_in_one_go(settings: Settings) -> None:
    async with inprocess.served_edge(settings) as edge:
        server = edge.runner.server
        assert server is not None
        before = len(server.connections)
        # 300 connections completed by the kernel while the loop is busy (these blocking
        # connects return once the kernel holds them in the listen queue).
        clients = [socket.create_connection((edge.host, edge.port)) for _ in range(300)]
        try:
            # A handful of loop iterations later, every one is the edge's: the loop's own
            # server would have taken one per iteration.
            for _ in range(6):
                await asyncio.sleep(0)
            assert len(server.connections) - before == 300
        finally:
            for client in clients:
                client.close()


async def test_the_deadline_is_honoured_by_what_the_counters_show(
    settings: Settings, db: asyncpg.Pool
) -> None:
    keys = [uuid.uuid4().hex for _ in range(20)]
    async with broker_proxy(settings) as (proxy, proxied):
        slow = proxied.replace(
            edge_deadline_s=0.3,
            edge_publish_timeout_s=60.0,  # the broker's own bound would answer much later
        )
        async with inprocess.served_edge(slow) as edge:
            reader, writer = await asyncio.open_connection(edge.host, edge.port)
            try:
                deadline, confirm_timeout = _shed("deadline"), _shed("confirm_timeout")
                answered = _answered()
                proxy.stall()  # the broker takes the publishes and confirms nothing
                for i, key in enumerate(keys):
                    writer.write(_request(i, seed=73, key=key))
                    status, _, raw = await read_response(reader)
                    assert status == 503, raw
                    assert orjson.loads(raw)["reason"] == "deadline"
                # Answered by the deadline, not by the publish timeout; each timed with it.
                assert _shed("deadline") - deadline == 20
                grown = _grown(answered, _answered())
                assert (grown["5xx"], grown["count "], grown["bucket 0.25"]) == (20, 20, 0)
                assert _shed("confirm_timeout") == confirm_timeout
                assert edge.gate.early == 0
                proxy.release()
                # The retries, same keys: accepted, with the ids the keys give.
                ids = set()
                for i, key in enumerate(keys):

                    async def retried(i: int = i, key: str = key) -> tuple[int, bytes]:
                        writer.write(_request(i, seed=73, key=key))
                        status, _, raw = await read_response(reader)
                        return status, raw

                    status, raw = await eventually(retried, lambda a: a[0] == 202, 30)
                    ids.add(uuid.UUID(orjson.loads(raw)["id"]))
            finally:
                writer.close()
            assert "confirm_timeout" not in edge.publisher.stats.failures
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, ids, only=True)


async def test_the_first_shed_of_a_spell_is_reported_at_once(tmp_path: Path) -> None:
    # Not at the next quarter-second tick (no tick runs here: the gate is not running): the
    # sooner intake supervise holds verification back, the shorter the spell.
    gate = Gate(Settings(edge_status_dir=str(tmp_path)), cast(BatchPublisher, None))
    status_file = tmp_path / f"edge-{os.getpid()}.json"
    gate.count("persist_queue_full")  # not for want of time or room in this edge
    assert read_status(str(status_file)) is None
    gate.count("queue_delay")
    status = read_status(str(status_file))
    assert status is not None
    assert status["shedding"] is True
    status_file.unlink()
    gate.count("queue_delay")  # the spell goes on: said once, not once per shed
    assert read_status(str(status_file)) is None


def test_a_late_loop_is_reported_at_once_before_any_shed(tmp_path: Path) -> None:
    gate = Gate(Settings(edge_status_dir=str(tmp_path)), cast(BatchPublisher, None))
    status_file = tmp_path / f"edge-{os.getpid()}.json"
    monitor = gate.monitor
    monitor.reset(0.0)
    monitor.probe(0.05)  # late, but only since just now
    assert read_status(str(status_file)) is None
    monitor.probe(0.1)  # late for 100 ms: said at once
    status = read_status(str(status_file))
    assert status is not None
    assert (status["late"], status["shedding"]) == (True, False)
    assert gate.pressed == 0
    assert gate.late == 1
    status_file.unlink()
    monitor.probe(0.15)  # still late: said once, not once per probe
    assert read_status(str(status_file)) is None
    assert gate.late == 2
