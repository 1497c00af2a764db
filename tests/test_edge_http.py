"""The edge's answers to bad input, and its lifecycle. Bad input is a 4xx, never a 500."""

from __future__ import annotations

import asyncio
import random
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
from prometheus_client import REGISTRY, generate_latest

from core.settings import Settings
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import Process, free_port, wait_until_ready
from tests.support.waiting import eventually

Spawn = Callable[..., Process]
URL = "/v1/registrations"
JSON = {"Content-Type": "application/json"}


async def test_wrong_content_type_is_415(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:
        response = await client.post(
            URL, data=orjson.dumps(person(1)), headers={"Content-Type": "text/plain"}
        )
        assert response.status == 415
        assert response.headers["Content-Type"] == "application/problem+json"


async def test_malformed_json_is_400(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:
        for body in (b"{", b"", b"\xff\xfe", b'{"nik": "1"} trailing'):
            response = await client.post(URL, data=body, headers=JSON)
            assert response.status == 400, body
            assert (await response.json())["type"].endswith("/malformed-json")


async def test_a_body_over_the_limit_is_413_with_or_without_a_length(settings: Settings) -> None:
    big = orjson.dumps({**person(1), "full_name": "A" * (settings.edge_max_body_bytes + 1)})

    async def chunks() -> Any:
        for i in range(0, len(big), 1024):
            yield big[i : i + 1024]

    async with inprocess.edge(settings) as client:
        assert (await client.post(URL, data=big, headers=JSON)).status == 413
        assert (await client.post(URL, data=chunks(), headers=JSON)).status == 413


async def test_invalid_fields_are_422_with_one_error_per_field(settings: Settings) -> None:
    registrant = {**person(1), "phone": "12345", "email": "x@", "birth_date": "2020-02-30"}
    async with inprocess.edge(settings) as client:
        response = await client.post(URL, json=registrant)
        assert response.status == 422
        body = await response.json()
    assert {(e["field"], e["code"]) for e in body["errors"]} == {
        ("phone", "phone_format"),
        ("email", "email_format"),
        ("birth_date", "date_format"),
    }
    assert body["status"] == 422


async def test_bad_idempotency_key_is_400(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:
        response = await client.post(URL, json=person(1), headers={"Idempotency-Key": "k" * 256})
        assert response.status == 400


async def test_random_bodies_never_get_a_5xx(settings: Settings) -> None:
    rng = random.Random(2020)
    values: list[Any] = [None, True, 0, -1, 1.5, "", "x" * 300, [], {}, ["a"], {"a": 1}, "\u0000"]
    fields = list(person(0))
    async with inprocess.edge(settings) as client:
        for i in range(300):
            body: Any = {**person(i)}
            for _ in range(rng.randint(1, 4)):
                body[rng.choice([*fields, "extra"])] = rng.choice(values)
            if i % 25 == 0:
                body = rng.choice(values)
            response = await client.post(URL, data=orjson.dumps(body), headers=JSON)
            assert response.status in (202, 400, 422), (body, response.status)


async def test_unknown_route_and_method_are_problems(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:
        assert (await client.get("/nope")).status == 404
        response = await client.put(URL, json={})
        assert response.status == 405
        assert response.headers["Content-Type"] == "application/problem+json"


def _counted() -> dict[str, float]:
    """What this process's edge metrics say so far (the registry is the process's: tests
    compare differences)."""

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def requests(route: str, method: str, status_class: str) -> float:
        return value(
            "intake_http_requests_total", route=route, method=method, status_class=status_class
        )

    return {
        "accepted": value("intake_registrations_accepted_total"),
        "invalid": value("intake_registrations_invalid_total"),
        "shed overloaded": value("intake_registrations_shed_total", reason="overloaded"),
        "published": value("intake_publish_batch_registrations_sum"),
        "POST /v1/registrations 2xx": requests(URL, "POST", "2xx"),
        "POST /v1/registrations 4xx": requests(URL, "POST", "4xx"),
        "POST /v1/registrations 5xx": requests(URL, "POST", "5xx"),
        "GET /v1/registrations/{id} 4xx": requests(URL + "/{id}", "GET", "4xx"),
        "GET unmatched 4xx": requests("unmatched", "GET", "4xx"),
        "other unmatched 4xx": requests("unmatched", "other", "4xx"),
    }


async def test_the_edge_counts_answers_by_route_template_and_registrations_by_outcome(
    settings: Settings,
) -> None:
    before = _counted()
    unknown = str(uuid.uuid4())
    async with inprocess.edge(settings) as client:
        for i in range(3):
            assert (await client.post(URL, json=person(i))).status == 202
        assert (await client.post(URL, json={**person(3), "phone": "1"})).status == 422
        assert (await client.post(URL, data=b"{}", headers={"Content-Type": "x/y"})).status == 415
        assert (await client.get(f"{URL}/{unknown}")).status == 404
        assert (await client.get(f"/nowhere/{unknown}")).status == 404
        assert (await client.request("PROPFIND", "/")).status in (404, 405)
    async with inprocess.edge(settings.replace(edge_max_pending=0)) as client:
        for i in range(2):
            assert (await client.post(URL, json=person(10 + i))).status == 503
    after = _counted()
    assert {key: after[key] - before[key] for key in after} == {
        "accepted": 3,
        "invalid": 2,
        "shed overloaded": 2,
        "published": 3,
        "POST /v1/registrations 2xx": 3,
        "POST /v1/registrations 4xx": 2,
        "POST /v1/registrations 5xx": 2,
        "GET /v1/registrations/{id} 4xx": 1,
        "GET unmatched 4xx": 1,
        "other unmatched 4xx": 1,
    }
    assert unknown not in generate_latest(REGISTRY).decode()  # a template, never the path


async def test_health_readiness_and_openapi(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        spec = await (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")


async def test_sigterm_finishes_what_is_in_flight_then_exits(
    settings: Settings, db: asyncpg.Pool, spawn: Spawn
) -> None:
    port = free_port()
    edge = spawn(["edge"], settings.replace(edge_port=port, edge_access_log=False))
    wait_until_ready(port, edge)
    url = f"http://127.0.0.1:{port}{URL}"
    first_answer = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def post(i: int) -> tuple[int, str | None]:
            try:
                async with session.post(url, json=person(i, seed=9)) as response:
                    first_answer.set()
                    return response.status, (await response.json()).get("id")
            except aiohttp.ClientConnectionError:
                return 0, None  # refused after the listener closed: never accepted

        posts = [asyncio.create_task(post(i)) for i in range(2_000)]
        await first_answer.wait()
        edge.sigterm()  # while requests are in flight
        results = await asyncio.gather(*posts)
    assert edge.wait() == 0
    assert {status for status, _ in results} <= {0, 202, 503}
    accepted = {i for status, i in results if status == 202}
    assert accepted, "nothing was accepted"
    assert len(accepted) < len(results), "the edge stopped after everything was sent"
    async with inprocess.persist_worker(settings, db):
        stored = await eventually(
            lambda: db.fetch("SELECT id::text FROM registrations"),
            lambda rows: len(rows) >= len(accepted),
        )
    assert accepted <= {r["id"] for r in stored}


def test_the_edge_listens_with_the_configured_backlog(settings: Settings, spawn: Spawn) -> None:
    """A wave's opening burst of connections waits in the kernel's accept queue instead of
    being dropped (``ss`` shows a listening socket's backlog as its Send-Q)."""
    port = free_port()
    edge = spawn(["edge"], settings.replace(edge_port=port, edge_backlog=1500))
    wait_until_ready(port, edge)
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == 1500  # State Recv-Q Send-Q Local Peer
