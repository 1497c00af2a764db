"""Each wave's funnel as Prometheus sees it, read from PostgreSQL (the truth).

For the waves that matter now (open, opening within a day, closed within a week, or with
notifications still to send), per wave: registrants who scored on its test, joined, were
eligible at the selection, were selected, and were notified (both their email and their SMS
sent); its quota; whether it is open; its notifications by channel and state; how long its
selection took. The wave label is the operator's name for it (a few dozen over a programme),
never anything about a person.

The counts are ``count(*)`` over the per-wave indexes (primary keys starting with the wave):
a few tens of milliseconds per scrape at a wave of 100,000 joiners, served by the one process
per deployment that serves the registration funnel. ``notified`` and ``selected`` are what an
operator watches between the close and the end of the notifications.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WAVE_STAGES = ("scored", "joined", "eligible", "selected", "notified")
NOTIFICATION_STATES = ("pending", "sending", "sent")
CHANNELS = ("email", "sms")

# Waves an operator is watching; the rest are history (and would only add series).
_WAVES_SQL = """
SELECT w.id, w.name, w.quota,
       (w.opens_at <= now() AND w.closes_at > now()
        AND (w.closed_at IS NULL OR w.closed_at > now())) AS open,
       extract(epoch FROM s.finished_at - s.started_at)::float8 AS selection_s
FROM waves w LEFT JOIN wave_selections s ON s.wave_id = w.id
WHERE w.opens_at < now() + interval '1 day'
  AND (least(w.closes_at, coalesce(w.closed_at, w.closes_at)) > now() - interval '7 days'
       OR EXISTS (SELECT 1 FROM notifications n WHERE n.wave_id = w.id AND n.state <> 'sent'))
ORDER BY w.opens_at
"""
_STAGES_SQL = """
SELECT (SELECT count(*) FROM test_attempts t
        WHERE t.wave_id = $1 AND t.score IS NOT NULL) AS scored,
       count(*) AS joined,
       count(*) FILTER (WHERE outcome IN ('selected', 'not_selected')) AS eligible,
       count(*) FILTER (WHERE outcome = 'selected') AS selected,
       (SELECT count(*) FROM (SELECT 1 FROM notifications n WHERE n.wave_id = $1
                              GROUP BY n.registration_id
                              HAVING bool_and(n.state = 'sent')) AS done) AS notified
FROM wave_joins WHERE wave_id = $1
"""
_NOTIFICATIONS_SQL = """
SELECT wave_id, channel, state, count(*) AS n FROM notifications
WHERE wave_id = any($1::bigint[]) GROUP BY wave_id, channel, state
"""


@dataclass(slots=True)
class WaveFigures:
    name: str
    quota: int
    open: bool
    selection_s: float | None
    stages: dict[str, int]
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)


class WaveCollector(Collector):
    """Serves the figures last read by :meth:`refresh` (awaited before each scrape, like
    :class:`core.funnel.FunnelCollector`)."""

    def __init__(self, pool: asyncpg.Pool | None) -> None:
        self._pool = pool
        self.waves: list[WaveFigures] = []

    async def refresh(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as connection:
            by_id: dict[int, WaveFigures] = {}
            for row in await connection.fetch(_WAVES_SQL):
                stages = await connection.fetchrow(_STAGES_SQL, row["id"])
                by_id[row["id"]] = WaveFigures(
                    row["name"],
                    row["quota"],
                    bool(row["open"]),
                    row["selection_s"],
                    {stage: int(stages[stage]) for stage in WAVE_STAGES},
                )
            for n in await connection.fetch(_NOTIFICATIONS_SQL, list(by_id)):
                by_id[n["wave_id"]].notifications[(n["channel"], n["state"])] = int(n["n"])
        self.waves = list(by_id.values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        participants = GaugeMetricFamily(
            "intake_wave_participants",
            "Registrants at each stage of a wave: scored on its test, joined, eligible,"
            " selected, notified by email and SMS (from PostgreSQL).",
            labels=["wave", "stage"],
        )
        quota = GaugeMetricFamily("intake_wave_quota", "A wave's quota.", labels=["wave"])
        is_open = GaugeMetricFamily("intake_wave_open", "1 while a wave is open.", labels=["wave"])
        notifications = GaugeMetricFamily(
            "intake_wave_notifications",
            "A wave's outcome notifications by channel and state (pending, sending, sent).",
            labels=["wave", "channel", "state"],
        )
        selection = GaugeMetricFamily(
            "intake_wave_selection_duration_seconds",
            "How long a wave's selection took (once it is done).",
            labels=["wave"],
        )
        for wave in self.waves:
            for stage in WAVE_STAGES:
                participants.add_metric([wave.name, stage], wave.stages[stage])
            quota.add_metric([wave.name], wave.quota)
            is_open.add_metric([wave.name], 1.0 if wave.open else 0.0)
            for channel in CHANNELS:
                for state in NOTIFICATION_STATES:
                    count = wave.notifications.get((channel, state), 0)
                    notifications.add_metric([wave.name, channel, state], count)
            if wave.selection_s is not None:
                selection.add_metric([wave.name], wave.selection_s)
        yield participants
        yield quota
        yield is_open
        yield notifications
        yield selection
