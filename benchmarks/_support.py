"""Plumbing shared by the benchmark scripts: processes, ports, RabbitMQ vhosts, results.

Nothing here measures anything; the measuring scripts are :mod:`benchmarks.edge`,
:mod:`benchmarks.persist` and :mod:`benchmarks.loadgen`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import asyncpg
import orjson
import uvloop

REPO_ROOT = Path(__file__).resolve().parents[1]
# ``make bench`` gathers one run's results in a folder of their own (benchmarks/run.py).
RESULTS_DIR = Path(os.environ.get("INTAKE_BENCH_RESULTS", REPO_ROOT / "results"))
BENCH_VHOST = "intake_bench"
BENCH_DATABASE = "intake_bench"

# One valid registration (the NIK encodes 17 May 1990, as the birth date says). The edge does
# not deduplicate, so the load generators may send this same body again and again.
REGISTRATION: dict[str, str] = {
    "nik": "3171011705900001",
    "full_name": "Siti Rahayu",
    "birth_place": "Jakarta",
    "birth_date": "1990-05-17",
    "email": "siti.rahayu@example.com",
    "phone": "081234567890",
}


class BenchError(RuntimeError):
    """The benchmark cannot run or its result is not trustworthy."""


def registration_body() -> bytes:
    return orjson.dumps(REGISTRATION)


def progress(message: str) -> None:
    """A progress line on stderr (stdout is kept for the results)."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def venv_bin(name: str) -> str:
    """The path of a console script of this interpreter's environment (``.venv/bin/NAME``)."""
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name!r} not found: run `make setup` first")
    return found


def require_cores(count: int) -> None:
    available = os.sched_getaffinity(0)
    if not set(range(count)) <= available:
        raise BenchError(f"needs CPUs 0..{count - 1} for taskset; this process may use {available}")


def http_get(host: str, port: int, path: str, timeout_s: float = 2.0) -> int:
    """Status of ``GET path``, or 0 when the server does not answer."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def wait_http_ok(
    process: subprocess.Popen[bytes], port: int, path: str, timeout_s: float, what: str
) -> None:
    """Wait until ``GET path`` answers 200; fail at once if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode} before it was ready")
        if http_get("127.0.0.1", port, path) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready on port {port} within {timeout_s:.0f} s")


def start_process(
    command: Sequence[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, stdout and stderr into ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file: IO[bytes] = log_path.open("wb")
    try:
        return subprocess.Popen(
            list(command),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    finally:
        log_file.close()  # the child holds its own descriptor


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL if needed; returns the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            progress(f"pid {process.pid} ignored SIGTERM for {timeout_s:.0f} s: SIGKILL")
            process.kill()
            process.wait()
    return process.returncode


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- RabbitMQ ---------------------------------------------------------------------------


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    env = dict(os.environ)
    env.setdefault("HOME", "/root")  # rabbitmqctl refuses to run without it
    result = subprocess.run(
        [executable, "-q", *args], env=env, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise BenchError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def create_vhost(vhost: str) -> None:
    """Create the vhost (emptying it if a previous run left it) and let guest use it."""
    listed = rabbitmqctl("list_vhosts", "name").stdout.split()
    if vhost in listed:
        progress(f"vhost {vhost} left by an earlier run: deleting it first")
        rabbitmqctl("delete_vhost", vhost)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def delete_vhost(vhost: str) -> None:
    result = rabbitmqctl("delete_vhost", vhost, check=False)
    if result.returncode != 0 and "does not exist" not in result.stderr:
        progress(f"warning: could not delete vhost {vhost}: {result.stderr.strip()}")


def purge_queue(vhost: str, queue: str) -> None:
    rabbitmqctl("purge_queue", "-p", vhost, queue)


async def recreate_database(admin_url: str, name: str, *, drop_only: bool = False) -> None:
    """Drop the benchmark's own database ``name`` (connections and all) and, unless
    ``drop_only``, create it empty."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced: an AMQP vhost or a PostgreSQL database name."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(path, safe="")))


# --- results ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``results/NAME-<UTC time>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def run_benchmark(
    name: str,
    measure: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    report: Callable[[dict[str, Any]], str],
) -> tuple[int, dict[str, Any] | None]:
    """Run ``measure()`` on uvloop, write its results to ``results/`` and print its report;
    ``(1, None)`` with the reason on stderr when it raised :class:`BenchError`."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(measure())
    except BenchError as exc:
        print(f"benchmarks.{name}: {exc}", file=sys.stderr)
        return 1, None
    path = write_results(name, results)
    print(report(results))
    print(f"\nresults: {path}")
    return 0, results


# Registrations whose NIK checks are all final (Dukcapil failed, or Dukcapil passed and Dapodik
# and DTKS final): how many, and the first and last moment one became so.
NIK_DONE_SQL = """
SELECT count(*) AS n, min(finished_at) AS first, max(finished_at) AS last FROM (
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
