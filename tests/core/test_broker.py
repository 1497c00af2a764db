"""Several RabbitMQ nodes in INTAKE_AMQP_URL (core/broker.py): a connection goes to a node that
answers, and a reconnection after a node's loss goes to another node instead of waiting for that
one. The nodes here are TCP proxies in front of the one real broker: cutting a proxy is, for the
client, a node lost (its connections aborted, nothing listening)."""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial

import aio_pika
import asyncpg
import pytest

from core import broker
from core.settings import Settings, SettingsError
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import Process, free_port
from tests.support.proxy import TcpProxy
from tests.support.stored import stored_once
from tests.support.waiting import eventually


def test_the_setting_names_one_node_or_several() -> None:
    one = "amqp://u:p@h1:5672/v"
    assert broker.nodes(one) == [one]
    assert broker.nodes(f"{one}, amqp://u:p@h2:5672/v ,") == [one, "amqp://u:p@h2:5672/v"]
    assert broker.first(f"{one},amqp://u:p@h2:5672/v") == one
    with pytest.raises(ValueError, match="amqp://"):
        broker.nodes(f"{one},h2:5672")
    with pytest.raises(ValueError, match="no RabbitMQ URL"):
        broker.nodes(" , ")
    with pytest.raises(SettingsError, match="INTAKE_AMQP_URL"):
        Settings(amqp_url="h1:5672").check()


@contextlib.asynccontextmanager
async def _nodes(settings: Settings, count: int) -> AsyncIterator[tuple[list[TcpProxy], str]]:
    """``count`` proxies in front of the real broker, and the setting that names them all."""
    url = aio_pika.connection.make_url(settings.amqp_url)
    proxies = [TcpProxy(url.host or "127.0.0.1", url.port or 5672) for _ in range(count)]
    for proxy in proxies:
        await proxy.start()
    try:
        yield proxies, ",".join(str(url.with_port(p.port)) for p in proxies)
    finally:
        for proxy in proxies:
            await proxy.close()


async def test_a_node_that_does_not_answer_is_skipped(settings: Settings) -> None:
    url = aio_pika.connection.make_url(settings.amqp_url)
    dead = str(url.with_port(free_port()))  # nothing listens there
    setting = f"{dead},{settings.amqp_url}"
    for _ in range(3):  # wherever it starts, it ends on the live node
        connection = await broker.connect(setting, timeout_s=2)
        assert not connection.is_closed
        await connection.close()
    with pytest.raises(OSError, match="Connect call failed"):
        await broker.connect(f"{dead},{dead}", timeout_s=2)


async def test_a_reconnection_goes_to_another_node(settings: Settings) -> None:
    # The next connection starts at the node after the last one connected to: a connection
    # lost is most often its node lost, so the reconnection does not knock on it first.
    async with _nodes(settings, 2) as (proxies, setting):
        connection = await broker.connect(setting)
        used = [p.carrying for p in proxies]
        assert sorted(used) == [False, True]
        await connection.close()
        await eventually(lambda: any(p.carrying for p in proxies), lambda busy: not busy, 10)
        again = await broker.connect(setting)
        assert [p.carrying for p in proxies] == [not u for u in used]
        await again.close()


async def test_the_edge_and_the_persist_worker_carry_on_when_their_node_is_lost(
    settings: Settings, db: asyncpg.Pool
) -> None:
    # Before several nodes could be named, an edge whose node died answered 503 until that very
    # node came back (24 s of 503s on a three-node cluster, while two nodes served the queue).
    # Each loss cuts every node in use (the edge's and the worker's, two at most): five nodes
    # leave at least one after two losses.
    async with _nodes(settings, 5) as (proxies, setting):
        clustered = settings.replace(amqp_url=setting, edge_reconnect_max_delay_s=0.2)
        accepted: set[uuid.UUID] = set()
        async with inprocess.edge(clustered) as client, inprocess.persist_worker(clustered, db):

            async def register(i: int) -> int:
                response = await client.post(
                    "/v1/registrations",
                    json=person(i),
                    headers={"Idempotency-Key": f"node-loss-{i}"},
                )
                if response.status == 202:
                    accepted.add(uuid.UUID((await response.json())["id"]))
                return response.status

            for i in range(5):
                assert await register(i) == 202
            for lost in range(2):
                carrying = [p for p in proxies if p.carrying]
                assert carrying
                for proxy in carrying:
                    await proxy.cut()
                i = 100 * (lost + 1)
                # Every registration is accepted again by another node, without restoring any.
                assert await eventually(partial(register, i), lambda s: s == 202, 20) == 202
                for j in range(1, 5):
                    assert await register(i + j) == 202
            await stored_once(db, accepted, only=True)


def test_a_heartbeat_is_asked_for_unless_the_url_names_one() -> None:
    url = "amqp://u:p@h1:5672/intake"
    assert broker.with_heartbeat(url, 3) == f"{url}?heartbeat=3"
    assert broker.with_heartbeat(f"{url}?heartbeat=10", 3) == f"{url}?heartbeat=10"
    assert broker.with_heartbeat(url, None) == url


async def test_an_edge_whose_node_goes_silent_moves_to_another_node(
    settings: Settings, db: asyncpg.Pool
) -> None:
    # A node cut off by a network partition (or paused as its minority) sends nothing more,
    # not even the close of its connections: the edge gives it up after three missed
    # heartbeats (intake.publisher.HEARTBEAT_S) and goes to the next node, while it is still
    # silent. With the client's default heartbeat (60 s) that took 183 s.
    async with _nodes(settings, 2) as (proxies, setting):
        clustered = settings.replace(amqp_url=setting, edge_reconnect_max_delay_s=0.2)
        accepted: set[uuid.UUID] = set()
        async with inprocess.edge(clustered) as client:

            async def register(i: int) -> int:
                response = await client.post(
                    "/v1/registrations",
                    json=person(i, seed=83),
                    headers={"Idempotency-Key": f"silent-node-{i}"},
                )
                if response.status == 202:
                    accepted.add(uuid.UUID((await response.json())["id"]))
                return response.status

            assert await register(0) == 202
            [silent] = [p for p in proxies if p.carrying]
            silent.stall()  # what the node sends is held back: its heartbeats too
            answers = [await register(1)]
            assert answers == [503]  # no confirm from a silent node
            status = await eventually(partial(register, 2), lambda s: s == 202, 30)
            assert status == 202  # within 30 s: with the default heartbeat it took 183 s
            assert [p.carrying for p in proxies if p is not silent] == [True]
            for i in range(3, 8):
                assert await register(i) == 202
            silent.release()
        # Every 202 stored once; the 503s may be stored too (the silent node took their
        # publishes, its confirms were held back): a 503 promises nothing.
        async with inprocess.persist_worker(settings, db):
            await stored_once(db, accepted)


async def test_a_persist_worker_whose_node_goes_silent_moves_to_another_node(
    settings: Settings, db: asyncpg.Pool
) -> None:
    # The same for a consumer (workers.sessions.HEARTBEAT_S): the deliveries held on the silent
    # connection come back once the broker sees it closed, and are stored by the new session.
    async with _nodes(settings, 2) as (proxies, setting):
        clustered = settings.replace(amqp_url=setting)
        accepted: set[uuid.UUID] = set()
        async with inprocess.edge(settings) as client, inprocess.persist_worker(clustered, db):

            async def register(i: int) -> None:
                response = await client.post("/v1/registrations", json=person(i, seed=89))
                assert response.status == 202
                accepted.add(uuid.UUID((await response.json())["id"]))

            await register(0)
            await stored_once(db, accepted)
            [silent] = [p for p in proxies if p.carrying]
            silent.stall()  # the worker's node sends nothing more, heartbeats included
            for i in range(1, 6):
                await register(i)
            await stored_once(db, accepted, only=True)  # by a session on the other node
            assert [p.carrying for p in proxies if p is not silent] == [True]
            silent.release()


async def test_the_database_may_be_named_by_several_hosts_the_primary_found_among_them(
    settings: Settings, db: asyncpg.Pool, spawn: Callable[..., Process]
) -> None:
    # PostgreSQL's side of a cluster needs no code of the project's own: every pool is made
    # from INTAKE_DATABASE_URL by asyncpg, which takes libpq's multi-host URLs and
    # target_session_attrs=read-write (the primary, wherever it is; after a failover, the new
    # one). Shown with a first host where nothing listens: the persist worker, a process of
    # its own with its pool made from that URL, stores what the edge accepted.
    url = urllib.parse.urlsplit(settings.database_url)
    hosts = f"127.0.0.1:{free_port()},{url.hostname}:{url.port or 5432}"
    netloc = f"{url.username}@{hosts}" if url.username else hosts
    query = "target_session_attrs=read-write" + (f"&{url.query}" if url.query else "")
    several = settings.replace(
        database_url=urllib.parse.urlunsplit((url.scheme, netloc, url.path, query, ""))
    )
    spawn(["worker", "persist"], several, name="persist-several-hosts")
    async with inprocess.edge(several) as client:
        response = await client.post("/v1/registrations", json=person(1))
        assert response.status == 202
        accepted = uuid.UUID((await response.json())["id"])
        await stored_once(db, {accepted}, only=True)
