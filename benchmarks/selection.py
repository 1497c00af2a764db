"""A wave's selection at scale: how long ``intake worker waves`` takes to select a wave, and how
much memory it needs, for a given number of joiners.

1. a fresh database ``intake_bench_selection``, migrated; ``--joiners`` verified registrations
   loaded with COPY, each with its personal data encrypted as the persist worker stores it (the
   selection decrypts every joiner's birth date: that is part of what is measured), a scored
   test attempt and a join of one closed wave of quota ``--quota``, in the shares of the demo
   (situations; a third on DTKS; ages 18-64, a few too old for the policy);
2. the selection itself (``workers.selection.select_wave``, the code the worker runs): read,
   decrypt, rank, and write every outcome, the benefits and two notifications per joiner in one
   transaction; timed, with this process's peak resident memory before and after;
3. checks: exactly ``min(quota, eligible)`` selected, ``2 x joiners`` notifications written.

The database is dropped at the end.

    .venv/bin/python -m benchmarks.selection [--joiners 200000] [--quota 50000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import time
import uuid
from typing import Any

import asyncpg
import orjson

from benchmarks._support import (
    BenchError,
    machine_info,
    markdown_table,
    progress,
    recreate_database,
    run_benchmark,
    with_path,
)
from core.keys import Keyring
from core.migrate import migrate
from core.settings import Settings
from core.waves import Policy, Situation, Waves
from workers.selection import select_wave

DATABASE = "intake_bench_selection"
SITUATIONS = [s.value for s in Situation]
SITUATION_WEIGHTS = [40, 20, 25, 10, 5]


async def _load(
    pool: asyncpg.Pool, keyring: Keyring, rng: random.Random, joiners: int, quota: int
) -> int:
    """The closed wave and its joiners; the wave's id."""
    now = dt.datetime.now(dt.UTC)
    wave = await Waves(pool).create(
        "bench",
        "bench-wave",
        now - dt.timedelta(days=7),
        now - dt.timedelta(hours=1),
        quota,
        Policy(max_age=60),
    )
    registrations, attempts, joins = [], [], []
    for n in range(joiners):
        registration_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        nik = f"31{n:014d}"
        birth = dt.date(now.year - rng.randint(18, 64), rng.randint(1, 12), rng.randint(1, 28))
        personal = orjson.dumps(
            {
                "full_name": f"Peserta {n}",
                "birth_place": "Jakarta",
                "birth_date": birth.isoformat(),
                "email": f"peserta{n}@example.com",
                "phone": f"0812{n:08d}",
            }
        )
        context = registration_id.bytes
        registrations.append(
            (
                registration_id,
                keyring.nik_hmac(nik),
                keyring.encrypt(nik.encode(), context),
                keyring.encrypt(personal, context),
                "verified",
                now - dt.timedelta(days=8),
                1 if rng.random() < 1 / 3 else 0,
            )
        )
        served = now - dt.timedelta(days=3)
        score = rng.randint(5, 19) * 100 // 19
        attempts.append(
            (registration_id, wave.id, 1, "[]", served, served + dt.timedelta(minutes=25), score)
        )
        situation = rng.choices(SITUATIONS, SITUATION_WEIGHTS)[0]
        joins.append((wave.id, registration_id, situation, served + dt.timedelta(minutes=30)))
        if n and n % 50_000 == 0:
            progress(f"  {n:,} prepared")
    async with pool.acquire() as connection:
        await connection.copy_records_to_table(
            "registrations",
            records=registrations,
            columns=[
                "id",
                "nik_hmac",
                "nik_enc",
                "personal_enc",
                "status",
                "submitted_at",
                "priority",
            ],
        )
        await connection.execute(
            "CREATE TEMP TABLE a (registration_id uuid, wave_id bigint, attempt smallint,"
            " questions jsonb, served_at timestamptz, deadline_at timestamptz, score smallint)"
        )
        await connection.copy_records_to_table("a", records=attempts)
        await connection.execute(
            "INSERT INTO test_attempts (registration_id, wave_id, attempt, questions, served_at,"
            " deadline_at, correct, score, scored_at)"
            " SELECT registration_id, wave_id, attempt, questions, served_at, deadline_at, 0,"
            " score, served_at FROM a"
        )
        await connection.copy_records_to_table(
            "wave_joins",
            records=joins,
            columns=["wave_id", "registration_id", "situation", "joined_at"],
        )
        await connection.execute("VACUUM ANALYZE")
    return wave.id


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    keyring = Keyring.from_settings(settings)
    rng = random.Random(args.seed)
    progress(f"fresh database {DATABASE}")
    await recreate_database(settings.database_url, DATABASE)
    try:
        url = with_path(settings.database_url, DATABASE)
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
        finally:
            await connection.close()
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            progress(f"loading {args.joiners:,} joiners")
            wave_id = await _load(pool, keyring, rng, args.joiners, args.quota)
            rss_before = _peak_rss_mb()
            progress("selecting")
            started = time.perf_counter()
            cpu_started = time.process_time()
            selection = await select_wave(pool, keyring, wave_id)
            seconds = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
            rss_after = _peak_rss_mb()
            if selection is None:
                raise BenchError("the wave was selected already")
            recorded = await pool.fetchrow(
                "SELECT joined, eligible, selected,"
                " extract(epoch FROM finished_at - started_at)::float8 AS took_s"
                " FROM wave_selections WHERE wave_id = $1",
                wave_id,
            )
            notifications = await pool.fetchval(
                "SELECT count(*) FROM notifications WHERE wave_id = $1", wave_id
            )
    finally:
        await recreate_database(settings.database_url, DATABASE, drop_only=True)
    if recorded["selected"] != min(args.quota, recorded["eligible"]):
        raise BenchError(f"selected {recorded['selected']} of {recorded['eligible']} eligible")
    if notifications != 2 * args.joiners:
        raise BenchError(f"{notifications} notifications for {args.joiners} joiners")
    return {
        "benchmark": "selection",
        "machine": machine_info(),
        "config": {"joiners": args.joiners, "quota": args.quota, "seed": args.seed},
        "joined": recorded["joined"],
        "eligible": recorded["eligible"],
        "selected": recorded["selected"],
        "seconds": seconds,
        "cpu_seconds_selector": cpu_s,
        "recorded_s": recorded["took_s"],
        "us_per_joiner": seconds / args.joiners * 1e6,
        "peak_rss_mb": {"before": rss_before, "after": rss_after},
    }


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            f"{results['joined']:,}",
            f"{results['eligible']:,}",
            f"{results['selected']:,}",
            f"{results['seconds']:.2f}",
            f"{results['cpu_seconds_selector']:.2f}",
            f"{results['us_per_joiner']:.0f}",
            f"{results['peak_rss_mb']['before']:.0f} -> {results['peak_rss_mb']['after']:.0f}",
        ]
    ]
    return markdown_table(
        [
            "joined",
            "eligible",
            "selected",
            "selection s",
            "selector CPU s",
            "µs per joiner",
            "peak RSS MB",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--joiners", type=int, default=200_000, help="joins of the wave")
    parser.add_argument("--quota", type=int, default=50_000, help="the wave's quota")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    if args.joiners < 1 or args.quota < 1:
        parser.error("--joiners and --quota must be positive")
    code, _ = run_benchmark("selection", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
