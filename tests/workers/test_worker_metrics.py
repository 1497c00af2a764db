"""Outside ``intake supervise`` (Kubernetes: one process per pod), each ``intake worker`` serves
its own ``/metrics``, and the dispatcher, which runs once per deployment, also the funnel and the
retention job's record from PostgreSQL and the queue depths from RabbitMQ; beside them, each
answers its probes (``/readyz``, ``/healthz``: core/health.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import aiohttp
import asyncpg

from core import topology
from core.settings import Settings
from core.verification import Check
from tests.support.metrics import scrape
from tests.support.processes import Process, free_port
from tests.support.waiting import eventually
from tests.workers.test_supervisor import _publish, _stored

Spawn = Callable[..., Process]


async def _purge_lanes(settings: Settings) -> None:
    """Lane queues are not emptied between tests: start from empty ones."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        lanes = await topology.declare_lanes(channel, settings, tuple(c.value for c in Check))
        for queue in lanes.queues.values():
            await queue.purge()


async def test_each_worker_serves_its_metrics_and_the_dispatcher_the_funnel_and_queues(
    settings: Settings, db: asyncpg.Pool, spawn: Spawn
) -> None:
    await _purge_lanes(settings)
    persist_port, dispatch_port = free_port(), free_port()
    persist = spawn(
        ["worker", "persist"], settings.replace(metrics_port=persist_port, log_level="INFO")
    )
    dispatch = spawn(
        ["worker", "dispatch"], settings.replace(metrics_port=dispatch_port, log_level="INFO")
    )
    ids = await _publish(settings, 30)
    await eventually(lambda: _stored(db), lambda n: n == len(ids), 60)

    async def figures() -> dict[str, Any]:
        try:
            persisted = await scrape(f"http://127.0.0.1:{persist_port}/metrics")
            dispatched = await scrape(f"http://127.0.0.1:{dispatch_port}/metrics")
        except aiohttp.ClientConnectionError as exc:  # a worker still starting
            return {"unreachable": str(exc)}
        return {
            "stored": persisted.get("intake_persist_registrations_total", outcome="stored"),
            "registered": dispatched.get("intake_funnel_registrations", stage="registered"),
            "pending checks": dispatched.get("intake_checks", check="dukcapil", state="pending"),
            "dispatched": dispatched.by("intake_dispatch_tasks_total", "lane"),
            "waiting in the dukcapil lane": dispatched.get(
                "intake_queue_messages_ready", queue=topology.lane_queue(Check.DUKCAPIL)
            ),
            "funnel on the persist worker": persisted.get(
                "intake_funnel_registrations", stage="registered"
            ),
            "retention passes": dispatched.get("intake_retention_runs", outcome="ok"),
            "last retention pass": dispatched.get(
                "intake_retention_last_success_timestamp_seconds"
            ),
            "retention on the persist worker": persisted.get("intake_retention_overdue"),
        }

    # Each registration's first checks (email, phone, Dukcapil) are dispatched; the photo
    # check waits for its upload. No lane runs: the tasks wait in their queues.
    n = len(ids)
    expected = {
        "stored": n,
        "registered": n,
        "pending checks": n,
        "dispatched": {"email": n, "phone": n, "dukcapil": n, "dapodik": 0, "dtks": 0, "photo": 0},
        "waiting in the dukcapil lane": n,
        "funnel on the persist worker": None,  # served once per deployment, by the dispatcher
        "retention passes": 0,  # the retention job's record, from the same process
        "last retention pass": 0,
        "retention on the persist worker": None,
    }
    assert await eventually(figures, lambda found: found == expected, 60) == expected
    # And the probes (core/health.py) beside the metrics, which Kubernetes asks: each worker
    # consumes (the dispatcher: publishes) and its loop turns. A lane too (the photo lane:
    # nothing reaches it here, which is not being stuck).
    photo_port = free_port()
    photo = spawn(["worker", "photo"], settings.replace(metrics_port=photo_port, log_level="INFO"))

    async def probes() -> dict[str, tuple[int, int]]:
        answers = {}
        async with aiohttp.ClientSession() as http:
            for name, port in (
                ("persist", persist_port),
                ("dispatch", dispatch_port),
                ("photo", photo_port),
            ):
                statuses = []
                for path in ("/readyz", "/healthz"):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                            statuses.append(response.status)
                    except aiohttp.ClientConnectionError:  # still starting
                        statuses.append(0)
                answers[name] = (statuses[0], statuses[1])
        return answers

    ok = {"persist": (200, 200), "dispatch": (200, 200), "photo": (200, 200)}
    assert await eventually(probes, lambda found: found == ok, 60) == ok
    assert persist.terminate() == 0
    assert dispatch.terminate() == 0
    assert photo.terminate() == 0
