"""Retention: personal data is kept while its purpose lasts, then erased (UU PDP No. 27/2022's
storage limitation; ``docs/privacy.md``).

An erased registration keeps its row, without personal data: the NIK's keyed hash (the
once-in-a-lifetime rule reads it, with ``nik_claims`` and ``benefit_niks``), the outcome
(status, reason, dates) and ``erased_at``. Its ciphertexts (``nik_enc``, ``personal_enc``)
become NULL, its contact codes and its photo row are deleted, and so is the photo's data key
once no other registration's photo row names the same blob (two registrations uploading the same
selfie share one): from that commit the blob is unreadable everywhere, backups included
(crypto-shredding). The blob file is deleted after the commit; a crash in between leaves a file
nobody can open (its key is gone), which stays until the blob directory is swept.

Whose purpose has ended (:data:`WHY`), with :class:`Periods` from the settings:

- ``rejected``: rejected (any reason) for ``rejected_days`` since its decision (or since it was
  stored, for a duplicate, which is never decided);
- ``abandoned``: still ``received`` with a check ``waiting`` for the registrant (an email link,
  a code, a photo), nothing changed for ``abandoned_days``, no live link or code: it is closed
  as ``rejected``/``abandoned`` (its checks that were not final fail with that reason), then
  erased;
- ``unselected``: ``verified``, never selected, for ``unselected_days`` since the later of its
  verification and the close of the last wave it joined;
- ``selected``: selected in a wave, ``selected_days`` (the programme's retention period) after
  that selection.

Never a registration in flight: a check ``pending`` or ``retrying`` (a lane may be reading it), a
join of a wave whose selection has not been made (open, or closed and not selected yet), a
notification not sent. ``review`` registrations wait for their reviewer. Candidates are taken
``FOR UPDATE OF r SKIP LOCKED`` in the transaction that erases them: a join, a photo row or a
test attempt inserted meanwhile takes a key-share lock on the registration (its foreign key),
which waits for the erasure's commit, and a row another transaction holds is left for the next
run.

Batched (the table read in pages of ``batch`` ids, keyset pagination on the primary key; the
candidates of a page erased in one transaction), resumable (a run
stopped anywhere has erased whole batches; the next one finds what is left) and idempotent (an
erased row is never a candidate again).

Recorded: a run is a row of ``retention_runs`` (migration 0016), inserted as it starts and
completed as it ends with its outcome and counts, so that a run that died stays a row without
an outcome and only a whole pass counts as one (``core.retention_metrics`` reads the record).

:func:`erase` is also the person's erasure (``core.person``), which withdraws a registration in
flight first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson

from core import audit
from core.blobs import BlobStore

WHY = ("rejected", "abandoned", "unselected", "selected")
# The actor of the job's own audit rows (an operator's commands are audited as cli:<user>).
ACTOR = "retention"
# A data key whose photo row never came (an upload refused after its blob was stored, a crash)
# is deleted this long after it was made: longer than any upload takes.
ORPHAN_KEY_AGE = dt.timedelta(days=1)
# A pass sweeps the blob files when none of the last ``files_every`` did, less this much: a
# daily schedule's start varies by minutes (and by up to an hour if the CronJob starts late).
SWEEP_SLACK = dt.timedelta(hours=12)
_NO_ID = uuid.UUID(int=0)

log = logging.getLogger(__name__)


class _PeriodSettings(Protocol):
    @property
    def retention_rejected_days(self) -> int: ...
    @property
    def retention_abandoned_days(self) -> int: ...
    @property
    def retention_unselected_days(self) -> int: ...
    @property
    def retention_selected_days(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Periods:
    """How long personal data is kept once its purpose ended, per :data:`WHY`."""

    rejected: dt.timedelta = dt.timedelta(days=30)
    abandoned: dt.timedelta = dt.timedelta(days=30)
    unselected: dt.timedelta = dt.timedelta(days=365)
    selected: dt.timedelta = dt.timedelta(days=1825)

    @classmethod
    def from_settings(cls, settings: _PeriodSettings) -> Periods:
        return cls(
            rejected=dt.timedelta(days=settings.retention_rejected_days),
            abandoned=dt.timedelta(days=settings.retention_abandoned_days),
            unselected=dt.timedelta(days=settings.retention_unselected_days),
            selected=dt.timedelta(days=settings.retention_selected_days),
        )


# What decides a registration's fate, gathered per row by LATERAL aggregates: each is a few
# index look-ups on the registration's id, whatever the table's size (correlated EXISTS clauses
# let the planner hash whole tables instead, once per page).
_FACTS_SQL = """
LEFT JOIN LATERAL (
    SELECT bool_or(c.state IN ('pending', 'retrying')) AS busy,
           bool_or(c.state = 'waiting') AS waiting,
           max(c.updated_at) AS changed_at
    FROM checks c WHERE c.registration_id = r.id
) ch ON true
LEFT JOIN LATERAL (
    SELECT max(k.expires_at) AS code_expires_at,
           max(greatest(k.resent_at, k.used_at)) AS code_touched_at
    FROM contact_codes k WHERE k.registration_id = r.id
) cc ON true
LEFT JOIN LATERAL (
    SELECT bool_or(s.wave_id IS NULL) AS unselected_wave,
           bool_or(j.outcome = 'selected') AS selected,
           max(s.finished_at) FILTER (WHERE j.outcome = 'selected') AS selected_at,
           max(least(w.closes_at, coalesce(w.closed_at, w.closes_at))) AS last_close
    FROM wave_joins j
    JOIN waves w ON w.id = j.wave_id
    LEFT JOIN wave_selections s ON s.wave_id = j.wave_id
    WHERE j.registration_id = r.id
) wj ON true
"""
# Why its data goes as of $2 (the run's clock), or NULL: it stays. $3..$6: the cut-offs
# (rejected, abandoned, unselected, selected). First what is never touched: erased already, in
# review, in flight (a check pending or retrying, a join of a wave not selected yet, a
# notification not sent: one hashed set, read from its partial index of unsent rows).
_WHY_SQL = """
CASE
    WHEN r.erased_at IS NOT NULL OR r.status = 'review' OR ch.busy OR wj.unselected_wave
         OR r.id IN (SELECT n.registration_id FROM notifications n WHERE n.state <> 'sent')
        THEN NULL
    WHEN r.status = 'rejected' THEN
        CASE WHEN coalesce(r.decided_at, r.stored_at) < $3 THEN 'rejected' END
    WHEN r.status = 'received' THEN
        CASE WHEN r.stored_at < $4 AND ch.waiting AND ch.changed_at < $4
                  AND coalesce(cc.code_expires_at < $2, true)
                  AND coalesce(cc.code_touched_at < $4, true)
             THEN 'abandoned' END
    WHEN r.status = 'verified' THEN
        CASE WHEN wj.selected THEN
                 CASE WHEN wj.selected_at < $6 THEN 'selected' END
             WHEN greatest(coalesce(r.decided_at, r.stored_at), wj.last_close) < $5
                 THEN 'unselected' END
END
"""
# One page of the table in id order (keyset pagination: a range of the primary key), each row
# with why its data goes (NULL: it stays).
_PAGE_SQL = f"""
SELECT r.id, ({_WHY_SQL}) AS why
FROM (SELECT * FROM registrations WHERE id > $1 ORDER BY id LIMIT $7) AS r
{_FACTS_SQL}
ORDER BY r.id
"""  # noqa: S608 - constant fragments
# The same for a page's candidates, locking their rows for the transaction that erases them.
_TAKE_SQL = f"""
SELECT r.id, ({_WHY_SQL}) AS why
FROM registrations r
{_FACTS_SQL}
WHERE r.id > $1 AND r.id = ANY($7::uuid[])
ORDER BY r.id
FOR UPDATE OF r SKIP LOCKED
"""  # noqa: S608 - constant fragments

# A registration not decided yet is closed with the erasure's reason, its open checks failed.
_WITHDRAW_SQL = """
UPDATE registrations SET status = 'rejected', reject_reason = $2, decided_at = now()
WHERE id = ANY($1::uuid[]) AND status IN ('received', 'review')
"""
_FAIL_CHECKS_SQL = """
UPDATE checks SET state = 'failed', reason = $2, updated_at = now(), finished_at = now()
WHERE registration_id = ANY($1::uuid[]) AND state NOT IN ('passed', 'failed')
"""
# Joins of waves not selected yet are withdrawn (the person's erasure only: the job never
# takes a registration with such a join).
_WITHDRAW_JOINS_SQL = """
DELETE FROM wave_joins j
WHERE j.registration_id = ANY($1::uuid[])
  AND NOT EXISTS (SELECT 1 FROM wave_selections s WHERE s.wave_id = j.wave_id)
"""
_ERASE_SQL = """
UPDATE registrations SET nik_enc = NULL, personal_enc = NULL, erased_at = now()
WHERE id = ANY($1::uuid[]) AND erased_at IS NULL
RETURNING id
"""
_CODES_SQL = "DELETE FROM contact_codes WHERE registration_id = ANY($1::uuid[])"
_PHOTOS_SQL = "DELETE FROM photos WHERE registration_id = ANY($1::uuid[]) RETURNING blob_hmac"
# A key is deleted once no remaining photo row names its blob.
_KEYS_SQL = """
DELETE FROM photo_keys k
WHERE k.blob_hmac = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM photos p WHERE p.blob_hmac = k.blob_hmac)
RETURNING k.blob_hmac
"""
_ORPHAN_KEYS_SQL = """
DELETE FROM photo_keys k
WHERE k.blob_hmac IN (
    SELECT o.blob_hmac FROM photo_keys o
    WHERE o.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM photos p WHERE p.blob_hmac = o.blob_hmac)
    ORDER BY o.blob_hmac
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING k.blob_hmac
"""


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure did (in its transaction); ``blobs`` are to be deleted after it commits."""

    registrations: list[uuid.UUID]
    contact_codes: int
    photos: int
    blobs: list[str]


async def erase(
    connection: asyncpg.Connection,
    ids: list[uuid.UUID],
    *,
    withdraw_reason: str,
    withdraw_joins: bool = False,
) -> Erased:
    """Erase the personal data of registrations ``ids`` in the caller's transaction, keeping
    the NIK's HMAC and the outcome. One not decided yet is first rejected with
    ``withdraw_reason`` (its open checks failed with it, so no lane works on it again); with
    ``withdraw_joins`` its joins of waves not selected yet are deleted too."""
    await connection.execute(_WITHDRAW_SQL, ids, withdraw_reason)
    await connection.execute(_FAIL_CHECKS_SQL, ids, withdraw_reason)
    if withdraw_joins:
        await connection.execute(_WITHDRAW_JOINS_SQL, ids)
    erased = [row["id"] for row in await connection.fetch(_ERASE_SQL, ids)]
    codes = await connection.execute(_CODES_SQL, ids)
    names = sorted({row["blob_hmac"] for row in await connection.fetch(_PHOTOS_SQL, ids)})
    photos = len(names)
    unkeyed = [row["blob_hmac"] for row in await connection.fetch(_KEYS_SQL, names)]
    return Erased(erased, int(codes.split()[-1]), photos, sorted(unkeyed))


async def delete_blobs(blobs: BlobStore, names: list[str]) -> int:
    """Delete the files of blobs whose keys were deleted (after that commit)."""
    deleted = 0
    for name in names:
        deleted += await blobs.delete(name)
    return deleted


@dataclass
class Report:
    """What a run found (``dry_run``) or erased, by :data:`WHY`."""

    dry_run: bool
    by_why: Counter[str] = field(default_factory=Counter)
    photos: int = 0
    blobs_deleted: int = 0
    contact_codes: int = 0
    orphan_keys: int = 0
    file_sweep: bool = False
    files_swept: int = 0
    batches: int = 0
    done: bool = False

    def to_obj(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "registrations": {why: self.by_why.get(why, 0) for why in WHY},
            "photos": self.photos,
            "blobs_deleted": self.blobs_deleted,
            "contact_codes": self.contact_codes,
            "orphan_photo_keys": self.orphan_keys,
            "file_sweep": self.file_sweep,
            "files_swept": self.files_swept,
            "batches": self.batches,
            "done": self.done,
        }


_START_SQL = "INSERT INTO retention_runs (dry_run) VALUES ($1) RETURNING id, started_at"
_FINISH_SQL = """
UPDATE retention_runs SET finished_at = now(), outcome = $2, report = $3, error = $4
WHERE id = $1
"""
# Whether the pass that started at $1 sweeps the blob files: no whole pass that swept them
# started within $2 before it (``files_every`` less the slack).
_SWEEP_DUE_SQL = """
SELECT NOT EXISTS (
    SELECT 1 FROM retention_runs
    WHERE outcome = 'ok' AND NOT dry_run AND (report ->> 'file_sweep')::boolean
      AND started_at > $1::timestamptz - $2::interval
)
"""


async def run(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    periods: Periods,
    *,
    batch: int = 500,
    dry_run: bool = False,
    max_batches: int | None = None,
    now: dt.datetime | None = None,
    files: bool = False,
    files_every: dt.timedelta | None = None,
) -> Report:
    """One retention pass: erase every registration whose purpose ended as of ``now``, a batch
    per transaction, each batch audited; then delete orphan photo keys and their blobs, and the
    blob files nothing names (:func:`sweep_files`) with ``files``, or with ``files_every`` when
    no whole pass swept them within that time. With ``dry_run``, count what would be erased and
    change nothing.

    The run is recorded in ``retention_runs``: a row as it starts, its outcome (``ok``: a whole
    pass; ``stopped``: by ``max_batches``; ``failed``: an error, re-raised) and counts as it
    ends. A run that dies keeps a row without an outcome."""
    run_id, started_at = await pool.fetchrow(_START_SQL, dry_run)
    report = Report(dry_run=dry_run)
    try:
        if files_every is not None and not dry_run and not files:
            files = bool(await pool.fetchval(_SWEEP_DUE_SQL, started_at, files_every - SWEEP_SLACK))
        await _pass(pool, blobs, periods, report, batch, max_batches, now, files=files)
    except Exception as exc:
        await _finish(pool, run_id, report, "failed", type(exc).__name__)
        raise
    await _finish(pool, run_id, report, "ok" if report.done else "stopped", None)
    return report


async def _finish(
    pool: asyncpg.Pool, run_id: int, report: Report, outcome: str, error: str | None
) -> None:
    """Complete the run's row. A failure to record a failure is logged, not raised: the row
    then stays without an outcome, which is true (the run did not finish)."""
    try:
        await pool.execute(
            _FINISH_SQL, run_id, outcome, orjson.dumps(report.to_obj()).decode(), error
        )
    except Exception as exc:
        if outcome != "failed":
            raise
        log.warning(
            "the retention run's failure could not be recorded",
            extra={"fields": {"run": run_id, "error": type(exc).__name__}},
        )


async def _pass(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    periods: Periods,
    report: Report,
    batch: int,
    max_batches: int | None,
    now: dt.datetime | None,
    *,
    files: bool,
) -> None:
    """:func:`run`'s work, counted in ``report`` as it goes (a failed run's row tells what
    it did before the error)."""
    dry_run = report.dry_run
    now = now or dt.datetime.now(dt.UTC)
    cutoffs = (
        now - periods.rejected,
        now - periods.abandoned,
        now - periods.unselected,
        now - periods.selected,
    )
    after = _NO_ID
    while max_batches is None or report.batches < max_batches:
        page = await pool.fetch(_PAGE_SQL, after, now, *cutoffs, batch)
        if not page:
            break
        after = page[-1]["id"]
        rows = [row for row in page if row["why"] is not None]
        if dry_run:
            report.by_why.update(row["why"] for row in rows)
            continue
        if not rows:
            continue
        async with pool.acquire() as connection, connection.transaction():
            taken = await connection.fetch(
                _TAKE_SQL, _NO_ID, now, *cutoffs, [row["id"] for row in rows]
            )
            if not taken:
                continue
            whys = {row["id"]: row["why"] for row in taken if row["why"] is not None}
            ids = sorted(whys)
            erased = await erase(connection, ids, withdraw_reason="abandoned")
            counts = Counter(whys[i] for i in erased.registrations)
            await audit.record(
                connection,
                ACTOR,
                "retention.erase",
                "registrations",
                {
                    "registrations": [str(i) for i in erased.registrations],
                    "why": dict(counts),
                    "photos": erased.photos,
                },
            )
        report.batches += 1
        report.by_why.update(counts)
        report.photos += erased.photos
        report.contact_codes += erased.contact_codes
        report.blobs_deleted += await delete_blobs(blobs, erased.blobs)
    else:
        return
    if not dry_run:
        report.orphan_keys, deleted = await sweep_orphan_keys(pool, blobs, now, batch)
        report.blobs_deleted += deleted
        if files:
            report.file_sweep = True
            report.files_swept = await sweep_files(pool, blobs, now)
    report.done = True


_KNOWN_NAMES_SQL = """
SELECT blob_hmac FROM photo_keys WHERE blob_hmac = ANY($1::text[])
UNION
SELECT blob_hmac FROM photos WHERE blob_hmac = ANY($1::text[])
"""


async def sweep_files(
    pool: asyncpg.Pool, blobs: BlobStore, now: dt.datetime, batch: int = 1000
) -> int:
    """Delete blob files that have neither a data key nor a photo row naming them, written more
    than :data:`ORPHAN_KEY_AGE` ago (an erasure's file whose deletion a crash interrupted: its
    key is gone, nobody can open it; a clear photo whose sealing by ``intake keys reencrypt``
    a crash interrupted), and crashed writes' temporary files as old. It walks the whole blob
    directory, so it is not part of every run (``--sweep-files``, ``--sweep-files-every``);
    ``batch`` names at a time, so its memory does not grow with the store. A file a photo row
    names without a key (stored in clear before migration 0013) is kept for ``intake keys
    reencrypt``. The number of files deleted."""
    before_s = (now - ORPHAN_KEY_AGE).timestamp()
    deleted = await asyncio.to_thread(blobs.remove_stale_temporaries, before_s)
    names = blobs.stored_before(before_s)
    while chunk := await asyncio.to_thread(_take, names, batch):
        known = {row["blob_hmac"] for row in await pool.fetch(_KNOWN_NAMES_SQL, chunk)}
        deleted += await delete_blobs(blobs, [name for name in chunk if name not in known])
    return deleted


def _take(names: Iterator[str], count: int) -> list[str]:
    """The next ``count`` names of a walk (blocking: the walk reads directories)."""
    return list(itertools.islice(names, count))


async def sweep_orphan_keys(
    pool: asyncpg.Pool, blobs: BlobStore, now: dt.datetime, batch: int
) -> tuple[int, int]:
    """Delete data keys that no photo row names, made more than :data:`ORPHAN_KEY_AGE` ago (an
    upload refused after its blob was stored; an erasure's blob whose photo row went), and
    their blobs: (keys, blob files) deleted."""
    keys = files = 0
    while True:
        async with pool.acquire() as connection, connection.transaction():
            names = [
                row["blob_hmac"]
                for row in await connection.fetch(_ORPHAN_KEYS_SQL, now - ORPHAN_KEY_AGE, batch)
            ]
            if names:
                await audit.record(
                    connection,
                    ACTOR,
                    "retention.orphan_photo_keys",
                    "photo_keys",
                    {"photo_keys": len(names)},
                )
        if not names:
            return keys, files
        keys += len(names)
        files += await delete_blobs(blobs, names)
