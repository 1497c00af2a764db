"""The registration funnel, read from PostgreSQL (the truth), and the depth of every queue."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import aio_pika
import asyncpg

from core.queues import queue_names

_FUNNEL_SQL = """
SELECT
    count(*) AS registered,
    count(*) FILTER (WHERE status = 'verified') AS verified,
    count(*) FILTER (WHERE status = 'rejected') AS rejected,
    count(*) FILTER (WHERE status = 'review') AS review
FROM registrations WHERE submitted_at >= $1
"""
_CHECKS_SQL = """
SELECT c.check_name, count(*) AS passed
FROM checks c JOIN registrations r ON r.id = c.registration_id
WHERE r.submitted_at >= $1 AND c.state = 'passed'
GROUP BY c.check_name
"""
_MINISTRIES_SQL = """
SELECT count(*) FROM registrations r WHERE r.submitted_at >= $1 AND (
    SELECT count(*) FROM checks c WHERE c.registration_id = r.id AND c.state = 'passed'
    AND c.check_name IN ('dukcapil', 'dapodik', 'dtks')) = 3
"""
_REASONS_SQL = """
SELECT reject_reason, count(*) AS n FROM registrations
WHERE submitted_at >= $1 AND status = 'rejected' GROUP BY 1 ORDER BY 2 DESC
"""
_DECIDED_SQL = "SELECT max(decided_at) FROM registrations WHERE submitted_at >= $1"


@dataclass
class Funnel:
    """Counts of registrations submitted since a moment, by stage."""

    registered: int = 0
    email_verified: int = 0
    phone_verified: int = 0
    # Dukcapil, Dapodik and DTKS all passed (`intake top`'s nik_verified is Dukcapil's alone).
    ministries_passed: int = 0
    photo_verified: int = 0
    verified: int = 0
    rejected: int = 0
    review: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    last_decided_at: dt.datetime | None = None

    @property
    def open(self) -> int:
        return self.registered - self.verified - self.rejected - self.review


async def read_funnel(connection: asyncpg.Connection, since: dt.datetime) -> Funnel:
    row = await connection.fetchrow(_FUNNEL_SQL, since)
    passed = {r["check_name"]: r["passed"] for r in await connection.fetch(_CHECKS_SQL, since)}
    reasons = {r["reject_reason"]: r["n"] for r in await connection.fetch(_REASONS_SQL, since)}
    return Funnel(
        registered=row["registered"],
        email_verified=passed.get("email", 0),
        phone_verified=passed.get("phone", 0),
        ministries_passed=await connection.fetchval(_MINISTRIES_SQL, since),
        photo_verified=passed.get("photo", 0),
        verified=row["verified"],
        rejected=row["rejected"],
        review=row["review"],
        reasons=reasons,
        last_decided_at=await connection.fetchval(_DECIDED_SQL, since),
    )


@dataclass(frozen=True)
class Queue:
    ready: int
    consumers: int


async def queues(connection: aio_pika.abc.AbstractConnection) -> dict[str, Queue]:
    """Every queue of the topology: its ready messages and its consumers (0 and 0 for a queue
    not declared yet)."""
    found = {}
    for name in queue_names():
        channel = await connection.channel()
        try:
            result = (await channel.declare_queue(name, passive=True)).declaration_result
            found[name] = Queue(result.message_count or 0, result.consumer_count or 0)
        except aio_pika.exceptions.ChannelClosed:
            found[name] = Queue(0, 0)
        finally:
            if not channel.is_closed:
                await channel.close()
    return found


async def queue_depths(connection: aio_pika.abc.AbstractConnection) -> dict[str, int]:
    """Messages ready in every queue of the topology (0 for a queue not declared yet)."""
    return {name: q.ready for name, q in (await queues(connection)).items()}


_DECISIONS_SQL = """
SELECT id, status, reject_reason, decided_at FROM registrations
WHERE submitted_at >= $1 AND status <> 'received'
"""


async def read_decisions(
    connection: asyncpg.Connection, since: dt.datetime
) -> dict[uuid.UUID, tuple[str, str | None, dt.datetime | None]]:
    """Every decided registration submitted since a moment: its status, reason and when (None
    for a repeated NIK, rejected as it was stored)."""
    rows = await connection.fetch(_DECISIONS_SQL, since)
    return {r["id"]: (r["status"], r["reject_reason"], r["decided_at"]) for r in rows}
