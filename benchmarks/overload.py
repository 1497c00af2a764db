"""Goodput and latency against offered load, past capacity: the edge and two naive designs.

Each design runs as one process capped to the same share of one core (``--quota``, a cgroup,
:mod:`benchmarks.quota`) on CPU 0; the load generator has CPU 1 to itself, and its ceiling is
measured beside each design's runs. The edge's **capacity** is measured first: closed loop,
the registrations it accepts per second with the CPU it is given. Then every design is offered
0.5, 1, 2, 3 and 5 times that rate, open loop, for ``--duration`` seconds each, by people
(:mod:`benchmarks.loadgen`): a ``503`` is retried after its ``Retry-After``, a request not
answered within their patience (10 s) is abandoned and sent again, always with the same
``Idempotency-Key``; a registrant still not accepted ``--give-up`` seconds after the click
gives up.

- ``edge``: ``intake edge``, with the persist worker storing what it accepts;
- ``naive-amqp``: :mod:`benchmarks.naive_amqp`, an aio-pika handler with one confirm per
  registration and no admission control, into the same queue and persist worker;
- ``naive``: :mod:`benchmarks.naive`, the synchronous design (PostgreSQL and a Dukcapil call
  inside the request);
- ``edge-lb``: the same edge behind a refusal tier (:mod:`benchmarks.refusal_tier`, HAProxy
  outside the edge's quota, as a load balancer has CPU of its own): the tier keeps the edge at
  a bounded number of requests in flight and refuses the excess itself.

For each run: **goodput** (``202`` per second over the offer's steady part, its first second
left out), the share of ``503`` among the answers, the first answer's p50/p99 and the time to
the final ``202`` p50/p99 (from the click), attempts per registrant (mean, max), timeouts and
those who gave up. The cost of an accepted and of a shed registration to the edge is measured
too (CPU seconds of the process over the answers, each at saturation: closed loop, and closed
loop against an edge that sheds everything). The edge's registrations are audited: every
``202`` stored exactly once. A PNG shows goodput and the first answer's p99 against offered
load. Exit 1 on a failed audit; never on a time.

    sudo python -m benchmarks.overload [--quota 0.25] [--duration 10] [--designs edge,naive]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks import refusal_tier
from benchmarks._support import (
    RESULTS_DIR,
    BenchError,
    free_port,
    machine_info,
    markdown_table,
    progress,
    require_cores,
    run_benchmark,
)
from benchmarks.loadgen import Offered, spawn
from benchmarks.quota import CpuQuota
from benchmarks.rig import Rig
from benchmarks.wave import ceiling
from core.settings import Settings
from intake.validation import today_wib

DESIGNS = ("edge", "naive-amqp", "naive", "edge-lb")
MULTIPLES = (0.5, 1.0, 2.0, 3.0, 5.0)
VHOST = DATABASE = "intake_bench_overload"
SERVER_CPU, GENERATOR_CPU = 0, 1
# The generator's keep-alive connections, as a load balancer's pool towards one edge process:
# a registrant waits for a free one (counted in their latency) when all carry a request.
CONNECTIONS = 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclasses.dataclass
class Server:
    design: str
    url: str
    process: subprocess.Popen[bytes]
    metrics_url: str | None
    tier: subprocess.Popen[bytes] | None = None  # the refusal tier in front (edge-lb)

    async def shed(self) -> dict[str, float]:
        """The edge's registrations shed so far, by reason (its /metrics)."""
        if self.metrics_url is None:
            return {}
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            text = await response.text()
        shed = {}
        for line in text.splitlines():
            if line.startswith('intake_registrations_shed_total{reason="'):
                labels, _, value = line.rpartition(" ")
                reason = labels.split('"')[1]
                if float(value):
                    shed[reason] = float(value)
        return shed

    @property
    def pid(self) -> int:
        return self.process.pid


async def start(
    rig: Rig, design: str, quota: CpuQuota, settings: Settings, ready: str = "/readyz"
) -> Server:
    """One design's server on CPU 0, in the quota's cgroup, once ``ready`` answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    python = ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m"]
    metrics_url = None
    if design in ("edge", "edge-lb"):
        argv = [*python, "cli", "edge"]
        metrics_port = free_port()
        settings = settings.replace(edge_port=port, metrics_port=metrics_port)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    elif design == "naive-amqp":
        argv = [*python, "benchmarks.naive_amqp", f"--port={port}"]
    elif design == "refusal":
        argv = [*python, "benchmarks.refusal", f"--port={port}"]
    else:
        argv = [
            *python,
            "benchmarks.naive",
            f"--port={port}",
            f"--database-url={settings.database_url}",
            f"--dukcapil-url={rig.sim_url('dukcapil')}",
        ]
    process = rig.stack.start_program(f"{design}-{port}", argv, settings=settings)
    quota.add(process.pid)
    await rig.wait_http(f"{url}{ready}", 60)
    if design != "edge-lb":
        return Server(design, url, process, metrics_url)
    # The refusal tier: on the server's CPU, outside the quota (a load balancer's own CPU).
    tier_port = free_port()
    config = rig.stack.log_dir / f"haproxy-{tier_port}.cfg"
    config.write_text(refusal_tier.render(refusal_tier.TierConfig(tier_port, (url[7:],))))
    tier = rig.stack.start_program(
        f"haproxy-{tier_port}",
        ["taskset", "-c", str(SERVER_CPU), "haproxy", "-db", "-f", str(config)],
    )
    tier_url = f"http://127.0.0.1:{tier_port}"
    await rig.wait_http(f"{tier_url}{ready}", 60)
    return Server(design, tier_url, process, metrics_url, tier)


async def stop(rig: Rig, server: Server) -> None:
    for process in (server.tier, server.process):
        if process is None:
            continue
        rig.stack.forget(process)
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def closed_loop(
    server: Server, work_dir: Path, seconds: float, connections: int
) -> dict[str, Any]:
    """The generator closed loop against ``server``: answers per second and CPU per answer."""
    before = cpu_s(server.pid)
    offered = await spawn(
        server.url,
        "peak",
        work_dir,
        ceiling_s=seconds,
        connections=connections,
        cpu=GENERATOR_CPU,
        retry=False,
        seed=99,
    )
    used = cpu_s(server.pid) - before
    result = offered.result
    answers = result["answers"]
    counted = sum(answers.values())
    return {
        "answers": answers,
        "per_s": round(counted / result["elapsed_s"], 1),
        "accepted_per_s": result["answers_202_per_s"],
        "cpu_s": round(used, 3),
        "cpu_us_per_answer": round(used / max(counted, 1) * 1e6, 1),
        "generator_cpu_share": result["generator"]["cpu_share"],
        "ids": offered.ids,
    }


def summarise(offered: Offered, rate: float, multiple: float, duration_s: float) -> dict[str, Any]:
    result = offered.result
    steady = [s for s in result["series"] if 1.0 < s["t"] <= duration_s + 0.5]
    goodput = sum(s["accepted"] for s in steady) / max(len(steady), 1)
    answers = result["answers"]
    total = sum(answers.values())
    first, final = result["first_answer_latency_ms"], result["latency_ms"]
    return {
        "multiple": multiple,
        "offered_per_s": round(rate, 1),
        "registrants": result["scheduled"],
        "goodput_per_s": round(goodput, 1),
        "accepted": result["accepted"],
        "answers": answers,
        "share_503": round(answers.get("503", 0) / max(total, 1), 4),
        "first_answer_ms": {"p50": first["p50"], "p99": first["p99"], "max": first["max"]},
        "final_202_ms": {"p50": final["p50"], "p99": final["p99"], "max": final["max"]},
        "attempts": result["attempts"],
        "timeouts": result["timeouts"],
        "gave_up": result["outcomes"].get("gave_up", 0),
        "last_accepted_s": result["last_accepted_s"],
        "retry_after_s": result["retry_after_s"],
        "generator_cpu_share": result["generator"]["cpu_share"],
        "max_inflight": result["max_inflight"],
        "series": [
            {k: s.get(k) for k in ("t", "offered", "sent", "accepted", "shed", "errors")}
            | {"p99_ms": (s.get("latency_ms") or {}).get("p99")}
            for s in result["series"]
        ],
    }


async def wait_stored(pool: asyncpg.Pool, rig: Rig, target: int, stall_s: float = 60.0) -> int:
    """Until the registrations table holds ``target`` rows, or none more for ``stall_s``."""
    last, moved = -1, time.monotonic()
    while True:
        rig.check_alive()
        stored = int(await pool.fetchval("SELECT count(*) FROM registrations"))
        if stored >= target:
            return stored
        if stored != last:
            last, moved = stored, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            return stored
        await asyncio.sleep(0.5)


async def audit(
    pool: asyncpg.Pool, ids: Sequence[str], rows_before: int, deadline_sheds: float = 0
) -> dict[str, Any]:
    """Every ``202`` id of a design stored exactly once; no other row stored meanwhile but
    registrations answered ``503 deadline`` (the confirm came after the deadline: stored, and
    its registrant, who gave up before a retry was answered ``202``, was never told)."""
    accepted = set(ids)
    rows = await pool.fetch(
        "SELECT id::text AS id, count(*) AS n FROM registrations"
        " WHERE id = ANY($1::uuid[]) GROUP BY id",
        list(accepted),
    )
    stored = {r["id"]: int(r["n"]) for r in rows}
    total = int(await pool.fetchval("SELECT count(*) FROM registrations"))
    result = {
        "accepted": len(ids),
        "accepted_distinct": len(accepted),
        "stored": sum(stored.values()),
        "missing": len(accepted - stored.keys()),
        "stored_twice": sum(1 for n in stored.values() if n > 1),
        "stored_not_accepted": total - rows_before - sum(stored.values()),
    }
    result["deadline_sheds"] = int(deadline_sheds)
    result["verified"] = (
        result["missing"] == 0
        and result["stored_twice"] == 0
        and 0 <= result["stored_not_accepted"] <= deadline_sheds
        and result["accepted_distinct"] == result["accepted"]
    )
    return result


async def run_design(
    rig: Rig,
    pool: asyncpg.Pool,
    design: str,
    quota: CpuQuota,
    capacity_per_s: float,
    args: argparse.Namespace,
    work_dir: Path,
) -> dict[str, Any]:
    progress(f"{design}: the generator's ceiling (closed loop against bare aiohttp, CPU 0)")
    limit = await ceiling(work_dir, 256, 3.0)
    progress(f"  {limit['answers_per_s']:,.0f} requests/s")
    rows_before = int(await pool.fetchval("SELECT count(*) FROM registrations"))
    server = await start(rig, design, quota, rig.settings)
    runs, ids = [], []
    try:
        for index, multiple in enumerate(args.multiples):
            rate = multiple * capacity_per_s
            count = round(rate * args.duration)
            progress(f"{design}: {multiple:g}x = {rate:,.0f}/s for {args.duration:g} s")
            before = cpu_s(server.pid)
            offered = await spawn(
                server.url,
                "peak",
                work_dir,
                count=count,
                rate=rate,
                connections=CONNECTIONS,
                seed=1000 * (DESIGNS.index(design) + 1) + index,
                retry=True,
                timeout_s=10.0,
                cpu=GENERATOR_CPU,
                give_up_s=args.give_up,
            )
            run = summarise(offered, rate, multiple, args.duration)
            run["server_cpu_s"] = round(cpu_s(server.pid) - before, 2)
            runs.append(run)
            ids += offered.ids
            progress(
                f"  goodput {run['goodput_per_s']:,.0f}/s, 503 {run['share_503']:.0%}, first "
                f"answer p99 {run['first_answer_ms']['p99']} ms, timeouts {run['timeouts']:,}, "
                f"attempts mean {run['attempts']['mean']} max {run['attempts']['max']}"
            )
            if design != "naive":
                await wait_stored(pool, rig, rows_before + len(ids))
            await asyncio.sleep(2.0)
        shed = await server.shed()
    finally:
        await stop(rig, server)
    outcome: dict[str, Any] = {"ceiling": limit, "runs": runs, "shed_by_reason": shed}
    if design == "naive":
        stored = int(await pool.fetchval("SELECT count(*) FROM naive_registrations"))
        outcome["stored"] = {"accepted": len(ids), "rows": stored}
    else:
        await wait_stored(pool, rig, rows_before + len(ids))
        # The edge's promise is audited ("audit": make bench lists it); the naive edge makes
        # none, and what it stored is reported as such.
        key = "audit" if design in ("edge", "edge-lb") else "stored_against_202s"
        outcome[key] = await audit(pool, ids, rows_before, shed.get("deadline", 0))
        progress(f"  {key}: {outcome[key]}")
    return outcome


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    require_cores(2)
    base = Settings.from_env()
    work_dir = RESULTS_DIR / "logs" / "overload"
    results: dict[str, Any] = {
        "machine": machine_info(),
        "quota_of_one_core": args.quota,
        "duration_s": args.duration,
        "multiples": list(args.multiples),
        "give_up_s": args.give_up,
        "designs": {},
    }
    with CpuQuota(args.quota) as quota:
        async with Rig(base, "overload", VHOST, DATABASE, work_dir) as rig:
            rig.stop_timeout_s = 60.0
            await rig.migrate()
            await rig.start_simulators(1_000, 7, today_wib(), [])
            rig.stack.start_program(
                "persist",
                ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "cli", "worker"],
            )
            pool = await asyncpg.create_pool(rig.settings.database_url, min_size=1, max_size=2)
            try:
                results["costs"] = await costs(rig, pool, quota, work_dir)
                capacity = results["costs"]["capacity_per_s"]
                for design in args.designs:
                    results["designs"][design] = await run_design(
                        rig, pool, design, quota, capacity, args, work_dir
                    )
                    rig.check_alive()
            finally:
                await pool.close()
            results["throttled"] = quota.throttled()
    results["plot"] = str(plot(results, RESULTS_DIR / "overload.png"))
    results["ratios"] = ratios(results)
    # The edge's promise is audited; the naive edge's audit is reported (it stores what its
    # clients gave up on: the design's flaw, which the comparison shows).
    edge_audits = [
        results["designs"].get(d, {}).get("audit", {}).get("verified", True)
        for d in ("edge", "edge-lb")
    ]
    edge_audits.append(results["costs"]["capacity_audit"]["verified"])
    results["verified"] = all(edge_audits)
    if not results["verified"]:
        raise BenchError(f"the edge's loss audit failed: {results}")
    return results


async def costs(rig: Rig, pool: asyncpg.Pool, quota: CpuQuota, work_dir: Path) -> dict[str, Any]:
    """The edge's capacity with its quota, and its CPU per accepted and per shed registration,
    each at saturation (closed loop)."""
    progress("edge: capacity (closed loop, 64 connections, 8 s)")
    rows_before = int(await pool.fetchval("SELECT count(*) FROM registrations"))
    server = await start(rig, "edge", quota, rig.settings)
    try:
        accepted = await closed_loop(server, work_dir, 8.0, 64)
    finally:
        await stop(rig, server)
    ids = accepted.pop("ids")
    await wait_stored(pool, rig, rows_before + len(ids))
    capacity_audit = await audit(pool, ids, rows_before)
    progress(f"  {accepted['accepted_per_s']:,.0f}/s, {accepted['cpu_us_per_answer']} µs each")
    progress("edge: the cost of a shed (an edge whose broker is unreachable sheds everything)")
    unreachable = rig.settings.replace(amqp_url="amqp://guest:guest@127.0.0.1:1/none")
    # It never gets ready: it sheds every registration (broker_unreachable), early, which is
    # the shortest path a registration takes through it.
    server = await start(rig, "edge", quota, unreachable, ready="/healthz")
    try:
        shed = await closed_loop(server, work_dir, 5.0, 256)
    finally:
        await stop(rig, server)
    shed.pop("ids")
    progress(f"  {shed['per_s']:,.0f}/s, {shed['cpu_us_per_answer']} µs each")
    progress("the floor: the cheapest refusal in Python (benchmarks.refusal), the same quota")
    server = await start(rig, "refusal", quota, rig.settings)
    try:
        floor = await closed_loop(server, work_dir, 5.0, 256)
    finally:
        await stop(rig, server)
    floor.pop("ids")
    progress(f"  {floor['per_s']:,.0f}/s, {floor['cpu_us_per_answer']} µs each")
    accepted_us = max(accepted["cpu_us_per_answer"], 1e-9)
    return {
        "capacity_per_s": accepted["accepted_per_s"],
        "accepted": accepted,
        "shed": shed,
        "shed_over_accepted_cpu": round(shed["cpu_us_per_answer"] / accepted_us, 4),
        "refusal_floor": floor,
        "floor_over_accepted_cpu": round(floor["cpu_us_per_answer"] / accepted_us, 4),
        "bound": {
            "edge_shed": bounds(shed["cpu_us_per_answer"] / accepted_us),
            "refusal_floor": bounds(floor["cpu_us_per_answer"] / accepted_us),
        },
        "capacity_audit": capacity_audit,
    }


def goodput_bound(multiple: float, refusal_over_acceptance: float) -> float:
    """The most a server refusing at a cost of ``refusal_over_acceptance`` (CPU of a refusal
    over CPU of an acceptance, ``r``) can accept at ``multiple`` (``m``) times its capacity
    ``C``, as a share of ``C``: with every CPU second spent on ``g`` acceptances and
    ``m C - g`` refusals, ``g a + (m C - g) r a = C a``, so ``g / C = (1 - m r) / (1 - r)``.
    The best case: first attempts only, no retry in the offer's window, no time idle."""
    r = refusal_over_acceptance
    if multiple <= 1:
        return 1.0
    if r >= 1:
        return 0.0
    return max(0.0, (1 - multiple * r) / (1 - r))


def bounds(refusal_over_acceptance: float) -> dict[str, float]:
    return {
        f"{m:g}x": round(goodput_bound(m, refusal_over_acceptance), 3) for m in MULTIPLES if m > 1
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each design's goodput at each load over the edge's goodput at 1x (over its own at 1x
    when the edge did not run)."""

    def at_one(design: str) -> float | None:
        runs = results["designs"].get(design, {}).get("runs", [])
        return next((r["goodput_per_s"] for r in runs if r["multiple"] == 1.0), None)

    edge_at_one = at_one("edge")
    out = {}
    for design, d in results["designs"].items():
        reference = edge_at_one or at_one(design)
        if reference:
            out[design] = {
                f"{r['multiple']:g}x": round(r["goodput_per_s"] / reference, 3) for r in d["runs"]
            }
    return out


def plot(results: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12.0, 4.5), dpi=100)
    goodput, latency = figure.subplots(1, 2)
    for design, data in results["designs"].items():
        offered = [r["offered_per_s"] for r in data["runs"]]
        goodput.plot(offered, [r["goodput_per_s"] for r in data["runs"]], "o-", label=design)
        p99 = [r["first_answer_ms"]["p99"] or float("nan") for r in data["runs"]]
        latency.plot(offered, p99, "o-", label=design)
    capacity = results["costs"]["capacity_per_s"]
    top = max(
        (r["offered_per_s"] for d in results["designs"].values() for r in d["runs"]), default=1
    )
    goodput.plot([0, top], [0, top], ":", color="grey", label="offered")
    goodput.axhline(capacity, color="grey", linestyle="--", label="edge capacity")
    goodput.set_xlabel("offered registrations per second (first attempts)")
    goodput.set_ylabel("accepted (202) per second")
    goodput.set_title(f"goodput, each design on {results['quota_of_one_core']:.0%} of a core")
    goodput.legend()
    latency.axhline(1000, color="grey", linestyle="--", label="1 s")
    latency.set_yscale("log")
    latency.set_xlabel("offered registrations per second (first attempts)")
    latency.set_ylabel("first answer p99 (ms)")
    latency.set_title("time to the first answer, p99")
    latency.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
    return path


def report(results: dict[str, Any]) -> str:
    costs = results["costs"]
    lines = [
        f"# Overload: each design on {results['quota_of_one_core']:.0%} of one core",
        "",
        f"Edge capacity: **{costs['capacity_per_s']:,.0f} registrations/s** (closed loop). "
        f"CPU per accepted registration {costs['accepted']['cpu_us_per_answer']} µs, per shed "
        f"one {costs['shed']['cpu_us_per_answer']} µs: a shed costs "
        f"**{costs['shed_over_accepted_cpu']:.3f}** of an accepted one. The cheapest refusal "
        f"in Python (`benchmarks.refusal`, the same quota) "
        f"{costs['refusal_floor']['cpu_us_per_answer']} µs: "
        f"**{costs['floor_over_accepted_cpu']:.3f}** of an acceptance.",
        "",
        "The most any server refusing at that cost can accept at each load, as a share of its "
        "capacity (first attempts only, no retries in the window; `goodput_bound`): "
        f"with the edge's shed {costs['bound']['edge_shed']}; with the floor "
        f"{costs['bound']['refusal_floor']}.",
        "",
    ]
    header = [
        "design",
        "load",
        "offered/s",
        "goodput/s",
        "/ edge 1x",
        "503 share",
        "first answer p50 / p99 ms",
        "final 202 p50 / p99 ms",
        "attempts mean / max",
        "timeouts",
        "gave up",
        "ceiling/s",
    ]
    rows = []
    for design, data in results["designs"].items():
        for run in data["runs"]:
            ratio = results["ratios"].get(design, {}).get(f"{run['multiple']:g}x")
            rows.append(
                [
                    design,
                    f"{run['multiple']:g}x",
                    f"{run['offered_per_s']:,.0f}",
                    f"{run['goodput_per_s']:,.0f}",
                    "-" if ratio is None else f"{ratio:.2f}",
                    f"{run['share_503']:.1%}",
                    f"{run['first_answer_ms']['p50']} / {run['first_answer_ms']['p99']}",
                    f"{run['final_202_ms']['p50']} / {run['final_202_ms']['p99']}",
                    f"{run['attempts']['mean']} / {run['attempts']['max']}",
                    f"{run['timeouts']:,}",
                    f"{run['gave_up']:,}",
                    f"{data['ceiling']['answers_per_s']:,.0f}",
                ]
            )
    lines.append(markdown_table(header, rows))
    for design, data in results["designs"].items():
        if "audit" in data:
            lines.append(f"\n{design} loss audit: {data['audit']}")
        if "stored_against_202s" in data:
            lines.append(
                f"\n{design}, what it stored against its 202s: {data['stored_against_202s']}"
            )
        if "stored" in data:
            lines.append(f"\n{design}: {data['stored']}")
    lines.append(f"\nplot: {results['plot']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quota", type=float, default=0.25, help="share of one core")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each offer")
    parser.add_argument("--give-up", type=float, default=60.0, help="a registrant's, seconds")
    parser.add_argument(
        "--multiples", default=",".join(f"{m:g}" for m in MULTIPLES), help="of the capacity"
    )
    parser.add_argument("--designs", default=",".join(DESIGNS))
    args = parser.parse_args(argv)
    args.multiples = [float(m) for m in args.multiples.split(",")]
    args.designs = [d for d in args.designs.split(",") if d]
    if set(args.designs) - set(DESIGNS):
        parser.error(f"--designs: of {', '.join(DESIGNS)}")
    code, _ = run_benchmark("overload", lambda: measure(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
