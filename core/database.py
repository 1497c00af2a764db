"""What a PostgreSQL client of this project does when the server it writes to stops being the
primary: during a failover (Patroni, CloudNativePG) the connections to the old primary break
(``kill -9``: the connection is gone), are closed by the server (``admin_shutdown`` while it is
demoted), fail to open (``cannot_connect_now`` while it starts, no host of the multi-host URL is
a primary yet), or, on a node that was paused and came back demoted, still open on a server
that refuses writes (``read_only_sql_transaction``). Each of these is a reason to retry the same
work on a fresh connection (the multi-host URL with ``target_session_attrs=read-write`` finds
the new primary), never a reason to give the work up or dead-letter it."""

from __future__ import annotations

import asyncpg

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
