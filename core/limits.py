"""Limits per person and per client: fixed-window counters in PostgreSQL, shared by every edge.

One row of ``limit_hits`` per key and kind: ``nik`` (the keyed HMAC of a NIK: its registrations
and resends, across all of its registrations) and ``client`` (a keyed HMAC of a client's
address: its requests to the registrant's routes). A window starts at a key's first hit and
lasts ``INTAKE_LIMIT_NIK_WINDOW_S`` or ``INTAKE_LIMIT_CLIENT_WINDOW_S``; the hit that would go
past the limit is refused (and not counted), answered ``429`` with ``Retry-After`` the rest of
the window.

Counting is one statement, atomic under concurrency (the row's lock): a conditional upsert that
increments only below the limit. What a person did not cause is not counted: an answer of 5xx
(a fault of ours, of a ministry or of a gateway) is refunded (:func:`refund`), and work the
system retries on its own (a send the SMS gateway refused) is never the registrant's attempt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import asyncpg

NIK, CLIENT = "nik", "client"

_HIT_SQL = """
INSERT INTO limit_hits AS h (kind, key, window_start, hits)
VALUES ($1, $2, clock_timestamp(), 1)
ON CONFLICT (kind, key) DO UPDATE SET
    window_start = CASE WHEN h.window_start <= clock_timestamp() - make_interval(secs => $3)
                        THEN clock_timestamp() ELSE h.window_start END,
    hits = CASE WHEN h.window_start <= clock_timestamp() - make_interval(secs => $3)
                THEN 1 ELSE h.hits + 1 END
WHERE h.window_start <= clock_timestamp() - make_interval(secs => $3) OR h.hits < $4
RETURNING hits
"""
_LEFT_SQL = """
SELECT extract(epoch FROM window_start + make_interval(secs => $3) - clock_timestamp())::float8
FROM limit_hits WHERE kind = $1 AND key = $2
"""
_REFUND_SQL = """
UPDATE limit_hits SET hits = hits - 1 WHERE kind = $1 AND key = $2 AND hits > 0
"""
# Many hits at once (the persist worker's batch), counted whatever the limit: what was stored
# happened. The edges refuse the NIK's next registrations once it reached its limit.
_COUNT_SQL = """
INSERT INTO limit_hits AS h (kind, key, window_start, hits)
SELECT $1, b.key, clock_timestamp(), b.n FROM unnest($2::bytea[], $3::int[]) AS b (key, n)
ORDER BY b.key
ON CONFLICT (kind, key) DO UPDATE SET
    window_start = CASE WHEN h.window_start <= clock_timestamp() - make_interval(secs => $4)
                        THEN clock_timestamp() ELSE h.window_start END,
    hits = CASE WHEN h.window_start <= clock_timestamp() - make_interval(secs => $4)
                THEN EXCLUDED.hits ELSE h.hits + EXCLUDED.hits END
"""
_REACHED_SQL = """
SELECT key,
       extract(epoch FROM window_start + make_interval(secs => $3) - clock_timestamp())::float8
           AS left_s
FROM limit_hits
WHERE kind = $1 AND hits >= $2 AND window_start > clock_timestamp() - make_interval(secs => $3)
"""


async def hit(
    connection: asyncpg.Connection | asyncpg.Pool, kind: str, key: bytes, window_s: int, limit: int
) -> int | None:
    """Count one hit of ``key``; None if it was within the limit, else the seconds until the
    window ends (the hit is not counted)."""
    if await connection.fetchval(_HIT_SQL, kind, key, float(window_s), limit) is not None:
        return None
    left_s = await connection.fetchval(_LEFT_SQL, kind, key, float(window_s))
    return retry_after_s(window_s if left_s is None else left_s)


async def refund(connection: asyncpg.Connection | asyncpg.Pool, kind: str, key: bytes) -> None:
    """Take back one hit of ``key`` (its request was answered 5xx: not the person's doing)."""
    await connection.execute(_REFUND_SQL, kind, key)


async def count(
    connection: asyncpg.Connection, kind: str, hits: Mapping[bytes, int], window_s: int
) -> None:
    """Count ``hits`` (key → number of hits) in one statement, whatever the limit."""
    if hits:
        keys = sorted(hits)  # in key order: concurrent writers lock rows in the same order
        await connection.execute(_COUNT_SQL, kind, keys, [hits[k] for k in keys], float(window_s))


async def reached(
    connection: asyncpg.Connection | asyncpg.Pool, kind: str, limit: int, window_s: int
) -> dict[bytes, float]:
    """The keys that reached ``limit`` in their current window: key → seconds left in it."""
    rows = await connection.fetch(_REACHED_SQL, kind, limit, float(window_s))
    return {bytes(r["key"]): float(r["left_s"]) for r in rows}


_PURGE_SQL = """
DELETE FROM limit_hits
WHERE kind = $1 AND window_start <= clock_timestamp() - make_interval(secs => $2)
"""


async def purge(connection: asyncpg.Connection | asyncpg.Pool, kind: str, window_s: int) -> int:
    """Delete the rows of ``kind`` whose window has ended (they count nothing any more); how
    many. Without it the table would keep a row for every NIK ever registered."""
    status: str = await connection.execute(_PURGE_SQL, kind, float(window_s))
    return int(status.rsplit(" ", 1)[-1])


def retry_after_s(left_s: float) -> int:
    """A ``Retry-After`` in whole seconds, at least 1."""
    return max(1, math.ceil(left_s))
