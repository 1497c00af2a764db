"""Verification throughput: NIK, email and photo checks per second, one lane worker each.

Every phase runs on a fresh RabbitMQ vhost and PostgreSQL database (``intake_bench``) with the
system's own processes (``intake simulate``, ``intake edge``, ``intake worker ...``), started as
an operator would:

1. the simulators serve the same synthetic population the benchmark sends
   (``population(N, seed, today, invalid_share=0, duplicate_share=0)``), each at its default
   behaviour (capacity 100 calls at once, a queue of 100 beyond that) unless a latency is set;
2. the edge, the persist worker and the dispatcher run; the N registrations are POSTed through
   the edge (64 concurrent requests) and the benchmark waits until every one is stored, its
   checks created and their tasks published;
3. only then the lane workers being measured start (one process per lane), and the rate is read
   from the check rows' own timestamps, from the first finished check to the last, so worker
   start-up is not counted:

   - **NIK**: one ``dukcapil``, one ``dapodik`` and one ``dtks`` worker (a Dukcapil match starts
     the other two). Dukcapil checks/s from their ``finished_at``; NIK verifications/s from the
     moment each registration's NIK checks were all final (Dukcapil failed, or Dukcapil passed
     and Dapodik and DTKS final). Once with no simulated latency, once with a realistic ministry
     (lognormal, median 50 ms, p99 200 ms, on all three);
   - **email**: one ``email`` worker sending to the SMTP simulator; emails sent/s from the email
     checks' ``updated_at`` when they turned ``waiting`` (sent, waiting for the click);
   - **photo**: one ``photo`` worker with one analysis process (``photo_workers`` 1); the selfies
     are uploaded through the edge's ``PUT /v1/registrations/{id}/photo`` before it starts.
     Every upload is the same portrait, so the checks end in review as ``photo_reused``: reuse
     is looked for *after* the full analysis, so each photo costs what a distinct one would.

The run fails unless every measured check is final (none lost). The database and the vhost are
dropped at the end of each phase, also on failure.

    .venv/bin/python -m benchmarks.verification [--count 3000] [--photos 200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import numpy as np
from PIL import Image

from benchmarks._support import (
    BENCH_DATABASE,
    BENCH_VHOST,
    NIK_DONE_SQL,
    RESULTS_DIR,
    BenchError,
    machine_info,
    markdown_table,
    progress,
    run_benchmark,
)
from benchmarks.rig import Rig
from core.settings import Settings
from intake.validation import today_wib
from simulators.population import Registrant, population

CONCURRENCY = 64
REALISTIC_MS = (50, 200)  # lognormal latency of a ministry: median, p99
NIK_LANES = ("dukcapil", "dapodik", "dtks")
LOG_DIR = RESULTS_DIR / "logs" / "verification"


@dataclass(frozen=True)
class Accepted:
    id: uuid.UUID
    token: str


def selfie() -> bytes:
    """A real portrait, 512x512 JPEG: exactly one face (as the photo lane's tests make it)."""
    from skimage import data

    pixels = np.asarray(data.astronaut())[..., :3].astype(np.uint8)  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class Phase(Rig):
    """One fresh vhost + database with simulators, edge, persist worker and dispatcher."""

    def __init__(
        self, base: Settings, name: str, sim_flags: list[str], people: list[Registrant]
    ) -> None:
        super().__init__(base, name, BENCH_VHOST, BENCH_DATABASE, LOG_DIR)
        self.sim_flags = sim_flags
        self.people = people

    def start_lane(self, kind: str) -> None:
        self.stack.start(f"worker-{kind}", "worker", kind)

    async def start(self, seed: int, today: dt.date) -> None:
        await self.migrate()
        await self.start_simulators(len(self.people), seed, today, self.sim_flags)
        self.stack.start("worker-persist", "worker", "persist")
        self.stack.start("worker-dispatch", "worker", "dispatch")
        await self.start_edge()

    async def register(self) -> list[Accepted]:
        """POST every form through the edge, 64 at a time; every one must be accepted."""
        accepted: list[Accepted] = []
        statuses: collections.Counter[int] = collections.Counter()
        queue: asyncio.Queue[Registrant] = asyncio.Queue()
        for person in self.people:
            queue.put_nowait(person)

        async def client(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                person = queue.get_nowait()
                url = f"{self.base_url}/v1/registrations"
                async with session.post(url, json=person.form) as response:
                    body = await response.json(content_type=None)
                statuses[response.status] += 1
                if response.status == 202:
                    accepted.append(Accepted(uuid.UUID(body["id"]), body["access_token"]))

        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
        progress(
            f"  {len(self.people):,} POSTed in {time.perf_counter() - started:.1f} s: "
            f"{dict(statuses)}"
        )
        if len(accepted) != len(self.people):
            raise BenchError(f"{self.name}: the edge accepted {len(accepted)}/{len(self.people)}")
        return accepted

    async def wait_for(
        self,
        connection: asyncpg.Connection,
        what: str,
        sql: str,
        target: int,
        timeout_s: float,
    ) -> None:
        """Poll ``sql`` (one count) until it reaches ``target``."""
        deadline = time.monotonic() + timeout_s
        last, last_change = -1, time.monotonic()
        while True:
            self.check_alive()
            value = int(await connection.fetchval(sql))
            now = time.monotonic()
            if value != last:
                if value >= target or now - last_change > 2:
                    progress(f"  {what}: {value:,}/{target:,}")
                last, last_change = value, now
            if value >= target:
                return
            if now > deadline:
                raise BenchError(f"{self.name}: {what} {value:,}/{target:,} after {timeout_s:g} s")
            await asyncio.sleep(0.25)

    async def wait_stored(self, connection: asyncpg.Connection, count: int) -> None:
        """Every registration stored, its checks created and their tasks published."""
        await self.wait_for(
            connection,
            "registrations stored and started",
            "SELECT count(*) FROM registrations WHERE dispatched_at IS NOT NULL",
            count,
            120,
        )
        await self.wait_for(
            connection,
            "initial checks published",
            "SELECT count(*) FROM checks WHERE dispatched_at IS NOT NULL",
            3 * count,  # email, phone, Dukcapil; the photo check waits for its upload
            60,
        )


def rate(first: dt.datetime, last: dt.datetime, count: int) -> tuple[float, float]:
    """(span in seconds, finished per second): ``count - 1`` intervals over the span."""
    span_s = (last - first).total_seconds()
    return span_s, (count - 1) / span_s if span_s > 0 else float("nan")


async def nik_phase(phase: Phase, connection: asyncpg.Connection, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    for lane in NIK_LANES:
        phase.start_lane(lane)
    await phase.wait_for(
        connection,
        "Dukcapil checks final",
        "SELECT count(*) FROM checks WHERE check_name = 'dukcapil' AND finished_at IS NOT NULL",
        count,
        240,
    )
    await phase.wait_for(
        connection,
        "registrations with all NIK checks final",
        NIK_DONE_SQL,
        count,
        240,
    )
    wall_s = time.perf_counter() - started
    duk = await connection.fetchrow(
        "SELECT count(*) AS n, min(finished_at) AS first, max(finished_at) AS last,"
        " count(*) FILTER (WHERE state = 'passed') AS passed, sum(attempts) AS retries"
        " FROM checks WHERE check_name = 'dukcapil' AND state IN ('passed', 'failed')"
    )
    nik = await connection.fetchrow(NIK_DONE_SQL)
    lanes = await connection.fetch(
        "SELECT check_name, count(*) AS n,"
        " count(*) FILTER (WHERE state IN ('passed', 'failed')) AS final,"
        " coalesce(sum(attempts), 0) AS retries"
        " FROM checks WHERE check_name = ANY($1::text[]) GROUP BY 1",
        list(NIK_LANES),
    )
    per_lane = {r["check_name"]: dict(r) for r in lanes}
    duk_span, duk_rate = rate(duk["first"], duk["last"], int(duk["n"]))
    nik_span, nik_rate = rate(nik["first"], nik["last"], int(nik["n"]))
    calls = sum(int(r["n"]) for r in lanes)
    lost = count - int(nik["n"]) + sum(int(r["n"]) - int(r["final"]) for r in lanes)
    return {
        "registrations": count,
        "dukcapil_final": int(duk["n"]),
        "dukcapil_passed": int(duk["passed"]),
        "dukcapil_span_s": round(duk_span, 3),
        "dukcapil_per_s": round(duk_rate, 1),
        "nik_final": int(nik["n"]),
        "nik_span_s": round(nik_span, 3),
        "nik_per_s": round(nik_rate, 1),
        "ministry_calls": calls,
        "ministry_calls_per_s": round((calls - 1) / nik_span, 1) if nik_span > 0 else None,
        "lanes": per_lane,
        "wall_s_from_worker_start": round(wall_s, 2),
        "lost": lost,
        "verified": lost == 0,
    }


async def email_phase(phase: Phase, connection: asyncpg.Connection, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    phase.start_lane("email")
    await phase.wait_for(
        connection,
        "emails sent",
        "SELECT count(*) FROM checks WHERE check_name = 'email' AND state = 'waiting'",
        count,
        240,
    )
    wall_s = time.perf_counter() - started
    row = await connection.fetchrow(
        "SELECT count(*) AS n, min(updated_at) AS first, max(updated_at) AS last,"
        " coalesce(sum(attempts), 0) AS retries"
        " FROM checks WHERE check_name = 'email' AND state = 'waiting'"
    )
    sent = int(
        await connection.fetchval(
            "SELECT count(*) FROM contact_codes WHERE channel = 'email' AND sent_at IS NOT NULL"
        )
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{phase.ports['smtp_admin']}/_sim/stats") as response,
    ):
        smtp_stats = await response.json(content_type=None)
    span_s, per_s = rate(row["first"], row["last"], int(row["n"]))
    lost = count - int(row["n"]) + (count - sent)
    return {
        "registrations": count,
        "email_waiting": int(row["n"]),
        "contact_codes_sent": sent,
        "smtp_simulator": smtp_stats,
        "retries": int(row["retries"]),
        "span_s": round(span_s, 3),
        "emails_per_s": round(per_s, 1),
        "wall_s_from_worker_start": round(wall_s, 2),
        "lost": lost,
        "verified": lost == 0,
    }


async def upload_photos(phase: Phase, accepted: list[Accepted], photo: bytes) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    semaphore = asyncio.Semaphore(16)

    async def upload(session: aiohttp.ClientSession, a: Accepted) -> None:
        async with (
            semaphore,
            session.put(
                f"{phase.base_url}/v1/registrations/{a.id}/photo",
                data=photo,
                headers={"Authorization": f"Bearer {a.token}", "Content-Type": "image/jpeg"},
            ) as response,
        ):
            await response.read()
            statuses[response.status] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(upload(session, a) for a in accepted))
    progress(f"  {len(accepted):,} selfies uploaded: {dict(statuses)}")
    if statuses.get(202, 0) != len(accepted):
        raise BenchError(f"photo uploads not all accepted: {dict(statuses)}")


async def photo_phase(
    phase: Phase, connection: asyncpg.Connection, accepted: list[Accepted]
) -> dict[str, Any]:
    count = len(accepted)
    photo = selfie()
    await upload_photos(phase, accepted, photo)
    await phase.wait_for(
        connection,
        "photo tasks published",
        "SELECT count(*) FROM checks WHERE check_name = 'photo' AND state = 'pending'"
        " AND dispatched_at IS NOT NULL",
        count,
        60,
    )
    started = time.perf_counter()
    phase.start_lane("photo")
    await phase.wait_for(
        connection,
        "photo checks final",
        "SELECT count(*) FROM checks WHERE check_name = 'photo' AND finished_at IS NOT NULL",
        count,
        240,
    )
    wall_s = time.perf_counter() - started
    row = await connection.fetchrow(
        "SELECT count(*) AS n, min(finished_at) AS first, max(finished_at) AS last,"
        " coalesce(sum(attempts), 0) AS retries"
        " FROM checks WHERE check_name = 'photo' AND state IN ('passed', 'failed')"
    )
    reasons = {
        str(r["reason"] or r["state"]): int(r["n"])
        for r in await connection.fetch(
            "SELECT state, reason, count(*) AS n FROM checks WHERE check_name = 'photo'"
            " GROUP BY 1, 2"
        )
    }
    analysed = int(
        await connection.fetchval("SELECT count(*) FROM photos WHERE analysed_at IS NOT NULL")
    )
    span_s, per_s = rate(row["first"], row["last"], int(row["n"]))
    lost = count - int(row["n"]) + (count - analysed)
    return {
        "photos": count,
        "photo_bytes": len(photo),
        "final": int(row["n"]),
        "analysed": analysed,
        "outcomes": reasons,
        "retries": int(row["retries"]),
        "span_s": round(span_s, 3),
        "photos_per_s": round(per_s, 2),
        "wall_s_from_worker_start": round(wall_s, 2),
        "lost": lost,
        "verified": lost == 0,
    }


Measure = Callable[[Phase, asyncpg.Connection, list[Accepted]], Awaitable[dict[str, Any]]]


async def run_phase(
    base: Settings, name: str, sim_flags: list[str], count: int, seed: int, measure: Measure
) -> dict[str, Any]:
    today = today_wib()
    people = population(count, seed=seed, today=today, invalid_share=0, duplicate_share=0)
    progress(f"{name}: {count:,} registrations")
    async with Phase(base, name, sim_flags, people) as phase:
        await phase.start(seed, today)
        accepted = await phase.register()
        connection = await asyncpg.connect(phase.settings.database_url)
        try:
            await phase.wait_stored(connection, count)
            result = await measure(phase, connection, accepted)
        finally:
            await connection.close()
    result["simulator_flags"] = sim_flags
    if not result["verified"]:
        raise BenchError(f"{name}: verification failed: {result}")
    progress(f"  {name}: {result}")
    return result


def realistic_flags() -> list[str]:
    median, p99 = REALISTIC_MS
    return [
        flag
        for lane in NIK_LANES
        for flag in (f"--{lane}-latency-median-ms={median}", f"--{lane}-latency-p99-ms={p99}")
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env()
    seed = args.seed

    async def nik(phase: Phase, c: asyncpg.Connection, a: list[Accepted]) -> dict[str, Any]:
        return await nik_phase(phase, c, len(a))

    async def email(phase: Phase, c: asyncpg.Connection, a: list[Accepted]) -> dict[str, Any]:
        return await email_phase(phase, c, len(a))

    phases = {
        "nik_latency_0": await run_phase(base, "nik_latency_0", [], args.count, seed, nik),
        "nik_latency_50_200": await run_phase(
            base, "nik_latency_50_200", realistic_flags(), args.count, seed, nik
        ),
        "email": await run_phase(base, "email", [], args.count, seed, email),
        "photo": await run_phase(base, "photo", [], args.photos, seed, photo_phase),
    }
    return {
        "benchmark": "verification",
        "machine": machine_info(),
        "config": {
            "count": args.count,
            "photos": args.photos,
            "seed": seed,
            "lane_prefetch": base.lane_prefetch,
            "photo_workers": base.photo_workers,
            "simulator_capacity": 100,
            "simulator_queue_limit": 100,
            "realistic_latency_ms": {"median": REALISTIC_MS[0], "p99": REALISTIC_MS[1]},
            "vhost": BENCH_VHOST,
            "database": BENCH_DATABASE,
        },
        "phases": phases,
    }


def report(results: dict[str, Any]) -> str:
    p = results["phases"]
    config = results["config"]
    zero, real, mail, photo = (
        p["nik_latency_0"],
        p["nik_latency_50_200"],
        p["email"],
        p["photo"],
    )
    median, p99 = REALISTIC_MS
    sims = "simulators at default capacity 100 + queue 100"
    rows = [
        [
            "**NIK verifications/s** (Dukcapil, then Dapodik + DTKS)",
            f"**{zero['nik_per_s']:,.0f}**",
            f"{zero['nik_final']:,} registrations over {zero['nik_span_s']:.1f} s; "
            f"latency 0 ms; {sims}; one worker per lane",
        ],
        [
            "Dukcapil checks/s",
            f"{zero['dukcapil_per_s']:,.0f}",
            f"{zero['dukcapil_final']:,} over {zero['dukcapil_span_s']:.1f} s; latency 0 ms",
        ],
        [
            "**NIK verifications/s**, realistic ministry",
            f"**{real['nik_per_s']:,.0f}**",
            f"{real['nik_final']:,} registrations over {real['nik_span_s']:.1f} s; "
            f"latency median {median} ms, p99 {p99} ms on all three; {sims}",
        ],
        [
            "Dukcapil checks/s, realistic ministry",
            f"{real['dukcapil_per_s']:,.0f}",
            f"{real['dukcapil_final']:,} over {real['dukcapil_span_s']:.1f} s",
        ],
        [
            "**emails sent/s**, one email worker",
            f"**{mail['emails_per_s']:,.0f}**",
            f"{mail['email_waiting']:,} over {mail['span_s']:.1f} s to the SMTP simulator "
            "(latency 0 ms)",
        ],
        [
            "**photos analysed/s**, one photo worker, 1 analysis process",
            f"**{photo['photos_per_s']:,.1f}**",
            f"{photo['final']:,} JPEG selfies of {photo['photo_bytes'] / 1024:,.0f} KiB "
            f"(512x512) over {photo['span_s']:.1f} s; outcomes {photo['outcomes']}",
        ],
        [
            "checks lost (not final at the end)",
            str(zero["lost"] + real["lost"] + mail["lost"] + photo["lost"]),
            "every measured check final; every email handed to SMTP; every photo analysed",
        ],
    ]
    notes = [
        f"lane prefetch {config['lane_prefetch']}; {config['count']:,} registrations per NIK "
        f"and email run, {config['photos']:,} photos; seed {config['seed']}",
        "every selfie is the same portrait (the same bytes are on other registrations), so the "
        "checks end in review as photo_reused: reuse is looked for after the full analysis, "
        "so each photo costs what a distinct one would",
        "retries (attempts) in the NIK runs: "
        + ", ".join(
            f"{name} {sum(int(v['retries']) for v in run['lanes'].values())}"
            for name, run in (("latency 0", zero), ("realistic", real))
        ),
    ]
    return markdown_table(["figure", "value", "conditions"], rows) + "\n\n- " + "\n- ".join(notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=3_000, help="registrations per NIK/email run")
    parser.add_argument("--photos", type=int, default=200, help="selfies in the photo run")
    parser.add_argument("--seed", type=int, default=7, help="population seed")
    args = parser.parse_args(argv)
    if args.count < 2 or args.photos < 2:
        parser.error("--count and --photos must be at least 2")
    code, _ = run_benchmark("verification", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
