"""The verification state machine in PostgreSQL: check rows, their outcomes, and the decision
about the registration. Shared by the workers and the edge (an email link followed, an OTP
entered). Every function runs in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg
import orjson

from core.keys import Keyring
from core.verification import REQUIRED_CHECKS, Check, Passed, Subject

FINAL_STATES = frozenset({"passed", "failed"})
# NOTIFY channel that wakes the dispatcher when there is something new to dispatch.
OUTBOX_CHANNEL = "intake_outbox"


async def load_subject(
    connection: asyncpg.Connection, keyring: Keyring, registration_id: uuid.UUID
) -> Subject | None:
    """Decrypt a registration's personal data for a verifier; None if there is no such row."""
    row = await connection.fetchrow(
        "SELECT nik_enc, personal_enc FROM registrations WHERE id = $1", registration_id
    )
    if row is None:
        return None
    context = registration_id.bytes
    personal = orjson.loads(keyring.decrypt(row["personal_enc"], context))
    return Subject(
        registration_id=registration_id,
        nik=keyring.decrypt(row["nik_enc"], context).decode(),
        full_name=personal["full_name"],
        birth_place=personal["birth_place"],
        birth_date=dt.date.fromisoformat(personal["birth_date"]),
        email=personal["email"],
        phone=personal["phone"],
    )


async def lock_state(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check
) -> str | None:
    """Lock the check's row for this transaction and return its state (None: no such check)."""
    state: str | None = await connection.fetchval(
        "SELECT state FROM checks WHERE registration_id = $1 AND check_name = $2 FOR UPDATE",
        registration_id,
        check.value,
    )
    return state


async def start(
    connection: asyncpg.Connection, registration_id: uuid.UUID, checks: Sequence[Check]
) -> None:
    """Create pending checks (the outbox rows the dispatcher publishes); existing ones stay."""
    if not checks:
        return
    await connection.execute(
        "INSERT INTO checks (registration_id, check_name, state)"
        " SELECT $1, name, 'pending' FROM unnest($2::text[]) AS c (name)"
        " ON CONFLICT DO NOTHING",
        registration_id,
        [c.value for c in checks],
    )
    await connection.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


async def record_passed(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check, passed: Passed
) -> None:
    state = "waiting" if passed.waiting else "passed"
    await connection.execute(
        "UPDATE checks SET state = $3, reason = NULL, updated_at = now(),"
        " finished_at = CASE WHEN $3 = 'passed' THEN now() END"
        " WHERE registration_id = $1 AND check_name = $2",
        registration_id,
        check.value,
        state,
    )
    if passed.priority is not None:
        await connection.execute(
            "UPDATE registrations SET priority = $2 WHERE id = $1", registration_id, passed.priority
        )
    await start(connection, registration_id, passed.then)
    await decide(connection, registration_id)


async def record_failed(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check, reason: str
) -> None:
    """The check failed: the registration is rejected with the first failure's reason."""
    await connection.execute(
        "UPDATE checks SET state = 'failed', reason = $3, updated_at = now(), finished_at = now()"
        " WHERE registration_id = $1 AND check_name = $2",
        registration_id,
        check.value,
        reason,
    )
    await connection.execute(
        "UPDATE registrations SET status = 'rejected', reject_reason = $2, decided_at = now()"
        " WHERE id = $1 AND status = 'received'",
        registration_id,
        reason,
    )


async def record_review(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check, reason: str
) -> None:
    """The machine cannot decide: the check is final ('failed' with the reason) and the
    registration waits in 'review' for a person, unless it is decided already."""
    await connection.execute(
        "UPDATE checks SET state = 'failed', reason = $3, updated_at = now(), finished_at = now()"
        " WHERE registration_id = $1 AND check_name = $2",
        registration_id,
        check.value,
        reason,
    )
    await connection.execute(
        "UPDATE registrations SET status = 'review', reject_reason = $2, decided_at = now()"
        " WHERE id = $1 AND status = 'received'",
        registration_id,
        reason,
    )


async def record_retrying(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check, reason: str
) -> None:
    await connection.execute(
        "UPDATE checks SET state = 'retrying', reason = $3, attempts = attempts + 1,"
        " updated_at = now() WHERE registration_id = $1 AND check_name = $2",
        registration_id,
        check.value,
        reason,
    )


async def decide(connection: asyncpg.Connection, registration_id: uuid.UUID) -> None:
    """Mark the registration verified once every required check has passed.

    The registration's row is locked first, and the checks counted in a later statement: two
    transactions passing the last two checks at once would otherwise each count its own pass
    and not the other's uncommitted one, and the registration would stay undecided for ever
    with every check passed. Locked, the second waits for the first to commit, and READ
    COMMITTED gives its next statement a snapshot that sees it."""
    await connection.execute(
        "SELECT 1 FROM registrations WHERE id = $1 FOR UPDATE", registration_id
    )
    await connection.execute(
        "UPDATE registrations SET status = 'verified', decided_at = now()"
        " WHERE id = $1 AND status = 'received'"
        " AND (SELECT count(*) FROM checks WHERE registration_id = $1 AND state = 'passed') = $2",
        registration_id,
        len(REQUIRED_CHECKS),
    )
