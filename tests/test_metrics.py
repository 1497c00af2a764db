"""What ``/metrics`` says is what happened, with several processes per role, and without
personal data.

The system runs as an operator runs it: ``intake edge`` and ``intake supervise`` processes (the
workers are its children, in prometheus-client's multiprocess mode), against the ministry
simulators and the real RabbitMQ and PostgreSQL. The endpoints are scraped over HTTP and parsed
as Prometheus parses them; every figure is compared with what the test sent and with the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from core.settings import Settings
from core.status import read_status
from intake.validation import today_wib
from simulators.behaviour import Behaviour
from simulators.population import Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support.metrics import Samples, scrape
from tests.support.people import person
from tests.support.processes import Process, free_port, wait_until_ready
from tests.support.waiting import eventually
from tests.workers.test_nik_lanes import MIXED, _settled, _wired
from tests.workers.test_supervisor import (
    _fleet,
    _number,
    _publish,
    _registrations_locked,
    _reported,
    _stored,
    _supervising,
)
from workers.supervisor import Supervisor

Spawn = Callable[..., Process]
NIK_LANES = ("dukcapil", "dapodik", "dtks")
RABBITMQ_METRICS = "http://127.0.0.1:15692/metrics"


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    fast = Behaviour(latency_median_ms=2, latency_p99_ms=20)
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        # About 55 valid registrants (every kind of NIK outcome) and 5 repeated NIKs.
        people=population(
            60,
            seed=91,
            today=today_wib(),
            invalid_share=0.0,
            duplicate_share=0.1,
            proportions=MIXED,
        ),
        behaviours={"dukcapil": fast, "dapodik": fast, "dtks": fast},
    )
    async with run_simulators(config) as running:
        yield running


def _registrants(simulators: Running) -> list[Registrant]:
    """The population's valid registrants and repeated NIKs (the invalid forms are sent
    apart, counted)."""
    return [p for p in simulators.people if p.kind in ("valid", "duplicate")]


def _invalid_forms() -> list[dict[str, Any]]:
    return [
        {**person(200, seed=91), "birth_date": "2015-01-01"},  # underage, NIK mismatch
        {**person(201, seed=91), "phone": "12345"},
        {**person(202, seed=91), "email": "not-an-email"},
        {**person(203, seed=91), "nik": person(203, seed=91)["nik"][:12] + "0000"},
    ]


class Burst:
    """What the test sent through the edge and what it answered."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.accepted: dict[uuid.UUID, str] = {}  # id -> access token
        self.sent: list[dict[str, Any]] = []
        self.lookups = 0

    @property
    def client_errors(self) -> int:
        return sum(1 for status in self.statuses if 400 <= status < 500)


async def _send(edge_url: str, people: list[Registrant]) -> Burst:
    """The valid and duplicate registrants, invalid forms, a malformed body, a wrong content
    type and a bad Idempotency-Key; then a status look-up of a few and a path that exists not."""
    burst = Burst()
    url = f"{edge_url}/v1/registrations"
    async with aiohttp.ClientSession() as session:

        async def post(**kwargs: Any) -> None:
            async with session.post(url, **kwargs) as response:
                burst.statuses.append(response.status)
                if response.status == 202:
                    body = await response.json()
                    burst.accepted[uuid.UUID(body["id"])] = body["access_token"]

        for registrant in [p.form for p in people] + _invalid_forms():
            burst.sent.append(registrant)
            await post(json=registrant)
        nik = people[0].form["nik"]
        await post(data=b'{"nik": "' + nik.encode() + b'"', headers={"Content-Type": "text/json"})
        await post(data=b'{"nik": "' + nik.encode() + b'"', headers=_JSON)
        await post(json=person(210, seed=91), headers={"Idempotency-Key": "x" * 300})
        burst.sent.append(person(210, seed=91))
        for registration_id, token in list(burst.accepted.items())[:5]:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{url}/{registration_id}", headers=headers) as response:
                assert response.status == 200
                burst.lookups += 1
        async with session.get(f"{url}/{next(iter(burst.accepted))}/nothing") as response:
            assert response.status == 404
    return burst


_JSON = {"Content-Type": "application/json"}


async def _truth(db: asyncpg.Pool) -> dict[str, Any]:
    """The database's own figures."""
    reasons = await db.fetch(
        "SELECT reject_reason, count(*) AS n FROM registrations WHERE status = 'rejected'"
        " GROUP BY 1"
    )
    checks = await db.fetch("SELECT check_name, state, count(*) AS n FROM checks GROUP BY 1, 2")
    dispatched = await db.fetch(
        "SELECT check_name, count(*) AS n FROM checks WHERE dispatched_at IS NOT NULL GROUP BY 1"
    )
    return {
        "registered": await db.fetchval("SELECT count(*) FROM registrations"),
        "rejected": {row["reject_reason"]: row["n"] for row in reasons},
        "checks": {(row["check_name"], row["state"]): row["n"] for row in checks},
        "dispatched": {row["check_name"]: row["n"] for row in dispatched},
    }


def _figures(fleet: Samples) -> dict[str, Any]:
    """The same figures, as the supervisor's /metrics tells them."""
    tasks = {
        (lane, outcome): fleet.get("intake_lane_tasks_total", lane=lane, outcome=outcome)
        for lane in NIK_LANES
        for outcome in ("passed", "rejected")
    }
    return {
        # None when a scrape left the funnel out (a slow database): not equal, scraped again.
        "registered": fleet.get("intake_funnel_registrations", stage="registered"),
        "rejected": {
            reason: n
            for reason, n in fleet.by("intake_funnel_rejected_registrations", "reason").items()
            if n
        },
        "checks": {
            (lane, "passed" if outcome == "passed" else "failed"): n
            for (lane, outcome), n in tasks.items()
            if n
        },
        "dispatched": {
            lane: n for lane, n in fleet.by("intake_dispatch_tasks_total", "lane").items() if n
        },
    }


def _comparable(truth: dict[str, Any]) -> dict[str, Any]:
    """The database's figures that the lanes' counters and the dispatcher's must equal: the
    NIK lanes' final checks (the other lanes do not run here)."""
    return {
        **truth,
        "checks": {
            (check, state): n
            for (check, state), n in truth["checks"].items()
            if check in NIK_LANES and state in ("passed", "failed")
        },
    }


@contextlib.asynccontextmanager
async def _stack(
    settings: Settings, spawn: Spawn, tmp_path: Path, kinds: tuple[str, ...]
) -> AsyncIterator[tuple[str, str, str]]:
    """``intake edge`` and ``intake supervise KINDS``, each serving /metrics; yields the edge's
    URL and the two metrics URLs. Both are stopped with SIGTERM at the end."""
    edge_port, edge_metrics, fleet_metrics = free_port(), free_port(), free_port()
    edge = spawn(["edge"], settings.replace(edge_port=edge_port, metrics_port=edge_metrics))
    fleet = spawn(
        ["supervise", *kinds, f"--run-dir={tmp_path / 'run'}", f"--log-dir={tmp_path / 'logs'}"],
        settings.replace(
            metrics_port=fleet_metrics,
            supervise_worker_limits=",".join(f"{k}=1-1" for k in kinds if k != "dispatch"),
        ),
        "supervise",
    )
    await asyncio.to_thread(wait_until_ready, edge_port, edge)
    try:
        yield (
            f"http://127.0.0.1:{edge_port}",
            f"http://127.0.0.1:{edge_metrics}/metrics",
            f"http://127.0.0.1:{fleet_metrics}/metrics",
        )
    finally:
        # Off the event loop: the simulators run in it, and the lanes finish their calls.
        codes = await asyncio.gather(
            asyncio.to_thread(edge.terminate, 60), asyncio.to_thread(fleet.terminate, 120)
        )
    assert list(codes) == [0, 0]


async def test_the_metrics_tell_what_happened(
    settings: Settings, db: asyncpg.Pool, simulators: Running, spawn: Spawn, tmp_path: Path
) -> None:
    wired = _wired(settings, simulators).replace(log_level="INFO")
    people = _registrants(simulators)
    assert {p.kind for p in people} == {"valid", "duplicate"}
    async with _stack(wired, spawn, tmp_path, ("persist", "dispatch", *NIK_LANES)) as urls:
        edge_url, edge_metrics, fleet_metrics = urls
        burst = await _send(edge_url, people)
        ids = list(burst.accepted)
        assert len(ids) == len(people)
        assert burst.client_errors == len(_invalid_forms()) + 3
        await eventually(lambda: _settled(db, ids), lambda n: n == len(ids), 120)

        async def both() -> tuple[dict[str, Any], dict[str, Any]]:
            return _figures(await scrape(fleet_metrics)), _comparable(await _truth(db))

        figures, truth = await eventually(both, lambda pair: pair[0] == pair[1], 60)
        assert figures == truth  # the funnel, the rejections, the lanes' tasks, the dispatches
        assert truth["registered"] == len(ids)
        assert truth["rejected"]["duplicate_nik"] > 0
        assert {"nik_not_found", "nik_data_mismatch"} <= set(truth["rejected"])
        assert truth["checks"]["dukcapil", "passed"] > 0

        edge = await scrape(edge_metrics)
        fleet = await scrape(fleet_metrics)

    # The edge: what it answered.
    assert edge.value("intake_registrations_accepted_total") == len(ids)
    assert edge.value("intake_registrations_invalid_total") == burst.client_errors
    assert sum(edge.by("intake_registrations_shed_total", "reason").values()) == 0
    assert edge.by("intake_registrations_shed_total", "reason").keys() >= {"queue_full"}
    requests = edge.by("intake_http_requests_total", "status_class", route="/v1/registrations")
    assert requests == {"2xx": len(ids), "4xx": burst.client_errors}
    lookups = edge.by("intake_http_requests_total", "status_class", route="/v1/registrations/{id}")
    assert lookups == {"2xx": burst.lookups}
    assert (
        edge.value(
            "intake_http_requests_total", route="unmatched", method="GET", status_class="4xx"
        )
        == 1
    )
    assert edge.value("intake_publish_batch_registrations_sum") == len(ids)
    assert edge.value("intake_publish_confirm_duration_seconds_count") == edge.value(
        "intake_publish_batch_registrations_count"
    )
    assert edge.value("intake_edge_pending_registrations") == 0

    # The persist worker: every accepted registration stored once, or as a duplicate.
    persisted = fleet.by("intake_persist_registrations_total", "outcome")
    assert persisted["stored"] + persisted["duplicate"] == len(ids)
    assert persisted["duplicate"] == truth["rejected"]["duplicate_nik"]
    assert persisted["dead_lettered"] == 0
    assert fleet.value("intake_persist_batch_duration_seconds_count") > 0

    # The lanes: no retry or dead letter against healthy simulators, calls answered, every
    # breaker closed, and rejections by the database's reasons.
    for lane in NIK_LANES:
        tasks = fleet.by("intake_lane_tasks_total", "outcome", lane=lane)
        assert tasks.keys() == {
            "passed",
            "waiting",
            "rejected",
            "review",
            "retry",
            "dead_lettered",
            "skipped",
        }
        assert tasks["dead_lettered"] == 0
        calls = fleet.by("intake_service_call_duration_seconds_count", "signal", lane=lane)
        assert calls.keys() == {"ok", "overload", "failure", "neutral"}
        # One call per task, but for the tasks whose check was final already.
        assert sum(calls.values()) == sum(tasks.values()) - tasks["skipped"] > 0
        assert fleet.by("intake_lane_breaker_workers", "state", lane=lane) == {
            "closed": 1,
            "open": 0,
            "half_open": 0,
        }
        # Every delivery came in and went out again (acknowledged: counted above).
        assert fleet.value("intake_lane_deliveries_in_hand", lane=lane) == 0
    rejections = fleet.by("intake_lane_rejections_total", "reason", lane="dukcapil")
    assert rejections == {
        r: n for r, n in truth["rejected"].items() if r in ("nik_not_found", "nik_data_mismatch")
    }

    # The supervisor's own figures and the queues, as the application sees them.
    assert fleet.value("intake_worker_processes", kind="persist") == 1
    assert fleet.value("intake_worker_restarts_total", kind="persist") == 0
    assert fleet.value("intake_queue_messages_ready", queue="intake.registrations") == 0


async def test_a_fleet_serves_the_sum_of_its_workers_and_forgets_the_gauges_of_the_dead(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    port = free_port()
    fleet = _fleet(settings, "persist=2-2,dukcapil=2-2", persist_prefetch=20, metrics_port=port)
    url = f"http://127.0.0.1:{port}/metrics"
    async with _supervising(fleet, tmp_path, ("persist", "dukcapil")) as supervisor:
        await eventually(partial(_all_reported, supervisor), lambda n: n == 4, 60)
        served = await scrape(url)
        assert served.value("intake_worker_processes", kind="persist") == 2
        assert served.by("intake_lane_breaker_workers", "state", lane="dukcapil") == {
            "closed": 2,
            "open": 0,
            "half_open": 0,
        }
        assert served.value("intake_lane_concurrency_limit", lane="dukcapil") == 2 * 8

        # Both persist workers hold messages (and so will both store some).
        async with _registrations_locked(fleet):
            ids = await _publish(fleet, 100)
            await eventually(
                partial(_reported, supervisor),
                lambda found: len(found) == 2 and all(_number(s, "inflight") == 20 for s in found),
                30,
            )
        await eventually(lambda: _stored(db), lambda n: n == len(ids), 60)
        each = await eventually(
            partial(_registrations_by_pid, supervisor),
            lambda by_pid: len(by_pid) == 2 and sum(by_pid.values()) == len(ids),
            30,
        )
        assert all(n >= 20 for n in each.values()), each
        served = await scrape(url)
        assert served.value("intake_persist_registrations_total", outcome="stored") == len(ids)

        # A persist worker killed: what it stored stays counted.
        victim = min(each)
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: _persist_replaced(supervisor, victim), bool, 60)
        served = await scrape(url)
        assert served.value("intake_persist_registrations_total", outcome="stored") == len(ids)
        assert served.value("intake_worker_restarts_total", kind="persist") == 1
        assert served.value("intake_worker_processes", kind="persist") == 2

        # A lane worker killed: its live gauges leave the sums, and its replacement's count.
        lane_victim = min(supervisor.plan()["dukcapil"].running)
        os.kill(lane_victim, signal.SIGKILL)
        await eventually(lambda: _lane_replaced(supervisor, lane_victim), bool, 60)
        # The replacement wrote its gauges before its status file: had the victim's stayed,
        # the sums would count three workers.
        served = await scrape(url)
        assert served.by("intake_lane_breaker_workers", "state", lane="dukcapil") == {
            "closed": 2,
            "open": 0,
            "half_open": 0,
        }
        assert served.value("intake_lane_concurrency_limit", lane="dukcapil") == 2 * 8
        assert not (supervisor.metrics_dir / f"gauge_livesum_{lane_victim}.db").exists()
        assert (supervisor.metrics_dir / f"counter_{victim}.db").exists()
    assert not supervisor.metrics_dir.exists()  # removed when the supervisor ends


def _all_reported(supervisor: Supervisor) -> int:
    """Workers of any kind whose status file is written."""
    found = 0
    for plan in supervisor.plan().values():
        for pid in plan.running:
            path = supervisor.status_path(pid)
            status = read_status(path) if path is not None else None
            found += status is not None and status.get("pid") == pid
    return found


def _registrations_by_pid(supervisor: Supervisor) -> dict[int, int]:
    """Registrations each running persist worker stored (its status file)."""
    found = {}
    for status in _reported(supervisor):
        pid, registrations = status.get("pid"), status.get("registrations")
        if isinstance(pid, int) and isinstance(registrations, int):
            found[pid] = registrations
    return found


def _persist_replaced(supervisor: Supervisor, victim: int) -> bool:
    """The persist worker ``victim`` exited and two others run, both reporting."""
    exited = any(e.pid == victim for e in supervisor.exits)
    return (
        exited
        and {s.get("pid") for s in _reported(supervisor)}
        == set(supervisor.plan()["persist"].running)
        and len(supervisor.plan()["persist"].running) == 2
    )


def _lane_replaced(supervisor: Supervisor, victim: int) -> bool:
    """The dukcapil worker ``victim`` exited and two others run, both reporting."""
    plan = supervisor.plan()["dukcapil"]
    if victim in plan.running or len(plan.running) != 2:
        return False
    return all(
        (path := supervisor.status_path(pid)) is not None
        and (read_status(path) or {}).get("pid") == pid
        for pid in plan.running
    )


async def test_no_personal_data_in_any_metrics_text(
    settings: Settings, db: asyncpg.Pool, simulators: Running, spawn: Spawn, tmp_path: Path
) -> None:
    wired = _wired(settings, simulators).replace(log_level="INFO")
    people = _registrants(simulators)
    async with _stack(wired, spawn, tmp_path, ("persist", "dispatch", *NIK_LANES)) as urls:
        edge_url, edge_metrics, fleet_metrics = urls
        burst = await _send(edge_url, people)
        ids = list(burst.accepted)
        await eventually(lambda: _settled(db, ids), lambda n: n == len(ids), 120)
        # Ids and tokens in paths and queries, wrong and right.
        registration_id, token = next(iter(burst.accepted.items()))
        nik = people[0].form["nik"]
        async with aiohttp.ClientSession() as session:
            for method, path, kwargs in (
                ("POST", "/v1/verify/email", {"params": {"token": token}}),
                (
                    "POST",
                    f"/v1/registrations/{registration_id}/otp",
                    {"json": {"code": "123456"}, "headers": {"Authorization": f"Bearer {token}"}},
                ),
                ("GET", f"/v1/registrations/{registration_id}", {"params": {"nik": nik}}),
                ("GET", f"/v1/registrations/{nik}", {}),
                ("GET", f"/{nik}", {}),
                ("PROPFIND", f"/v1/registrations/{registration_id}", {}),
            ):
                async with session.request(method, edge_url + path, **kwargs) as response:
                    assert response.status < 500
        texts = {
            "edge": (await scrape(edge_metrics)).text,
            "supervisor": (await scrape(fleet_metrics)).text,
        }
    # RabbitMQ's own exporter (the rabbitmq_prometheus plugin, enabled by scripts/setup.sh):
    # required, not skipped when missing. Node totals, every queue, and this vhost's queues as
    # a Prometheus scrapes them per queue.
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(settings.amqp_url).path.lstrip("/"))
    detailed = urllib.parse.urlencode(
        {"vhost": vhost, "family": ["queue_coarse_metrics", "queue_consumer_count"]}, doseq=True
    )
    for path in ("", "/per-object"):
        texts[f"rabbitmq{path}"] = (await scrape(RABBITMQ_METRICS + path)).text
    # RabbitMQ emits queue statistics every few seconds: this vhost's queues appear by then.
    texts["rabbitmq/detailed"] = (
        await eventually(
            lambda: scrape(f"{RABBITMQ_METRICS}/detailed?{detailed}"),
            lambda found: f'vhost="{vhost}"' in found.text,
            60,
        )
    ).text
    assert "intake_registrations_accepted_total" in texts["edge"]  # really scraped
    assert "intake_funnel_registrations" in texts["supervisor"]
    assert "rabbitmq_queue_messages_ready" in texts["rabbitmq/per-object"]

    secrets = set()
    for form in burst.sent:
        for field in ("nik", "full_name", "email", "phone"):
            secrets.add(str(form[field]))
        secrets.add("+62" + str(form["phone"]).lstrip("0"))
        secrets.add(str(form["phone"]).lstrip("0"))
    for registration_id, token in burst.accepted.items():
        secrets |= {str(registration_id), registration_id.hex, token}
    # A secret too short to tell from a number (the invalid phone "12345") would be found in
    # any large counter by chance: RabbitMQ's byte totals once held it.
    secrets = {secret for secret in secrets if len(secret) >= 8}
    assert len(secrets) > 5 * len(people)
    leaked = {name: sorted(s for s in secrets if s in text) for name, text in texts.items()}
    assert leaked == {name: [] for name in texts}
