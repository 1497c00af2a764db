"""Replay a wave opening against the whole system and audit that nothing accepted was lost.

One fresh vhost and database; the ministry simulators (seeded with the same population the
generator sends); ``intake edge`` (``--edges`` processes sharing the port; with ``--tier``,
behind the refusal tier of :mod:`benchmarks.refusal_tier`); ``intake supervise`` with the
worker kinds of the profile (``day``: only ``persist``, its figure is the time until the last
registration is stored; the others also run the NIK, email and phone lanes so the funnel
moves). Then:

1. the load generator's **ceiling**: :mod:`benchmarks.loadgen` closed loop against
   :mod:`benchmarks.bare` (pinned to the other CPU) for a few seconds: the rate above which
   the generator, not the system, would be the limit;
2. the **profile**, offered by the generator in a process of its own pinned to one CPU, while
   this process samples every second the depth of every queue, the funnel (PostgreSQL) and
   each simulated ministry's counters;
3. until every ``202`` is stored (or nothing moves for ``--stall`` s), then the **loss audit**:
   every id answered ``202`` is in ``registrations`` exactly once and nothing else is.

Writes ``results/wave-PROFILE-<time>.json``, PNG plots over time in the folder of the same
name, and prints a markdown report. Exits 1 if the audit fails or the generator saw errors
(timeouts, broken connections, 5xx other than a ``503`` with ``Retry-After``, a valid form
refused or an invalid one accepted); never because of a time.

    python -m benchmarks.wave --profile ci
    python -m benchmarks.wave --profile day --edges 2
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson

from benchmarks import plots, refusal_tier
from benchmarks._support import (
    RESULTS_DIR,
    free_port,
    machine_info,
    markdown_table,
    progress,
    run_benchmark,
)
from benchmarks.cpu import cores_used, cpu_by_role
from benchmarks.loadgen import PROFILES, Offered, spawn
from benchmarks.rig import Rig
from core import funnel
from core.settings import Settings
from demo.funnel import queue_depths
from intake.validation import today_wib

VHOST = "intake_bench_wave"
DATABASE = "intake_bench_wave"
MINISTRIES = ("dukcapil", "dapodik", "dtks")
_ME = "benchmark (sampling)"
LANES = ("dukcapil", "dapodik", "dtks", "email", "phone")


def worker_kinds(profile: str, lanes: bool) -> list[str]:
    if profile == "day" or not lanes:
        return ["persist"]
    return ["persist", "dispatch", *LANES]


class Sampler:
    """Every second: queue depths, the funnel, the ministries' counters, rows stored."""

    def __init__(self, rig: Rig, ministries: bool) -> None:
        self.rig = rig
        self.ministries = ministries
        self.samples: list[dict[str, Any]] = []
        self.stored = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        amqp = await aio_pika.connect(self.rig.settings.amqp_url)
        pool = await asyncpg.create_pool(self.rig.settings.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                while not self.stop.is_set():
                    await self._sample(amqp, pool, session)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 1.0)
        finally:
            await pool.close()
            await amqp.close()

    async def _sample(
        self,
        amqp: aio_pika.abc.AbstractConnection,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
    ) -> None:
        sample: dict[str, Any] = {"wall": time.time()}
        with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
            sample["queues"] = await queue_depths(amqp)
        counts = await funnel.read_counts(pool)
        sample["funnel"] = funnel.stages(counts)
        self.stored = sample["funnel"]["registered"]
        if self.ministries:
            found: dict[str, Any] = {}
            for name in MINISTRIES:
                try:
                    async with session.get(f"{self.rig.sim_url(name)}/_sim/stats") as response:
                        stats = orjson.loads(await response.read())
                except (aiohttp.ClientError, TimeoutError):
                    continue
                found[name] = {
                    "served": stats["served"],
                    "rejected": stats["rejected_overload"],
                }
            sample["ministries"] = found
        self.samples.append(sample)


def merge(
    generator: list[dict[str, Any]], sampled: list[dict[str, Any]], start_wall: float
) -> list[dict[str, Any]]:
    """The generator's per-second samples with the system's: a system sample joins the
    generator's sample nearest in time (within half a second), or stands alone (after the
    generator finished)."""
    merged = [dict(s) for s in generator]
    times = [s["t"] for s in merged]
    alone: list[dict[str, Any]] = []
    for sample in sampled:
        t = sample["wall"] - start_wall
        if t < 0:
            continue
        at = bisect.bisect_left(times, t)
        near = [i for i in (at - 1, at) if 0 <= i < len(times) and abs(times[i] - t) <= 0.5]
        entry = merged[min(near, key=lambda i: abs(times[i] - t))] if near else None
        if entry is None:
            entry = {"t": round(t, 3)}
            alone.append(entry)
        for key in ("queues", "funnel", "ministries"):
            if key in sample:
                entry[key] = sample[key]
    return sorted(merged + alone, key=lambda s: float(s["t"]))


async def ceiling(work_dir: Path, connections: int, seconds: float) -> dict[str, Any]:
    """The generator closed loop against the bare aiohttp server on the other CPU."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "benchmarks.bare",
        f"--port={port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.5)
        offered = await spawn(
            f"http://127.0.0.1:{port}",
            "ci",
            work_dir,
            ceiling_s=seconds,
            connections=connections,
        )
    finally:
        server.terminate()
        await server.wait()
    result = offered.result
    return {
        "answers_per_s": result["answers_202_per_s"],
        "generator_cpu_share": result["generator"]["cpu_share"],
        "connections": connections,
        "seconds": seconds,
        "answers": result["answers"],
    }


async def start_system(rig: Rig, kinds: Sequence[str], edges: int = 1, tier: bool = False) -> str:
    """``intake supervise KINDS`` and ``edges`` edge processes sharing the port, as an
    operator starts them, once the simulators run; with ``tier``, the refusal tier in front
    of them (:mod:`benchmarks.refusal_tier`). Return the URL the registrants use."""
    run_dir = rig.log_dir / "run"
    run_dir.mkdir()
    # The edges tell the supervisor when they shed (it then holds verification back).
    rig.settings = rig.settings.replace(edge_status_dir=str(run_dir))
    rig.stack.settings = rig.settings
    rig.start_supervisor(kinds, run_dir)
    await rig.start_edge()
    for extra in range(1, edges):
        rig.stack.start(f"edge-{extra + 1}", "edge")
    url = rig.base_url
    if tier:
        port = free_port()
        config = rig.log_dir / "haproxy.cfg"
        # The edges share one port: one server for the tier, each edge's share of the slots.
        edge = refusal_tier.TierConfig(port, (url.removeprefix("http://"),))
        config.write_text(
            refusal_tier.render(dataclasses.replace(edge, edge_conns=edge.edge_conns * edges))
        )
        rig.stack.start_program("haproxy", ["haproxy", "-db", "-f", str(config)])
        url = f"http://127.0.0.1:{port}"
        await rig.wait_http(f"{url}/readyz", 60)
    await asyncio.sleep(3)  # the first workers open their pools and queues
    rig.check_alive()
    return url


async def wait_stored(rig: Rig, sampler: Sampler, accepted: int, stall_s: float) -> None:
    """Until the sampler has seen ``accepted`` registrations stored, or none more for
    ``stall_s``; then one more sample."""
    last, moved = -1, time.monotonic()
    while sampler.stored < accepted:
        rig.check_alive()
        if sampler.stored != last:
            last, moved = sampler.stored, time.monotonic()
            progress(f"  stored {sampler.stored:,}/{accepted:,}")
        elif time.monotonic() - moved > stall_s:
            progress(f"  nothing stored for {stall_s:.0f} s: auditing now")
            break
        await asyncio.sleep(2.0)
    await asyncio.sleep(1.5)  # one more sample after the last row


async def audit(pool: asyncpg.Pool, offered: Offered) -> dict[str, Any]:
    """Every 202 id stored exactly once, nothing stored that was not answered 202."""
    rows = await pool.fetch("SELECT id::text AS id FROM registrations")
    stored = Counter(str(r["id"]) for r in rows)
    accepted = Counter(offered.ids)
    result = {
        "accepted": sum(accepted.values()),
        "accepted_distinct": len(accepted),
        "stored": sum(stored.values()),
        "missing": len(accepted.keys() - stored.keys()),
        "stored_twice": sum(1 for n in stored.values() if n > 1),
        "stored_not_accepted": len(stored.keys() - accepted.keys()),
    }
    result["verified"] = (
        result["missing"] == 0
        and result["stored_twice"] == 0
        and result["stored_not_accepted"] == 0
        and result["accepted_distinct"] == result["accepted"]
    )
    return result


def errors_seen(result: dict[str, Any]) -> dict[str, int]:
    """What a correct system never makes a registrant see."""
    errors = {
        status: n
        for status, n in result["answers"].items()
        if status not in ("202", "503", "422", "400")
    }
    for outcome in ("refused_valid", "accepted_invalid", "gave_up", "not_accepted"):
        if result["outcomes"].get(outcome):
            errors[outcome] = result["outcomes"][outcome]
    return errors


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = PROFILES[args.profile].scaled(args.count, args.rate)
    kinds = worker_kinds(args.profile, not args.no_lanes)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"wave-{args.profile}-{stamp}"
    work_dir = RESULTS_DIR / "logs" / name
    connections = args.connections or profile.connections
    progress(f"wave {args.profile}: {profile.description}; {profile.count:,} registrations")
    limit = await ceiling(work_dir, connections, args.ceiling_s)
    progress(
        f"  generator ceiling: {limit['answers_per_s']:,.0f} requests/s against bare aiohttp "
        f"(generator CPU {limit['generator_cpu_share']:.2f})"
    )
    base = Settings.from_env().replace(supervise_db_connections=args.db_connections)
    if args.worker_limits:
        base = base.replace(supervise_worker_limits=args.worker_limits)
    today = today_wib()
    async with Rig(base, "wave", args.vhost, args.database, work_dir) as rig:
        rig.stop_timeout_s = 120.0
        await rig.migrate()
        await rig.start_simulators(
            profile.count,
            args.seed,
            today,
            [],
            invalid_share=profile.invalid_share,
            duplicate_share=profile.duplicate_share,
        )
        url = await start_system(rig, kinds, args.edges, args.tier)
        sampler = Sampler(rig, ministries="dukcapil" in kinds)
        sampling = asyncio.create_task(sampler.run())
        cpu_marks = [(time.monotonic(), cpu_by_role(_ME))]
        try:
            progress(f"  offering with {connections} connections; workers: {' '.join(kinds)}")
            offered = await spawn(
                url,
                args.profile,
                work_dir,
                count=args.count,
                rate=args.rate,
                connections=connections,
                seed=args.seed,
            )
            result = offered.result
            cpu_marks.append((time.monotonic(), cpu_by_role(_ME)))
            progress(
                f"  offered: {len(offered.ids):,} accepted; answers {result['answers']}; "
                f"waiting until all are stored"
            )
            await wait_stored(rig, sampler, len(offered.ids), args.stall_s)
            cpu_marks.append((time.monotonic(), cpu_by_role(_ME)))
        finally:
            sampler.stop.set()
            await sampling
        pool = await asyncpg.create_pool(rig.settings.database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            checked = await audit(pool, offered)
            row = await pool.fetchrow(
                "SELECT min(stored_at) AS first, max(stored_at) AS last FROM registrations"
            )
            outcomes = await pool.fetch(
                "SELECT status, coalesce(reject_reason, '') AS reason, count(*) AS n "
                "FROM registrations GROUP BY 1, 2 ORDER BY 3 DESC"
            )
        finally:
            await pool.close()
    assert row is not None
    start_wall = result["start_wall"]
    first_request = start_wall + (result["first_send_s"] or 0.0)
    last_stored = row["last"].timestamp() if row["last"] is not None else None
    series = merge(result.pop("series"), sampler.samples, start_wall)
    figures = {
        "first_request_to_last_stored_s": round(last_stored - first_request, 2)
        if last_stored
        else None,
        "first_request_to_last_accepted_s": result["last_accepted_s"],
        "stored_per_s": round(checked["stored"] / (last_stored - first_request), 1)
        if last_stored
        else None,
    }
    out = {
        "benchmark": "wave",
        "name": name,
        "profile": args.profile,
        "machine": machine_info(),
        "config": {
            "edges": args.edges,
            "tier": args.tier,
            "worker_kinds": kinds,
            "connections": connections,
            "db_connections": args.db_connections,
            "worker_limits": base.supervise_worker_limits,
            "seed": args.seed,
            "vhost": args.vhost,
            "database": args.database,
        },
        "ceiling": limit,
        "generator": result,
        "figures": figures,
        "errors": errors_seen(result),
        # Cores used by each role (PostgreSQL and RabbitMQ: all their processes).
        "cores_used": {
            "offering": cores_used(
                cpu_marks[0][1], cpu_marks[1][1], cpu_marks[1][0] - cpu_marks[0][0]
            ),
            "offer_to_last_stored": cores_used(
                cpu_marks[0][1], cpu_marks[-1][1], cpu_marks[-1][0] - cpu_marks[0][0]
            ),
        },
        "audit": checked,
        "stored_outcomes": {f"{r['status']}:{r['reason']}": int(r["n"]) for r in outcomes},
        "series": series,
    }
    plot_dir = RESULTS_DIR / name
    out["plots"] = [
        str(p) for p in plots.render({"name": name, "series": series}, plot_dir, args.profile)
    ]
    return out


def _ms(latency: dict[str, Any], key: str) -> str:
    value = latency.get(key)
    return "-" if value is None else f"{value:,.1f}"


def report(results: dict[str, Any]) -> str:
    g, f, a = results["generator"], results["figures"], results["audit"]
    lat = g["latency_ms"]
    rows = [
        ["profile", f"`{results['profile']}`: {g['description']}"],
        ["registrations offered / accepted", f"{g['scheduled']:,} / {g['accepted']:,}"],
        ["answers (every attempt)", ", ".join(f"{k}: {v:,}" for k, v in g["answers"].items())],
        ["first request → last 202", f"{f['first_request_to_last_accepted_s']:,.1f} s"],
        [
            "**first request → last registration stored**",
            f"**{f['first_request_to_last_stored_s']:,.1f} s** ({f['stored_per_s']:,.0f}/s)",
        ],
        [
            "latency to the final answer p50 / p90 / p99 / max (ms)",
            " / ".join(_ms(lat, k) for k in ("p50", "p90", "p99", "max")),
        ],
        [
            "latency to the first answer p50 / p90 / p99 / max (ms)",
            " / ".join(
                _ms(g.get("first_answer_latency_ms", {}), k) for k in ("p50", "p90", "p99", "max")
            ),
        ],
        [
            "attempts per registrant mean / max; timeouts",
            f"{(g.get('attempts') or {}).get('mean')} / {(g.get('attempts') or {}).get('max')}; "
            f"{g.get('timeouts', 0):,}",
        ],
        [
            "generator: ceiling / CPU share in the run",
            f"{results['ceiling']['answers_per_s']:,.0f} requests/s / "
            f"{g['generator']['cpu_share']:.2f} of CPU {g['generator']['cpus']}",
        ],
        [
            "cores used while offering",
            ", ".join(f"{role} {n:.2f}" for role, n in results["cores_used"]["offering"].items()),
        ],
        ["errors seen by registrants", str(results["errors"] or "none")],
        [
            "**loss audit**",
            f"accepted {a['accepted']:,}, stored {a['stored']:,}, missing {a['missing']}, "
            f"stored twice {a['stored_twice']}, stored not accepted {a['stored_not_accepted']}"
            f": **{'verified' if a['verified'] else 'FAILED'}**",
        ],
    ]
    text = markdown_table(["figure", "value"], rows)
    if results.get("plots"):
        text += "\n\nplots: " + ", ".join(Path(p).name for p in results["plots"])
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--count", type=int, default=None, help="registrations (scales shape)")
    parser.add_argument("--rate", type=float, default=None, help="peak rate (scales the shape)")
    parser.add_argument("--connections", type=int, default=None, help="generator connections")
    parser.add_argument("--edges", type=int, default=1, help="intake edge processes")
    parser.add_argument("--no-lanes", action="store_true", help="only persist workers")
    parser.add_argument(
        "--tier", action="store_true", help="a refusal tier (HAProxy) in front of the edges"
    )
    parser.add_argument(
        "--worker-limits", default="", help="INTAKE_SUPERVISE_WORKER_LIMITS, e.g. persist=1-2"
    )
    parser.add_argument("--db-connections", type=int, default=60, help="supervisor DB budget")
    parser.add_argument("--ceiling-s", type=float, default=5.0, help="generator ceiling run")
    parser.add_argument("--stall-s", type=float, default=120.0, help="give up waiting after")
    parser.add_argument("--seed", type=int, default=2020, help="the population's seed")
    parser.add_argument("--vhost", default=VHOST, help="RabbitMQ vhost (created and deleted)")
    parser.add_argument("--database", default=DATABASE, help="database (created and dropped)")
    args = parser.parse_args(argv)
    if args.edges < 1:
        parser.error("--edges must be at least 1")
    code, results = run_benchmark(f"wave-{args.profile}", lambda: measure(args), report)
    if results is None:
        return code
    if not results["audit"]["verified"]:
        print("benchmarks.wave: the loss audit failed", file=sys.stderr)
        return 1
    if results["errors"]:
        print(f"benchmarks.wave: registrants saw errors: {results['errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
