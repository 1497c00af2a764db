"""Edge throughput and latency, measured side by side with a bare aiohttp server.

What is measured, in one run on a 2-core machine:

1. **Accepted registrations per second** of ONE ``intake edge`` process pinned to core 0,
   each answered ``202`` only after RabbitMQ confirmed it, next to :mod:`benchmarks.bare` (parse
   the same JSON, answer 202, publish nothing) pinned to the same core. The load generator is
   ``wrk`` pinned to core 1 with a Lua script that POSTs one valid registration and counts
   the responses by status: only 202s count as accepted. Runs alternate (bare, edge, bare,
   edge, ...; each round starts one target later than the last, so that no target always runs
   first) after a warm-up of each; the medians and their ratio edge/bare are reported
   (goal: >= 0.75; with ``--access-log``, >= 0.70 with the access log on). With ``--shed``
   a third target, an edge with ``INTAKE_EDGE_MAX_PENDING=0`` that sheds every registration
   at admission (a ``503`` before the body is read), is measured
   in the same rounds: its ``503`` answers per second over bare's ``202`` per second is the
   shed/bare ratio, what a shed request costs next to the cheapest possible answer. With
   ``--baseline DIR`` an edge run from the code in ``DIR`` (another checkout of the project,
   e.g. ``git archive REV | tar -x -C DIR``; it is put first on ``PYTHONPATH``) is measured in
   the same rounds too: the cost of a change, before and after, in the same conditions. With
   ``--limits`` two more edges are measured in the same rounds: one with the limits per NIK
   and per client off (``edge-no-limits``), and one with them on and one NIK at its limit
   (``edge+nik-blocked``: the blocked set is not empty, so every registration's NIK is
   HMAC'd and looked up): the limits' cost on the accept path, edge/edge-no-limits.
2. **Latency at a constant offered rate** (default 1,333 registrations/s, the seed's peak
   minute) with :mod:`benchmarks.loadgen` on core 1 (its ``peak`` profile, no retries):
   p50/p90/p99/max from each request's *scheduled* send time (HDR histogram), for the edge and,
   as a reference, for the bare server.
3. **The generator's own ceiling**: closed loop against the bare server, so the reader can see
   it was not the bottleneck.

Isolation: a dedicated RabbitMQ vhost ``intake_bench`` and PostgreSQL database
``intake_bench_edge`` (the edges' limits read it; migrated), created at the start and deleted at
the end (also on failure); the queue is purged between runs. The edge runs with
``INTAKE_EDGE_ACCESS_LOG=false``; ``--access-log`` also measures an edge with it on (one JSON
line per request at INFO, to stderr redirected to a file under ``results/logs/``).

    .venv/bin/python -m benchmarks.edge [--duration 10] [--connections 64] [--rounds 2] [--shed]
                                        [--baseline DIR] [--limits]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks._support import (
    BENCH_VHOST,
    RESULTS_DIR,
    BenchError,
    create_vhost,
    delete_vhost,
    free_port,
    machine_info,
    markdown_table,
    median,
    progress,
    purge_queue,
    registration_body,
    require_cores,
    start_process,
    stop_process,
    tail,
    venv_bin,
    wait_http_ok,
    with_path,
    write_results,
)
from benchmarks.persist import drop_database, recreate_database
from core.migrate import migrate
from core.settings import Settings
from core.topology import PERSIST_QUEUE

SERVER_CPU = "0"
LOAD_CPU = "1"
PATH = "/v1/registrations"

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[BODY]==]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, value in pairs(thread:get("statuses")) do
      total[key] = (total[key] or 0) + value
    end
  end
  local parts = {}
  for key, value in pairs(total) do
    table.insert(parts, string.format('"%s":%d', key, value))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"requests":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\\n',
    summary.duration, summary.requests, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# The edges' databases (their limits read them): limits on with nothing blocked, and one NIK
# blocked (--limits).
EDGE_DATABASE = "intake_bench_edge"
BLOCKED_DATABASE = "intake_bench_edge_blocked"


@dataclass(frozen=True, slots=True)
class Target:
    """A server under test: its name, port and process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode}:\n{tail(self.log_path)}"
            )


def ensure_wrk() -> str:
    """The path of ``wrk``, installing Debian's package if it is missing and we are root."""
    found = shutil.which("wrk")
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("wrk is not installed: run `apt-get install -y wrk` (as root)")
    progress("wrk is missing: apt-get install -y wrk")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"could not install wrk: {result.stderr.strip()[-500:]}")
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is still not on PATH after apt-get install wrk")
    return found


def run_wrk(
    wrk: str, script: Path, target: Target, duration_s: float, connections: int
) -> dict[str, Any]:
    """One closed-loop wrk run on the load core; returns its figures."""
    command = [
        "taskset",
        "-c",
        LOAD_CPU,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        target.url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    target.check_alive()
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    data: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
    seconds = data["duration_us"] / 1e6
    accepted = int(data["statuses"].get("202", 0))
    data.update(
        shed_per_s=round(int(data["statuses"].get("503", 0)) / seconds, 1),
        target=target.name,
        seconds=round(seconds, 3),
        accepted=accepted,
        not_accepted=data["requests"] - accepted,
        accepted_per_s=round(accepted / seconds, 1),
    )
    return data


def run_openloop(
    target: Target, rate: float, duration_s: float, timeout_s: float = 5.0, **more: str
) -> dict[str, Any]:
    """One :mod:`benchmarks.loadgen` run on the load core (``peak`` at ``rate`` for
    ``duration_s``, no retries; ``more``: other flags, e.g. ``ceiling``); returns its result."""
    with tempfile.TemporaryDirectory(prefix="intake-bench-loadgen-") as work:
        out = Path(work) / "result.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            f"--url=http://127.0.0.1:{target.port}",
            "--profile=peak",
            f"--count={max(1, round(rate * duration_s))}",
            f"--rate={rate:g}",
            "--connections=256",
            "--no-retry",
            f"--timeout={timeout_s:g}",
            f"--cpu={LOAD_CPU}",
            f"--out={out}",
            *(f"--{flag}={value}" for flag, value in more.items()),
        ]
        result = subprocess.run(
            command,
            stdout=subprocess.DEVNULL,
            timeout=duration_s + 4 * timeout_s + 120,
            check=False,
        )
        target.check_alive()
        if result.returncode != 0:
            raise BenchError(f"the load generator failed with {result.returncode}")
        data: dict[str, Any] = json.loads(out.read_text())
    data.pop("series", None)
    data.pop("latency_hdr", None)
    data["target"] = target.name
    return data


def start_target(
    name: str, command: list[str], env: dict[str, str], port: int, log_dir: Path
) -> Target:
    log_path = log_dir / f"{name}.log"
    process = start_process(["taskset", "-c", SERVER_CPU, *command], env, log_path)
    target = Target(name, port, process, log_path)
    try:
        wait_http_ok(process, port, "/readyz", 30, name)
    except BaseException as exc:
        stop_process(process)
        raise BenchError(f"{exc}\n{tail(log_path)}") from None
    progress(f"{name} ready on port {port} (pid {process.pid}, core {SERVER_CPU})")
    return target


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_latency(result: dict[str, Any]) -> str:
    lat = result["final_answer_latency_ms"]
    return f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} / {lat['max']:.1f}"


def _fmt_statuses(result: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in result["answers"].items())


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    medians = results["accepted_per_s_median"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in results["wrk_runs"]:
        runs.setdefault(run["target"], []).append(run)
    names = list(medians)
    header = ["figure", *names]
    rows = [
        [
            f"accepted/s, median of {config['rounds']} x {config['duration_s']:g} s "
            f"(wrk, {config['connections']} connections)",
            *(_fmt_rate(medians[n]) for n in names),
        ],
        [
            "individual runs (accepted/s)",
            *(", ".join(_fmt_rate(r["accepted_per_s"]) for r in runs[n]) for n in names),
        ],
        [
            "responses other than 202 / socket errors",
            *(
                f"{sum(r['not_accepted'] for r in runs[n])} / "
                f"{sum(r['errors']['connect'] + r['errors']['read'] + r['errors']['write'] + r['errors']['timeout'] for r in runs[n])}"  # noqa: E501
                for n in names
            ),
        ],
        [
            "closed-loop latency p50 / p99 (ms, wrk, last run)",
            *(
                f"{runs[n][-1]['latency_us']['p50'] / 1000:.2f} / "
                f"{runs[n][-1]['latency_us']['p99'] / 1000:.2f}"
                for n in names
            ),
        ],
    ]
    latency = results["latency"]
    rate = config["latency_rate"]
    rows.append(
        [
            f"open loop at {rate:,.0f}/s for {config['latency_duration_s']:g} s: "
            "p50 / p90 / p99 / max (ms)",
            *(_fmt_latency(latency[n]) if n in latency else "-" for n in names),
        ]
    )
    rows.append(
        [
            f"open loop at {rate:,.0f}/s: statuses",
            *(_fmt_statuses(latency[n]) if n in latency else "-" for n in names),
        ]
    )
    rows.append(
        [
            f"open loop at {rate:,.0f}/s: generator send lag p99 (ms) / its CPU share",
            *(
                f"{latency[n]['send_lag_ms']['p99']:.2f} / "
                f"{latency[n]['generator']['cpu_share']:.2f}"
                if n in latency
                else "-"
                for n in names
            ),
        ]
    )
    table = markdown_table(header, rows)
    ratio_lines = [
        f"**edge/bare = {results['ratio_edge_over_bare']:.2f}** (goal >= 0.75)",
    ]
    per_round = results.get("round_ratios_over_bare", {})
    if per_round:
        ratio_lines.append(
            "the same round by round (median of each round's ratio to bare): "
            + ", ".join(f"{name} {figures['median']:.2f}" for name, figures in per_round.items())
        )
    if "edge+access-log" in medians:
        ratio_lines.append(
            f"**edge with its access log on / bare = "
            f"{medians['edge+access-log'] / medians['bare']:.2f}** (goal >= 0.70)"
        )
    if "ratio_baseline_over_bare" in results:
        ratio_lines.append(
            f"**edge-baseline/bare = {results['ratio_baseline_over_bare']:.2f}** (the --baseline"
            f" code); edge/edge-baseline = {results['ratio_edge_over_baseline']:.2f}"
        )
    if "ratio_limits_over_no_limits" in results:
        ratio_lines.append(
            f"**limits on / off = {results['ratio_limits_over_no_limits']:.2f}** (edge /"
            f" edge-no-limits, nothing blocked); with one NIK blocked (every registration's"
            f" NIK looked up): **{results['ratio_nik_blocked_over_no_limits']:.2f}**"
        )
    if "ratio_shed_over_bare" in results:
        ratio_lines.append(
            f"**shed/bare = {results['ratio_shed_over_bare']:.2f}**: an edge shedding every "
            f"registration answered {results['shed_per_s_median']:,.0f} 503/s (median) "
            f"against bare's {medians['bare']:,.0f} 202/s"
        )
    ceiling = results["generator_ceiling"]
    ratio_lines.append(
        f"load generator ceiling (closed loop against bare, 256 connections): "
        f"{ceiling['answers_per_s']:,.0f} requests/s at {ceiling['cpu_share']:.2f} of its CPU, "
        f"{ceiling['answers_per_s'] / rate:.1f}x the latency run's rate"
    )
    return table + "\n\n" + "\n".join(f"- {line}" for line in ratio_lines)


def generator_ceiling(target: Target, seconds: float) -> dict[str, Any]:
    """The load generator closed loop against the bare server for ``seconds``."""
    progress(f"generator ceiling: closed loop against bare for {seconds:g} s")
    result = run_openloop(target, 1.0, 1.0, timeout_s=2.0, ceiling=f"{seconds:g}")
    figures = {
        "answers_per_s": result["answers_202_per_s"],
        "cpu_share": result["generator"]["cpu_share"],
        "answers": result["answers"],
    }
    progress(f"  {figures['answers_per_s']:,.0f} requests/s, CPU {figures['cpu_share']:.2f}")
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_cores(2)
    wrk = ensure_wrk()
    settings = Settings.from_env()
    amqp_url = with_path(settings.amqp_url, BENCH_VHOST)
    database_url = with_path(settings.database_url, EDGE_DATABASE)
    blocked_url = with_path(settings.database_url, BLOCKED_DATABASE)
    log_dir = RESULTS_DIR / "logs"
    targets: list[Target] = []
    vhost_created = database_created = False
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as tmp:
        script = Path(tmp) / "register.lua"
        script.write_text(_WRK_SCRIPT.replace("BODY", registration_body().decode()))
        try:
            progress(f"creating RabbitMQ vhost {BENCH_VHOST}")
            create_vhost(BENCH_VHOST)
            vhost_created = True
            databases = [EDGE_DATABASE, BLOCKED_DATABASE] if args.limits else [EDGE_DATABASE]
            progress(f"creating PostgreSQL databases {', '.join(databases)}")
            asyncio.run(_fresh_databases(settings.database_url, databases))
            database_created = True
            base_env = dict(os.environ)
            bare_port = free_port()
            targets.append(
                start_target(
                    "bare",
                    [sys.executable, "-m", "benchmarks.bare", "--port", str(bare_port)],
                    base_env,
                    bare_port,
                    log_dir,
                )
            )
            edge_variants: list[tuple[str, str, dict[str, str]]] = [("edge", "false", {})]
            if args.access_log:
                edge_variants.append(("edge+access-log", "true", {}))
            if args.shed:
                # Sheds every registration at admission: the cost of a shed request.
                edge_variants.append(("edge-shed", "false", {"INTAKE_EDGE_MAX_PENDING": "0"}))
            if args.baseline is not None:
                # The same `intake edge`, from other code: the console script's directory comes
                # first on sys.path, then PYTHONPATH, then the editable install of this checkout.
                baseline = args.baseline.resolve()
                if not (baseline / "intake" / "app.py").is_file():
                    raise BenchError(f"--baseline {baseline}: no checkout of the project there")
                edge_variants.append(("edge-baseline", "false", {"PYTHONPATH": str(baseline)}))
            if args.limits:
                off = {"INTAKE_LIMIT_NIK_ATTEMPTS": "0", "INTAKE_LIMIT_CLIENT_REQUESTS": "0"}
                edge_variants.append(("edge-no-limits", "false", off))
                # Its database holds one NIK at its limit: its blocked set is never empty (see
                # _fresh_databases), each registration's NIK is looked up.
                blocked = {"INTAKE_DATABASE_URL": blocked_url}
                edge_variants.append(("edge+nik-blocked", "false", blocked))
            for name, access_log, extra_env in edge_variants:
                port = free_port()
                env = dict(
                    base_env,
                    INTAKE_AMQP_URL=amqp_url,
                    INTAKE_EDGE_HOST="127.0.0.1",
                    INTAKE_EDGE_PORT=str(port),
                    INTAKE_EDGE_ACCESS_LOG=access_log,
                    INTAKE_LOG_LEVEL="INFO",
                    **{"INTAKE_DATABASE_URL": database_url, **extra_env},
                )
                targets.append(start_target(name, [venv_bin("intake"), "edge"], env, port, log_dir))

            for target in targets:
                progress(f"warm-up: {target.name}, {args.warmup:g} s")
                run_wrk(wrk, script, target, args.warmup, args.connections)
            purge_queue(BENCH_VHOST, PERSIST_QUEUE)

            wrk_runs: list[dict[str, Any]] = []
            for round_no in range(1, args.rounds + 1):
                first = (round_no - 1) % len(targets)
                for target in targets[first:] + targets[:first]:
                    progress(
                        f"round {round_no}/{args.rounds}: wrk -> {target.name}, "
                        f"{args.duration:g} s, {args.connections} connections"
                    )
                    result = run_wrk(wrk, script, target, args.duration, args.connections)
                    result["round"] = round_no
                    wrk_runs.append(result)
                    progress(
                        f"  {result['accepted_per_s']:,.0f} accepted/s, "
                        f"{result['shed_per_s']:,.0f} shed/s ({result['not_accepted']} not 202)"
                    )
                    if target.name != "bare":
                        purge_queue(BENCH_VHOST, PERSIST_QUEUE)

            latency: dict[str, dict[str, Any]] = {}
            for target in targets:
                if target.name in ("edge+access-log", "edge-shed"):
                    continue
                progress(
                    f"open loop: {args.rate:,.0f}/s -> {target.name}"
                    f" for {args.latency_duration:g} s"
                )
                result = run_openloop(target, args.rate, args.latency_duration)
                latency[target.name] = result
                progress(
                    f"  p50 {result['latency_ms']['p50']:.2f} ms, "
                    f"p99 {result['latency_ms']['p99']:.2f} ms, {_fmt_statuses(result)}"
                )
                if target.name != "bare":
                    purge_queue(BENCH_VHOST, PERSIST_QUEUE)

            ceiling = generator_ceiling(targets[0], args.ceiling_s)
        finally:
            for target in reversed(targets):
                code = stop_process(target.process)
                progress(f"stopped {target.name} (exit {code})")
            if vhost_created:
                progress(f"deleting vhost {BENCH_VHOST}")
                delete_vhost(BENCH_VHOST)
            if database_created:
                for name in (EDGE_DATABASE, BLOCKED_DATABASE):
                    asyncio.run(drop_database(settings.database_url, name))
                progress("dropped the benchmark's databases")

    medians = {
        t.name: median([r["accepted_per_s"] for r in wrk_runs if r["target"] == t.name])
        for t in targets
    }
    return {
        "benchmark": "edge",
        "machine": machine_info(),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "connections": args.connections,
            "latency_rate": args.rate,
            "latency_duration_s": args.latency_duration,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
            "edge_access_log": False,
            "baseline": str(args.baseline) if args.baseline is not None else None,
            "edge_log_level": "INFO",
            "vhost": BENCH_VHOST,
        },
        "accepted_per_s_median": medians,
        "ratio_edge_over_bare": medians["edge"] / medians["bare"],
        "round_ratios_over_bare": round_ratios(wrk_runs),
        **_shed_figures(wrk_runs, medians["bare"]),
        **_baseline_figures(medians),
        **_limits_figures(medians),
        "wrk_runs": wrk_runs,
        "latency": latency,
        "generator_ceiling": ceiling,
    }


def round_ratios(wrk_runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target's accepted rate over bare's **in the same round** (runs minutes apart on
    a shared machine differ more than targets do), and the median of those ratios: a second
    estimate beside the ratio of the medians, less moved by a slow spell that hits one round."""
    by_round: dict[int, dict[str, float]] = {}
    for run in wrk_runs:
        by_round.setdefault(run["round"], {})[run["target"]] = run["accepted_per_s"]
    names = sorted({name for runs in by_round.values() for name in runs} - {"bare"})
    figures: dict[str, dict[str, Any]] = {}
    for name in names:
        ratios = [
            runs[name] / runs["bare"]
            for runs in by_round.values()
            if name in runs and runs.get("bare")
        ]
        if ratios:
            figures[name] = {"per_round": ratios, "median": median(ratios)}
    return figures


def _baseline_figures(medians: dict[str, float]) -> dict[str, float]:
    if "edge-baseline" not in medians:
        return {}
    return {
        "ratio_baseline_over_bare": medians["edge-baseline"] / medians["bare"],
        "ratio_edge_over_baseline": medians["edge"] / medians["edge-baseline"],
    }


def _limits_figures(medians: dict[str, float]) -> dict[str, float]:
    if "edge-no-limits" not in medians:
        return {}
    return {
        "ratio_limits_over_no_limits": medians["edge"] / medians["edge-no-limits"],
        "ratio_nik_blocked_over_no_limits": medians["edge+nik-blocked"] / medians["edge-no-limits"],
    }


async def _fresh_databases(admin_url: str, names: list[str]) -> None:
    """The edges' databases, migrated; in ``BLOCKED_DATABASE``, one NIK (not the benchmark's)
    at its limit for the next hour, so that an edge on it has a blocked set."""
    for name in names:
        await recreate_database(admin_url, name)
        connection = await asyncpg.connect(with_path(admin_url, name))
        try:
            await migrate(connection)
            if name == BLOCKED_DATABASE:
                await connection.execute(
                    "INSERT INTO limit_hits (kind, key, window_start, hits)"
                    " VALUES ('nik', $1, clock_timestamp(), 1000000)",
                    os.urandom(32),
                )
        finally:
            await connection.close()


def _shed_figures(wrk_runs: list[dict[str, Any]], bare_per_s: float) -> dict[str, float]:
    shed = [r["shed_per_s"] for r in wrk_runs if r["target"] == "edge-shed"]
    if not shed:
        return {}
    return {"shed_per_s_median": median(shed), "ratio_shed_over_bare": median(shed) / bare_per_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rate", type=float, default=1333.0, help="open-loop offered rate/s")
    parser.add_argument(
        "--latency-duration", type=float, default=20.0, help="seconds of the open-loop run"
    )
    parser.add_argument(
        "--ceiling-s", type=float, default=5.0, help="seconds of the generator-ceiling run"
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="also measure an edge with its access log on (INTAKE_LOG_LEVEL=INFO)",
    )
    parser.add_argument(
        "--shed",
        action="store_true",
        help="also measure an edge that sheds every registration (503 before reading the body)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="also measure edges with the limits off and with one NIK blocked (same rounds)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also measure an edge run from the code in DIR (another checkout), same rounds",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive")
    try:
        results = run(args)
    except BenchError as exc:
        print(f"benchmarks.edge: {exc}", file=sys.stderr)
        return 1
    path = write_results("edge", results)
    print(report(results))
    print(f"\nresults: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
