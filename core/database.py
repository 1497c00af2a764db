"""What a PostgreSQL client of this project does when the server it writes to stops being the
primary: during a failover (Patroni, CloudNativePG) the connections to the old primary break
(``kill -9``: the connection is gone), are closed by the server (``admin_shutdown`` while it is
demoted), fail to open (``cannot_connect_now`` while it starts, no host of the multi-host URL is
a primary yet), or, on a node that was paused and came back demoted, still open on a server
that refuses writes (``read_only_sql_transaction``). Each of these is a reason to retry the same
work on a fresh connection (the multi-host URL with ``target_session_attrs=read-write`` finds
the new primary), never a reason to give the work up or dead-letter it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

import asyncpg

log = logging.getLogger(__name__)

# The server is gone or is no longer the primary: retry on a fresh connection.
FAILOVER: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    # asyncpg's own state after a connection broke mid-operation; also "no host of the URL is
    # a primary" (TargetServerAttributeNotMatched) while a replica is being promoted.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin_shutdown, crash_shutdown, cannot_connect_now
    asyncpg.ReadOnlySQLTransactionError,  # a demoted primary, connected before its demotion
)
# Also worth a retry of the same transaction, on any server.
TRANSIENT: tuple[type[BaseException], ...] = (
    *FAILOVER,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def expire_on_failover(pool: asyncpg.Pool, exc: BaseException) -> None:
    """After ``exc``, have ``pool`` open new connections if it may hold some to a server that
    is no longer the primary: a connection that still works but refuses writes would otherwise
    be handed out again and again."""
    if isinstance(exc, FAILOVER):
        # Every connection is replaced at its next acquire (the busy ones after their release).
        await pool.expire_connections()


# How long a stopping process waits for its pool's connections to be released and closed
# before it terminates them: a connection never released (a bug, a session that ended oddly)
# would otherwise hold the process in asyncpg's close for ever, past its supervisor.
CLOSE_TIMEOUT_S = 10.0


async def close_pool(pool: asyncpg.Pool, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close ``pool`` gracefully, or terminate its connections after ``timeout_s``."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("database pool not closed within %.0f s: terminated", timeout_s)
        pool.terminate()


@contextlib.asynccontextmanager
async def closing(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """``async with closing(pool)``: the pool, closed by :func:`close_pool` at the end."""
    try:
        yield pool
    finally:
        await close_pool(pool)


async def create_pool(
    dsn: str,
    *,
    name: str,
    min_size: int,
    max_size: int,
    attempted: Callable[[], None] = lambda: None,
) -> asyncpg.Pool:
    """A worker's pool, made once a primary answers: a worker started while none does (during
    a failover, or before the database is up) waits for one, with a capped backoff, instead of
    exiting. ``attempted`` is called before every attempt (e.g. ``core.health.Health.beat``:
    waiting for a primary is not being stuck)."""
    delay_s = 0.2
    while True:
        attempted()
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings={"application_name": name},
            )
            return pool
        except FAILOVER as exc:
            log.warning("no database primary yet (%s): retrying", type(exc).__name__)
        await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
        delay_s = min(delay_s * 2, 5.0)
