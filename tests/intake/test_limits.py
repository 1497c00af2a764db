"""Limits per person and per client (core/limits.py, intake/limits.py), on the real services.

A client that spends its requests gets ``429`` with ``Retry-After``, across edges; a proxy's
``X-Forwarded-For`` is believed only from a trusted proxy. A NIK that reached its attempts is
refused ``429`` by both accept paths (express and aiohttp's), counted by the persist worker.
Resends count against the NIK across its registrations, and the sends the SMS gateway refused
(503) while the registrant asked again are not counted against them.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request

from core import limits
from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from intake.app import create_app
from intake.limits import NIK_BLOCKS, NikBlocks, client_address, per_client
from intake.publisher import BatchPublisher
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support import inprocess
from tests.support.people import person
from tests.support.waiting import eventually

Client = TestClient[Request, Application]
PROBLEMS = "https://intake.example/problems/"
# The routes counted per client: every route that reads or acts on one registration (their
# handlers are added with per_client).
CLIENT_ROUTES = frozenset(
    {
        "/v1/registrations/{id}",
        "/v1/registrations/{id}/otp",
        "/v1/registrations/{id}/email/resend",
        "/v1/registrations/{id}/otp/resend",
        "/v1/registrations/{id}/photo",
        "/v1/registrations/{id}/test",
        "/v1/registrations/{id}/wave",
    }
)


async def _limited(response: aiohttp.ClientResponse, limit: str, window_s: int) -> None:
    assert response.status == 429
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["type"] == PROBLEMS + "too-many-attempts"
    assert body["limit"] == limit
    assert 1 <= int(response.headers["Retry-After"]) <= window_s


def _status_url() -> str:
    return f"/v1/registrations/{uuid.uuid4()}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These count answers: a 503 under a busy machine's load is refunded and would miscount."""
    return inprocess.unshed(settings)


# --- per client ------------------------------------------------------------------------------


async def test_a_client_gets_429_after_its_requests_across_edges(settings: Settings) -> None:
    wired = settings.replace(limit_client_requests=3, limit_client_window_s=600)
    async with inprocess.edge(wired) as first, inprocess.edge(wired) as second:
        # Probing ids: each 404 counts. Two edges share the count.
        assert (await first.get(_status_url())).status == 404
        assert (await second.get(_status_url())).status == 404
        response = await first.post(f"{_status_url()}/otp/resend")
        assert response.status == 404
        await _limited(await second.get(_status_url()), "client", 600)
        await _limited(await first.post(f"{_status_url()}/otp", json={"code": "1"}), "client", 600)
        # Other routes are not counted: the registration route, the probes, the document.
        assert (await first.get("/healthz")).status == 200
        assert (await first.post("/v1/registrations", json=person(1, seed=5))).status == 202


async def test_a_forwarded_address_counts_only_behind_a_trusted_proxy(settings: Settings) -> None:
    trusting = settings.replace(
        limit_client_requests=2,
        limit_client_window_s=600,
        limit_trusted_proxies="127.0.0.0/8, 10.0.0.0/8, ::1",
    )

    def behind(*chain: str) -> dict[str, str]:
        return {"X-Forwarded-For": ", ".join((*chain, "10.9.9.9"))}  # (then our inner proxy)

    async with inprocess.edge(trusting) as client:
        for _ in range(2):
            assert (await client.get(_status_url(), headers=behind("198.51.100.7"))).status == 404
        await _limited(
            await client.get(_status_url(), headers=behind("198.51.100.7")), "client", 600
        )
        # What the client itself put before its address changes nothing: the rightmost
        # address that is not a trusted proxy is the one our proxy saw.
        response = await client.get(_status_url(), headers=behind("203.0.113.9", "198.51.100.7"))
        await _limited(response, "client", 600)
        assert (await client.get(_status_url(), headers=behind("198.51.100.8"))).status == 404
    untrusting = trusting.replace(limit_trusted_proxies="")
    async with inprocess.edge(untrusting) as client:
        # The peer (127.0.0.1) is the client whatever it claims: two requests, then 429.
        for address in ("203.0.113.1", "203.0.113.2"):
            assert (await client.get(_status_url(), headers=behind(address))).status == 404
        await _limited(
            await client.get(_status_url(), headers=behind("203.0.113.3")), "client", 600
        )


async def test_only_the_routes_counted_pass_through_the_client_limit(settings: Settings) -> None:
    # Installed on those routes' handlers, not on the application: the registration route, the
    # probes and the page never pass through it. Each route asked twice, by a client of its
    # own (a forwarded address), with a limit of one: the second is 429 on a counted route.
    wired = settings.replace(
        limit_client_requests=1, limit_client_window_s=600, limit_trusted_proxies="127.0.0.0/8"
    )
    async with inprocess.edge(wired) as client:
        routes = [
            (r.method, r.resource.canonical, r.handler)
            for r in client.app.router.routes()
            if r.resource is not None
        ]
        counted = set()
        for i, (method, template, _) in enumerate(routes):
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
            headers = {"X-Forwarded-For": f"198.51.100.{i}"}
            statuses = []
            for _ in range(2):
                async with client.request(method, path, headers=headers) as response:
                    statuses.append(response.status)
            if statuses[1] == 429:
                counted.add(template)
        assert counted == CLIENT_ROUTES
        assert len(routes) > 2 * len(CLIENT_ROUTES)
        # The handlers of the others are their own, unwrapped.
        for _, template, handler in routes:
            assert hasattr(handler, "__wrapped__") == (template in CLIENT_ROUTES), template


async def test_a_clients_4xx_counts_raised_or_returned_and_a_5xx_is_refunded(
    settings: Settings, keyring: Keyring
) -> None:
    wired = settings.replace(limit_client_requests=3, limit_client_window_s=600)
    raised: dict[str, type[web.HTTPException]] = {
        "404": web.HTTPNotFound,
        "409": web.HTTPConflict,
        "502": web.HTTPBadGateway,
        "503": web.HTTPServiceUnavailable,
    }

    async def answering(request: web.Request) -> web.StreamResponse:
        """The answer the path asks for: an HTTP exception raised, a 503 returned, or a 500
        (an unexpected error)."""
        how, status = request.match_info["how"], request.match_info["status"]
        if how == "returns":
            return web.Response(status=int(status))
        if status == "500":
            raise RuntimeError("unexpected")
        raise raised[status]()

    app = create_app(wired, keyring, BatchPublisher(wired, keyring))
    app.router.add_get("/test/{how}/{status}", per_client(answering))
    async with TestClient(TestServer(app)) as client:

        async def status_of(path: str, **kwargs: Any) -> int:
            async with client.request(kwargs.pop("method", "GET"), path, **kwargs) as response:
                return response.status

        # Faults of ours, a ministry's or a gateway's, raised or returned: refunded, however many.
        for path in ("/test/raises/503", "/test/raises/502", "/test/raises/500") * 2:
            assert await status_of(path) == int(path[-3:])
        assert await status_of("/test/returns/503") == 503
        # The client's own 4xx count, raised as returned. On a real route: a body larger than
        # the edge takes, refused by aiohttp as the handler reads it (raised, 413).
        who = uuid.uuid4()
        otp = await status_of(
            f"/v1/registrations/{who}/otp",
            method="POST",
            data=b"x" * (wired.edge_max_body_bytes + 1),
            headers={"Authorization": f"Bearer {keyring.access_token(who)}"},
        )
        assert otp == 413
        assert await status_of("/test/raises/404") == 404
        assert await status_of("/test/returns/409") == 409
        async with client.get("/test/raises/409") as response:
            await _limited(response, "client", 600)


def test_client_address_walks_the_chain_from_the_right() -> None:
    trusted = Settings(limit_trusted_proxies="10.0.0.0/8,192.0.2.1").trusted_proxies()
    assert client_address("192.0.2.1", ["1.2.3.4, 10.1.1.1"], trusted) == "1.2.3.4"
    assert client_address("192.0.2.1", ["6.6.6.6, 1.2.3.4", "10.0.0.9"], trusted) == "1.2.3.4"
    assert client_address("192.0.2.1", [], trusted) == "192.0.2.1"
    assert client_address("192.0.2.1", ["10.0.0.1"], trusted) == "10.0.0.1"  # all trusted
    assert client_address("8.8.8.8", ["1.2.3.4"], trusted) == "8.8.8.8"  # not a trusted peer
    assert client_address("192.0.2.1", ["junk, 10.0.0.2"], trusted) == "junk"


# --- per NIK: registrations ------------------------------------------------------------------


async def _counted(db: asyncpg.Pool, keyring: Keyring, nik: str, hits: int) -> None:
    await eventually(
        lambda: db.fetchval(
            "SELECT hits FROM limit_hits WHERE kind = 'nik' AND key = $1", keyring.nik_hmac(nik)
        ),
        lambda n: n == hits,
    )


@pytest.mark.parametrize("express", [True, False], ids=["express", "aiohttp"])
async def test_a_nik_gets_429_after_its_registrations(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring, express: bool
) -> None:
    wired = settings.replace(
        limit_nik_attempts=2, limit_nik_window_s=900, limit_refresh_s=0.05, edge_express=express
    )
    form = person(3, seed=11)
    async with (
        inprocess.served_edge(wired) as edge,
        inprocess.persist_worker(wired, db),
        aiohttp.ClientSession(f"http://{edge.host}:{edge.port}") as http,
    ):
        for email in ("a@example.com", "b@example.com"):  # the second is a duplicate_nik
            async with http.post("/v1/registrations", json={**form, "email": email}) as response:
                assert response.status == 202
        await _counted(db, keyring, form["nik"], 2)

        # The edge reads the NIKs over their limit every limit_refresh_s (until then, a
        # repeat is accepted and stored duplicate_nik, as without the limit).
        blocks = edge.app[NIK_BLOCKS]
        await eventually(
            lambda: blocks.blocked, lambda blocked: keyring.nik_hmac(form["nik"]) in blocked
        )
        async with http.post("/v1/registrations", json=form) as response:
            await _limited(response, "nik", 900)
        async with http.post("/v1/registrations", json=person(4, seed=11)) as response:
            assert response.status == 202  # another NIK
        if express:
            assert edge.express is not None
            assert edge.express.taken >= 3
    assert await db.fetchval("SELECT count(*) FROM registrations") == 3


# --- per NIK: resends, and a gateway's fault --------------------------------------------------


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    async with run_simulators(SimulatorConfig(ports=Ports.ephemeral(), people=())) as running:
        yield running


@contextlib.asynccontextmanager
async def _stack(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[Client]:
    """The edge, the persist worker, the dispatcher and the phone lane."""
    async with (
        inprocess.edge(settings) as client,
        inprocess.persist_worker(settings, db),
        inprocess.dispatcher(settings, db),
        inprocess.lanes(settings, db, (Check.PHONE,)),
    ):
        yield client


async def _phone_state(db: asyncpg.Pool, registration_id: uuid.UUID) -> Any:
    return await db.fetchval(
        "SELECT state FROM checks WHERE registration_id = $1 AND check_name = 'phone'",
        registration_id,
    )


async def _as_if_sent_earlier(db: asyncpg.Pool, registration_id: uuid.UUID) -> None:
    """Past the resend cooldown."""
    await db.execute(
        "UPDATE contact_codes SET send_started_at = now() - interval '1 hour'"
        " WHERE registration_id = $1 AND channel = 'sms'",
        registration_id,
    )


async def test_resends_count_against_the_nik_but_not_while_the_gateway_fails(
    settings: Settings, db: asyncpg.Pool, keyring: Keyring, simulators: Running
) -> None:
    await db.execute("TRUNCATE contact_codes")
    wired = settings.replace(
        sms_url=simulators.urls["sms"],
        retry_base_delay_s=0.05,
        ministry_timeout_s=2.0,
        limit_nik_attempts=3,  # the registration, then two resends
        limit_nik_window_s=900,
        resend_max=10,
    )
    form = person(6, seed=13)
    async with _stack(wired, db) as client:
        accepted = await (await client.post("/v1/registrations", json=form)).json()
        who = uuid.UUID(accepted["id"])
        auth = {"Authorization": f"Bearer {accepted['access_token']}"}
        resend = f"/v1/registrations/{who}/otp/resend"
        await eventually(lambda: _phone_state(db, who), lambda state: state == "waiting")
        await _counted(db, keyring, form["nik"], 1)

        simulators.set_behaviour("sms", outage=True)  # the gateway answers 503
        await _as_if_sent_earlier(db, who)
        assert (await client.post(resend, headers=auth)).status == 202  # counted: 2
        # The lane's send fails (503) and is retried; the registrant asks again meanwhile.
        await eventually(lambda: _phone_state(db, who), lambda state: state == "retrying")
        for _ in range(5):
            response = await client.post(resend, headers=auth)
            assert response.status == 409
            assert (await response.json())["type"] == PROBLEMS + "not-sent-yet"
        await _counted(db, keyring, form["nik"], 2)  # none of those counted

        simulators.set_behaviour("sms", outage=False)
        await eventually(lambda: _phone_state(db, who), lambda state: state == "waiting")
        await _as_if_sent_earlier(db, who)
        assert (await client.post(resend, headers=auth)).status == 202  # counted: 3
        await eventually(lambda: _phone_state(db, who), lambda state: state == "waiting")
        await _as_if_sent_earlier(db, who)
        await _limited(await client.post(resend, headers=auth), "nik", 900)
        await _counted(db, keyring, form["nik"], 3)
        # The NIK's registrations are refused too, by every edge, once they read it.
        async with inprocess.edge(wired.replace(limit_refresh_s=0.05)) as other:

            async def again() -> int:
                return (await other.post("/v1/registrations", json=form)).status

            assert await eventually(again, lambda status: status == 429) == 429
    codes = [m for m in simulators.outbox.for_number(form["phone"]) if re.search(r"\d{6}", m.text)]
    assert len(codes) == 3  # the first code and the two resends, each sent once


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert limits.retry_after_s(0.0) == 1
    assert limits.retry_after_s(1.2) == 2
    assert limits.retry_after_s(900) == 900


async def test_counters_whose_window_ended_are_purged(settings: Settings, db: asyncpg.Pool) -> None:
    wired = settings.replace(limit_client_requests=5, limit_client_window_s=60)
    old, fresh = b"o" * 32, b"f" * 32
    for key, age_s in ((old, 61), (fresh, 59)):
        await db.execute(
            "INSERT INTO limit_hits (kind, key, window_start, hits)"
            " VALUES ('client', $1, now() - make_interval(secs => $2), 3)",
            key,
            float(age_s),
        )
    await db.execute(
        "INSERT INTO limit_hits (kind, key, window_start, hits) VALUES ('nik', $1, now(), 1)", old
    )
    await NikBlocks(wired).purge(db)
    rows = await db.fetch("SELECT kind, key FROM limit_hits ORDER BY kind")
    assert [(r["kind"], bytes(r["key"])) for r in rows] == [("client", fresh), ("nik", old)]
