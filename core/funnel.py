"""The registration funnel as Prometheus sees it, read from PostgreSQL (the truth).

Triggers keep the counts (migration 0006: an insert-only log of deltas per statement, folded
here into ``funnel_counts``), so a scrape reads a few dozen rows however many millions of
registrations there are, and the figures survive any restart of any process.

Stages are cumulative: a registration that reached ``verified`` also counts in ``registered``
and in each check's stage. ``nik_verified`` is Dukcapil's match.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGES = (
    "registered",
    "email_verified",
    "phone_verified",
    "nik_verified",
    "photo_verified",
    "verified",
    "rejected",
    "review",
)
_CHECK_STAGES = {
    "email_verified": "email:passed",
    "phone_verified": "phone:passed",
    "nik_verified": "dukcapil:passed",
    "photo_verified": "photo:passed",
}
_FOLD_LOCK = 0x66756E6E656C  # "funnel": one folder at a time; the others just read

_FOLD_SQL = """
    WITH moved AS (DELETE FROM funnel_deltas RETURNING kind, key, n)
    INSERT INTO funnel_counts AS c (kind, key, n)
    SELECT kind, key, sum(n) FROM moved GROUP BY kind, key ORDER BY kind, key
    ON CONFLICT (kind, key) DO UPDATE SET n = c.n + excluded.n
"""
_READ_SQL = """
    SELECT kind, key, sum(n)::bigint AS n
    FROM (SELECT kind, key, n FROM funnel_counts
          UNION ALL SELECT kind, key, n FROM funnel_deltas) AS everything
    GROUP BY kind, key
"""


async def read_counts(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    """Fold the deltas logged since the last read (unless another reader is folding) and
    return every current count by (kind, key)."""
    async with pool.acquire() as connection:
        async with connection.transaction():
            if await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", _FOLD_LOCK):
                await connection.execute(_FOLD_SQL)
        rows = await connection.fetch(_READ_SQL)
    return {(row["kind"], row["key"]): int(row["n"]) for row in rows}


def stages(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Registrations that reached each stage."""
    by_status = {key: n for (kind, key), n in counts.items() if kind == "status"}
    result = {"registered": sum(by_status.values())}
    for stage, key in _CHECK_STAGES.items():
        result[stage] = counts.get(("check", key), 0)
    for status in ("verified", "rejected", "review"):
        result[status] = by_status.get(status, 0)
    return result


class FunnelCollector(Collector):
    """Serves the counts last read by :meth:`refresh` (an endpoint awaits it before each
    scrape; prometheus-client's collectors are synchronous)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.counts: dict[tuple[str, str], int] = {}

    async def refresh(self) -> None:
        self.counts = await read_counts(self._pool)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        funnel = GaugeMetricFamily(
            "intake_funnel_registrations",
            "Registrations that reached each stage of the funnel (from PostgreSQL).",
            labels=["stage"],
        )
        for stage, n in stages(self.counts).items():
            funnel.add_metric([stage], n)
        yield funnel
        rejected = GaugeMetricFamily(
            "intake_funnel_rejected_registrations",
            "Rejected registrations by reason code (from PostgreSQL).",
            labels=["reason"],
        )
        review = GaugeMetricFamily(
            "intake_funnel_review_registrations",
            "Registrations waiting for a person, by reason code (from PostgreSQL).",
            labels=["reason"],
        )
        for (kind, key), n in sorted(self.counts.items()):
            if kind == "reason":
                status, _, reason = key.partition(":")
                (rejected if status == "rejected" else review).add_metric([reason], n)
        yield rejected
        yield review
        checks = GaugeMetricFamily(
            "intake_checks",
            "Verification checks by check and state (from PostgreSQL).",
            labels=["check", "state"],
        )
        for (kind, key), n in sorted(self.counts.items()):
            if kind == "check":
                check, _, state = key.partition(":")
                checks.add_metric([check, state], n)
        yield checks
