"""The retention job at scale: how long a pass takes over a wave's registrations, a year on.

1. a fresh database ``intake_bench_retention``, migrated; ``--count`` registrations loaded with
   COPY (random bytes for the ciphertexts: the job never decrypts), with four checks each, a
   photo row and key for half of them and an email contact code for all: a third rejected long
   ago, a tenth abandoned (an email check still waiting, long ago), the rest verified, half of
   them recently (kept) and half long ago (never selected: erased);
2. ``--dry-run``: the candidates counted, nothing changed (the whole table read once);
3. the pass itself: every candidate erased in batches of ``--batch``, one transaction each;
4. a second pass: nothing left to do (what a daily run costs when little changed).

The run fails unless the counts are the expected ones. The database is dropped at the end.

    .venv/bin/python -m benchmarks.retention [--count 200000] [--batch 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks._support import (
    BenchError,
    machine_info,
    markdown_table,
    progress,
    recreate_database,
    run_benchmark,
    with_path,
)
from core import retention
from core.blobs import BlobStore
from core.migrate import migrate
from core.settings import Settings

DATABASE = "intake_bench_retention"


async def _load(connection: asyncpg.Connection, rng: random.Random, count: int) -> dict[str, int]:
    now = dt.datetime.now(dt.UTC)
    old, recent = now - dt.timedelta(days=400), now - dt.timedelta(days=5)
    registrations, checks, photos, keys, codes = [], [], [], [], []
    expected = {"rejected": 0, "abandoned": 0, "unselected": 0, "selected": 0}
    for i in range(count):
        registration_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        draw = rng.random()
        if draw < 1 / 3:
            status, reason, decided, state = "rejected", "nik_not_found", old, "failed"
            expected["rejected"] += 1
        elif draw < 1 / 3 + 0.1:
            status, reason, decided, state = "received", None, None, "waiting"
            expected["abandoned"] += 1
        else:
            long_ago = rng.random() < 0.5
            status, reason, state = "verified", None, "passed"
            decided = old if long_ago else recent
            expected["unselected"] += long_ago
        registrations.append(
            (
                registration_id,
                os.urandom(32),
                os.urandom(45),
                os.urandom(160),
                status,
                reason,
                old,
                old,
                decided,
            )
        )
        for name in ("email", "phone", "dukcapil", "photo"):
            checks.append((registration_id, name, state if name == "email" else "passed", old))
        codes.append((registration_id, "email", old + dt.timedelta(days=2)))
        if i % 2 == 0:
            name = os.urandom(32).hex()
            photos.append((registration_id, name, 100_000))
            keys.append((name, b"\x01" + os.urandom(60)))
    await connection.copy_records_to_table(
        "registrations",
        records=registrations,
        columns=[
            "id",
            "nik_hmac",
            "nik_enc",
            "personal_enc",
            "status",
            "reject_reason",
            "submitted_at",
            "stored_at",
            "decided_at",
        ],
    )
    await connection.copy_records_to_table(
        "checks",
        records=checks,
        columns=["registration_id", "check_name", "state", "updated_at"],
    )
    await connection.copy_records_to_table(
        "contact_codes", records=codes, columns=["registration_id", "channel", "expires_at"]
    )
    await connection.copy_records_to_table(
        "photo_keys", records=keys, columns=["blob_hmac", "key_enc"]
    )
    await connection.copy_records_to_table(
        "photos", records=photos, columns=["registration_id", "blob_hmac", "size_bytes"]
    )
    await connection.execute("VACUUM ANALYZE")
    return expected


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    rng = random.Random(args.seed)
    progress(f"fresh database {DATABASE}")
    await recreate_database(settings.database_url, DATABASE)
    try:
        url = with_path(settings.database_url, DATABASE)
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
            progress(f"loading {args.count:,} registrations")
            expected = await _load(connection, rng, args.count)
        finally:
            await connection.close()
        periods = retention.Periods()
        timings: dict[str, float] = {}
        reports: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as blob_dir:
            blobs = BlobStore(Path(blob_dir))
            async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
                for case, dry in (("dry_run", True), ("erase", False), ("again", False)):
                    progress(case)
                    started = time.perf_counter()
                    report = await retention.run(
                        pool, blobs, periods, batch=args.batch, dry_run=dry
                    )
                    timings[case] = time.perf_counter() - started
                    reports[case] = report.to_obj()
    finally:
        await recreate_database(settings.database_url, DATABASE, drop_only=True)
    for case in ("dry_run", "erase"):
        if reports[case]["registrations"] != expected:
            raise BenchError(f"{case}: {reports[case]['registrations']} != {expected}")
    if any(reports["again"]["registrations"].values()):
        raise BenchError(f"a second pass erased {reports['again']['registrations']}")
    erased = sum(expected.values())
    return {
        "benchmark": "retention",
        "machine": machine_info(),
        "config": {"count": args.count, "batch": args.batch, "seed": args.seed},
        "expected": expected,
        "seconds": timings,
        "erased_per_s": erased / timings["erase"],
        "reports": reports,
    }


def report(results: dict[str, Any]) -> str:
    count = results["config"]["count"]
    erased = sum(results["expected"].values())
    rows = [
        [case, f"{seconds:.2f}", f"{count / seconds:,.0f}"]
        for case, seconds in results["seconds"].items()
    ]
    table = markdown_table(["pass", "seconds", "registrations read per s"], rows)
    return (
        f"{count:,} registrations, {erased:,} erased ({results['expected']}), batch"
        f" {results['config']['batch']}: {results['erased_per_s']:,.0f} erased per second\n\n"
        + table
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=200_000, help="registrations stored")
    parser.add_argument("--batch", type=int, default=500, help="registrations per transaction")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args(argv)
    if args.count < 1 or args.batch < 1:
        parser.error("--count and --batch must be positive")
    code, _ = run_benchmark("retention", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
