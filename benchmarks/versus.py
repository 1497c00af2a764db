"""The design against its alternative, side by side in one run: the edge versus the naive
synchronous design under a slow ministry. (The adaptive lanes against fixed concurrency limits:
:mod:`benchmarks.backpressure`, Part A.)

Dukcapil is slow: ``--capacity`` calls served at once (default 10), each taking
``--latency-ms`` (default 200 ms, fixed), 50 calls/s; what it cannot serve at once waits in its
queue (``--queue-limit``, default 10,000; ``503`` beyond), so its answers slow down as the calls
pile up, as the ministries' did in 2020. (With a short queue, e.g. ``--queue-limit 5``, it
refuses instead, and the naive design then fails fast: ``502`` within milliseconds.) The same
offer is made to two systems, one after the other (the edge first), each on a fresh RabbitMQ
vhost and PostgreSQL database (``intake_bench_versus``), with a fresh simulator of the same
behaviour, seeded with the same population as the generator:

- **edge**, the project: ``intake supervise persist dispatch dukcapil`` and one ``intake edge``.
  A registration is answered ``202`` once it is in the broker; the Dukcapil check happens later,
  asynchronously, in the lane, against the same slow ministry;
- **naive**, :mod:`benchmarks.naive`: ``202`` only after INSERT, an inline Dukcapil call and
  the commit, on a pool of ``--pool-size`` connections (default 20); ``502``/``504`` when the
  ministry fails or is too slow.

The offer: ``--count`` registrations of the ``peak`` profile (all valid, no repeated NIK) at a
constant ``--rate`` (default 1,333/s, the 2020 peak), open loop, by :mod:`benchmarks.loadgen`
in a process of its own pinned to one CPU, with ``--connections`` on the wire and **no
retries**: the first answer is what the registrant got, and ``--timeout`` (10 s) is their
patience. While offering, this process samples every second what each system stored and the
ministry's counters. Then it waits until the system is done (edge: every ``202`` stored;
naive: nothing stored and nothing at the ministry for 3 s) and audits: every id answered ``202``
is stored exactly once, and nothing else is (edge: ``registrations``; naive:
``naive_registrations``).

Figures, for each system: registrations offered and accepted; **accepted per second, steady**
(the median of the per-second counts of ``202`` answers within the offer window, its first
second left out), over the offer window (accepted / (count / rate)), and over the system's own
time (accepted / (first request -> last ``202``); a system still answering ``202`` after the
window, up to the registrants' patience, gets those counted in the window by the first figure);
the answers by status; p50/p99/max of the latency to every registrant's final answer (whatever
it was, a timeout at the timeout) and of the ``202`` answers alone, from the scheduled send
time; the ministry's calls served and rejected; the loss audit. Ratios: steady accepted per
second edge / naive (the goal: >= 20) and the p99 of the final answers, edge / naive (the goal:
below 1). Plots: each run over time (:func:`benchmarks.plots.render`) and both side by side
(:func:`benchmarks.plots.compare`).

Writes ``results/versus-<time>.json`` and PNG plots in ``results/<name>/`` (``name`` in the
JSON: the time the run started): ``naive-accepted.png`` and ``naive-latency.png`` compare the
two systems, ``edge-run-*.png`` and ``naive-run-*.png`` show each run alone. Prints a markdown
report. Exits 1 if a loss audit fails: a registration answered ``202`` not stored exactly once
(either system), or the edge storing one it did not accept; the naive server storing one whose
registrant gave up before its ``202`` is reported, not failed (that is the design's own flaw).
Never because of a time.

    .venv/bin/python -m benchmarks.versus [--count 20000] [--rate 1333]
    .venv/bin/python -m benchmarks.versus --count 4000   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks import plots
from benchmarks._support import (
    RESULTS_DIR,
    free_port,
    machine_info,
    markdown_table,
    median,
    progress,
    run_benchmark,
)
from benchmarks.loadgen import PROFILES, Offered, spawn
from benchmarks.ministry import Ministry, sim_stats
from benchmarks.rig import Rig
from benchmarks.wave import Sampler, audit, merge, start_system, wait_stored
from core.settings import Settings
from intake.validation import today_wib

VHOST = "intake_bench_versus"
DATABASE = "intake_bench_versus"
PROFILE = "peak"  # all valid, no repeated NIK, a constant rate
EDGE_KINDS = ("persist", "dispatch", "dukcapil")
NAIVE_DRAIN_S = 10.0
QUIET_S = 3.0  # naive: done once nothing was stored and nothing was at the ministry for this long


# --- part naive ---------------------------------------------------------------------------------


class NaiveSampler:
    """Every second: the rows the naive server committed and the Dukcapil simulator's counters,
    in the shape of :class:`benchmarks.wave.Sampler`'s samples (``funnel.registered``,
    ``ministries.dukcapil``) so that :func:`benchmarks.wave.merge` and the plots take them."""

    def __init__(self, database_url: str, dukcapil_url: str) -> None:
        self.database_url = database_url
        self.dukcapil_url = dukcapil_url
        self.samples: list[dict[str, Any]] = []
        self.stored = 0
        self.at_ministry = 0  # calls in flight or queued at the simulator, at the last sample
        self.stop = asyncio.Event()

    async def run(self) -> None:
        connection = await asyncpg.connect(self.database_url)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                while not self.stop.is_set():
                    sample: dict[str, Any] = {"wall": time.time()}
                    self.stored = int(
                        await connection.fetchval("SELECT count(*) FROM naive_registrations")
                    )
                    sample["funnel"] = {"registered": self.stored}
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        stats = await sim_stats(session, self.dukcapil_url)
                        sample["ministries"] = {
                            "dukcapil": {
                                "served": stats["served"],
                                "rejected": stats["rejected_overload"],
                            }
                        }
                        self.at_ministry = int(stats["in_flight"]) + int(stats["queued"])
                    self.samples.append(sample)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 1.0)
        finally:
            await connection.close()


async def offer(url: str, work_dir: Path, args: argparse.Namespace) -> Offered:
    """The same offer to either system: open loop, no retries, the registrant's patience."""
    return await spawn(
        url,
        PROFILE,
        work_dir,
        count=args.count,
        rate=args.rate,
        connections=args.connections,
        seed=args.seed,
        retry=False,
        timeout_s=args.timeout,
    )


async def start_simulators(rig: Rig, args: argparse.Namespace, ministry: Ministry) -> None:
    """The simulators, seeded with the generator's population, Dukcapil slow."""
    profile = PROFILES[PROFILE]
    await rig.start_simulators(
        args.count,
        args.seed,
        today_wib(),
        ministry.flags("dukcapil"),
        invalid_share=profile.invalid_share,
        duplicate_share=profile.duplicate_share,
    )


async def ministry_stats(rig: Rig) -> dict[str, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        stats = await sim_stats(session, rig.sim_url("dukcapil"))
    return {
        key: int(stats[key]) for key in ("calls", "served", "rejected_overload", "max_in_flight")
    }


async def run_edge(
    base: Settings, args: argparse.Namespace, ministry: Ministry, work_dir: Path
) -> dict[str, Any]:
    """The project: supervise persist dispatch dukcapil, one edge; until every 202 is stored.

    One Dukcapil worker at most: it makes some 250 calls/s, the slow ministry takes 50, and a
    second worker would only share the ministry's capacity (and the supervisor, seeing the
    backlog, would start three more processes while the edge is taking the wave: about a
    second of CPU each; docs/architecture.md, "Autoscaling on one machine", its limits)."""
    base = base.replace(supervise_worker_limits="dukcapil=1-1")
    async with Rig(base, "edge", VHOST, DATABASE, work_dir) as rig:
        rig.stop_timeout_s = 120.0
        await rig.migrate()
        await start_simulators(rig, args, ministry)
        await start_system(rig, EDGE_KINDS)
        sampler = Sampler(rig, ministries=True)
        sampling = asyncio.create_task(sampler.run())
        try:
            progress(f"  edge: offering {args.count:,} at {args.rate:,.0f}/s, no retries")
            offered = await offer(rig.base_url, work_dir, args)
            progress(
                f"  edge: {len(offered.ids):,} accepted; answers "
                f"{offered.result['first_answers']}; waiting until all are stored"
            )
            await wait_stored(rig, sampler, len(offered.ids), args.stall_s)
        finally:
            sampler.stop.set()
            await sampling
        pool = await asyncpg.create_pool(rig.settings.database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            checked = await audit(pool, offered)
            last_stored = await pool.fetchval("SELECT max(stored_at) FROM registrations")
            decided = int(
                await pool.fetchval(
                    "SELECT count(*) FROM checks"
                    " WHERE check_name = 'dukcapil' AND finished_at IS NOT NULL"
                )
            )
        finally:
            await pool.close()
        stats = await ministry_stats(rig)
    result = offered.result
    series = merge(result["series"], sampler.samples, result["start_wall"])
    out = figures(result, args, checked, stats)
    first_request = result["start_wall"] + (result["first_send_s"] or 0.0)
    out["last_stored_s"] = (
        round(last_stored.timestamp() - first_request, 2) if last_stored is not None else None
    )
    out["dukcapil_checks_decided_at_audit"] = decided
    # The verification the edge leaves to the lane, at the ministry's pace.
    out["verification_backlog_s"] = round(len(offered.ids) / ministry.rate, 1)
    out["series"] = series
    return out


async def run_naive(
    base: Settings, args: argparse.Namespace, ministry: Ministry, work_dir: Path
) -> dict[str, Any]:
    """The naive synchronous server, on a fresh database with a fresh slow Dukcapil."""
    async with Rig(base, "naive", VHOST, DATABASE, work_dir) as rig:
        await start_simulators(rig, args, ministry)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        rig.stack.start_program(
            "naive",
            [
                sys.executable,
                "-m",
                "benchmarks.naive",
                f"--port={port}",
                f"--database-url={rig.settings.database_url}",
                f"--dukcapil-url={rig.sim_url('dukcapil')}",
                f"--pool-size={args.pool_size}",
                f"--ministry-timeout={args.ministry_timeout:g}",
            ],
        )
        await rig.wait_http(f"{url}/readyz", 60)
        sampler = NaiveSampler(rig.settings.database_url, rig.sim_url("dukcapil"))
        sampling = asyncio.create_task(sampler.run())
        try:
            progress(f"  naive: offering {args.count:,} at {args.rate:,.0f}/s, no retries")
            offered = await offer(url, work_dir, args)
            progress(
                f"  naive: {len(offered.ids):,} accepted; answers "
                f"{offered.result['first_answers']}; waiting until it is quiet"
            )
            # Requests whose registrant gave up may still be running in the server (aiohttp
            # does not cancel a handler whose client left), at the ministry's pace: wait until
            # it is quiet for QUIET_S, or NAIVE_DRAIN_S at most. Every 202 was committed before
            # it was sent, so the audit does not depend on what is still running.
            last, moved = -1, time.monotonic()
            offered_at = moved
            while True:
                rig.check_alive()
                now = time.monotonic()
                if sampler.stored != last or sampler.at_ministry > 0:
                    last, moved = sampler.stored, now
                elif now - moved >= QUIET_S:
                    break
                if now - offered_at > NAIVE_DRAIN_S:
                    progress(
                        f"  naive: {sampler.at_ministry:,} calls still at the ministry after "
                        f"{NAIVE_DRAIN_S:.0f} s: auditing now"
                    )
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)
        finally:
            sampler.stop.set()
            await sampling
        pool = await asyncpg.create_pool(rig.settings.database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            checked = await audit_table(pool, offered, "naive_registrations")
        finally:
            await pool.close()
        stats = await ministry_stats(rig)
    result = offered.result
    out = figures(result, args, checked, stats)
    out["series"] = merge(result["series"], sampler.samples, result["start_wall"])
    return out


async def audit_table(pool: asyncpg.Pool, offered: Offered, table: str) -> dict[str, Any]:
    """:func:`benchmarks.wave.audit` for the naive design's table: every 202 id stored exactly
    once. ``stored_not_accepted`` counts what it stored after the registrant had given up (it
    cannot know: the request goes on without its client); reported, not a loss."""
    rows = await pool.fetch(f"SELECT id::text AS id FROM {table}")  # noqa: S608 (a constant)
    stored = Counter(str(r["id"]) for r in rows)
    accepted = Counter(offered.ids)
    result: dict[str, Any] = {
        "accepted": sum(accepted.values()),
        "accepted_distinct": len(accepted),
        "stored": sum(stored.values()),
        "missing": len(accepted.keys() - stored.keys()),
        "stored_twice": sum(1 for n in stored.values() if n > 1),
        "stored_not_accepted": len(stored.keys() - accepted.keys()),
    }
    result["verified"] = not lost(result)
    return result


def figures(
    result: dict[str, Any],
    args: argparse.Namespace,
    checked: dict[str, Any],
    ministry: dict[str, int],
) -> dict[str, Any]:
    window_s = args.count / args.rate
    return {
        "offered": result["scheduled"],
        "accepted": result["accepted"],
        "offer_window_s": round(window_s, 3),
        "accepted_per_s": round(result["accepted"] / window_s, 1),
        # The steady rate: the median of the per-second counts of 202s within the window
        # (its first and last second left out), what the system sustains under the load.
        "accepted_per_s_steady": median(
            [
                float(s["accepted"])
                for s in result["series"]
                if 1.0 <= float(s["t"]) <= window_s and "accepted" in s
            ]
        ),
        "last_accepted_s": result["last_accepted_s"],
        # The same over the system's own time: from the first request to the last 202 (a
        # system that keeps answering 202s after the window does not get them counted in it).
        "accepted_per_s_until_last_202": round(
            result["accepted"] / (result["last_accepted_s"] - (result["first_send_s"] or 0.0)), 1
        )
        if result["last_accepted_s"]
        else 0.0,
        "elapsed_s": result["elapsed_s"],
        "answers": result["first_answers"],
        "final_answer_latency_ms": result["final_answer_latency_ms"],
        "accept_latency_ms": result["latency_ms"],
        "send_lag_ms": result["send_lag_ms"],
        "max_inflight": result["max_inflight"],
        "generator_cpu_share": result["generator"]["cpu_share"],
        "ministry": ministry,
        "audit": checked,
        "generator": {k: v for k, v in result.items() if k not in ("series", "latency_hdr")},
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return math.inf if numerator > 0 else None
    return round(numerator / denominator, 3)


async def part_naive(base: Settings, args: argparse.Namespace, name: str) -> dict[str, Any]:
    ministry = Ministry(args.capacity, args.latency_ms, args.queue_limit)
    work_dir = RESULTS_DIR / "logs" / name
    progress(
        f"part naive: Dukcapil {ministry.capacity} at once, {ministry.latency_ms:g} ms, queue "
        f"{ministry.queue_limit} ({ministry.rate:.0f} calls/s); {args.count:,} offered at "
        f"{args.rate:,.0f}/s"
    )
    edge = await run_edge(base, args, ministry, work_dir)
    naive = await run_naive(base, args, ministry, work_dir)
    plot_dir = RESULTS_DIR / name
    written = plots.compare(
        {"edge": {"series": edge["series"]}, "naive": {"series": naive["series"]}},
        plot_dir,
        "naive",
    )
    for label, run in (("edge", edge), ("naive", naive)):
        prefix = f"{label}-run"  # not "naive-": compare()'s files start with it
        written += plots.render({"name": label, "series": run["series"]}, plot_dir, prefix)
    return {
        "ministry": ministry.describe(),
        "count": args.count,
        "rate": args.rate,
        "offer_window_s": round(args.count / args.rate, 3),
        "connections": args.connections,
        "timeout_s": args.timeout,
        "pool_size": args.pool_size,
        "ministry_timeout_s": args.ministry_timeout,
        "seed": args.seed,
        "edge": edge,
        "naive": naive,
        "ratios": {
            "accepted_per_s_steady_edge_over_naive": _ratio(
                edge["accepted_per_s_steady"], naive["accepted_per_s_steady"]
            ),
            "accepted_per_s_edge_over_naive": _ratio(
                edge["accepted_per_s"], naive["accepted_per_s"]
            ),
            "accepted_per_s_until_last_202_edge_over_naive": _ratio(
                edge["accepted_per_s_until_last_202"], naive["accepted_per_s_until_last_202"]
            ),
            "final_answer_p99_edge_over_naive": _ratio(
                edge["final_answer_latency_ms"]["p99"], naive["final_answer_latency_ms"]["p99"]
            ),
        },
        "plots": [str(p) for p in written],
    }


# --- the run and the report ---------------------------------------------------------------------


async def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    base = Settings.from_env()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"versus-{stamp}"
    parts = {"naive": await part_naive(base, args, name)}
    return {
        "benchmark": "versus",
        "name": name,
        "machine": machine_info(),
        "command": command,
        "config": {
            "profile": PROFILE,
            "count": args.count,
            "rate": args.rate,
            "connections": args.connections,
            "timeout_s": args.timeout,
            "capacity": args.capacity,
            "latency_ms": args.latency_ms,
            "queue_limit": args.queue_limit,
            "pool_size": args.pool_size,
            "ministry_timeout_s": args.ministry_timeout,
            "seed": args.seed,
            "vhost": VHOST,
            "database": DATABASE,
        },
        "parts": parts,
    }


def _ms(latency: dict[str, Any]) -> str:
    return " / ".join(
        "-" if latency.get(k) is None else f"{latency[k]:,.1f}" for k in ("p50", "p99", "max")
    )


def _times(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "∞" if math.isinf(value) else f"{value:,.2f} x"


def _audit(a: dict[str, Any]) -> str:
    return (
        f"accepted {a['accepted']:,}, stored {a['stored']:,}, missing {a['missing']}, "
        f"stored twice {a['stored_twice']}, stored not accepted {a['stored_not_accepted']}: "
        + ("**verified**" if a["verified"] else "**FAILED**")
    )


def lost(a: dict[str, Any]) -> bool:
    """An accepted registration not stored exactly once."""
    return bool(a["missing"] or a["stored_twice"] or a["accepted_distinct"] != a["accepted"])


def report_naive(n: dict[str, Any]) -> str:
    m, e, v, r = n["ministry"], n["edge"], n["naive"], n["ratios"]
    statuses = sorted(set(e["answers"]) | set(v["answers"]))
    head = (
        f"**Part naive**: {n['count']:,} registrations offered at {n['rate']:,.0f}/s "
        f"(a window of {n['offer_window_s']:g} s), open loop, no retries, {n['connections']} "
        f"connections, {n['timeout_s']:g} s patience; Dukcapil {m['capacity']} calls at once, "
        f"{m['latency_ms']:g} ms fixed, queue {m['queue_limit']}, 503 beyond "
        f"({m['calls_per_s']:g} calls/s); naive pool {n['pool_size']}\n"
    )
    rows = [
        ["offered", f"{e['offered']:,}", f"{v['offered']:,}", ""],
        ["accepted (202)", f"{e['accepted']:,}", f"{v['accepted']:,}", ""],
        [
            "**accepted per second, steady** (median of the window's seconds)",
            f"**{e['accepted_per_s_steady']:,.1f}**",
            f"**{v['accepted_per_s_steady']:,.1f}**",
            f"**{_times(r['accepted_per_s_steady_edge_over_naive'])}** (goal >= 20 x)",
        ],
        [
            "accepted over the offer window / its length",
            f"{e['accepted_per_s']:,.1f}",
            f"{v['accepted_per_s']:,.1f}",
            _times(r["accepted_per_s_edge_over_naive"]),
        ],
        [
            "accepted per second, first request -> last 202",
            f"{e['accepted_per_s_until_last_202']:,.1f}",
            f"{v['accepted_per_s_until_last_202']:,.1f}",
            _times(r["accepted_per_s_until_last_202_edge_over_naive"]),
        ],
        *(
            [f"answers {s}", f"{e['answers'].get(s, 0):,}", f"{v['answers'].get(s, 0):,}", ""]
            for s in statuses
        ),
        [
            "**final answer latency** p50 / p99 / max (ms)",
            _ms(e["final_answer_latency_ms"]),
            _ms(v["final_answer_latency_ms"]),
            f"p99: **{_times(r['final_answer_p99_edge_over_naive'])}** (goal < 1 x)",
        ],
        [
            "202 latency p50 / p99 / max (ms)",
            _ms(e["accept_latency_ms"]),
            _ms(v["accept_latency_ms"]),
            "",
        ],
        [
            "first request -> last 202 (s)",
            f"{e['last_accepted_s'] or 0:,.1f}",
            f"{v['last_accepted_s'] or 0:,.1f}",
            "",
        ],
        [
            "Dukcapil calls served / rejected (whole run)",
            f"{e['ministry']['served']:,} / {e['ministry']['rejected_overload']:,}",
            f"{v['ministry']['served']:,} / {v['ministry']['rejected_overload']:,}",
            "",
        ],
        [
            "generator CPU share / most requests in flight",
            f"{e['generator_cpu_share']:.2f} / {e['max_inflight']:,}",
            f"{v['generator_cpu_share']:.2f} / {v['max_inflight']:,}",
            "",
        ],
        ["loss audit", _audit(e["audit"]), _audit(v["audit"]), ""],
    ]
    text = head + "\n" + markdown_table(["figure", "edge", "naive", "edge / naive"], rows)
    text += (
        f"\n\nThe edge had stored what it accepted {e['last_stored_s']} s after the "
        f"first request; by the audit its Dukcapil lane had decided "
        f"{e['dukcapil_checks_decided_at_audit']:,} checks, and needs about "
        f"{e['verification_backlog_s']:,.0f} s at {m['calls_per_s']:g} calls/s for all of them: "
        "after the registrants had their answer."
    )
    if v["audit"]["stored_not_accepted"]:
        text += (
            f" The naive server stored {v['audit']['stored_not_accepted']:,} registrations whose "
            "registrant never got a 202 (they gave up first; the server went on)."
        )
    if n.get("plots"):
        text += "\n\nplots: " + ", ".join(Path(p).name for p in n["plots"])
    return text


def report(results: dict[str, Any]) -> str:
    parts = results["parts"]
    out = [report_naive(parts["naive"])]
    machine = results["machine"]
    out.append(
        f"Machine: Python {machine['python']}, {machine['cpus']} CPUs, load average "
        + " / ".join(f"{x:.2f}" for x in machine["loadavg"])
        + f", {machine['time']}."
    )
    n, cfg = parts["naive"], results["config"]
    ministry = Ministry(cfg["capacity"], cfg["latency_ms"], cfg["queue_limit"])
    commands = [
        f"    {results['command']}",
        f"    intake simulate --seed={cfg['seed']} --count={cfg['count']} "
        f"--invalid-share=0 --duplicate-share=0 {' '.join(ministry.flags('dukcapil'))}",
        f"    intake supervise {' '.join(EDGE_KINDS)}; intake edge",
        f"    python -m benchmarks.naive --pool-size={n['pool_size']} "
        f"--ministry-timeout={n['ministry_timeout_s']:g} --database-url=... --dukcapil-url=...",
        f"    python -m benchmarks.loadgen --profile={PROFILE} --count={cfg['count']} "
        f"--rate={cfg['rate']:g} --connections={cfg['connections']} --no-retry "
        f"--timeout={cfg['timeout_s']:g} --seed={cfg['seed']} --url=...",
    ]
    out.append("Commands:\n\n" + "\n".join(commands))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=20_000, help="naive: registrations offered")
    parser.add_argument("--rate", type=float, default=1333.0, help="naive: offered per second")
    parser.add_argument("--connections", type=int, default=1024, help="naive: on the wire")
    parser.add_argument("--timeout", type=float, default=10.0, help="naive: patience, s")
    parser.add_argument("--capacity", type=int, default=10, help="naive: Dukcapil calls at once")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="naive: Dukcapil latency")
    parser.add_argument(
        "--queue-limit", type=int, default=10_000, help="naive: calls Dukcapil queues"
    )
    parser.add_argument("--pool-size", type=int, default=20, help="naive: its database pool")
    parser.add_argument(
        "--ministry-timeout", type=float, default=10.0, help="naive: its Dukcapil timeout, s"
    )
    parser.add_argument(
        "--stall-s", type=float, default=120.0, help="naive: stop waiting after s without progress"
    )
    parser.add_argument("--seed", type=int, default=2020, help="naive: the population's seed")
    args = parser.parse_args(argv)
    if args.count < 10 or args.rate <= 0 or args.connections < 1 or args.timeout <= 0:
        parser.error("--count >= 10, --rate > 0, --connections >= 1, --timeout > 0")
    if args.capacity < 1 or args.latency_ms <= 0 or args.queue_limit < 0 or args.pool_size < 1:
        parser.error("--capacity >= 1, --latency-ms > 0, --queue-limit >= 0, --pool-size >= 1")
    command = "python -m benchmarks.versus " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    code, results = run_benchmark("versus", lambda: measure(args, command), report)
    if results is None:
        return code
    naive = results["parts"]["naive"]
    failed = [
        label
        for label, run in (("edge", naive["edge"]), ("naive", naive["naive"]))
        if lost(run["audit"]) or (label == "edge" and not run["audit"]["verified"])
    ]
    if failed:
        print(f"benchmarks.versus: the loss audit failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
