"""The edge and the persist worker run inside the test's event loop, on real services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request

from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from intake.app import PUBLISHER, create_app
from intake.publisher import BatchPublisher
from verifiers import registry
from workers.dispatch import Dispatcher
from workers.lane import LaneWorker
from workers.persist import PersistWorker
from workers.store import RegistrationStore


@contextlib.asynccontextmanager
async def edge(settings: Settings) -> AsyncIterator[TestClient[Request, Application]]:
    keyring = Keyring.from_secret(settings.secret_key)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    async with TestClient(TestServer(app)) as client:
        assert await app[PUBLISHER].wait_ready(10), "edge could not reach the broker"
        yield client


@contextlib.asynccontextmanager
async def persist_worker(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[PersistWorker]:
    keyring = Keyring.from_secret(settings.secret_key)
    worker = PersistWorker(settings, keyring, RegistrationStore(pool))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


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
    keyring = Keyring.from_secret(settings.secret_key)
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
