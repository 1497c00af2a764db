"""The per-wave funnel read from PostgreSQL: what an operator watches from the opening of a
wave to its last notification."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from core.wave_metrics import WaveCollector
from core.waves import Policy, Waves


def _samples(collector: WaveCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


async def _joiners(
    pool: asyncpg.Pool, wave_id: int, outcomes: list[str | None], scored: int
) -> list[uuid.UUID]:
    now = dt.datetime.now(dt.UTC)
    ids = []
    async with pool.acquire() as connection, connection.transaction():
        for i, outcome in enumerate(outcomes):
            rid = uuid.uuid4()
            ids.append(rid)
            await connection.execute(
                "INSERT INTO registrations (id, nik_hmac, nik_enc, personal_enc, status,"
                " submitted_at) VALUES ($1, $2, '\\x00', '\\x00', 'verified', $3)",
                rid,
                rid.bytes,
                now,
            )
            if i < scored:
                await connection.execute(
                    "INSERT INTO test_attempts (registration_id, wave_id, attempt, questions,"
                    " served_at, deadline_at, correct, score, scored_at)"
                    " VALUES ($1, $2, 1, '[]', $3, $3::timestamptz + interval '25 minutes',"
                    " 10, 53, $3)",
                    rid,
                    wave_id,
                    now,
                )
            await connection.execute(
                "INSERT INTO wave_joins (wave_id, registration_id, situation, joined_at, outcome)"
                " VALUES ($1, $2, 'laid_off', $3, $4)",
                wave_id,
                rid,
                now,
                outcome,
            )
    return ids


async def test_each_watched_wave_shows_its_funnel_quota_and_notifications(
    db: asyncpg.Pool,
) -> None:
    pool = db
    now = dt.datetime.now(dt.UTC)  # per test: a module constant is minutes old in a long run
    waves = Waves(pool)
    hour = dt.timedelta(hours=1)
    tag = uuid.uuid4().hex[:8]
    old = await waves.create(
        "ops", f"old-{tag}", now - 30 * 24 * hour, now - 29 * 24 * hour, 5, Policy()
    )
    closed = await waves.create("ops", f"closed-{tag}", now - 3 * hour, now - hour, 2, Policy())
    live = await waves.create("ops", f"live-{tag}", now - hour / 2, now + hour, 100, Policy())
    await _joiners(pool, old.id, ["selected"], scored=1)
    await _joiners(pool, live.id, [None, None, None], scored=2)
    ids = await _joiners(
        pool, closed.id, ["selected", "selected", "not_selected", "ineligible"], scored=4
    )
    async with pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO wave_selections (wave_id, seed, started_at, joined, eligible, selected,"
            " digest) VALUES ($1, $2, $3, 4, 3, 2, '\\x00')",
            closed.id,
            bytes(32),
            now - dt.timedelta(seconds=3),
        )
        # The first two joiners notified on both channels, the third by email only.
        for i, rid in enumerate(ids):
            for channel in ("email", "sms"):
                sent = i < 2 or (i == 2 and channel == "email")
                await connection.execute(
                    "INSERT INTO notifications (wave_id, registration_id, channel, outcome,"
                    " state, sent_at) VALUES ($1, $2, $3, 'not_selected', $4, $5)",
                    closed.id,
                    rid,
                    channel,
                    "sent" if sent else "pending",
                    now if sent else None,
                )
    collector = WaveCollector(pool)
    await collector.refresh()
    samples = _samples(collector)
    stage = "intake_wave_participants"
    assert {k: v for k, v in samples.items() if k[0] == stage and k[1][0] == closed.name} == {
        (stage, (closed.name, "scored")): 4,
        (stage, (closed.name, "joined")): 4,
        (stage, (closed.name, "eligible")): 3,
        (stage, (closed.name, "selected")): 2,
        (stage, (closed.name, "notified")): 2,
    }
    assert samples[(stage, (live.name, "joined"))] == 3
    assert samples[(stage, (live.name, "scored"))] == 2
    assert samples[(stage, (live.name, "selected"))] == 0
    assert samples[("intake_wave_open", (live.name,))] == 1
    assert samples[("intake_wave_open", (closed.name,))] == 0
    assert samples[("intake_wave_quota", (live.name,))] == 100
    pending = "intake_wave_notifications"
    assert samples[(pending, (closed.name, "sms", "pending"))] == 2
    assert samples[(pending, (closed.name, "email", "pending"))] == 1
    assert samples[(pending, (closed.name, "email", "sent"))] == 3
    duration = samples[("intake_wave_selection_duration_seconds", (closed.name,))]
    assert 2.5 < duration < 60
    assert ("intake_wave_selection_duration_seconds", (live.name,)) not in samples
    # A wave long closed with nothing left to send is history: no series.
    assert not any(old.name in k[1] for k in samples)
