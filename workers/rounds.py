"""The loop of a worker whose work is in PostgreSQL (the selection of closed waves, the
notifier): a round, then the next one at once while there is more, else after an interval; a
round that fails on the database or the network is logged by kind and tried again after the
interval (after a failover, with the pool's connections to the old primary expired)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from core import database
from core.health import Health

log = logging.getLogger(__name__)


async def run_rounds(
    name: str,
    pool: asyncpg.Pool,
    health: Health,
    stopping: asyncio.Event,
    interval_s: float,
    one_round: Callable[[], Awaitable[bool]],
) -> None:
    """Call ``one_round`` until ``stopping`` is set: again at once when it returns True (more
    work is due), else after ``interval_s``. ``health`` beats once per round and serves while
    the loop runs."""
    health.serving(True)
    try:
        while not stopping.is_set():
            health.beat()
            try:
                if await one_round():
                    continue
            except (asyncpg.PostgresError, *database.FAILOVER, OSError) as exc:
                log.warning("%s round failed: %s", name, type(exc).__name__)
                if isinstance(exc, database.FAILOVER):
                    await database.expire_on_failover(pool, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
    finally:
        health.serving(False)
