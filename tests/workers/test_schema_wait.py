"""Where the migrations are applied apart (the Kubernetes migration Job: ``intake migrate``,
``INTAKE_PERSIST_MIGRATE=false``), the persist worker waits for them, then stores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import asyncpg

from core.migrate import available
from core.settings import Settings
from tests.support import inprocess, services
from tests.support.people import person
from tests.support.processes import Process
from tests.support.waiting import eventually


async def test_the_persist_worker_waits_for_the_migrations_then_stores(
    settings: Settings, spawn: Callable[..., Process]
) -> None:
    name = f"intake_schema_wait_{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(services.create_database, name)
    worker: Process | None = None
    try:
        fresh = settings.replace(database_url=url, persist_migrate=False)
        worker = spawn(["worker", "persist"], fresh, name="persist-waiting")
        await eventually(worker.log, lambda log: "waiting for the schema" in log, 60)
        db = await asyncpg.connect(url)
        try:
            # Waiting: alive, and nothing created in the empty database.
            assert worker.alive()
            assert await db.fetchval("SELECT to_regclass('registrations')") is None
            # The Job's command; the worker goes on by itself.
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "cli", "migrate"],
                env={**os.environ, **fresh.to_env()},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            applied = await db.fetchval("SELECT count(*) FROM schema_migrations")
            assert applied == len(available())
            async with inprocess.edge(fresh) as client:
                response = await client.post("/v1/registrations", json=person(1))
                assert response.status == 202
                accepted = uuid.UUID((await response.json())["id"])
            await eventually(
                lambda: db.fetchval("SELECT count(*) FROM registrations WHERE id = $1", accepted),
                lambda n: n == 1,
                60,
            )
        finally:
            await db.close()
    finally:
        if worker is not None:
            worker.kill()  # its pool holds connections to the database dropped next
        await asyncio.to_thread(services.drop_database, name)
