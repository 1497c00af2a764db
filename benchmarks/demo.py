"""``intake demo``: start the stack on the local services, replay a burst, report, stop.

It starts one persist worker and one edge as subprocesses (the same ``intake`` commands an
operator runs), sends a burst of synthetic registrations (valid, invalid and repeated NIKs)
from the shared population, waits until every registration answered 202 is in PostgreSQL,
prints what was accepted, refused and stored, and stops both processes with SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.population import Registrant, population
from core.settings import Settings
from intake.validation import today_wib

CONCURRENCY = 64


def _start(command: str, settings: Settings, log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{command}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", command],
        env={**os.environ, **settings.to_env()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _wait_ready(base_url: str, edge: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if edge.poll() is not None:
                raise RuntimeError("the edge exited during start-up; see its log")
            try:
                async with session.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("the edge did not become ready")


async def _send(base_url: str, people: list[Registrant]) -> tuple[dict[str, Any], list[float]]:
    outcome: dict[str, Any] = {
        "ids": [],
        "status": collections.Counter(),
        "codes": collections.Counter(),
    }
    latencies: list[float] = []
    queue: asyncio.Queue[Registrant] = asyncio.Queue()
    for p in people:
        queue.put_nowait(p)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            registrant = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(
                f"{base_url}/v1/registrations", json=registrant.form
            ) as response:
                body = await response.json(content_type=None)
            latencies.append(time.perf_counter() - started)
            outcome["status"][response.status] += 1
            if response.status == 202:
                outcome["ids"].append(uuid.UUID(body["id"]))
            for error in body.get("errors", []):
                outcome["codes"][f"{error['field']}:{error['code']}"] += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return outcome, latencies


async def _wait_stored(database_url: str, ids: list[uuid.UUID], timeout_s: float) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await connection.fetch(
                "SELECT coalesce(reject_reason, status) AS outcome, count(*) AS n"
                " FROM registrations WHERE id = ANY($1::uuid[]) GROUP BY 1",
                ids,
            )
            counts = {row["outcome"]: row["n"] for row in rows}
            if sum(counts.values()) >= len(ids) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _run(settings: Settings, count: int, log_dir: Path) -> int:
    base_url = f"http://{settings.edge_host}:{settings.edge_port}"
    people = population(count, seed=int(time.time()), today=today_wib())
    expected = collections.Counter(p.kind for p in people)
    worker = _start("worker", settings, log_dir)
    edge = _start("edge", settings, log_dir)
    try:
        await _wait_ready(base_url, edge, 30)
        print(f"edge ready at {base_url}; sending {count} registrations ({CONCURRENCY} clients)")
        started = time.perf_counter()
        outcome, latencies = await _send(base_url, people)
        sent_s = time.perf_counter() - started
        ids = outcome["ids"]
        stored = await _wait_stored(settings.database_url, ids, 60)
        stored_s = time.perf_counter() - started
    finally:
        for process in (edge, worker):
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for process in (edge, worker)]

    print()
    print(f"sent        {count:>7}  in {sent_s:.2f} s ({count / sent_s:,.0f}/s)")
    print(
        f"  planned   valid {expected['valid']}, repeated NIK {expected['duplicate']}, "
        f"invalid {count - expected['valid'] - expected['duplicate']}"
    )
    print(f"answered    {dict(sorted(outcome['status'].items()))}")
    print(
        f"  latency   p50 {_percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    for code, n in sorted(outcome["codes"].items()):
        print(f"  refused   {code:<32} {n:>6}")
    print(f"stored      {sum(stored.values()):>7} of {len(ids)} accepted, all in {stored_s:.2f} s")
    for what, n in sorted(stored.items()):
        print(f"  {what:<10}{n:>8}")
    print(f"logs in {log_dir}; edge exit {codes[0]}, worker exit {codes[1]}")
    lost = len(ids) - sum(stored.values())
    if lost or any(codes):
        print(f"FAILED: {lost} accepted registration(s) not stored")
        return 1
    return 0


def main(settings: Settings, count: int) -> int:
    """Run the demo against the configured RabbitMQ and PostgreSQL; 0 when nothing was lost."""
    log_dir = Path(tempfile.mkdtemp(prefix="intake-demo-"))
    return asyncio.run(_run(settings.replace(edge_access_log=False), count, log_dir))
