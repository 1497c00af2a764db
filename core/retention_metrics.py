"""The retention job as Prometheus sees it, read from PostgreSQL: whether the legally required
erasure runs, what it erased, and what it has left past its time.

The job is a CronJob, not a resident process: nothing of it is there to be scraped. It records
each run in ``retention_runs`` (migration 0016, :func:`core.retention.run`), and the process
that serves the registration funnel (``intake supervise``, or the dispatcher) reads that record
at each scrape:

- ``intake_retention_last_success_timestamp_seconds``: when the last whole pass (not a dry run)
  finished; 0 while there has been none. ``intake_retention_recorded_since_timestamp_seconds``
  is when runs began to be recorded (migration 0016 applied): before a first pass, the job's
  silence counts from then (alert ``RetentionNotRunning``), not from 1970, so that a new
  deployment does not alert before its first night, nor an old one that has never run wait
  for ever.
- ``intake_retention_last_run_erased{kind}``, ``intake_retention_last_run_duration_seconds``:
  that pass's counts (as it printed them) and how long it took; 0 before a first pass.
- ``intake_retention_runs{outcome}``: the runs recorded (dry runs left out) by outcome: ``ok``,
  ``stopped`` (``--max-batches``), ``failed``, ``unfinished`` (running now, or died).
- ``intake_retention_overdue``: rejected registrations whose personal data is still stored
  more than :data:`OVERDUE_AFTER` after their retention period ended: the job's largest
  category, and the only one whose end a row tells by itself (its decision), so that the count
  is one range of an index that holds only what is not erased yet (migration 0016). It counts
  them whether or not the job would take them: one left in flight (a check retrying in a
  dead-letter queue) for a whole period is stuck, and its data is kept past its time all the
  same. The other purposes' ends depend on checks, codes, joins and selections, which only the
  job's own pass over every row reads (minutes at millions of registrations); their erasure is
  watched through the pass itself.

Every label value is a fixed name; nothing is about a person.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.retention import WHY, Periods

# The job runs once a day: what became due since its last pass waits for the next one.
OVERDUE_AFTER = dt.timedelta(days=1)
OUTCOMES = ("ok", "stopped", "failed", "unfinished")
# What a pass erased, by kind: its registrations by why, then the report's other counts.
ERASED_KINDS = (
    *WHY,
    "photos",
    "contact_codes",
    "orphan_photo_keys",
    "blobs_deleted",
    "files_swept",
)

_LAST_SUCCESS_SQL = """
SELECT extract(epoch FROM finished_at)::float8 AS finished_s,
       extract(epoch FROM finished_at - started_at)::float8 AS duration_s,
       report::text AS report
FROM retention_runs WHERE outcome = 'ok' AND NOT dry_run
ORDER BY id DESC LIMIT 1
"""
_OUTCOMES_SQL = """
SELECT coalesce(outcome, 'unfinished') AS outcome, count(*) AS n
FROM retention_runs WHERE NOT dry_run GROUP BY 1
"""
_RECORDED_SINCE_SQL = """
SELECT extract(epoch FROM applied_at)::float8 FROM schema_migrations WHERE version = 16
"""
# Over the partial index registrations_rejected_kept (migration 0016).
_OVERDUE_SQL = """
SELECT count(*) FROM registrations
WHERE status = 'rejected' AND erased_at IS NULL
  AND coalesce(decided_at, stored_at) < now() - $1::interval
"""


@dataclass(slots=True)
class RetentionFigures:
    last_success_s: float = 0.0
    last_duration_s: float = 0.0
    recorded_since_s: float = 0.0
    erased: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    overdue: int = 0


def erased_counts(report: dict[str, object]) -> dict[str, int]:
    """A run's printed report (:meth:`core.retention.Report.to_obj`) by :data:`ERASED_KINDS`."""
    registrations = report.get("registrations")
    by_why = registrations if isinstance(registrations, dict) else {}
    counts = {why: int(by_why.get(why, 0)) for why in WHY}
    for kind in ERASED_KINDS[len(WHY) :]:
        value = report.get(kind, 0)
        counts[kind] = int(value) if isinstance(value, int) else 0
    return counts


class RetentionCollector(Collector):
    """Serves the figures last read by :meth:`refresh` (awaited before each scrape, like
    :class:`core.funnel.FunnelCollector`). ``periods``: the deployment's retention settings,
    which the job reads too."""

    def __init__(self, pool: asyncpg.Pool | None, periods: Periods) -> None:
        self._pool = pool
        self._overdue_after = periods.rejected + OVERDUE_AFTER
        self.figures = RetentionFigures()

    async def refresh(self) -> None:
        assert self._pool is not None
        figures = RetentionFigures()
        async with self._pool.acquire() as connection:
            last = await connection.fetchrow(_LAST_SUCCESS_SQL)
            if last is not None:
                figures.last_success_s = last["finished_s"]
                figures.last_duration_s = last["duration_s"]
                figures.erased = erased_counts(orjson.loads(last["report"]))
            figures.runs = {
                row["outcome"]: int(row["n"]) for row in await connection.fetch(_OUTCOMES_SQL)
            }
            figures.recorded_since_s = await connection.fetchval(_RECORDED_SINCE_SQL) or 0.0
            figures.overdue = await connection.fetchval(_OVERDUE_SQL, self._overdue_after)
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self.figures
        yield GaugeMetricFamily(
            "intake_retention_last_success_timestamp_seconds",
            "When the retention job's last whole pass (not a dry run) finished; 0: none yet.",
            value=f.last_success_s,
        )
        yield GaugeMetricFamily(
            "intake_retention_recorded_since_timestamp_seconds",
            "When retention runs began to be recorded (migration 0016 applied).",
            value=f.recorded_since_s,
        )
        yield GaugeMetricFamily(
            "intake_retention_last_run_duration_seconds",
            "How long the retention job's last whole pass took; 0: none yet.",
            value=f.last_duration_s,
        )
        erased = GaugeMetricFamily(
            "intake_retention_last_run_erased",
            "What the retention job's last whole pass erased, by kind: registrations by why"
            " (rejected, abandoned, unselected, selected), photos, contact codes, orphan photo"
            " keys, blob files deleted, files swept; 0 before a first pass.",
            labels=["kind"],
        )
        for kind in ERASED_KINDS:
            erased.add_metric([kind], f.erased.get(kind, 0))
        yield erased
        runs = GaugeMetricFamily(
            "intake_retention_runs",
            "Retention runs recorded (dry runs left out) by outcome: ok (a whole pass),"
            " stopped (--max-batches), failed, unfinished (running now, or died).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            runs.add_metric([outcome], f.runs.get(outcome, 0))
        yield runs
        yield GaugeMetricFamily(
            "intake_retention_overdue",
            "Rejected registrations still holding personal data more than a day after their"
            " retention period (INTAKE_RETENTION_REJECTED_DAYS) ended (from PostgreSQL).",
            value=f.overdue,
        )
