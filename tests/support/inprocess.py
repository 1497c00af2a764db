"""The edge and the persist worker run inside the test's event loop, on real services."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request

from core.health import Health
from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from intake.app import create_app, express_path
from intake.appkeys import GATE, PUBLISHER
from intake.express import Express
from intake.gate import Gate
from intake.listener import EdgeSite
from intake.publisher import BatchPublisher
from tests.support.waiting import eventually
from verifiers import registry
from workers.dispatch import Dispatcher
from workers.lane import LaneWorker
from workers.persist import PersistWorker
from workers.store import RegistrationStore


def unshed(settings: Settings) -> Settings:
    """``settings`` for a test of the routes' rules, not of shedding under load: a machine busy
    with another suite can hold the edge's loop past its 20 ms queue target for a whole
    interval, or take more than 2 s to confirm a publish, and either is a 503 by design
    (tests/intake/test_shedding.py and tests/intake/test_overload.py test those)."""
    return settings.replace(
        edge_publish_timeout_s=20.0,
        edge_queue_target_s=5.0,
        edge_queue_interval_s=5.0,
        edge_deadline_s=30.0,
    )


@contextlib.asynccontextmanager
async def edge(settings: Settings) -> AsyncIterator[TestClient[Request, Application]]:
    keyring = Keyring.from_settings(settings)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    async with TestClient(TestServer(app)) as client:
        assert await app[PUBLISHER].wait_ready(10), "edge could not reach the broker"
        yield client


@contextlib.asynccontextmanager
async def persist_worker(
    settings: Settings, pool: asyncpg.Pool, health: Health | None = None
) -> AsyncIterator[PersistWorker]:
    keyring = Keyring.from_settings(settings)
    worker = PersistWorker(settings, keyring, RegistrationStore.configured(pool, settings), health)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def registered(
    settings: Settings, pool: asyncpg.Pool, forms: Iterable[dict[str, object]]
) -> list[uuid.UUID]:
    """Register ``forms`` through an edge (each answered ``202``) and wait until a persist
    worker has stored them all; their ids, in order."""
    ids = []
    async with edge(settings) as client:
        for form in forms:
            response = await client.post("/v1/registrations", json=form)
            assert response.status == 202
            ids.append(uuid.UUID((await response.json())["id"]))
    async with persist_worker(settings, pool):
        await eventually(
            lambda: pool.fetchval("SELECT count(*) FROM registrations WHERE id = ANY($1)", ids),
            lambda n: n == len(ids),
        )
    return ids


@contextlib.asynccontextmanager
async def dispatcher(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(settings, pool)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def lanes(
    settings: Settings, pool: asyncpg.Pool, checks: tuple[Check, ...]
) -> AsyncIterator[dict[Check, LaneWorker]]:
    """Lane workers for ``checks``, each with the verifier the registry builds."""
    keyring = Keyring.from_settings(settings)
    async with aiohttp.ClientSession() as http:
        workers = {
            c: LaneWorker(settings, keyring, pool, registry.build(c, settings, http, pool))
            for c in checks
        }
        tasks = [asyncio.create_task(w.run()) for w in workers.values()]
        try:
            yield workers
        finally:
            for worker in workers.values():
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)


@dataclass
class RunningEdge:
    """The edge served as in production (its own site and connection protocol), in-process."""

    app: Application
    runner: web.AppRunner
    host: str
    port: int
    express: Express | None

    @property
    def gate(self) -> Gate:
        return self.app[GATE]

    @property
    def publisher(self) -> BatchPublisher:
        return self.app[PUBLISHER]


@contextlib.asynccontextmanager
async def served_edge(settings: Settings) -> AsyncIterator[RunningEdge]:
    """The edge on a free port with :class:`~intake.listener.EdgeSite` (aiohttp's test server
    would bypass the early 503, the express path and the accept loop)."""
    keyring = Keyring.from_settings(settings)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        express = express_path(app) if settings.edge_express else None
        site = EdgeSite(
            runner, app[GATE], sock=sock, backlog=settings.edge_backlog, express=express
        )
        await site.start()
        assert await app[PUBLISHER].wait_ready(10), "edge could not reach the broker"
        yield RunningEdge(app, runner, "127.0.0.1", sock.getsockname()[1], express)
    finally:
        await runner.cleanup()
        sock.close()
