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

**Part C: the wave.** ``--count`` registrations (default 80,000) of the synthetic population
(all valid, no repeated NIK) are offered at a constant ``--rate`` (default 1,333/s, the 2020
peak minute) open loop to ONE ``intake edge``, with the worker fleet started by ``intake
supervise persist dispatch dukcapil dapodik dtks`` and Dukcapil, Dapodik and DTKS simulated at
fixed capacities (default 100, 80 and 80 calls/s: capacity = rate x latency, latency 100 ms,
queue half the capacity). Each registration is a client of its own with a random
``Idempotency-Key``: a ``503`` is sent again after its ``Retry-After``, a timeout or a lost
connection after a jittered exponential backoff, always with the same key, so that every
registration is eventually accepted (see :func:`offer`). The email and phone lanes have no
workers (their tasks wait in their queues) and the photo check waits for an upload that never
comes: neither is part of the figure. Measured: 202s and 503s; the time from the first
scheduled registration to the moment the last registration had a final NIK result (Dukcapil
not found or mismatch; or a match and Dapodik and DTKS both final); the theoretical minimum
``max(accepted / dukcapil rate, matches / dapodik rate, matches / dtks rate)`` (matches: the
Dukcapil checks passed, i.e. the registrations that reach Dapodik and DTKS) and the ratio of the
two; each ministry's goodput as a share of its capacity while it had work (10 %-90 % of its
calls); the cores used by each of our processes, PostgreSQL, RabbitMQ and everything else on
the machine, until every registration was accepted and afterwards (:func:`cpu_by_role`: what
limited the run); and a loss audit: every id answered ``202`` is in the database exactly once,
and nothing else is (the run fails otherwise).

    .venv/bin/python -m benchmarks.backpressure [--parts A,B,C] [--count 80000 --rate 1333]
    .venv/bin/python -m benchmarks.backpressure --parts C --count 8000 --rate 400   # smaller
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks._support import (
    RESULTS_DIR,
    BenchError,
    machine_info,
    percentile,
    progress,
    run_benchmark,
)
from benchmarks.backpressure_report import FAST, report
from benchmarks.cpu import MachineCpu, cores_used, cpu_by_role
from benchmarks.loadgen import spawn
from benchmarks.ministry import Ministry, set_behaviour, sim_stats
from benchmarks.persist import cpu_seconds
from benchmarks.rig import Rig
from core.settings import Settings
from core.status import read_status
from intake.validation import today_wib
from simulators.population import Registrant, population

VHOST = "intake_bench_backpressure"
DATABASE = "intake_bench_backpressure"
LOG_DIR = RESULTS_DIR / "logs" / "backpressure"
NIK_LANES = ("dukcapil", "dapodik", "dtks")
PRIME_CONCURRENCY = 64
SAMPLE_S = 0.5
WINDOW_S = 2.0  # Part B's sliding goodput window
TOLERANCE = 0.10  # Part B: within +-10 % of the target goodput

# Registrations whose NIK checks are all final (Dukcapil failed, or Dukcapil passed and Dapodik
# and DTKS final): how many, and the last moment one became so.
_NIK_DONE_SQL = """
SELECT count(*) AS n, max(finished_at) AS last FROM (
    SELECT max(c.finished_at) AS finished_at
    FROM checks c
    WHERE c.check_name IN ('dukcapil', 'dapodik', 'dtks')
    GROUP BY c.registration_id
    HAVING bool_and(c.state IN ('passed', 'failed')) AND (
        bool_or(c.check_name = 'dukcapil' AND c.state = 'failed')
        OR count(*) FILTER (WHERE c.check_name IN ('dapodik', 'dtks')) = 2
    )
) AS done
"""

_LANE_PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS decided,
       count(*) FILTER (WHERE state = 'retrying' AND reason LIKE 'dead_lettered:%') AS dead,
       coalesce(sum(attempts), 0) AS retries
FROM checks WHERE check_name = 'dukcapil'
"""

_PIPELINE_PROGRESS_SQL = """
SELECT check_name,
       count(*) AS n,
       count(*) FILTER (WHERE finished_at IS NOT NULL) AS final,
       count(*) FILTER (WHERE state = 'passed') AS passed,
       count(*) FILTER (WHERE state = 'retrying' AND reason LIKE 'dead_lettered:%') AS dead,
       coalesce(sum(attempts), 0) AS retries
FROM checks WHERE check_name = ANY($1::text[]) GROUP BY check_name
"""


class WaveRig(Rig):
    """The rig of this benchmark, with its own vhost and database."""

    def __init__(self, base: Settings, name: str) -> None:
        super().__init__(base, name, VHOST, DATABASE, LOG_DIR)

    async def prime(self, people: Sequence[Registrant]) -> None:
        """Store every registration and publish its first checks' tasks: the persist worker,
        the dispatcher and the edge run; the forms are POSTed, 64 at a time."""
        self.stack.start("worker-persist", "worker", "persist")
        self.stack.start("worker-dispatch", "worker", "dispatch")
        await self.start_edge()
        statuses: collections.Counter[int] = collections.Counter()
        bodies = [orjson.dumps(p.form) for p in people]
        url = f"{self.base_url}/v1/registrations"
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()

        async def client(session: aiohttp.ClientSession) -> None:
            while bodies:
                body = bodies.pop()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                statuses[response.status] += 1

        connector = aiohttp.TCPConnector(limit=PRIME_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(PRIME_CONCURRENCY)))
        progress(
            f"  {len(people):,} POSTed in {time.perf_counter() - started:.1f} s: {dict(statuses)}"
        )
        if statuses[202] != len(people):
            raise BenchError(f"{self.name}: the edge accepted {statuses[202]}/{len(people)}")
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            await self.wait_count(
                connection,
                "initial checks published",
                "SELECT count(*) FROM checks WHERE dispatched_at IS NOT NULL",
                3 * len(people),  # email, phone, Dukcapil; the photo check waits for its upload
                180,
            )
        finally:
            await connection.close()


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


def _first(samples: Sequence[dict[str, Any]], key: str, at_least: float) -> dict[str, Any]:
    return next((s for s in samples if s[key] >= at_least), samples[-1])


def steady_goodput(samples: Sequence[dict[str, Any]], count: int) -> dict[str, float]:
    """Calls served per second between the samples at which 10 % and 90 % were decided. A run
    stopped before 90 % ends its window at its last sample, and starts it 5 s after the start
    if it never reached 10 %."""
    high = _first(samples, "decided", 0.9 * count)
    low = _first(samples, "decided", 0.1 * count)
    if low is high:
        low = _first(samples, "t", 5.0)
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
        "machine_cpu_busy_mean": _mean(s["cpu_busy"] for s in samples),
        "breaker_opened": max((int(s["breaker_opened"] or 0) for s in samples), default=0),
        "calls_at_simulator_max": max(at_sim) if at_sim else 0,
        "calls_at_simulator_median": sorted(at_sim)[len(at_sim) // 2] if at_sim else 0,
        "simulator_max_in_flight": int(final["max_in_flight"]),
        "simulator_max_queued": int(final["max_queued"]),
        "series": _series(samples),
    }


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def _median(values: Iterable[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def _series(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = (
        "t",
        "served",
        "rejected",
        "calls",
        "decided",
        "retries",
        "limit",
        "lane_inflight",
        "prefetch",
        "breaker",
        "sim_in_flight",
        "sim_queued",
        "cpu_busy",
    )
    return {key: [s[key] for s in samples] for key in keys}


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
    before = _first(samples, "t", t_change)
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
    limit_before = _median(
        s["limit"] for s in samples if t_change - 10 <= s["t"] < t_change and s["limit"]
    )
    limit_after = _median(s["limit"] for s in samples if s["t"] >= last["t"] - 10 and s["limit"])
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
    settled_at = _first(samples, "t", t_change + settled_s) if settled_s is not None else last
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
        "machine_cpu_busy_mean": _mean(s["cpu_busy"] for s in samples),
        "lane_cpu_share": round(run.cpu_s / run.wall_s, 3) if run.wall_s > 0 else None,
        "windows": [[round(t, 2), round(r, 1)] for t, r in windows],
        "series": _series(samples),
    }


# --- part C: the wave ---------------------------------------------------------------------------


async def watch_pipeline(
    rig: WaveRig,
    run_dir: Path,
    started: float,
    samples: list[dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    """Every second: each ministry's counters, the supervised workers' status files, the
    machine's CPU busy share."""
    cpu = MachineCpu()
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            sample: dict[str, Any] = {"t": round(time.monotonic() - started, 2)}
            for name in NIK_LANES:
                try:
                    stats = await sim_stats(session, rig.sim_url(name))
                except (aiohttp.ClientError, TimeoutError):
                    continue
                sample[name] = [stats["served"], stats["rejected_overload"], stats["calls"]]
            workers: dict[str, list[Any]] = {}
            for name in sorted(os.listdir(run_dir)):
                if not name.endswith(".json"):
                    continue
                path = run_dir / name
                status = read_status(path)
                if status is None:
                    continue
                kind = str(status.get("kind", path.stem.rsplit("-", 1)[0]))
                entry = workers.setdefault(kind, [0, 0.0, 0])
                entry[0] += 1
                limit = status.get("limit")
                if isinstance(limit, int | float):
                    entry[1] = round(entry[1] + float(limit), 2)
                if status.get("breaker") in ("open", "half_open"):
                    entry[2] += 1
            sample["workers"] = workers  # kind: [processes, sum of limits, breakers open]
            sample["cpu_busy"] = cpu.share()
            samples.append(sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def ministry_utilisation(
    samples: Sequence[dict[str, Any]], name: str, rate: float
) -> dict[str, Any]:
    """The ministry's goodput while it had work (between 10 % and 90 % of its served calls)
    as a share of its capacity."""
    series = [(s["t"], s[name][0], s[name][1], s[name][2]) for s in samples if name in s]
    if len(series) < 2 or series[-1][1] == 0:
        return {"served": series[-1][1] if series else 0}
    total = series[-1][1]
    low = next(p for p in series if p[1] >= 0.1 * total)
    high = next(p for p in series if p[1] >= 0.9 * total)
    per_s = (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else math.nan
    return {
        "served": total,
        "rejected_overload": series[-1][2],
        "calls": series[-1][3],
        "rejected_share": round(series[-1][2] / series[-1][3], 4) if series[-1][3] else 0.0,
        "goodput_per_s": round(per_s, 1),
        "capacity_per_s": round(rate, 1),
        "goodput_share": round(per_s / rate, 3),
        "window_s": [low[0], high[0]],
    }


async def part_c(
    base: Settings,
    count: int,
    rate: float,
    seed: int,
    ministries: dict[str, Ministry],
    db_budget: int,
) -> dict[str, Any]:
    today = today_wib()
    people = population(count, seed=seed, today=today, invalid_share=0, duplicate_share=0)
    truth_matches = sum(1 for p in people if p.truth.dukcapil == "match")
    kinds = ["persist", "dispatch", *NIK_LANES]
    flags = [flag for name, m in ministries.items() for flag in m.flags(name)]
    async with WaveRig(base.replace(supervise_db_connections=db_budget), "wave") as rig:
        rig.stop_timeout_s = 120.0
        run_dir = rig.log_dir / "run"
        run_dir.mkdir()
        await rig.migrate()
        await rig.start_simulators(count, seed, today, flags)
        rig.stack.start(
            "supervise",
            "supervise",
            *kinds,
            f"--run-dir={run_dir}",
            f"--log-dir={rig.log_dir / 'workers'}",
        )
        await rig.start_edge()
        await asyncio.sleep(5)  # the first workers start (their pools, their queues)
        rig.check_alive()
        samples: list[dict[str, Any]] = []
        progress_rows: list[dict[str, Any]] = []
        stop = asyncio.Event()
        started = time.monotonic()
        watcher = asyncio.create_task(watch_pipeline(rig, run_dir, started, samples, stop))
        connection = await asyncpg.connect(rig.settings.database_url)
        cpu_marks: list[tuple[float, dict[str, float]]] = [(time.monotonic(), cpu_by_role())]
        try:
            progress(f"  offering {count:,} registrations at {rate:,.0f}/s")
            # The population's forms (all valid, no repeated NIK: the `peak` profile's), each
            # registrant retrying a 503 after its Retry-After (benchmarks.loadgen).
            offered = await spawn(
                rig.base_url, "peak", rig.log_dir, count=count, rate=rate, seed=seed
            )
            tally = offered.result
            start_wall = tally["start_wall"] + (tally["first_send_s"] or 0.0)
            answered_s = (tally["last_accepted_s"] or 0.0) - (tally["first_send_s"] or 0.0)
            cpu_marks.append((time.monotonic(), cpu_by_role()))
            accepted = offered.ids
            progress(
                f"  offered: {len(accepted):,} accepted after {answered_s:.1f} s; first answers "
                f"{tally['first_answers']}, all answers {tally['answers']}"
            )
            # Until every accepted registration has a final NIK result, or nothing moves.
            theoretical = count / ministries["dukcapil"].rate
            deadline = time.monotonic() + 4 * theoretical + 600
            last_done, last_moved = -1, time.monotonic()
            while True:
                rig.check_alive()
                row = await connection.fetchrow(_NIK_DONE_SQL)
                assert row is not None
                lanes = await connection.fetch(_PIPELINE_PROGRESS_SQL, list(NIK_LANES))
                stored = int(await connection.fetchval("SELECT count(*) FROM registrations"))
                done = int(row["n"])
                now = time.monotonic()
                progress_rows.append(
                    {
                        "t": round(now - started, 1),
                        "stored": stored,
                        "nik_final": done,
                        **{
                            r["check_name"]: [int(r["n"]), int(r["final"]), int(r["dead"])]
                            for r in lanes
                        },
                    }
                )
                if len(progress_rows) % 6 == 1:
                    finals = {r["check_name"]: int(r["final"]) for r in lanes}
                    progress(
                        f"  t={now - started:.0f}s stored {stored:,}, NIK final {done:,}/"
                        f"{len(accepted):,}, lanes final {finals}"
                    )
                if done != last_done:
                    last_done, last_moved = done, now
                dead = sum(int(r["dead"]) for r in lanes)
                if done + dead >= len(accepted) and stored >= len(accepted):
                    break
                if now - last_moved > 180 or now > deadline:
                    progress(f"  giving up: {done:,}/{len(accepted):,} NIK results final")
                    break
                await asyncio.sleep(5)
            cpu_marks.append((time.monotonic(), cpu_by_role()))
            nik = await connection.fetchrow(_NIK_DONE_SQL)
            assert nik is not None
            lanes = await connection.fetch(_PIPELINE_PROGRESS_SQL, list(NIK_LANES))
            ids = await connection.fetch("SELECT id::text AS id FROM registrations")
            outcomes = await connection.fetch(
                "SELECT status, reject_reason, count(*) AS n FROM registrations GROUP BY 1, 2"
            )
        finally:
            stop.set()
            await watcher
            await connection.close()
        decisions = _supervisor_decisions(rig.log_dir / "supervise.log")

    stored_ids = collections.Counter(r["id"] for r in ids)
    accepted_set = set(accepted)
    audit = {
        "accepted": len(accepted),
        "accepted_distinct": len(accepted_set),
        "stored": sum(stored_ids.values()),
        "missing": len(accepted_set - set(stored_ids)),
        "stored_twice": sum(1 for n in stored_ids.values() if n > 1),
        "stored_not_accepted": len(set(stored_ids) - accepted_set),
    }
    audit["verified"] = (
        audit["missing"] == 0
        and audit["stored_twice"] == 0
        and audit["stored_not_accepted"] == 0
        and audit["accepted_distinct"] == audit["accepted"] == count
    )
    per_lane: dict[str, dict[str, int]] = {}
    for r in lanes:
        per_lane[str(r["check_name"])] = {
            key: int(value) for key, value in dict(r).items() if key != "check_name"
        }
    matches = per_lane.get("dukcapil", {}).get("passed", 0)
    rates = {name: m.rate for name, m in ministries.items()}
    minimum = {
        "dukcapil": len(accepted) / rates["dukcapil"],
        "dapodik": matches / rates["dapodik"],
        "dtks": matches / rates["dtks"],
    }
    slowest = max(minimum, key=lambda k: minimum[k])
    last_final = nik["last"]
    measured_s = last_final.timestamp() - start_wall if last_final is not None else None
    cpu = [s["cpu_busy"] for s in samples if s.get("cpu_busy") is not None]
    offer_end = count / rate
    retry_after = collections.Counter({float(k): int(v) for k, v in tally["retry_after_s"].items()})
    return {
        "count": count,
        "rate": rate,
        "ministries": {name: m.describe() for name, m in ministries.items()},
        "worker_kinds": kinds,
        "supervise_db_connections": db_budget,
        "first_answers": tally["first_answers"],
        "all_answers": tally["answers"],
        "answers_503": tally["answers"].get("503", 0),
        "retry_after_s": {
            "count": retry_after.total(),
            "median": percentile(sorted(retry_after.elements()), 50) if retry_after else None,
            "max": max(retry_after) if retry_after else None,
        },
        "gave_up": tally["outcomes"].get("gave_up", 0),
        "accepted": len(accepted),
        "all_accepted_after_s": round(answered_s, 1),
        "accept_latency_ms": tally["latency_ms"],
        "accept_latency_hdr": tally["latency_hdr"],
        "send_lag_ms": tally["send_lag_ms"],
        "max_inflight": tally["max_inflight"],
        "generator_cpu_share": tally["generator"]["cpu_share"],
        "nik_final": int(nik["n"]),
        "dukcapil_matches": matches,
        "ground_truth_matches": truth_matches,
        "lanes": per_lane,
        "outcomes": {f"{r['status']}:{r['reject_reason']}": int(r["n"]) for r in outcomes},
        "first_to_last_nik_result_s": round(measured_s, 1) if measured_s is not None else None,
        "theoretical_minimum_s": {k: round(v, 1) for k, v in minimum.items()},
        "slowest": slowest,
        "minimum_s": round(minimum[slowest], 1),
        "measured_over_minimum": round(measured_s / minimum[slowest], 3)
        if measured_s is not None
        else None,
        "ministry_utilisation": {
            name: ministry_utilisation(samples, name, rates[name]) for name in NIK_LANES
        },
        "cpu_busy_share": {
            "while_offering": round(
                sum(
                    s["cpu_busy"]
                    for s in samples
                    if s.get("cpu_busy") is not None and s["t"] <= offer_end + 5
                )
                / max(
                    1,
                    sum(
                        1
                        for s in samples
                        if s.get("cpu_busy") is not None and s["t"] <= offer_end + 5
                    ),
                ),
                3,
            ),
            "whole_run_mean": round(sum(cpu) / len(cpu), 3) if cpu else None,
            "whole_run_median": round(sorted(cpu)[len(cpu) // 2], 3) if cpu else None,
        },
        # From the workers' status files (the dispatcher writes none: it is always one).
        "cores_used": {
            "until_all_accepted": cores_used(
                cpu_marks[0][1], cpu_marks[1][1], cpu_marks[1][0] - cpu_marks[0][0]
            ),
            "after_all_accepted": cores_used(
                cpu_marks[1][1], cpu_marks[-1][1], cpu_marks[-1][0] - cpu_marks[1][0]
            ),
        },
        "max_workers": {
            kind: max((s["workers"].get(kind, [0])[0] for s in samples), default=0)
            for kind in kinds
            if kind != "dispatch"
        },
        "scaling_decisions": decisions,
        "audit": audit,
        "samples": samples,
        "progress": progress_rows,
    }


def _supervisor_decisions(path: Path) -> list[dict[str, Any]]:
    """The supervisor's scaling log lines (kind, from, to, reason), in order."""
    decisions = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("msg") == "scaling":
            fields = record.get("fields") or {
                k: record.get(k) for k in ("kind", "from", "to", "reason")
            }
            decisions.append(
                {k: fields.get(k) for k in ("kind", "from", "to", "reason", "depth")}
                | {"time": record.get("time") or record.get("ts")}
            )
    return decisions


def _parse_rates(text: str) -> dict[str, float]:
    rates = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in NIK_LANES:
            raise ValueError(f"unknown ministry {name!r}")
        rates[name.strip()] = float(value)
    if set(rates) != set(NIK_LANES):
        raise ValueError(f"give a rate for each of {', '.join(NIK_LANES)}")
    return rates


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
        rates = _parse_rates(args.wave_rates)
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
        _parse_rates(args.wave_rates)
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
