"""The reused-selfie look-up of the photo lane at scale: milliseconds per look-up with the
multi-index hashing query (``verifiers.photo.REUSED_SQL``) against the sequential scan it
replaced, on the same table of ``--count`` analysed photos (1.5 million by default; the 2020
wave's first day brought 1.43 million registrations).

1. a fresh database ``intake_bench_photos``, migrated, autovacuum off for ``photos`` (nothing
   changes under the measurement); ``--count`` registrations and their analysed photos with
   random perceptual hashes loaded with COPY into the migrated schema (the photos' foreign key
   taken away for the load and put back after), the last ``--fresh-share`` of them after a
   ``VACUUM`` of the others;
2. **fresh tail**: as in a wave just before autovacuum comes, the pages of the photos loaded
   last are not marked all-visible, so a candidate there costs a visit to the table. By default
   the share autovacuum lets grow (migration 0007's ``autovacuum_vacuum_insert_scale_factor``;
   PostgreSQL's own default is 0.2). ``--probes`` look-ups (one in four a near-duplicate of a
   stored photo, 0 to SAME_PHOTO_MAX_DISTANCE bits away; the others random, without a match:
   the whole work), timed at the client as the lane makes them, the probe values computed and
   one statement run;
3. **vacuumed**: the same look-ups after ``VACUUM``, every page all-visible: index-only scans
   that never visit the table;
4. **scan**: the replaced query, on ``--scan-probes`` of the same look-ups (each reads the
   whole table); the run fails unless both queries give the same answers;
5. the plan of one look-up (``EXPLAIN (ANALYZE, BUFFERS)``): the run fails unless it reads the
   chunk indexes and scans nothing sequentially;
6. the time migration 0007 takes on the whole table (its indexes dropped and built again).

The database is dropped at the end, also on failure.

    .venv/bin/python -m benchmarks.photo_lookup [--count 1500000] [--probes 1000] [--scan-probes 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from benchmarks._support import (
    BenchError,
    machine_info,
    markdown_table,
    percentile,
    progress,
    recreate_database,
    run_benchmark,
    with_path,
)
from core.migrate import available, migrate
from core.settings import Settings
from verifiers.imaging import SAME_PHOTO_MAX_DISTANCE
from verifiers.phash_chunks import CHUNKS, probes
from verifiers.photo import REUSED_SQL

DATABASE = "intake_bench_photos"
D = SAME_PHOTO_MAX_DISTANCE
# The query REUSED_SQL replaced: the distance to every analysed photo.
SCAN_SQL = """
SELECT EXISTS (
    SELECT 1 FROM photos
    WHERE registration_id <> $1
      AND (blob_hmac = $2 OR bit_count((phash # $3::bigint)::bit(64)) <= $4)
)
"""
_LOAD_BATCH = 100_000
_CHUNKS_MIGRATION = 7
_FOREIGN_KEY = "photos_registration_id_fkey"
_NEAR_EVERY = 4  # one look-up in four is a near-duplicate of a stored photo
_WARM_UP = 50
_REGISTRATION_COLUMNS = ["id", "nik_hmac", "nik_enc", "personal_enc", "status"]
_REGISTRATION_COLUMNS += ["submitted_at", "dispatched_at"]
_PHOTO_COLUMNS = ["registration_id", "blob_hmac", "size_bytes", "uploaded_at", "phash"]
_PHOTO_COLUMNS += ["analysed_at", "outcome"]

Lookup = tuple[uuid.UUID, str, int]  # (the registration looking, its sha256, its phash)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


async def _load(
    connection: asyncpg.Connection, rng: random.Random, count: int, hashes: list[int]
) -> None:
    """``count`` registrations and analysed photos of random hashes (appended to ``hashes``),
    in batches of one transaction each."""
    now = dt.datetime.now(dt.UTC)
    nik, personal = b"\x00" * 44, b"\x00" * 200  # about the size of the real ciphertexts
    for start in range(0, count, _LOAD_BATCH):
        size = min(_LOAD_BATCH, count - start)
        ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(size)]
        batch = [_signed(rng.getrandbits(64)) for _ in range(size)]
        async with connection.transaction():
            await connection.copy_records_to_table(
                "registrations",
                records=[(i, i.bytes * 2, nik, personal, "received", now, now) for i in ids],
                columns=_REGISTRATION_COLUMNS,
            )
            await connection.copy_records_to_table(
                "photos",
                records=[
                    (i, rng.randbytes(32).hex(), 180_000, now, phash, now, "ok")
                    for i, phash in zip(ids, batch, strict=True)
                ],
                columns=_PHOTO_COLUMNS,
            )
        hashes += batch
    progress(f"  {len(hashes):,} photos stored")


async def _without_foreign_key(
    connection: asyncpg.Connection, rng: random.Random, count: int, hashes: list[int]
) -> None:
    """:func:`_load` with the photos' foreign key taken away, then put back: one join checks
    every row, much faster than a look-up per row. The indexes stay, and grow as they do when
    the lane writes photos one at a time: into more pages, less full, than an index built at
    once (the look-ups read those)."""
    definition = await connection.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", _FOREIGN_KEY
    )
    await connection.execute(f"ALTER TABLE photos DROP CONSTRAINT {_FOREIGN_KEY}")
    await _load(connection, rng, count, hashes)
    await connection.execute(f"ALTER TABLE photos ADD CONSTRAINT {_FOREIGN_KEY} {definition}")


async def _migration_0007_s(connection: asyncpg.Connection) -> float:
    """Seconds migration 0007 takes on the table as it is (its indexes dropped first)."""
    sql = next(sql for version, _, sql in available() if version == _CHUNKS_MIGRATION)
    names = ", ".join(f"photos_phash_chunk{i}" for i in range(len(CHUNKS)))
    await connection.execute(f"DROP INDEX {names}")
    started = time.perf_counter()
    await connection.execute(sql)
    return time.perf_counter() - started


def _lookups(rng: random.Random, hashes: Sequence[int], count: int) -> list[Lookup]:
    """A new photo's look-ups: one in :data:`_NEAR_EVERY` within 0..D bits of a stored one."""
    found = []
    for n in range(count):
        phash = rng.getrandbits(64)
        if n % _NEAR_EVERY == 0:
            phash = hashes[rng.randrange(len(hashes))] & ((1 << 64) - 1)
            for bit in rng.sample(range(64), rng.randint(0, D)):
                phash ^= 1 << bit
        found.append((uuid.uuid4(), rng.randbytes(32).hex(), _signed(phash)))
    return found


async def _time(
    connection: asyncpg.Connection, lookups: Sequence[Lookup], chunked: bool
) -> tuple[list[float], list[bool]]:
    """Milliseconds per look-up and its answer, as the photo lane makes it (the probe values
    computed, one statement)."""
    times, answers = [], []
    for registration_id, sha256, phash in lookups:
        started = time.perf_counter()
        if chunked:
            answer = await connection.fetchval(
                REUSED_SQL, registration_id, sha256, phash, D, *probes(phash, D)
            )
        else:
            answer = await connection.fetchval(SCAN_SQL, registration_id, sha256, phash, D)
        times.append((time.perf_counter() - started) * 1000)
        answers.append(bool(answer))
    return times, answers


def _summary(times_ms: Sequence[float], answers: Sequence[bool]) -> dict[str, Any]:
    ordered = sorted(times_ms)
    return {
        "lookups": len(ordered),
        "found": sum(answers),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
    }


async def _measure(
    connection: asyncpg.Connection,
    name: str,
    warm_up: Sequence[Lookup],
    timed: Sequence[Lookup],
    chunked: bool,
) -> tuple[dict[str, Any], list[bool]]:
    await _time(connection, warm_up, chunked)  # the statement prepared, the caches warm
    times, answers = await _time(connection, timed, chunked)
    summary = _summary(times, answers)
    progress(
        f"  {name}: p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
        f"max {summary['max_ms']:.2f} ms over {len(timed):,} look-ups, {summary['found']} found"
    )
    return summary, answers


async def _plan(connection: asyncpg.Connection, lookup: Lookup) -> list[str]:
    registration_id, sha256, phash = lookup
    rows = await connection.fetch(
        "EXPLAIN (ANALYZE, BUFFERS) " + REUSED_SQL,
        registration_id,
        sha256,
        phash,
        D,
        *probes(phash, D),
    )
    plan = [row[0] for row in rows]
    text = "\n".join(plan)
    used = all(f"photos_phash_chunk{i}" in text for i in range(len(CHUNKS)))
    if "Seq Scan" in text or not used:
        raise BenchError("the look-up does not read the chunk indexes:\n" + text)
    return plan


async def _autovacuum_share(connection: asyncpg.Connection) -> float:
    """The share of ``photos`` new since the last vacuum at which autovacuum comes."""
    options = await connection.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = 'photos'::regclass"
    )
    for option in options or []:
        name, _, value = option.partition("=")
        if name == "autovacuum_vacuum_insert_scale_factor":
            return float(value)
    return 0.2  # PostgreSQL's default


async def _sizes(connection: asyncpg.Connection) -> dict[str, int]:
    rows = await connection.fetch(
        "SELECT c.relname, pg_relation_size(c.oid) AS size FROM pg_class c"
        " WHERE c.relname = 'photos' OR c.relname LIKE 'photos_phash_chunk%'"
    )
    return {row["relname"]: int(row["size"]) for row in rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    rng = random.Random(args.seed)
    progress(f"fresh database {DATABASE}")
    await recreate_database(settings.database_url, DATABASE)
    try:
        connection = await asyncpg.connect(with_path(settings.database_url, DATABASE))
        try:
            await migrate(connection)
            if args.fresh_share is None:
                args.fresh_share = await _autovacuum_share(connection)
            fresh = round(args.count * args.fresh_share)
            await connection.execute("ALTER TABLE photos SET (autovacuum_enabled = false)")
            hashes: list[int] = []
            progress(f"loading {args.count - fresh:,} photos, then VACUUM, then {fresh:,} more")
            started = time.perf_counter()
            await _without_foreign_key(connection, rng, args.count - fresh, hashes)
            await connection.execute("VACUUM ANALYZE photos")
            await _load(connection, rng, fresh, hashes)
            await connection.execute("ANALYZE photos")
            load_s = time.perf_counter() - started
            lookups = _lookups(rng, hashes, _WARM_UP + args.probes)
            warm_up, timed = lookups[:_WARM_UP], lookups[_WARM_UP:]
            results: dict[str, Any] = {}
            progress("fresh tail: the photos loaded last not vacuumed yet")
            results["fresh_tail"], _ = await _measure(connection, "chunks", warm_up, timed, True)
            await connection.execute("VACUUM ANALYZE photos")
            progress("vacuumed")
            results["vacuumed"], answers = await _measure(
                connection, "chunks", warm_up, timed, True
            )
            plan = await _plan(connection, timed[1])
            results["scan"], scan_answers = await _measure(
                connection, "scan", warm_up[:2], timed[: args.scan_probes], False
            )
            if scan_answers != answers[: args.scan_probes]:
                raise BenchError("the chunked look-up and the scan answered differently")
            sizes = await _sizes(connection)
            progress("migration 0007 on the whole table")
            build_s = await _migration_0007_s(connection)
        finally:
            await connection.close()
    finally:
        await recreate_database(settings.database_url, DATABASE, drop_only=True)
    return {
        "benchmark": "photo_lookup",
        "machine": machine_info(),
        "config": {
            "count": args.count,
            "fresh_share": args.fresh_share,
            "probes": args.probes,
            "scan_probes": args.scan_probes,
            "seed": args.seed,
            "max_distance": D,
            "chunks": CHUNKS,
            "database": DATABASE,
        },
        "load_s": round(load_s, 1),
        "migration_0007_s": round(build_s, 1),
        "sizes_bytes": sizes,
        "results": results,
        "ratios": {
            "scan_over_chunks_p50": round(
                results["scan"]["p50_ms"] / results["vacuumed"]["p50_ms"], 1
            ),
            "scan_over_fresh_tail_p50": round(
                results["scan"]["p50_ms"] / results["fresh_tail"]["p50_ms"], 1
            ),
        },
        "plan": plan,
    }


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    rows = []
    for key, label in (
        ("vacuumed", "**chunks** (multi-index hashing), table vacuumed"),
        ("fresh_tail", f"chunks, the last {config['fresh_share']:.0%} of the photos not vacuumed"),
        ("scan", "sequential scan (the replaced query)"),
    ):
        figures = results["results"][key]
        rows.append(
            [
                label,
                f"{figures['lookups']:,} ({figures['found']} found)",
                f"**{figures['p50_ms']:.2f}**" if key == "vacuumed" else f"{figures['p50_ms']:.2f}",
                f"{figures['p99_ms']:.2f}",
                f"{figures['max_ms']:.2f}",
            ]
        )
    ratios = results["ratios"]
    sizes = results["sizes_bytes"]
    indexes = sum(size for name, size in sizes.items() if name != "photos")
    notes = [
        f"{config['count']:,} analysed photos, distance ≤ {config['max_distance']} bits; "
        f"scan / chunks at p50: **{ratios['scan_over_chunks_p50']:,.0f} x** "
        f"({ratios['scan_over_fresh_tail_p50']:,.0f} x with the fresh tail)",
        f"table {sizes.get('photos', 0) / 2**20:,.0f} MiB, the four chunk indexes "
        f"{indexes / 2**20:,.0f} MiB (grown row by row); loaded in {results['load_s']:.0f} s; "
        f"migration 0007 on the whole table: {results['migration_0007_s']:.1f} s",
    ]
    table = markdown_table(["look-up", "look-ups", "p50 ms", "p99 ms", "max ms"], rows)
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=1_500_000, help="photos stored")
    parser.add_argument("--probes", type=int, default=1000, help="look-ups timed per case")
    parser.add_argument("--scan-probes", type=int, default=20, help="look-ups timed by scan")
    parser.add_argument(
        "--fresh-share",
        type=float,
        default=None,
        help="share of the photos loaded after VACUUM (default: where autovacuum comes)",
    )
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    if args.count < 1 or args.probes < 1 or not 1 <= args.scan_probes <= args.probes:
        parser.error("--count and --probes must be positive, --scan-probes in 1..--probes")
    if args.fresh_share is not None and not 0 <= args.fresh_share < 1:
        parser.error("--fresh-share must be in [0, 1)")
    code, _ = run_benchmark("photo_lookup", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
