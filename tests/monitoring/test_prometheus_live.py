"""A real Prometheus scrapes a running stack under a short load; every dashboard panel's query,
every recording rule and every alert's query (its expression without the final comparison)
is valid and returns data, through Prometheus' own HTTP API; and ``intake top`` reads it."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from core.settings import Settings
from core.waves import Policy, Waves
from intake.validation import today_wib
from monitoring import local
from simulators.behaviour import Behaviour
from simulators.population import population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.monitoring.test_monitoring_config import (
    alerts,
    dashboard_targets,
    load_dashboard,
    rules,
    split_comparison,
)
from tests.support.processes import Process, free_port, stop_async, wait_until_ready
from tests.support.waiting import eventually

PEOPLE = 120


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    quick = Behaviour(latency_median_ms=5, latency_p99_ms=30)
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        people=population(PEOPLE, seed=17, today=today_wib()),
        behaviours={
            **{name: quick for name in ("dukcapil", "dtks", "sms")},
            # Some 500s, so that the retry series exist as they do in any real wave.
            "dapodik": quick.replace(error_rate=0.3),
        },
    )
    async with run_simulators(config) as running:
        yield running


async def _query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        body: dict[str, Any] = await response.json()
    return body


async def _a_selected_wave(db: asyncpg.Pool) -> None:
    """A wave closed an hour ago, three of this run's registrants joined, two selected and
    notified: what the Waves row shows after a close (the wave's own paths are tested in
    tests/workers and tests/intake)."""
    now = dt.datetime.now(dt.UTC)
    hour = dt.timedelta(hours=1)
    name = f"live-{uuid.uuid4().hex[:8]}"
    wave = await Waves(db).create("ops", name, now - 3 * hour, now - hour, 2, Policy())
    ids = [r["id"] for r in await db.fetch("SELECT id FROM registrations ORDER BY id LIMIT 3")]
    async with db.acquire() as connection, connection.transaction():
        for i, rid in enumerate(ids):
            outcome = "selected" if i < 2 else "not_selected"
            await connection.execute(
                "INSERT INTO test_attempts (registration_id, wave_id, attempt, questions,"
                " served_at, deadline_at, correct, score, scored_at)"
                " VALUES ($1, $2, 1, '[]', $3, $4, 12, 63, $3)",
                rid,
                wave.id,
                now - 2 * hour,
                now - hour,
            )
            await connection.execute(
                "INSERT INTO wave_joins (wave_id, registration_id, situation, joined_at,"
                " outcome, rank) VALUES ($1, $2, 'laid_off', $3, $4, $5)",
                wave.id,
                rid,
                now - 2 * hour,
                outcome,
                i + 1,
            )
            await connection.execute(
                "INSERT INTO notifications (wave_id, registration_id, channel, outcome, state,"
                " sent_at) SELECT $1, $2, c, $3, 'sent', $4 FROM unnest($5::text[]) AS c",
                wave.id,
                rid,
                outcome,
                now,
                ["email", "sms"],
            )
        await connection.execute(
            "INSERT INTO wave_selections (wave_id, seed, started_at, joined, eligible, selected,"
            " digest) VALUES ($1, $2, $3, 3, 3, 2, '\\x00')",
            wave.id,
            bytes(32),
            now - hour,
        )


async def test_every_panel_rule_and_alert_query_returns_data_from_a_running_stack(
    settings: Settings,
    db: asyncpg.Pool,
    simulators: Running,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    edge_port, edge_metrics, supervisor_metrics, prom_port = (free_port() for _ in range(4))
    wired = simulators.wire(settings).replace(
        edge_port=edge_port,
        edge_access_log=False,
        supervise_min_workers=1,
        supervise_max_workers=1,
        supervise_interval_s=1.0,
        log_level="INFO",
    )
    edge = spawn(["edge"], wired.replace(metrics_port=edge_metrics), name="edge")
    spawn(
        ["supervise", "--run-dir", str(tmp_path / "run")],
        wired.replace(metrics_port=supervisor_metrics),
        name="supervise",
    )
    wait_until_ready(edge_port, edge)
    config = local.write_config(
        tmp_path / "prometheus.yml",
        local.local_config(edge_metrics, supervisor_metrics, wired.amqp_url, scrape_interval_s=1),
    )
    prometheus_log = tmp_path / "prometheus.log"
    with prometheus_log.open("w") as log:
        prometheus = await asyncio.create_subprocess_exec(
            *local.prometheus_command(config, tmp_path / "tsdb", prom_port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> int:
                if prometheus.returncode is not None:
                    raise AssertionError("Prometheus exited:\n" + prometheus_log.read_text())
                try:
                    async with http.get(f"{base}/-/ready") as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return 0

            await eventually(ready, lambda status: status == 200, 60)
            # A short wave: valid registrations, a few invalid ones.
            for person in simulators.people:
                async with http.post(
                    f"http://127.0.0.1:{edge_port}/v1/registrations", json=person.form
                ) as response:
                    assert response.status in (202, 422)
            for _ in range(5):
                async with http.post(
                    f"http://127.0.0.1:{edge_port}/v1/registrations", json={"nik": "1"}
                ) as response:
                    assert response.status == 422
            await eventually(
                lambda: _query(http, base, "min(up)"),
                lambda body: (
                    body.get("status") == "success"
                    and [r["value"][1] for r in body["data"]["result"]] == ["1"]
                ),
                120,
            )
            # Until the NIK checks moved and the rate windows hold a few samples.
            await eventually(
                lambda: _query(http, base, 'intake_funnel_registrations{stage="nik_verified"}'),
                lambda body: (
                    bool(body["data"]["result"])
                    and float(body["data"]["result"][0]["value"][1]) > 0
                ),
                180,
            )
            await _a_selected_wave(db)
            await asyncio.sleep(15)

            failures: list[str] = []

            async def check(where: str, expr: str) -> None:
                body = await _query(http, base, expr)
                if body.get("status") != "success":
                    failures.append(f"{where}: invalid: {body.get('error')}")
                elif not body["data"]["result"]:
                    failures.append(f"{where}: no data: {expr}")

            for where, expr in dashboard_targets(load_dashboard()):
                await check(where, expr)
            for rule in rules():
                if "record" in rule.doc:
                    await check(f"recording rule {rule.name}", str(rule.doc["expr"]))
            for alert in alerts():
                query, _, _ = split_comparison(str(alert.doc["expr"]))
                await check(f"alert {alert.name}", query)
            assert failures == [], "\n".join(failures)

        top = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "top",
            "--once",
            "--prometheus",
            base,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output = (await asyncio.wait_for(top.communicate(), 60))[0].decode()
        finally:
            await stop_async(top)  # not left running when it does not answer in time
        assert top.returncode == 0, output
        registered = await db.fetchval("SELECT count(*) FROM registrations")
        assert f"registered {registered:,}" in output
    finally:
        await stop_async(prometheus)
