"""The application on a real cluster (cluster.local): three RabbitMQ nodes, three PostgreSQL
members under Patroni. An edge and a persist worker (processes, as deployed) are given every
node and every member; registrations flow while the quorum queue's leader node is killed
(``kill -9`` of its Erlang VM) and while the PostgreSQL primary is killed (Patroni and
postmaster, ``kill -9``): every registration answered ``202`` is stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
import pytest

from cluster import patroni
from cluster.local import Cluster
from core.settings import Settings
from core.topology import PERSIST_QUEUE
from tests.support.people import person
from tests.support.processes import Process, free_port, wait_until_ready
from tests.support.stored import stored_once
from tests.support.waiting import eventually


def test_the_cluster_is_three_rabbitmq_nodes_and_a_patroni_primary_with_two_replicas(
    local_cluster: Cluster,
) -> None:
    assert sorted(local_cluster.rabbit_running()) == sorted(n.name for n in local_cluster.rabbits)
    roles = sorted(m["role"] for m in local_cluster.pg_state())
    assert roles == ["leader", "replica", "sync_standby"]
    assert local_cluster.database_url().count("127.0.0.1:") == 3
    assert local_cluster.amqp_url().count("amqp://") == 3


class Registrants:
    """Registrations sent one after another by a few people at once, each retried with its
    ``Idempotency-Key`` until it is answered ``202``; every ``202`` id kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: set[uuid.UUID] = set()
        self.answers: dict[str, int] = {}
        self._next = 0
        self._stop = asyncio.Event()

    async def one(self, session: aiohttp.ClientSession) -> None:
        """One person, until answered ``202`` (or the registrants are stopped)."""
        index, self._next = self._next, self._next + 1
        key = f"cluster-{index}"
        while not self._stop.is_set():
            try:
                async with session.post(
                    self.url,
                    json=person(index, seed=31),
                    headers={"Idempotency-Key": key},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    status = str(response.status)
                    if response.status == 202:
                        self.accepted.add(uuid.UUID((await response.json())["id"]))
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            self.answers[status] = self.answers.get(status, 0) + 1
            if status == "202":
                return
            assert status in ("503",) or not status.isdigit(), status
            await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def flowing(self, people: int = 4) -> AsyncIterator[Registrants]:
        self._stop.clear()

        async def person_loop(session: aiohttp.ClientSession) -> None:
            while not self._stop.is_set():
                await self.one(session)
                await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(person_loop(session)) for _ in range(people)]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*tasks)

    async def more(self, count: int) -> None:
        """Until ``count`` more registrations are accepted."""
        target = len(self.accepted) + count
        await eventually(lambda: len(self.accepted), lambda n: n >= target, 120)


async def stored_on(cluster: Cluster, accepted: set[uuid.UUID]) -> None:
    """Every id stored exactly once, read from the primary of now (a pool made afresh: one
    made before a failover holds connections to the old primary)."""
    pool = await asyncpg.create_pool(cluster.database_url(), min_size=1, max_size=2)
    async with pool:
        await stored_once(pool, accepted)


@pytest.fixture
async def on_cluster(
    local_cluster: Cluster, base_settings: Settings, spawn: Callable[..., Process]
) -> Registrants:
    """An edge and a persist worker on the cluster (whole again after the last test's
    faults), and the registrants who use it."""
    await eventually(lambda: asyncio.to_thread(local_cluster.postgres_whole), bool, 180)
    port = free_port()
    settings = base_settings.replace(
        amqp_url=local_cluster.amqp_url(),
        database_url=local_cluster.database_url(),
        edge_port=port,
        edge_reconnect_max_delay_s=0.5,
    )
    worker = spawn(["worker", "persist"], settings, name="persist-on-cluster")
    edge = spawn(["edge"], settings, name="edge-on-cluster")
    wait_until_ready(port, edge, 60)
    assert worker.alive()
    return Registrants(f"http://127.0.0.1:{port}/v1/registrations")


async def test_the_registrations_queue_has_a_member_on_every_node(
    local_cluster: Cluster, on_cluster: Registrants
) -> None:
    registrants = on_cluster
    async with aiohttp.ClientSession() as session:
        await registrants.one(session)
    queue = local_cluster.quorum_members(PERSIST_QUEUE)
    assert sorted(queue["members"]) == sorted(n.name for n in local_cluster.rabbits)
    assert queue["leader"] in queue["members"]
    await stored_on(local_cluster, registrants.accepted)


async def test_nothing_is_lost_when_the_queue_leader_node_is_killed(
    local_cluster: Cluster, on_cluster: Registrants
) -> None:
    registrants = on_cluster
    async with registrants.flowing():
        await registrants.more(20)
        node = await asyncio.to_thread(local_cluster.leading, PERSIST_QUEUE)
        assert node is not None
        assert node.signal(signal.SIGKILL)
        await registrants.more(50)  # accepted again, on the two other nodes
        moved = await asyncio.to_thread(local_cluster.leading, PERSIST_QUEUE)
        assert moved is not None
        assert moved.name != node.name
        node.start()
        await asyncio.to_thread(node.wait)
        await registrants.more(20)
    await stored_on(local_cluster, registrants.accepted)
    assert sorted(local_cluster.rabbit_running()) == sorted(n.name for n in local_cluster.rabbits)


async def test_nothing_is_lost_when_the_postgres_primary_is_killed(
    local_cluster: Cluster, on_cluster: Registrants
) -> None:
    registrants = on_cluster
    async with registrants.flowing():
        await registrants.more(20)
        members = local_cluster.members
        old = await asyncio.to_thread(patroni.primary, members)
        assert old is not None
        assert old.kill()  # Patroni and the postmaster: a machine gone
        new = await eventually(
            lambda: asyncio.to_thread(patroni.primary, members),
            lambda m: m is not None and m.name != old.name,
            120,
        )
        assert new is not None
        await registrants.more(50)  # stored on the new primary
        old.start()  # it comes back as a replica (pg_rewind)
        await eventually(lambda: asyncio.to_thread(local_cluster.postgres_whole), bool, 180)
        await registrants.more(20)
    await stored_on(local_cluster, registrants.accepted)


async def test_a_node_cut_off_by_a_partition_is_seen_down_and_rejoins_when_healed(
    local_cluster: Cluster, on_cluster: Registrants
) -> None:
    registrants = on_cluster
    async with registrants.flowing():
        await registrants.more(20)
        node = await asyncio.to_thread(local_cluster.leading, PERSIST_QUEUE)
        assert node is not None
        other = next(n for n in local_cluster.rabbits if n.name != node.name)
        await asyncio.to_thread(local_cluster.partition, node)
        try:
            assert [n.name for n in local_cluster.partitioned()] == [node.name]
            # The others see it down once its distribution's ticks are missed (net_ticktime).
            running = await eventually(
                lambda: asyncio.to_thread(local_cluster.rabbit_running, other),
                lambda names: len(names) == 2,
                90,
            )
            assert node.name not in running
            moved = await asyncio.to_thread(local_cluster.leading, PERSIST_QUEUE)
            assert moved is not None
            assert moved.name != node.name
            await registrants.more(50)  # accepted by the majority, the cut node still silent
        finally:
            await asyncio.to_thread(local_cluster.heal)
        assert local_cluster.partitioned() == []
        everyone = sorted(n.name for n in local_cluster.rabbits)
        await eventually(
            lambda: asyncio.to_thread(local_cluster.rabbit_running, node),
            lambda names: sorted(names) == everyone,
            120,
        )
        # Both sides recorded the split; the losing side restarts and it is gone (autoheal).
        await eventually(
            lambda: asyncio.to_thread(local_cluster.rabbit_split, node), lambda s: not s, 180
        )
        await registrants.more(20)
    await stored_on(local_cluster, registrants.accepted)


def test_status_says_who_runs_and_who_leads(local_cluster: Cluster) -> None:
    where = [f"--dir={local_cluster.root}", f"--base-port={local_cluster.base_port}"]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "cluster", "status", "--json", *where],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    status = json.loads(done.stdout)
    assert len(status["rabbitmq_running"]) == 3
    assert all(node["pid"] for node in status["rabbitmq"])
    assert status["primary"] in {"pg1", "pg2", "pg3"}
    assert status["database_url"] == local_cluster.database_url()
    assert status["app"] == {}  # started with --no-app
