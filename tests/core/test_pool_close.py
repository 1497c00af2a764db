"""A stopping process closes its database pool within a bound, on a real PostgreSQL: a
connection never released (a session that ended oddly) is terminated, not waited for."""

from __future__ import annotations

import asyncio

import asyncpg

from core import database
from core.settings import Settings
from tests.support.waiting import eventually


async def test_a_connection_never_released_is_terminated_at_close(settings: Settings) -> None:
    pool = await database.create_pool(settings.database_url, name="t-close", min_size=1, max_size=2)
    held = await pool.acquire()  # never released
    backend = await held.fetchval("SELECT pg_backend_pid()")
    async with asyncio.timeout(30):
        await database.close_pool(pool, timeout_s=0.5)
    assert pool.is_closing()
    # Its server process is gone: the connection was terminated, not left open.
    checker = await asyncpg.connect(settings.database_url)
    try:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
        await eventually(lambda: checker.fetchval(sql, backend), lambda n: n == 0)
    finally:
        await checker.close()
    del held


async def test_a_released_pool_closes_gracefully(settings: Settings) -> None:
    async with database.closing(
        await database.create_pool(settings.database_url, name="t-close", min_size=1, max_size=2)
    ) as pool:
        assert await pool.fetchval("SELECT 1") == 1
    assert pool.is_closing()
