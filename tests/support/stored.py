"""What the database holds of the registrations a test was answered 202 for."""

from __future__ import annotations

import uuid

import asyncpg

from tests.support.waiting import eventually


async def stored_once(db: asyncpg.Pool, accepted: set[uuid.UUID], *, only: bool = False) -> None:
    """Every id answered 202 is in the database, each exactly once (``only``: and nothing
    else is)."""
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM registrations WHERE id = ANY($1)", accepted),
        lambda n: n == len(accepted),
        60,
    )
    rows = await db.fetch(
        "SELECT id, count(*) AS n FROM registrations WHERE id = ANY($1) GROUP BY id", accepted
    )
    assert {r["id"]: r["n"] for r in rows} == dict.fromkeys(accepted, 1)
    if only:
        assert await db.fetchval("SELECT count(*) FROM registrations") == len(accepted)
