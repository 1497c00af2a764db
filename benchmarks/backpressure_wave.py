"""Part C of ``benchmarks.backpressure``: the whole NIK pipeline under the 2020 peak minute.

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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks._support import (
    NIK_DONE_SQL,
    percentile,
    progress,
)
from benchmarks.backpressure_rig import (
    NIK_LANES,
    WaveRig,
)
from benchmarks.cpu import MachineCpu, cores_used, cpu_by_role
from benchmarks.loadgen import spawn
from benchmarks.ministry import Ministry, sim_stats
from core.settings import Settings
from core.status import read_status
from intake.validation import today_wib
from simulators.population import population

_PIPELINE_PROGRESS_SQL = """
SELECT check_name,
       count(*) AS n,
       count(*) FILTER (WHERE finished_at IS NOT NULL) AS final,
       count(*) FILTER (WHERE state = 'passed') AS passed,
       count(*) FILTER (WHERE state = 'retrying' AND reason LIKE 'dead_lettered:%') AS dead,
       coalesce(sum(attempts), 0) AS retries
FROM checks WHERE check_name = ANY($1::text[]) GROUP BY check_name
"""


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
        rig.start_supervisor(kinds, run_dir)
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
                row = await connection.fetchrow(NIK_DONE_SQL)
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
            nik = await connection.fetchrow(NIK_DONE_SQL)
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


def parse_rates(text: str) -> dict[str, float]:
    rates = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in NIK_LANES:
            raise ValueError(f"unknown ministry {name!r}")
        rates[name.strip()] = float(value)
    if set(rates) != set(NIK_LANES):
        raise ValueError(f"give a rate for each of {', '.join(NIK_LANES)}")
    return rates
