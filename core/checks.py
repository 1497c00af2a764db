r"""The verification state machine in PostgreSQL: check rows, their outcomes, and the decision
about the registration; the one module that changes a check's state. Shared by the workers (the
dispatcher starts registrations and publishes pending checks, the lanes record outcomes) and
the edge (an email link followed, an OTP entered, a new code asked for, a photo uploaded).
Every function runs in the caller's transaction.

    (none) --start--> pending --published--> pending, dispatched --lane--> passed | failed
                                                                  \--> retrying | waiting
    waiting --requeue (a photo uploaded, a new code asked for)--> pending
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg
import orjson

from core.keys import Keyring
from core.verification import INITIAL_CHECKS, REQUIRED_CHECKS, Check, Passed, Subject

FINAL_STATES = frozenset({"passed", "failed"})
# NOTIFY channel that wakes the dispatcher when there is something new to dispatch.
OUTBOX_CHANNEL = "intake_outbox"


async def load_subject(
    connection: asyncpg.Connection, keyring: Keyring, registration_id: uuid.UUID
) -> Subject | None:
    """Decrypt a registration's personal data for a verifier; None if there is no such row or
    its personal data was erased (``core.retention``: nobody to verify or to tell)."""
    row = await connection.fetchrow(
        "SELECT nik_enc, personal_enc FROM registrations WHERE id = $1", registration_id
    )
    if row is None or row["nik_enc"] is None or row["personal_enc"] is None:
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


_STATE_SQL = "SELECT state FROM checks WHERE registration_id = $1 AND check_name = $2"


async def lock_state(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check
) -> str | None:
    """Lock the check's row for this transaction and return its state (None: no such check)."""
    state: str | None = await connection.fetchval(
        _STATE_SQL + " FOR UPDATE", registration_id, check.value
    )
    return state


# The checks a stored registration starts with; those in WAITING_FIRST wait for the registrant
# (the photo check for the upload) before their task is published.
FIRST_CHECKS = (*INITIAL_CHECKS, Check.PHOTO)
WAITING_FIRST = (Check.PHOTO,)

_TAKE_REGISTRATIONS_SQL = """
SELECT id FROM registrations
WHERE dispatched_at IS NULL AND status = 'received'
ORDER BY submitted_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
_START_REGISTRATIONS_SQL = """
INSERT INTO checks (registration_id, check_name, state)
SELECT r.id, c.name, CASE WHEN c.name = ANY($3::text[]) THEN 'waiting' ELSE 'pending' END
FROM unnest($1::uuid[]) AS r (id) CROSS JOIN unnest($2::text[]) AS c (name)
ON CONFLICT DO NOTHING
"""
_MARK_REGISTRATIONS_SQL = (
    "UPDATE registrations SET dispatched_at = now() WHERE id = ANY($1::uuid[])"
)
_TAKE_PENDING_SQL = """
SELECT registration_id, check_name, attempts FROM checks
WHERE dispatched_at IS NULL AND state = 'pending'
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
_MARK_PUBLISHED_SQL = """
UPDATE checks SET dispatched_at = now()
FROM unnest($1::uuid[], $2::text[]) AS d (registration_id, check_name)
WHERE checks.registration_id = d.registration_id AND checks.check_name = d.check_name
"""
_REQUEUE_SQL = """
UPDATE checks SET state = 'pending', reason = NULL, dispatched_at = NULL, updated_at = now()
WHERE registration_id = $1 AND check_name = $2
"""


async def start_registrations(connection: asyncpg.Connection, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` stored registrations not started yet (others' locked ones skipped): their
    first check rows created (:data:`FIRST_CHECKS`) and the registrations marked started."""
    ids = [row["id"] for row in await connection.fetch(_TAKE_REGISTRATIONS_SQL, limit)]
    if ids:
        await connection.execute(
            _START_REGISTRATIONS_SQL,
            ids,
            [c.value for c in FIRST_CHECKS],
            [c.value for c in WAITING_FIRST],
        )
        await connection.execute(_MARK_REGISTRATIONS_SQL, ids)
    return ids


async def take_pending(connection: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit`` pending checks whose task is not published yet, oldest first, locked for
    this transaction (others' locked ones skipped): registration_id, check_name, attempts."""
    rows: list[asyncpg.Record] = await connection.fetch(_TAKE_PENDING_SQL, limit)
    return rows


async def mark_published(
    connection: asyncpg.Connection, published: Sequence[tuple[uuid.UUID, Check]]
) -> None:
    """Their tasks are published (and confirmed): not to be published again."""
    await connection.execute(
        _MARK_PUBLISHED_SQL, [r for r, _ in published], [c.value for _, c in published]
    )


async def requeue(connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check) -> None:
    """A waiting check has work again (a photo uploaded, a new code asked for): pending, its
    task to be published (the dispatcher is woken)."""
    await connection.execute(_REQUEUE_SQL, registration_id, check.value)
    await connection.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


async def state_of(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check
) -> str | None:
    """The check's state, unlocked (None: no such check)."""
    state: str | None = await connection.fetchval(_STATE_SQL, registration_id, check.value)
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
