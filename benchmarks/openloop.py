"""An open-loop load generator: latency at a constant offered rate, without coordinated omission.

Closed-loop tools (wrk) send the next request only when a reply came back, so a slow server
lowers the offered load and hides its own stalls. Here request ``i`` is *scheduled* at
``start + i / rate`` and is sent at that time whether or not earlier ones were answered; its
latency is measured from the scheduled time, not from the moment it was actually sent, so time
spent waiting behind a stalled server (or a lagging generator) is counted. The generator's own
lag (actual send time minus scheduled time) is reported too: when it grows, the generator is
the bottleneck and the latencies say little about the server.

Bounded: at most ``--count`` requests over ``--duration`` seconds, each with a ``--timeout``;
whatever has not finished ``--timeout`` seconds after the last scheduled send is cancelled and
counted as ``unfinished``.

    taskset -c 1 python -m benchmarks.openloop --url http://127.0.0.1:8080/v1/registrations \\
        --rate 1333 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop

from benchmarks._support import markdown_table, percentile, registration_body

_HEADERS = {"Content-Type": "application/json"}


@dataclass
class _Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    inflight: int = 0
    max_inflight: int = 0
    last_send: float = 0.0


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    scheduled: float,
    window_end: float,
    tally: _Tally,
) -> None:
    sent = time.perf_counter()
    tally.lags_s.append(sent - scheduled)
    tally.last_send = max(tally.last_send, sent)
    tally.inflight += 1
    tally.max_inflight = max(tally.max_inflight, tally.inflight)
    try:
        async with session.post(url, data=body, headers=_HEADERS) as response:
            await response.read()
            status = str(response.status)
    except TimeoutError:
        status = "timeout"
    except aiohttp.ClientError as exc:
        status = f"error:{type(exc).__name__}"
    finally:
        tally.inflight -= 1
    done = time.perf_counter()
    tally.statuses[status] += 1
    if status.isdigit():
        tally.latencies_s.append(done - scheduled)
        if done <= window_end:
            tally.completed_in_window += 1


async def _warm_up(session: aiohttp.ClientSession, url: str, body: bytes, count: int) -> None:
    """Open connections and warm both sides up; not measured."""

    async def one() -> None:
        async with session.post(url, data=body, headers=_HEADERS) as response:
            await response.read()

    for start in range(0, count, 32):
        await asyncio.gather(*(one() for _ in range(min(32, count - start))))


async def run_open_loop(
    url: str,
    *,
    rate: float,
    duration_s: float,
    count: int | None = None,
    connections: int = 256,
    timeout_s: float = 5.0,
    warmup: int = 200,
    body: bytes | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Offer ``rate`` requests/s for ``duration_s`` (at most ``count``); return the figures."""
    payload = registration_body() if body is None else body
    total = max(1, math.floor(rate * duration_s))
    if count is not None:
        total = min(total, count)
    tally = _Tally()
    connector = aiohttp.TCPConnector(limit=connections)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        if warmup > 0:
            await _warm_up(session, url, payload, warmup)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.01
        window_end = start + total / rate
        next_report = start + 5.0
        i = 0
        while i < total:
            now = time.perf_counter()
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            # Everything due by now goes out in this loop iteration, late or not.
            while i < total and start + i / rate <= now:
                task = asyncio.create_task(
                    _one(session, url, payload, start + i / rate, window_end, tally)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if not quiet and now >= next_report:
                done = sum(tally.statuses.values())
                _progress(f"sent {i}/{total}, answered {done}, in flight {tally.inflight}")
                next_report += 5.0
        unfinished = 0
        if tasks:
            _, still = await asyncio.wait(set(tasks), timeout=timeout_s + 1.0)
            unfinished = len(still)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
        end = time.perf_counter()

    latencies = sorted(tally.latencies_s)
    lags = sorted(tally.lags_s)
    window_s = window_end - start
    send_span_s = max(tally.last_send - start, 1e-9)

    def ms(ordered: list[float], q: float) -> float:
        return round(percentile(ordered, q) * 1000, 3)

    return {
        "url": url,
        "offered_rate": rate,
        "duration_s": round(window_s, 3),
        "scheduled": total,
        "sent": len(lags),
        "answered": len(latencies),
        "unfinished": unfinished,
        "statuses": dict(sorted(tally.statuses.items())),
        "send_rate": round(len(lags) / send_span_s, 1),
        "completed_in_window_rate": round(tally.completed_in_window / window_s, 1),
        "answered_rate": round(len(latencies) / max(end - start, 1e-9), 1),
        "elapsed_s": round(end - start, 3),
        "max_inflight": tally.max_inflight,
        "latency_ms": {
            "p50": ms(latencies, 50),
            "p90": ms(latencies, 90),
            "p99": ms(latencies, 99),
            "p99.9": ms(latencies, 99.9),
            "max": round(latencies[-1] * 1000, 3) if latencies else math.nan,
        },
        "send_lag_ms": {
            "p50": ms(lags, 50),
            "p99": ms(lags, 99),
            "max": round(lags[-1] * 1000, 3) if lags else math.nan,
        },
    }


def _progress(message: str) -> None:
    print(f"openloop: {message}", file=sys.stderr, flush=True)


def summary_table(result: dict[str, Any]) -> str:
    lat, lag = result["latency_ms"], result["send_lag_ms"]
    rows = [
        ["offered rate (req/s)", f"{result['offered_rate']:,.0f}"],
        ["achieved send rate (req/s)", f"{result['send_rate']:,.1f}"],
        ["answered within the window (req/s)", f"{result['completed_in_window_rate']:,.1f}"],
        ["statuses", ", ".join(f"{k}: {v}" for k, v in result["statuses"].items())],
        ["unfinished (cancelled)", str(result["unfinished"])],
        [
            "latency p50 / p90 / p99 / max (ms)",
            f"{lat['p50']} / {lat['p90']} / {lat['p99']} / {lat['max']}",
        ],
        ["generator send lag p50 / p99 / max (ms)", f"{lag['p50']} / {lag['p99']} / {lag['max']}"],
    ]
    return markdown_table(["figure", "value"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="POST target")
    parser.add_argument("--rate", type=float, default=1333.0, help="offered requests/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of schedule")
    parser.add_argument("--count", type=int, default=None, help="at most this many requests")
    parser.add_argument("--connections", type=int, default=256, help="client connection limit")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run_open_loop(
                args.url,
                rate=args.rate,
                duration_s=args.duration,
                count=args.count,
                connections=args.connections,
                timeout_s=args.timeout,
                warmup=args.warmup,
            )
        )
    print(json.dumps(result) if args.json else summary_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
