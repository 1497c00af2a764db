"""The verification state machine in PostgreSQL: the decision about a registration when its
last two checks pass at the same moment, in two transactions."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from core import checks
from core.verification import Check, Passed


async def _registration(db: asyncpg.Pool, passed: Sequence[Check]) -> uuid.UUID:
    """A stored registration whose checks all exist, ``passed`` passed and the others
    pending."""
    registration_id = uuid.uuid4()
    async with db.acquire() as connection, connection.transaction():
        await connection.execute(
            "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status,"
            " submitted_at) VALUES ($1, $2, '\\x00', '\\x00', 'received', $3)",
            registration_id,
            registration_id.bytes,
            dt.datetime.now(dt.UTC),
        )
        await connection.execute(
            "INSERT INTO checks (registration_id, check_name, state)"
            " SELECT $1, name, CASE WHEN name = ANY($3::text[]) THEN 'passed' ELSE 'pending' END"
            " FROM unnest($2::text[]) AS c (name)",
            registration_id,
            [c.value for c in Check],
            [c.value for c in passed],
        )
    return registration_id


async def _status(db: asyncpg.Pool, registration_id: uuid.UUID) -> str:
    status: str = await db.fetchval(
        "SELECT status FROM registrations WHERE id = $1", registration_id
    )
    return status


async def test_the_last_two_checks_passing_together_verify_the_registration(
    db: asyncpg.Pool,
) -> None:
    """Dapodik and DTKS pass in two lanes at once: each transaction sees its own check passed
    and the other's not yet committed. The second to decide must see the first's commit, or
    the registration stays 'received' for ever with every check passed."""
    others = [c for c in Check if c not in (Check.DAPODIK, Check.DTKS)]
    registration_id = await _registration(db, others)
    async with db.acquire() as first, db.acquire() as second:
        one = first.transaction()
        await one.start()
        await checks.record_passed(first, registration_id, Check.DAPODIK, Passed())

        async def dtks() -> None:
            async with second.transaction():
                await checks.record_passed(second, registration_id, Check.DTKS, Passed())

        other = asyncio.create_task(dtks())
        await asyncio.sleep(0.2)  # the second lane's transaction has passed its check by now
        assert await _status(db, registration_id) == "received"
        await one.commit()
        await other
    assert await _status(db, registration_id) == "verified"


async def test_concurrent_passes_in_any_order_always_decide(db: asyncpg.Pool) -> None:
    """Many registrations, their last two checks passed by two concurrent transactions each:
    every one is verified."""
    others = [c for c in Check if c not in (Check.EMAIL, Check.PHOTO)]
    ids = [await _registration(db, others) for _ in range(30)]

    async def lane(check: Check, registration_id: uuid.UUID) -> None:
        async with db.acquire() as connection, connection.transaction():
            await checks.record_passed(connection, registration_id, check, Passed())
            await asyncio.sleep(0.01)  # hold the transaction open a moment after deciding

    await asyncio.gather(*(lane(check, rid) for rid in ids for check in (Check.EMAIL, Check.PHOTO)))
    statuses = [await _status(db, rid) for rid in ids]
    assert statuses == ["verified"] * len(ids)
