"""``intake top``: a live terminal view of a wave opening, read from Prometheus.

Every few seconds: the edge (accepted, shed and invalid per second, p99 of a registration), the
funnel (registrations at each stage, from PostgreSQL through the supervisor's collector), the
queues (ready and consumers, from RabbitMQ), and the lanes (concurrency limit, calls in
flight, breakers not closed, workers). It only reads Prometheus' HTTP API (``/api/v1/query``):
it runs anywhere Prometheus can be reached and adds no load on the system it watches.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from core.funnel import STAGES

# Instant queries over a short window: the view follows a wave second by second.
QUERIES: Mapping[str, str] = {
    "accepted": "sum(rate(intake_registrations_accepted_total[30s]))",
    "shed": "sum(rate(intake_registrations_shed_total[30s]))",
    "invalid": "sum(rate(intake_registrations_invalid_total[30s]))",
    "p99": "histogram_quantile(0.99, sum by (le) (rate("
    'intake_http_request_duration_seconds_bucket{route="/v1/registrations",method="POST"}[30s])))',
    "funnel": "intake_funnel_registrations",
    "ready": "intake_queue_messages_ready",
    "consumers": "intake_queue_consumers",
    "limit": "intake_lane_concurrency_limit",
    "inflight": "intake_lane_inflight_calls",
    "breakers": 'intake_lane_breaker_workers{state!="closed"} > 0',
    "workers": "intake_worker_processes",
}


@dataclass
class Snapshot:
    """What one refresh read: scalars, and series by their distinguishing label."""

    scalars: dict[str, float] = field(default_factory=dict)
    series: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


_LABEL = {
    "funnel": "stage",
    "ready": "queue",
    "consumers": "queue",
    "limit": "lane",
    "inflight": "lane",
    "breakers": "lane",
    "workers": "kind",
}


async def read(session: aiohttp.ClientSession, base_url: str) -> Snapshot:
    """Run every query once."""
    snapshot = Snapshot()

    async def one(name: str, query: str) -> None:
        try:
            async with session.get(
                base_url.rstrip("/") + "/api/v1/query",
                params={"query": query},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            snapshot.errors.append(f"{name}: {type(exc).__name__}")
            return
        if body.get("status") != "success":
            snapshot.errors.append(f"{name}: {body.get('error', 'query failed')}")
            return
        results = body["data"]["result"]
        label = _LABEL.get(name)
        if label is None:
            value = float(results[0]["value"][1]) if results else math.nan
            snapshot.scalars[name] = value
            return
        values: dict[str, float] = {}
        for item in results:
            key = item["metric"].get(label, "?")
            if name == "breakers":
                key = f"{key} ({item['metric'].get('state', '?')})"
            values[key] = values.get(key, 0.0) + float(item["value"][1])
        snapshot.series[name] = values

    await asyncio.gather(*(one(name, query) for name, query in QUERIES.items()))
    return snapshot


def _rate(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.1f}/s"


def render(snapshot: Snapshot, width: int = 78) -> str:
    """The view as text."""
    s, series = snapshot.scalars, snapshot.series
    p99 = s.get("p99", math.nan)
    lines = [
        "intake top: a wave opening, live".ljust(width),
        "",
        f"edge     accepted {_rate(s.get('accepted'))}   shed {_rate(s.get('shed'))}"
        f"   invalid {_rate(s.get('invalid'))}"
        f"   p99 {'-' if math.isnan(p99) else f'{p99 * 1000:.1f} ms'}",
        "",
        "funnel   "
        + "   ".join(
            f"{stage} {series.get('funnel', {}).get(stage, 0):,.0f}" for stage in STAGES[:4]
        ),
        "         "
        + "   ".join(
            f"{stage} {series.get('funnel', {}).get(stage, 0):,.0f}" for stage in STAGES[4:]
        ),
        "",
        f"{'queue':<34}{'ready':>12}{'consumers':>12}",
    ]
    ready, consumers = series.get("ready", {}), series.get("consumers", {})
    for queue in sorted(ready):
        if ready[queue] or consumers.get(queue) or not queue.startswith("intake.delay"):
            lines.append(f"{queue:<34}{ready[queue]:>12,.0f}{consumers.get(queue, 0):>12,.0f}")
    lines += ["", f"{'lane':<14}{'limit':>10}{'in flight':>12}{'workers':>10}"]
    limits, inflight, workers = (
        series.get("limit", {}),
        series.get("inflight", {}),
        series.get("workers", {}),
    )
    for lane in sorted(set(limits) | set(inflight)):
        lines.append(
            f"{lane:<14}{limits.get(lane, 0):>10.1f}{inflight.get(lane, 0):>12.0f}"
            f"{workers.get(lane, 0):>10.0f}"
        )
    for kind in ("persist", "dispatch"):
        if kind in workers:
            lines.append(f"{kind:<14}{'':>10}{'':>12}{workers[kind]:>10.0f}")
    open_breakers = series.get("breakers", {})
    lines += [
        "",
        "breakers not closed: "
        + (", ".join(f"{k}: {v:.0f}" for k, v in sorted(open_breakers.items())) or "none"),
    ]
    if snapshot.errors:
        causes: dict[str, list[str]] = {}
        for error in snapshot.errors:
            name, _, cause = error.partition(": ")
            causes.setdefault(cause, []).append(name)
        lines += [""] + [
            f"error: {cause} ({', '.join(sorted(names))})"
            for cause, names in sorted(causes.items())
        ]
    return "\n".join(lines)


async def run(base_url: str, interval_s: float, once: bool) -> int:
    async with aiohttp.ClientSession() as session:
        while True:
            snapshot = await read(session, base_url)
            text = render(snapshot)
            if once:
                print(text)
                return 1 if snapshot.errors else 0
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear, draw
            sys.stdout.flush()
            await asyncio.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intake top", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one view and exit")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.prometheus, args.interval, args.once))
    except KeyboardInterrupt:
        return 0
