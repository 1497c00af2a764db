"""Load shedding at the edge: decided before the body is read, no publishing into a full queue,
and a Retry-After that reflects the backlog. Real RabbitMQ, real edge, real persist worker."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from core import topology
from core.keys import Keyring
from core.settings import Settings
from intake.appkeys import PUBLISHER
from intake.publisher import BatchPublisher, Unavailable
from intake.shedding import DrainMeter, drain_time_s, retry_after_s
from tests.support import inprocess, openapi
from tests.support.people import person
from tests.support.proxy import TcpProxy
from tests.support.rawhttp import read_response
from tests.support.stored import stored_once
from tests.support.waiting import eventually

URL = "/v1/registrations"
JSON = {"Content-Type": "application/json"}
Client = TestClient[Request, Application]

# --- the arithmetic, without services ------------------------------------------------------

JITTERS = [i / 20 for i in range(20)]


def test_retry_after_grows_with_the_backlog_and_falls_with_the_drain_rate() -> None:
    for jitter in JITTERS:
        waits = [
            retry_after_s(drain_time_s(backlog, 50.0) or 0.0, maximum_s=60, jitter=jitter)
            for backlog in (0, 40, 100, 500, 1_000, 2_000, 10_000)
        ]
        assert waits == sorted(waits), jitter
        small = retry_after_s(drain_time_s(100, 50.0) or 0.0, maximum_s=60, jitter=jitter)
        large = retry_after_s(drain_time_s(1_000, 50.0) or 0.0, maximum_s=60, jitter=jitter)
        assert 1 <= small <= 2 < 10 <= large <= 20  # 2 s of backlog against 20 s
        slow = retry_after_s(drain_time_s(1_000, 25.0) or 0.0, maximum_s=60, jitter=jitter)
        assert 20 <= slow <= 40
        assert slow > large


def test_retry_after_is_a_whole_second_within_bounds_and_spread() -> None:
    for seconds in (0.0, 0.01, 1.0, 1.5, 7.2, 59.9, 60.0, 3_600.0, math.inf, math.nan):
        for jitter in JITTERS:
            value = retry_after_s(seconds, maximum_s=60, jitter=jitter)
            assert isinstance(value, int)
            assert 1 <= value <= 60
    # An infinite wait (nothing drains the queue) is the maximum, spread over its upper half,
    # so that clients shed in the same second come back in different seconds.
    spread = {retry_after_s(math.inf, maximum_s=60, jitter=j) for j in JITTERS}
    assert min(spread) >= 30
    assert 55 <= max(spread) <= 60
    assert len(spread) >= 10
    assert {retry_after_s(0.2, maximum_s=60, jitter=j) for j in JITTERS} == {1}


def test_the_drain_meter_counts_what_consumers_took() -> None:
    meter = DrainMeter()
    assert meter.drain_time_s() is None  # nothing known yet
    meter.observe(10.0, depth=1_000, consumers=2, published=0)
    assert meter.rate_per_s is None
    assert meter.drain_time_s() is None
    # 1,000 -> 900 in 2 s while this edge confirmed 100 more into it: 200 consumed, 100/s.
    meter.observe(12.0, depth=900, consumers=2, published=100)
    assert meter.rate_per_s == pytest.approx(100.0)
    assert meter.drain_time_s() == pytest.approx(9.0)
    # Faster consumers: the smoothed rate rises, the wait falls.
    meter.observe(13.0, depth=600, consumers=4, published=100)
    assert meter.rate_per_s == pytest.approx(200.0)
    assert meter.drain_time_s() == pytest.approx(3.0)
    # No consumer at all: nothing drains it, the wait is unbounded.
    meter.observe(14.0, depth=600, consumers=0, published=100)
    assert meter.rate_per_s == 0.0
    assert meter.drain_time_s() == math.inf


# --- helpers -------------------------------------------------------------------------------


async def _post(client: Client, index: int, *, seed: int) -> tuple[int, dict[str, Any], str]:
    response = await client.post(URL, json=person(index, seed=seed))
    body: dict[str, Any] = await response.json()
    return response.status, body, response.headers.get("Retry-After", "")


def _assert_shed(status: int, body: dict[str, Any], retry_after: str, reason: str, top: int) -> int:
    assert status == 503, body
    openapi.validate("UnavailableProblem", body)
    assert body["reason"] == reason
    assert retry_after.isdigit(), retry_after  # RFC 9110: a whole number of seconds
    assert 1 <= int(retry_after) <= top
    return int(retry_after)


# --- a full persist queue --------------------------------------------------------------------


async def test_a_full_queue_is_shed_without_publishing_until_it_drains(
    settings: Settings, db: asyncpg.Pool
) -> None:
    tiny = settings.replace(
        persist_queue_max_length=3, edge_retry_after_max_s=20, edge_full_probe_interval_s=0.2
    )
    accepted: set[uuid.UUID] = set()
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(topology.PERSIST_QUEUE)  # declared anew with the tiny limit
        try:
            async with inprocess.edge(tiny) as client:
                publisher: BatchPublisher = client.app[PUBLISHER]
                # No worker: the queue fills up, and the broker's first nack is a 503.
                for i in range(10):
                    status, body, retry_after = await _post(client, i, seed=61)
                    if status != 202:
                        _assert_shed(status, body, retry_after, "queue_full", 20)
                        break
                    accepted.add(uuid.UUID(body["id"]))
                assert 3 <= len(accepted) <= 4  # quorum queues let one more in past the limit
                assert publisher.queue_full

                # Known full: shed at once; only probes, one per interval at most, are sent.
                batches, probes = publisher.stats.batches, publisher.stats.probes
                shed = publisher.stats.shed.get("queue_full", 0)
                count = 200
                started = time.monotonic()
                for i in range(count):
                    status, body, retry_after = await _post(client, 100 + i, seed=61)
                    _assert_shed(status, body, retry_after, "queue_full", 20)
                elapsed_s = time.monotonic() - started
                probed = publisher.stats.probes - probes
                assert publisher.stats.batches - batches == probed  # nothing else was published
                assert probed <= 1 + elapsed_s / tiny.edge_full_probe_interval_s
                assert publisher.stats.shed.get("queue_full", 0) - shed == count - probed

                # No consumer drains it: the wait is unbounded, so Retry-After is the maximum,
                # spread over its upper half.
                async def shed_wait() -> int:
                    status, body, retry_after = await _post(client, 999, seed=61)
                    return _assert_shed(status, body, retry_after, "queue_full", 20)

                assert await eventually(shed_wait, lambda wait: wait >= 10) <= 20

                # A worker drains it: the same edge accepts again, without a restart.
                async with inprocess.persist_worker(tiny, db):

                    async def next_answer() -> int:
                        status, body, _ = await _post(client, 300 + len(accepted), seed=61)
                        if status == 202:
                            accepted.add(uuid.UUID(body["id"]))
                        return status

                    await eventually(next_answer, lambda status: status == 202, 60)
                    assert not publisher.queue_full
                    for i in range(20):
                        status, body, _ = await _post(client, 400 + i, seed=61)
                        assert status in (202, 503)
                        if status == 202:
                            accepted.add(uuid.UUID(body["id"]))
                    await stored_once(db, accepted)
        finally:
            await channel.queue_delete(topology.PERSIST_QUEUE)  # the next test declares it anew


# --- the in-process bound --------------------------------------------------------------------


async def test_at_the_in_process_bound_a_request_is_shed_before_its_body_is_read(
    settings: Settings, db: asyncpg.Pool
) -> None:
    url = aio_pika.connection.make_url(settings.amqp_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    bounded = settings.replace(
        amqp_url=str(url.with_host("127.0.0.1").with_port(proxy.port)),
        edge_max_pending=4,
        edge_publish_timeout_s=60.0,  # the held confirms must not time out
        edge_retry_after_max_s=30,
    )
    accepted: set[uuid.UUID] = set()
    try:
        async with inprocess.edge(bounded) as client:
            publisher: BatchPublisher = client.app[PUBLISHER]

            async def pending() -> int:
                return publisher.pending

            # Confirms held back: four registrations fill the bound, the other 56 of a
            # concurrent burst are shed.
            proxy.stall()
            burst = [asyncio.create_task(_post(client, i, seed=62)) for i in range(60)]
            await eventually(pending, lambda n: n == 4)

            async def answered() -> list[asyncio.Task[tuple[int, dict[str, Any], str]]]:
                return [task for task in burst if task.done()]

            done = await eventually(answered, lambda finished: len(finished) == 56)
            for task in done:
                _assert_shed(*task.result(), "overloaded", 30)

            # A malformed body while shedding: 503, not 400, so it was never parsed.
            shed_before = publisher.stats.shed.get("overloaded", 0)
            response = await client.post(URL, data=b"{ not json", headers=JSON)
            body = await response.json()
            _assert_shed(
                response.status, body, response.headers.get("Retry-After", ""), "overloaded", 30
            )
            assert publisher.stats.shed["overloaded"] == shed_before + 1
            assert publisher.pending == 4  # and nothing was published for it

            # Answered before its body was even sent, on a keep-alive connection that then
            # serves the next requests correctly: aiohttp drains the unread body after the
            # answer. The body is itself an HTTP request: had the edge taken it for the next
            # request on the connection, the next answer would be the OpenAPI document.
            host, port = client.server.host, client.server.port
            assert port is not None
            reader, writer = await asyncio.open_connection(host, port)
            try:
                smuggled = b"GET /openapi.json HTTP/1.1\r\nHost: edge\r\n\r\n"
                writer.write(
                    b"POST /v1/registrations HTTP/1.1\r\nHost: edge\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(smuggled)
                )
                status, headers, raw = await asyncio.wait_for(read_response(reader), 30)
                assert status == 503
                assert headers.get("connection", "keep-alive").lower() != "close"
                assert int(headers["retry-after"]) >= 1
                writer.write(smuggled)  # the body, late
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
                status, _, raw = await read_response(reader)
                assert (status, raw) == (200, b'{"status":"ok"}')

                proxy.release()
                held = await asyncio.gather(*(t for t in burst if t not in done))
                assert [status for status, _, _ in held] == [202] * 4
                accepted |= {uuid.UUID(body["id"]) for _, body, _ in held}

                # The same connection, shedding over: a registration is accepted.
                payload = orjson.dumps(person(99, seed=62))
                writer.write(
                    b"POST /v1/registrations HTTP/1.1\r\nHost: edge\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                status, _, raw = await read_response(reader)
                assert status == 202, raw
                accepted.add(uuid.UUID(orjson.loads(raw)["id"]))
            finally:
                writer.close()

            # Not held back, a burst against a bound of four: whatever is answered 202 is
            # stored, whatever is shed is a 503 with its Retry-After.
            results = await asyncio.gather(*(_post(client, 500 + i, seed=62) for i in range(200)))
            for status, body, retry_after in results:
                if status == 202:
                    accepted.add(uuid.UUID(body["id"]))
                else:
                    _assert_shed(status, body, retry_after, "overloaded", 30)
    finally:
        await proxy.close()
    async with inprocess.persist_worker(settings, db):
        await stored_once(db, accepted)


def test_probes_nacked_while_a_fresh_sample_shows_the_queue_empty_make_the_edge_reconnect(
    base_settings: Settings,
) -> None:
    # RabbitMQ 3.10: a channel that first published to a quorum queue during a leader election
    # may nack every publish afterwards while the queue is empty (seen in
    # tests/cluster/test_cluster.py: 753 nacks in two minutes into an empty queue). A nack
    # is a full queue only if the queue, sampled since, is not nearly empty.
    publisher = BatchPublisher(base_settings, Keyring.from_secret(base_settings.secret_key))
    full = Unavailable("queue_full")
    now = time.monotonic()
    publisher.drain.observe(now - 5, 0, 1, 0)  # empty, before the nack
    publisher._track_fullness(1, full, probe=False)  # the nack: the full state begins
    assert publisher.queue_full
    assert not publisher._reconnect.is_set()
    publisher._track_fullness(2, full, probe=True)  # a probe nacked; no sample since
    assert not publisher._reconnect.is_set()
    publisher.drain.observe(time.monotonic() + 1, 150_000, 1, 0)  # truly full
    publisher._track_fullness(3, full, probe=True)
    assert not publisher._reconnect.is_set()
    publisher.drain.observe(time.monotonic() + 2, 0, 1, 0)  # empty, sampled after the nack
    publisher._track_fullness(4, full, probe=True)
    assert publisher._reconnect.is_set()
