"""Backpressure towards the ministries: goodput at a simulated ministry's capacity, adaptation to
a capacity that halves, and the whole pipeline under the 2020 peak minute.

Every part runs the system's own processes (``intake simulate``, ``intake edge``,
``intake worker ...``, ``intake supervise``) on a fresh RabbitMQ vhost and PostgreSQL database
of its own (``intake_bench_backpressure``, so that it never meets another benchmark's), dropped
at the end of each run, also on failure.

**Calibration.** The ministry, not our worker, must be the bottleneck of parts A and B. So the
same backlog is first drained by ONE ``intake worker dukcapil`` (default settings) against a
*fast* Dukcapil (the same fixed latency L, but capacity and queue of 1,000): the calls it makes
per second are its own ceiling, reported next to the simulated capacity C/L.

**Part A: goodput at a fixed capacity.** Dukcapil serves C calls at once with a fixed latency L
(so C/L calls/s), queues ``queue_limit`` more and answers ``503`` (``Retry-After: 1``) beyond
that. A backlog of N registrations (``--backlog-s`` seconds at C/L) is POSTed through the edge,
stored, and their Dukcapil tasks published before ONE Dukcapil lane worker starts. Three
configurations, each on a fresh vhost and database with the same simulator and the same N:

1. ``adaptive``: the default settings (adaptive limit, breaker);
2. ``fixed_high``: ``INTAKE_LANE_LIMIT_FIXED = 4 C + queue_limit`` (prefetch raised to match),
   more than the simulator serves and queues together;
3. ``fixed_low``: ``INTAKE_LANE_LIMIT_FIXED = C / 2``.

The simulator's counters (``GET /_sim/stats``) and the number of decided Dukcapil checks are
sampled every 0.5 s. **Goodput** = calls served by the simulator between the first samples at
which 10 % and 90 % of the backlog was decided, divided by the time between those samples (the
start and the tail are left out; a run stopped before 90 % ends the window at its last sample);
reported as a share of C/L (goal >= 0.95 for ``adaptive``).
**Rejected share** = ``rejected_overload / calls`` of the simulator over the whole run (goal
<= 1 % for ``adaptive``). **Retries** = the checks' ``attempts`` summed (each retry of a check
adds one). **Drain time** = from the worker's start to the sample at which every task was
decided (or dead-lettered); a configuration not drained after 3 x (N / (C/L)) + 30 s, or that
decided nothing for 60 s, is stopped. The lane worker's CPU share of one core, the machine's CPU
busy share, the lane's limit and breaker (its status file, ``INTAKE_WORKER_STATUS_FILE``) and our
calls at the simulator (its ``in_flight + queued``) are recorded too.

**Part B: capacity halved mid-run.** The adaptive lane drains a backlog at capacity C; once the
goodput over every sliding 2 s window of the last 4 s is within +-10 % of C/L (and at least 10 s
after the start), the simulator's capacity is set to C/2 (``POST /_sim/behaviour``). Sampling
continues ``--transition-s`` seconds. **Settling time** = from the change to the first moment t
after which the goodput over every window [t', t' + 2 s], t' >= t, stays within +-10 % of
(C/2)/L until the end. The lane's limit over time is read from the worker's status file: its
median before the change and over the last 10 s, and when it first came within 10 % of that final
value. **Transition** = from the change until the goodput settled and the limit came down; the
rejected-overload share is reported for it, for the whole measurement after the change, and the
time of the last rejection.

**Part C: the wave** (``benchmarks/backpressure_wave.py``, which says what it measures): the
whole NIK pipeline, edge to ministries, under the 2020 peak minute.

    .venv/bin/python -m benchmarks.backpressure [--parts A,B,C] [--count 80000 --rate 1333]
    .venv/bin/python -m benchmarks.backpressure --parts C --count 8000 --rate 400   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks._support import (
    BenchError,
    machine_info,
    progress,
    run_benchmark,
)
from benchmarks.backpressure_report import FAST, report
from benchmarks.backpressure_rig import (
    DATABASE,
    SAMPLE_S,
    VHOST,
    WaveRig,
    first_reaching,
    mean_of,
    median_of,
    series_of,
)
from benchmarks.backpressure_wave import parse_rates, part_c
from benchmarks.cpu import MachineCpu
from benchmarks.ministry import Ministry, set_behaviour, sim_stats
from benchmarks.persist import cpu_seconds
from core.settings import Settings
from core.status import read_status
from intake.validation import today_wib
from simulators.population import population

WINDOW_S = 2.0  # Part B's sliding goodput window
TOLERANCE = 0.10  # Part B: within +-10 % of the target goodput


_LANE_PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS decided,
       count(*) FILTER (WHERE state = 'retrying' AND reason LIKE 'dead_lettered:%') AS dead,
       coalesce(sum(attempts), 0) AS retries
FROM checks WHERE check_name = 'dukcapil'
"""


# --- parts A and B: one Dukcapil lane worker against one simulator ------------------------------

Until = Callable[[list[dict[str, Any]]], Awaitable[bool]]


@dataclass
class LaneRun:
    samples: list[dict[str, Any]]
    cpu_s: float
    wall_s: float
    stalled: bool
    final: dict[str, Any]


async def watch_lane(
    rig: WaveRig,
    count: int,
    lane_settings: Settings,
    *,
    timeout_s: float,
    until: Until | None = None,
) -> LaneRun:
    """Start ONE Dukcapil lane worker and sample every 0.5 s until the backlog is decided (or
    dead-lettered), ``until`` says so, nothing moved for 60 s, or ``timeout_s`` passed."""
    status_path = Path(lane_settings.worker_status_file or rig.log_dir / "none")
    duk = rig.sim_url("dukcapil")
    samples: list[dict[str, Any]] = []
    connection = await asyncpg.connect(rig.settings.database_url)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{duk}/_sim/stats/reset") as response:
            response.raise_for_status()
        started = time.monotonic()
        process = rig.stack.start("worker-dukcapil", "worker", "dukcapil", settings=lane_settings)
        cpu_s, stalled = 0.0, False
        cpu = MachineCpu()
        last_progress, last_moved = -1, started
        try:
            while True:
                rig.check_alive()
                stats = await sim_stats(session, duk)
                now = time.monotonic()
                row = await connection.fetchrow(_LANE_PROGRESS_SQL)
                assert row is not None
                status = read_status(status_path) or {}
                sample: dict[str, Any] = {
                    "t": round(now - started, 3),
                    "served": stats["served"],
                    "rejected": stats["rejected_overload"],
                    "calls": stats["calls"],
                    "sim_in_flight": stats["in_flight"],
                    "sim_queued": stats["queued"],
                    "decided": int(row["decided"]),
                    "dead": int(row["dead"]),
                    "retries": int(row["retries"]),
                    "limit": status.get("limit"),
                    "lane_inflight": status.get("inflight"),
                    "breaker": status.get("breaker"),
                    "prefetch": status.get("prefetch"),
                    "breaker_opened": status.get("breaker_opened"),
                    "cpu_busy": cpu.share(),
                }
                samples.append(sample)
                done = sample["decided"] + sample["dead"]
                if done != last_progress:
                    last_progress, last_moved = done, now
                if process.poll() is None:
                    cpu_s = cpu_seconds(process.pid)
                if done >= count or (until is not None and await until(samples)):
                    break
                if now - last_moved > 60 or now - started > timeout_s:
                    stalled = True
                    progress(f"  {rig.name}: {done:,}/{count:,} decided; giving up")
                    break
                if len(samples) % 20 == 0:
                    progress(
                        f"  {rig.name}: t={sample['t']:.0f}s decided {done:,}/{count:,}, "
                        f"served {sample['served']:,}, rejected {sample['rejected']:,}, "
                        f"limit {sample['limit']}"
                    )
                await asyncio.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
            wall_s = time.monotonic() - started
            final = dict(await sim_stats(session, duk))
            db = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS decided,"
                " count(*) FILTER (WHERE state = 'passed') AS passed,"
                " coalesce(sum(attempts), 0) AS retries,"
                " count(*) FILTER (WHERE reason LIKE 'dead_lettered:%') AS dead,"
                " extract(epoch FROM max(finished_at) - min(finished_at)) AS span_s"
                " FROM checks WHERE check_name = 'dukcapil'"
            )
            assert db is not None
            final["db"] = {k: (float(v) if v is not None else None) for k, v in dict(db).items()}
        finally:
            await connection.close()
    return LaneRun(samples, cpu_s, wall_s, stalled, final)


def steady_goodput(samples: Sequence[dict[str, Any]], count: int) -> dict[str, float]:
    """Calls served per second between the samples at which 10 % and 90 % were decided. A run
    stopped before 90 % ends its window at its last sample, and starts it 5 s after the start
    if it never reached 10 %."""
    high = first_reaching(samples, "decided", 0.9 * count)
    low = first_reaching(samples, "decided", 0.1 * count)
    if low is high:
        low = first_reaching(samples, "t", 5.0)
    span = high["t"] - low["t"]
    rate = (high["served"] - low["served"]) / span if span > 0 else math.nan
    return {"from_s": low["t"], "to_s": high["t"], "per_s": rate}


def lane_figures(
    name: str, ministry: Ministry, count: int, run: LaneRun, limit: str
) -> dict[str, Any]:
    samples, final = run.samples, run.final
    goodput = steady_goodput(samples, count)
    done = next((s for s in samples if s["decided"] + s["dead"] >= count), None)
    calls = int(final["calls"])
    rejected = int(final["rejected_overload"])
    limits = [float(s["limit"]) for s in samples if isinstance(s["limit"], int | float)]
    at_sim = [int(s["sim_in_flight"]) + int(s["sim_queued"]) for s in samples]
    return {
        "configuration": name,
        "limit": limit,
        "tasks": count,
        "goodput_per_s": round(goodput["per_s"], 1),
        "goodput_share": round(goodput["per_s"] / ministry.rate, 3),
        "goodput_window_s": [goodput["from_s"], goodput["to_s"]],
        "calls": calls,
        "served": int(final["served"]),
        "rejected_overload": rejected,
        "rejected_share": round(rejected / calls, 4) if calls else 0.0,
        "errors": int(final["errors"]),
        "retries": int(final["db"]["retries"] or 0),
        "dead_lettered": int(final["db"]["dead"] or 0),
        "decided": int(final["db"]["decided"] or 0),
        "matched": int(final["db"]["passed"] or 0),
        "drain_s": round(done["t"], 2) if done else None,
        "first_to_last_decision_s": final["db"]["span_s"],
        "stalled": run.stalled,
        "lane_cpu_share": round(run.cpu_s / run.wall_s, 3) if run.wall_s > 0 else None,
        "lane_limit_median": round(sorted(limits)[len(limits) // 2], 2) if limits else None,
        "machine_cpu_busy_mean": mean_of(s["cpu_busy"] for s in samples),
        "breaker_opened": max((int(s["breaker_opened"] or 0) for s in samples), default=0),
        "calls_at_simulator_max": max(at_sim) if at_sim else 0,
        "calls_at_simulator_median": sorted(at_sim)[len(at_sim) // 2] if at_sim else 0,
        "simulator_max_in_flight": int(final["max_in_flight"]),
        "simulator_max_queued": int(final["max_queued"]),
        "series": series_of(samples),
    }


async def lane_phase(
    base: Settings,
    name: str,
    ministry: Ministry,
    count: int,
    seed: int,
    lane_changes: dict[str, Any],
    *,
    timeout_s: float,
    until: Callable[[WaveRig, aiohttp.ClientSession], Until] | None = None,
) -> tuple[LaneRun, WaveRig]:
    today = today_wib()
    people = population(count, seed=seed, today=today, invalid_share=0, duplicate_share=0)
    async with WaveRig(base, name) as rig:
        await rig.migrate()
        await rig.start_simulators(count, seed, today, ministry.flags("dukcapil"))
        await rig.prime(people)
        lane_settings = rig.settings.replace(
            worker_status_file=str(rig.log_dir / "lane-status.json"), **lane_changes
        )
        async with aiohttp.ClientSession() as session:
            run = await watch_lane(
                rig,
                count,
                lane_settings,
                timeout_s=timeout_s,
                until=until(rig, session) if until is not None else None,
            )
    return run, rig


async def calibrate(base: Settings, ministry: Ministry, count: int, seed: int) -> dict[str, Any]:
    fast = Ministry(FAST, ministry.latency_ms, FAST)
    run, _ = await lane_phase(base, "calibration", fast, count, seed, {}, timeout_s=600)
    goodput = steady_goodput(run.samples, count)
    result = lane_figures("calibration", fast, count, run, "adaptive")
    result["worker_calls_per_s"] = round(goodput["per_s"], 1)
    result["over_capacity"] = round(goodput["per_s"] / ministry.rate, 2)
    progress(
        f"  calibration: one worker made {goodput['per_s']:.0f} calls/s against a fast "
        f"simulator; the measured one serves {ministry.rate:.0f}/s"
    )
    return result


async def part_a(base: Settings, ministry: Ministry, count: int, seed: int) -> dict[str, Any]:
    high = 4 * ministry.capacity + ministry.queue_limit
    low = max(1, ministry.capacity // 2)
    configurations: list[tuple[str, str, dict[str, Any]]] = [
        ("adaptive", "adaptive (default settings)", {}),
        (
            "fixed_high",
            f"fixed {high} (4 C + queue_limit)",
            {"lane_limit_fixed": high, "lane_prefetch": max(base.lane_prefetch, high)},
        ),
        ("fixed_low", f"fixed {low} (C / 2)", {"lane_limit_fixed": low}),
    ]
    expected_s = count / ministry.rate
    results = {}
    for name, label, changes in configurations:
        run, _ = await lane_phase(
            base, name, ministry, count, seed, changes, timeout_s=3 * expected_s + 30
        )
        figures = lane_figures(name, ministry, count, run, label)
        progress(
            f"  {name}: goodput {figures['goodput_per_s']}/s "
            f"({figures['goodput_share']:.1%} of C/L), rejected {figures['rejected_share']:.2%}, "
            f"retries {figures['retries']}, drained in {figures['drain_s']} s"
        )
        results[name] = figures
    return results


def settling(
    samples: Sequence[dict[str, Any]], t_change: float, target: float
) -> tuple[float | None, list[tuple[float, float]]]:
    """(seconds from the change until every later window [t, t + 2 s] stays within +-10 % of
    ``target``, or None; the windows as (start, goodput))."""
    after = [s for s in samples if s["t"] >= t_change]
    windows: list[tuple[float, float]] = []
    for i, start in enumerate(after):
        end = next((s for s in after[i + 1 :] if s["t"] >= start["t"] + WINDOW_S), None)
        if end is None:
            break
        windows.append((start["t"], (end["served"] - start["served"]) / (end["t"] - start["t"])))
    settled: float | None = None
    for t, rate in windows:
        if abs(rate / target - 1) > TOLERANCE:
            settled = None
        elif settled is None:
            settled = t
    return (None if settled is None else round(settled - t_change, 2)), windows


def _recent_windows(samples: Sequence[dict[str, Any]], span_s: float) -> list[float]:
    """Goodputs of the 2 s windows that end within the last ``span_s`` seconds."""
    last = samples[-1]["t"]
    rates = []
    for end in samples:
        if end["t"] < last - span_s:
            continue
        start = next((s for s in reversed(samples) if s["t"] <= end["t"] - WINDOW_S), None)
        if start is None:
            continue
        rates.append((end["served"] - start["served"]) / (end["t"] - start["t"]))
    return rates


async def part_b(
    base: Settings, ministry: Ministry, seed: int, transition_s: float
) -> dict[str, Any]:
    halved = max(1, ministry.capacity // 2)
    target = halved / (ministry.latency_ms / 1000)
    max_wait_s = 40.0
    count = math.ceil(ministry.rate * max_wait_s + target * (transition_s + 15))
    change: dict[str, float] = {}

    def until(rig: WaveRig, session: aiohttp.ClientSession) -> Until:
        async def check(samples: list[dict[str, Any]]) -> bool:
            t = samples[-1]["t"]
            if not change:
                rates = _recent_windows(samples, 4.0)
                steady = len(rates) >= 6 and all(
                    abs(r / ministry.rate - 1) <= TOLERANCE for r in rates
                )
                if (t >= 10 and steady) or t >= max_wait_s:
                    await set_behaviour(session, rig.sim_url("dukcapil"), capacity=halved)
                    change["t"] = t
                    change["steady"] = float(steady)
                    progress(f"  capacity {ministry.capacity} -> {halved} at t={t:.1f} s")
                return False
            return bool(t >= change["t"] + transition_s)

        return check

    run, _ = await lane_phase(base, "halved", ministry, count, seed, {}, timeout_s=600, until=until)
    if not change:
        raise BenchError("part B: the capacity was never changed (the backlog ran out first)")
    t_change = change["t"]
    samples = run.samples
    settle_s, windows = settling(samples, t_change, target)
    before = first_reaching(samples, "t", t_change)
    last = samples[-1]
    calls_after = last["calls"] - before["calls"]
    rejected_after = last["rejected"] - before["rejected"]
    last_rejection = max(
        (
            s["t"]
            for s, p in zip(samples[1:], samples, strict=False)
            if s["rejected"] > p["rejected"]
        ),
        default=None,
    )
    pre = [s for s in samples if t_change - 6 <= s["t"] <= t_change]
    pre_rate = (
        (pre[-1]["served"] - pre[0]["served"]) / (pre[-1]["t"] - pre[0]["t"])
        if len(pre) > 1 and pre[-1]["t"] > pre[0]["t"]
        else math.nan
    )
    post = [s for s in samples if s["t"] >= last["t"] - 10]
    post_rate = (
        (post[-1]["served"] - post[0]["served"]) / (post[-1]["t"] - post[0]["t"])
        if len(post) > 1
        else math.nan
    )
    # The lane's limit (its status file, rewritten every second): before, at the end, and when
    # it first came down to at most 10 % above its final value.
    limit_before = median_of(
        s["limit"] for s in samples if t_change - 10 <= s["t"] < t_change and s["limit"]
    )
    limit_after = median_of(s["limit"] for s in samples if s["t"] >= last["t"] - 10 and s["limit"])
    limit_adapted = None
    if limit_after:
        limit_adapted = next(
            (
                s["t"]
                for s in samples
                if s["t"] >= t_change
                and s["limit"] is not None
                and s["limit"] <= limit_after * (1 + TOLERANCE)
            ),
            None,
        )
    limit_s = None if limit_adapted is None else round(limit_adapted - t_change, 2)
    # The transition: from the change until the goodput settled and the limit came down.
    ends = [settle_s, limit_s] if limit_after else [settle_s]
    settled_s: float | None = None
    if None not in ends:
        settled_s = max(e for e in ends if e is not None)
    settled_at = (
        first_reaching(samples, "t", t_change + settled_s) if settled_s is not None else last
    )
    calls_tr = settled_at["calls"] - before["calls"]
    rejected_tr = settled_at["rejected"] - before["rejected"]
    return {
        "tasks": count,
        "capacity_before": ministry.capacity,
        "capacity_after": halved,
        "target_before_per_s": round(ministry.rate, 1),
        "target_after_per_s": round(target, 1),
        "changed_at_s": t_change,
        "steady_before_change": bool(change["steady"]),
        "goodput_6s_before_per_s": round(pre_rate, 1),
        "goodput_last_10s_per_s": round(post_rate, 1),
        "settle_s": settle_s,
        "measured_after_change_s": round(last["t"] - t_change, 1),
        "transition_s": settled_s,
        "rejected_share_in_transition": round(rejected_tr / calls_tr, 4) if calls_tr else 0.0,
        "rejected_in_transition": rejected_tr,
        "calls_in_transition": calls_tr,
        "rejected_share_after_change": round(rejected_after / calls_after, 4)
        if calls_after
        else 0.0,
        "last_rejection_after_change_s": round(last_rejection - t_change, 2)
        if last_rejection is not None and last_rejection >= t_change
        else None,
        "retries": last["retries"],
        "limit_exposed": any(s["limit"] is not None for s in samples),
        "limit_median_10s_before": limit_before,
        "limit_median_last_10s": limit_after,
        "limit_down_after_s": limit_s,
        "machine_cpu_busy_mean": mean_of(s["cpu_busy"] for s in samples),
        "lane_cpu_share": round(run.cpu_s / run.wall_s, 3) if run.wall_s > 0 else None,
        "windows": [[round(t, 2), round(r, 1)] for t, r in windows],
        "series": series_of(samples),
    }


# --- part C: the wave ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env()
    ministry = Ministry(args.capacity, args.latency_ms, args.queue_limit)
    backlog = math.ceil(ministry.rate * args.backlog_s)
    parts: dict[str, Any] = {}
    if "A" in args.parts:
        calibration = await calibrate(base, ministry, backlog, args.seed)
        parts["A"] = {"calibration": calibration} | await part_a(base, ministry, backlog, args.seed)
    if "B" in args.parts:
        parts["B"] = await part_b(base, ministry, args.seed, args.transition_s)
    if "C" in args.parts:
        rates = parse_rates(args.wave_rates)
        ministries = {
            name: Ministry(
                max(1, round(r * args.wave_latency_ms / 1000)),
                args.wave_latency_ms,
                max(1, round(r * args.wave_latency_ms / 1000) // 2),
            )
            for name, r in rates.items()
        }
        parts["C"] = await part_c(
            base, args.count, args.rate, args.seed, ministries, args.db_connections
        )
    return {
        "benchmark": "backpressure",
        "machine": machine_info(),
        "config": {
            "parts": sorted(args.parts),
            "capacity": ministry.capacity,
            "latency_ms": ministry.latency_ms,
            "queue_limit": ministry.queue_limit,
            "capacity_per_s": ministry.rate,
            "backlog_s": args.backlog_s,
            "backlog_tasks": backlog,
            "transition_s": args.transition_s,
            "count": args.count,
            "rate": args.rate,
            "wave_rates": args.wave_rates,
            "wave_latency_ms": args.wave_latency_ms,
            "seed": args.seed,
            "lane_prefetch": base.lane_prefetch,
            "lane_limit_initial": base.lane_limit_initial,
            "vhost": VHOST,
            "database": DATABASE,
        },
        "parts": parts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--parts", default="A,B,C", help="which parts to run: A, B, C")
    parser.add_argument("--capacity", type=int, default=10, help="A/B: Dukcapil calls at once (C)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="A/B: fixed latency L")
    parser.add_argument("--queue-limit", type=int, default=5, help="A/B: Dukcapil's queue")
    parser.add_argument("--backlog-s", type=float, default=40.0, help="A: backlog, s at C/L")
    parser.add_argument("--transition-s", type=float, default=30.0, help="B: s after the change")
    parser.add_argument("--count", type=int, default=80_000, help="C: registrations offered")
    parser.add_argument("--rate", type=float, default=1333.0, help="C: offered per second")
    parser.add_argument(
        "--wave-rates",
        default="dukcapil=100,dapodik=80,dtks=80",
        help="C: each ministry's capacity in calls/s",
    )
    parser.add_argument("--wave-latency-ms", type=float, default=100.0, help="C: fixed latency")
    parser.add_argument(
        "--db-connections",
        type=int,
        default=60,
        help="C: INTAKE_SUPERVISE_DB_CONNECTIONS (PostgreSQL is shared; it allows 100)",
    )
    parser.add_argument("--seed", type=int, default=11, help="population seed")
    args = parser.parse_args(argv)
    args.parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"A", "B", "C"}:
        parser.error("--parts: a comma-separated subset of A, B, C")
    if args.capacity < 2 or args.latency_ms <= 0 or args.count < 10 or args.rate <= 0:
        parser.error("--capacity >= 2, --latency-ms > 0, --count >= 10, --rate > 0")
    try:
        parse_rates(args.wave_rates)
    except ValueError as exc:
        parser.error(f"--wave-rates: {exc}")
    code, results = run_benchmark("backpressure", lambda: run(args), report)
    if results is None:
        return code
    if "C" in results["parts"] and not results["parts"]["C"]["audit"]["verified"]:
        print("benchmarks.backpressure: the loss audit failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
