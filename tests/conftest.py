"""Fixtures: one RabbitMQ vhost and one PostgreSQL database per test run, cleaned between tests
and removed at the end; the system's processes and in-process parts built on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
import uvloop

from core import topology
from core.keys import Keyring
from core.migrate import migrate
from core.settings import Settings
from tests.support import services
from tests.support.processes import RUN_VARIABLE, Process, strays

RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
# How long the processes still running at the end of the run have to exit on their own (a
# killed supervisor's workers stop gracefully) before they count as left behind.
STRAYS_GRACE_S = 60.0


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's loop, or uvloop (the edge's and workers' own) for a test marked ``uvloop``."""
    if item.get_closest_marker("uvloop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """The run fails if it leaves a process behind: one of its children still running or
    never reaped (a ``Popen`` dropped without a wait), or one of the system's processes it
    started, directly or not (they carry this run's id). Each is listed with the test that
    started it, then killed. Set up first and torn down last: after every other fixture has
    stopped what it started."""
    os.environ[RUN_VARIABLE] = RUN_ID
    yield
    deadline = time.monotonic() + STRAYS_GRACE_S
    left = strays(RUN_ID)
    while any(s.state != "Z" for s in left) and time.monotonic() < deadline:
        time.sleep(0.2)  # those still running may be on their way out; zombies stay
        left = strays(RUN_ID)
    for stray in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stray.pid, signal.SIGKILL)
    if left:
        listed = "\n".join(f"  {stray}" for stray in left)
        pytest.fail(f"processes left behind by this test run:\n{listed}", pytrace=False)


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    """Settings pointing at this run's own vhost and database."""
    vhost = f"intake_test_{RUN_ID}"
    database = f"intake_test_{RUN_ID}"
    amqp_url = services.create_vhost(vhost)
    try:
        database_url = services.create_database(database)
        try:
            yield Settings(
                amqp_url=amqp_url,
                database_url=database_url,
                secret_key="test-secret-key-0123456789abcdef0123456789",
                edge_publish_timeout_s=2.0,
                edge_shutdown_timeout_s=5.0,
                persist_batch_linger_s=0.02,
                log_level="DEBUG",
                # Every test's registrants come from 127.0.0.1: the per-client limit is tested
                # where it is set (tests/intake/test_limits.py, tests/intake/test_fuzz.py).
                limit_client_requests=0,
            )
        finally:
            services.drop_database(database)
    finally:
        services.delete_vhost(vhost)


@pytest.fixture
async def settings(base_settings: Settings) -> Settings:
    """Per test: the schema migrated, tables empty, queues declared and empty."""
    connection = await asyncpg.connect(base_settings.database_url)
    try:
        await migrate(connection)
        await connection.execute(
            "TRUNCATE registrations, nik_claims, checks, photos, photo_keys, rate_buckets,"
            " limit_hits, waves,"
            " test_attempts, wave_joins, wave_selections, benefit_niks, notifications,"
            " lane_controls, maintenance_windows, retention_runs"
        )
    finally:
        await connection.close()
    amqp = await aio_pika.connect(base_settings.amqp_url)
    async with amqp:
        channel = await amqp.channel()
        declared = await topology.declare(channel, base_settings)
        await declared.persist_queue.purge()
        await declared.persist_dlq.purge()
        await declared.tests_queue.purge()
        await declared.joins_queue.purge()
        for queue in topology.PARTICIPATION_QUEUES:
            await (await channel.declare_queue(f"{queue}.dlq", passive=True)).purge()
    return base_settings


@pytest.fixture
def keyring(base_settings: Settings) -> Keyring:
    return Keyring.from_settings(base_settings)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    async with pool:
        yield pool


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start ``intake`` subprocesses; every one still running at the end is killed."""
    started: list[Process] = []

    def start(command: list[str], settings: Settings, name: str | None = None) -> Process:
        log_path = tmp_path / f"{name or command[0]}-{len(started)}.log"
        process = Process(command, settings, log_path).start()
        started.append(process)
        return process

    yield start
    # Every one, even if one of them cannot be reaped: none is left running.
    failures = []
    for process in started:
        try:
            process.kill()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
