"""The retention job's record and what Prometheus is told of it, on a real PostgreSQL and blob
store: every run leaves a row with its outcome and counts; a run stopped by an error, or killed,
is never taken for a whole pass; the collector serves the last whole pass, the runs by outcome
and the rejected registrations kept past their time; the blob files are swept by the run that
finds no sweep within the last days."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from core import retention
from core.blobs import BlobStore
from core.keys import Keyring
from core.photo_vault import PhotoVault
from core.retention_metrics import ERASED_KINDS, OUTCOMES, RetentionCollector
from core.settings import Settings
from tests.core.test_retention import PERIODS, add_check, add_photo, photo, register, set_row
from tests.support.people import person as a_person
from tests.support.waiting import eventually

SEED = 2929


@pytest.fixture
def vault(settings: Settings, tmp_path: Path) -> PhotoVault:
    return PhotoVault(BlobStore(tmp_path / "blobs"), Keyring.from_settings(settings))


def samples(collector: RetentionCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


async def figures(db: asyncpg.Pool) -> dict[str, Any]:
    """What a scrape shows now, by name (labelled ones by their label's value)."""
    collector = RetentionCollector(db, PERIODS)
    await collector.refresh()
    found: dict[str, Any] = {}
    for (name, labels), value in samples(collector).items():
        short = name.removeprefix("intake_retention_")
        if labels:
            found.setdefault(short, {})[labels[0]] = value
        else:
            found[short] = value
    return found


async def runs(db: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, started_at, finished_at, outcome, dry_run, report::text AS report, error"
        " FROM retention_runs ORDER BY id"
    )
    return rows


async def rejected(
    db: asyncpg.Pool, keyring: Keyring, n: int, decided_at: dt.datetime, seed: int = SEED
) -> list[uuid.UUID]:
    """``n`` registrations rejected at ``decided_at``."""
    ids = []
    for i in range(n):
        who = await register(db, keyring, a_person(i, seed=seed))
        await set_row(
            db, who, status="rejected", reject_reason="nik_not_found", decided_at=decided_at
        )
        ids.append(who)
    return ids


def long_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=400)


async def test_before_any_run_every_series_is_served_and_says_none(db: asyncpg.Pool) -> None:
    """The gauges exist from the start (alerts and panels need a series, not "no data"): no
    whole pass (last success 0), nothing erased, no run; the record's start is the
    migration's."""
    applied = await db.fetchval(
        "SELECT extract(epoch FROM applied_at)::float8 FROM schema_migrations WHERE version = 16"
    )
    found = await figures(db)
    assert found == {
        "last_success_timestamp_seconds": 0.0,
        "recorded_since_timestamp_seconds": applied,
        "last_run_duration_seconds": 0.0,
        "last_run_erased": dict.fromkeys(ERASED_KINDS, 0.0),
        "runs": dict.fromkeys(OUTCOMES, 0.0),
        "overdue": 0.0,
    }
    assert applied > 0


async def test_a_run_is_recorded_with_its_counts_and_served(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    ids = await rejected(db, keyring, 3, long_ago())
    await add_photo(db, vault, ids[0], photo(1))

    done = await retention.run(db, vault.blobs, PERIODS)
    assert done.by_why == {"rejected": 3}
    # A dry run is recorded, and is no pass: nothing was erased.
    await retention.run(db, vault.blobs, PERIODS, dry_run=True)
    assert (await figures(db))["runs"]["ok"] == 1.0

    recorded = await runs(db)
    assert [(r["outcome"], r["dry_run"], r["error"]) for r in recorded] == [
        ("ok", False, None),
        ("ok", True, None),
    ]
    first = recorded[0]
    assert first["started_at"] <= first["finished_at"]
    report = orjson.loads(first["report"])
    assert report["registrations"] == {
        "rejected": 3,
        "abandoned": 0,
        "unselected": 0,
        "selected": 0,
    }
    assert (report["photos"], report["blobs_deleted"], report["done"]) == (1, 1, True)
    # No personal data in the record: counts only.
    assert set(report) == set(retention.Report(dry_run=False).to_obj())

    found = await figures(db)
    assert found["last_success_timestamp_seconds"] == first["finished_at"].timestamp()
    assert found["last_run_duration_seconds"] == pytest.approx(
        (first["finished_at"] - first["started_at"]).total_seconds()
    )
    assert found["last_run_erased"] == {
        **dict.fromkeys(ERASED_KINDS, 0.0),
        "rejected": 3.0,
        "photos": 1.0,
        "blobs_deleted": 1.0,
    }
    assert found["runs"] == {"ok": 1.0, "stopped": 0.0, "failed": 0.0, "unfinished": 0.0}

    # A run stopped by --max-batches erased what it did, but is no whole pass.
    more = await rejected(db, keyring, 4, long_ago(), seed=SEED + 1)
    stopped = await retention.run(db, vault.blobs, PERIODS, batch=2, max_batches=1)
    assert (stopped.batches, stopped.done) == (1, False)
    assert (await runs(db))[-1]["outcome"] == "stopped"
    later = await figures(db)
    assert later["last_success_timestamp_seconds"] == found["last_success_timestamp_seconds"]
    assert later["last_run_erased"] == found["last_run_erased"]
    assert later["runs"]["stopped"] == 1.0
    await retention.run(db, vault.blobs, PERIODS)
    last = await figures(db)
    assert last["last_success_timestamp_seconds"] > found["last_success_timestamp_seconds"]
    erased_now = len(more) - sum(stopped.by_why.values())
    assert last["last_run_erased"]["rejected"] == erased_now


async def test_a_run_an_error_stops_is_recorded_failed_and_is_not_a_pass(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    """A database statement fails in the second batch (a trigger refuses one erasure): the
    first batch stays erased, the run is recorded failed with what it did and the error's type,
    and the last whole pass is still the one before."""
    first = await rejected(db, keyring, 1, long_ago())
    await retention.run(db, vault.blobs, PERIODS)
    before = await figures(db)
    ids = await rejected(db, keyring, 4, long_ago(), seed=SEED + 2)
    refused = max(ids)
    # Read two ids a page: the refused one's page is the last, its other candidates with it.
    everyone = sorted(first + ids)
    pages = [everyone[i : i + 2] for i in range(0, len(everyone), 2)]
    last = pages[-1]
    assert refused in last
    rolled_back = [who for who in last if who in ids]
    erased = len(ids) - len(rolled_back)
    batches = sum(1 for page in pages[:-1] if set(page) & set(ids))
    await db.execute(
        f"""
        CREATE FUNCTION refuse_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = '{refused}' AND NEW.erased_at IS NOT NULL THEN
                RAISE EXCEPTION 'refused for the test';
            END IF;
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER refuse_erasure BEFORE UPDATE ON registrations
            FOR EACH ROW EXECUTE FUNCTION refuse_erasure();
        """
    )
    try:
        with pytest.raises(asyncpg.RaiseError):
            await retention.run(db, vault.blobs, PERIODS, batch=2)
    finally:
        await db.execute(
            "DROP TRIGGER refuse_erasure ON registrations; DROP FUNCTION refuse_erasure()"
        )
    failed = (await runs(db))[-1]
    assert (failed["outcome"], failed["error"]) == ("failed", "RaiseError")
    assert failed["finished_at"] is not None
    report = orjson.loads(failed["report"])
    assert (report["batches"], report["registrations"]["rejected"], report["done"]) == (
        batches,
        erased,
        False,
    )
    kept = await db.fetchval(
        "SELECT count(*) FROM registrations WHERE id = ANY($1::uuid[]) AND erased_at IS NULL",
        ids,
    )
    assert kept == len(rolled_back)  # the failed batch was rolled back whole

    after = await figures(db)
    assert after["last_success_timestamp_seconds"] == before["last_success_timestamp_seconds"]
    assert after["last_run_erased"] == before["last_run_erased"]
    assert after["runs"] == {"ok": 1.0, "stopped": 0.0, "failed": 1.0, "unfinished": 0.0}

    again = await retention.run(db, vault.blobs, PERIODS, batch=2)
    assert again.by_why == {"rejected": len(rolled_back)}
    assert (await figures(db))["runs"]["ok"] == 2.0


def intake(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_killed_run_stays_unfinished_and_is_not_a_pass(
    db: asyncpg.Pool, keyring: Keyring, settings: Settings, tmp_path: Path
) -> None:
    """``intake retention run`` killed (SIGKILL) in its first batch, which waits for a lock on
    the audit log: its row keeps no outcome, served as unfinished; the last whole pass is
    still the one before, and the next run erases what the killed one did not."""
    settings = settings.replace(blob_dir=str(tmp_path / "blobs"))
    await retention.run(db, BlobStore(tmp_path / "blobs"), PERIODS)
    before = await figures(db)
    ids = await rejected(db, keyring, 2, long_ago())
    async with db.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE admin_audit IN ACCESS EXCLUSIVE MODE")
        process = intake(settings, "retention", "run")
        try:
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO admin_audit%'"
                ),
                lambda n: n == 1,
                60,
            )
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(30)
        await transaction.rollback()

    recorded = (await runs(db))[-1]
    assert (recorded["outcome"], recorded["finished_at"], recorded["report"]) == (None, None, None)
    after = await figures(db)
    assert after["last_success_timestamp_seconds"] == before["last_success_timestamp_seconds"]
    assert after["runs"] == {"ok": 1.0, "stopped": 0.0, "failed": 0.0, "unfinished": 1.0}

    # Its batch was never committed; the next run erases it, and the killed run stays as it
    # was: no outcome.
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO admin_audit%'"
        ),
        lambda n: n == 0,
        60,
    )
    report = await retention.run(db, BlobStore(tmp_path / "blobs"), PERIODS)
    assert report.by_why == {"rejected": len(ids)}
    assert (await runs(db))[-2]["outcome"] is None
    assert (await figures(db))["runs"] == {
        "ok": 2.0,
        "stopped": 0.0,
        "failed": 0.0,
        "unfinished": 1.0,
    }


async def test_overdue_counts_rejected_registrations_kept_past_their_period(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    """Rejected more than the period and a day ago, not erased: overdue, in flight or not;
    within the day the job has to erase them, recently rejected, erased already, or another
    status: not."""
    now = dt.datetime.now(dt.UTC)
    period = PERIODS.rejected
    cases = {
        "long_past": (now - period - dt.timedelta(days=10), None),
        "past_by_two_days": (now - period - dt.timedelta(days=2), None),
        "past_by_hours": (now - period - dt.timedelta(hours=6), None),
        "recent": (now - dt.timedelta(days=5), None),
        "past_in_flight": (now - period - dt.timedelta(days=3), "retrying"),
    }
    ids = {}
    for i, (name, (decided, check)) in enumerate(cases.items()):
        who = await register(db, keyring, a_person(i, seed=SEED + 3))
        await set_row(db, who, status="rejected", reject_reason="nik_not_found", decided_at=decided)
        if check is not None:
            await add_check(db, who, "dapodik", check, decided)
        ids[name] = who
    # A duplicate is never decided: its period runs from its storing.
    duplicate_form = a_person(0, seed=SEED + 3)
    duplicate = await register(db, keyring, duplicate_form)
    await set_row(db, duplicate, stored_at=now - period - dt.timedelta(days=4))
    assert await db.fetchval("SELECT status FROM registrations WHERE id = $1", duplicate) == (
        "rejected"
    )
    # Verified and received registrations as old are not counted here.
    old = now - period - dt.timedelta(days=10)
    verified = await register(db, keyring, a_person(10, seed=SEED + 3))
    await set_row(db, verified, status="verified", decided_at=old, stored_at=old)
    received = await register(db, keyring, a_person(11, seed=SEED + 3))
    await set_row(db, received, stored_at=old)

    assert (await figures(db))["overdue"] == 4.0  # long_past, by two days, in flight, duplicate

    # The job erases what it may; the one in flight stays, past its time.
    report = await retention.run(db, vault.blobs, PERIODS)
    assert report.by_why["rejected"] == 4  # the three past (by hours too) and the duplicate
    assert (await figures(db))["overdue"] == 1.0
    kept = await db.fetchval(
        "SELECT id FROM registrations WHERE status = 'rejected' AND erased_at IS NULL"
        " AND decided_at < $1",
        now - period,
    )
    assert kept == ids["past_in_flight"]

    # The count is a range of the partial index (a plan on a table this small would read the
    # table: the index must be usable, and is what a large one is read by).
    async with db.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL enable_seqscan = off")
        plan = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT count(*) FROM registrations WHERE status = 'rejected'"
            " AND erased_at IS NULL AND coalesce(decided_at, stored_at) < now() - $1::interval",
            PERIODS.rejected + dt.timedelta(days=1),
        )
    assert "registrations_rejected_kept" in plan
    assert "Index Only Scan" in plan


async def test_the_blob_files_are_swept_by_the_first_pass_of_the_period(
    db: asyncpg.Pool, vault: PhotoVault
) -> None:
    """``files_every`` (the CronJob's ``--sweep-files-every 7``): a pass sweeps the blob files
    when no whole pass swept them within the period; a dry run, a failed or stopped one do not
    count."""
    week = dt.timedelta(days=7)
    orphan = os.urandom(32).hex()
    await vault.blobs.put(orphan, b"sealed bytes")
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).timestamp()
    os.utime(vault.blobs.path(orphan), (old, old))

    dry = await retention.run(db, vault.blobs, PERIODS, dry_run=True, files_every=week)
    assert not dry.file_sweep
    first = await retention.run(db, vault.blobs, PERIODS, files_every=week)
    assert (first.file_sweep, first.files_swept) == (True, 1)
    assert not vault.blobs.exists(orphan)
    second = await retention.run(db, vault.blobs, PERIODS, files_every=week)
    assert (second.file_sweep, second.files_swept) == (False, 0)
    assert orjson.loads((await runs(db))[-1]["report"])["file_sweep"] is False

    # Six and a half days later (a daily schedule's start moves by minutes): due again.
    await db.execute(
        "UPDATE retention_runs SET started_at = started_at - interval '6 days 12 hours 1 minute',"
        " finished_at = finished_at - interval '6 days 12 hours 1 minute'"
    )
    third = await retention.run(db, vault.blobs, PERIODS, files_every=week)
    assert third.file_sweep
    # Without files_every, as before: only with files.
    assert not (await retention.run(db, vault.blobs, PERIODS)).file_sweep
