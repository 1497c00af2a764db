"""Versioned schema migrations: ``core/migrations/NNNN_name.sql``, applied in order, once.

Every process that needs the schema may call :func:`migrate` at start; a PostgreSQL advisory
lock makes concurrent callers wait for each other, and each migration runs in its own
transaction together with its row in ``schema_migrations``. Where a deployment applies them
apart (``intake migrate`` in a Kubernetes Job, ``INTAKE_PERSIST_MIGRATE=false``), the persist
worker waits for them instead (:func:`wait_until_migrated`).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x1A7A4E  # arbitrary, fixed: identifies this project's migration lock
_NAME_RE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every shipped migration, in version order."""
    folder = importlib.resources.files("core").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def pending(connection: asyncpg.Connection) -> list[str]:
    """The shipped migrations not applied yet (all of them on an empty database)."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = (
        {r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")}
        if exists
        else set()
    )
    return [name for version, name, _ in available() if version not in done]


async def wait_until_migrated(
    connection: asyncpg.Connection,
    poll_s: float = 2.0,
    say_every_s: float = 30.0,
    waited: Callable[[], None] = lambda: None,
) -> None:
    """Return once every shipped migration is applied (by ``intake migrate``, e.g. the
    Kubernetes migration Job); say what is missing now and then meanwhile. ``waited`` is
    called at every look (e.g. ``core.health.Health.beat``: waiting is not being stuck)."""
    said_at = -say_every_s
    loop = asyncio.get_running_loop()
    while missing := await pending(connection):
        waited()
        if loop.time() - said_at >= say_every_s:
            log.warning(
                "waiting for the schema: %d migrations not applied (run intake migrate)",
                len(missing),
                extra={"fields": {"first_missing": missing[0]}},
            )
            said_at = loop.time()
        await asyncio.sleep(poll_s)


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet applied; return the names of those applied now."""
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")
        }
        applied = []
        for version, name, sql in available():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %s", name)
            applied.append(name)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
