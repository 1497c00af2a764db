"""The email and phone checks end to end: the edge, the persist worker, the dispatcher and the
email and phone lanes, against the SMTP and SMS simulators; a registrant reads the mail and the
SMS as a person would, follows the link and enters the code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from core.keys import Keyring
from core.settings import Settings
from core.verification import Check
from intake.accesslog import AccessLogger
from intake.app import create_app
from intake.appkeys import PUBLISHER
from intake.publisher import BatchPublisher
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from simulators.smtp import Mail
from tests.support import inprocess
from tests.support.people import person
from tests.support.processes import Process
from tests.support.waiting import eventually

Client = TestClient[Request, Application]
Spawn = Callable[..., Process]
PROBLEMS = "https://intake.example/problems/"
_CODE_RE = re.compile(r"\b([0-9]{6})\b")


@dataclass(frozen=True, slots=True)
class Registrant:
    id: uuid.UUID
    token: str
    email: str
    phone: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def simulators() -> AsyncIterator[Running]:
    async with run_simulators(SimulatorConfig(ports=Ports.ephemeral(), people=())) as running:
        yield running


@pytest.fixture
async def wired(settings: Settings, db: asyncpg.Pool, simulators: Running) -> Settings:
    """Settings pointing at the simulators, with no secret left from an earlier test."""
    await db.execute("TRUNCATE contact_codes")
    return settings.replace(
        smtp_host=simulators.smtp_host,
        smtp_port=simulators.smtp_port,
        sms_url=simulators.urls["sms"],
        retry_base_delay_s=0.05,
        ministry_timeout_s=2.0,
    )


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """The registrant's own HTTP client, for the links in their mail."""
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def _edge_as_deployed(settings: Settings) -> AsyncIterator[Client]:
    """The edge with the access log ``intake edge`` runs with (the test server's default one
    would log query strings, which production never does)."""
    keyring = Keyring.from_secret(settings.secret_key)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    server = TestServer(app)
    await server.start_server(
        access_log_class=AccessLogger, access_log=logging.getLogger("intake.access")
    )
    async with TestClient(server) as client:
        assert await app[PUBLISHER].wait_ready(10), "edge could not reach the broker"
        yield client


@contextlib.asynccontextmanager
async def _stack(
    settings: Settings,
    db: asyncpg.Pool,
    *,
    as_deployed: bool = False,
) -> AsyncIterator[Client]:
    """The edge, the persist worker, the dispatcher and the email and phone lanes; the links
    in the mail point at this edge."""
    edge = _edge_as_deployed(settings) if as_deployed else inprocess.edge(settings)
    async with edge as client:
        linked = settings.replace(public_base_url=f"http://{client.host}:{client.port}")
        async with (
            inprocess.persist_worker(settings, db),
            inprocess.dispatcher(settings, db),
            inprocess.lanes(linked, db, (Check.EMAIL, Check.PHONE)),
        ):
            yield client


async def _register(client: Client, index: int) -> Registrant:
    form = person(index, seed=31)
    response = await client.post("/v1/registrations", json=form)
    assert response.status == 202
    body = await response.json()
    return Registrant(uuid.UUID(body["id"]), body["access_token"], form["email"], form["phone"])


async def _mails(simulators: Running, who: Registrant, count: int = 1) -> list[Mail]:
    async def probe() -> list[Mail]:
        return simulators.mailbox.for_address(who.email)

    return await eventually(probe, lambda mails: len(mails) >= count)


async def _codes(simulators: Running, who: Registrant, count: int = 1) -> list[str]:
    async def probe() -> list[str]:
        return [_code_in(m.text) for m in simulators.outbox.for_number(who.phone)]

    return await eventually(probe, lambda codes: len(codes) >= count)


def _code_in(text: str) -> str:
    (match,) = _CODE_RE.finditer(text)
    return match.group(1)


def _link_in(mail: Mail) -> str:
    (link,) = [link for link in mail.links if "/v1/verify/email?token=" in link]
    return link


def _token_in(link: str) -> str:
    return URL(link).query["token"]


async def _state(db: asyncpg.Pool, who: Registrant, check: Check) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM checks WHERE registration_id = $1 AND check_name = $2",
        who.id,
        check.value,
    )
    return state


async def _until_state(db: asyncpg.Pool, who: Registrant, check: Check, state: str) -> None:
    await eventually(lambda: _state(db, who, check), lambda s: s == state)


async def _problem(response: aiohttp.ClientResponse, status: int, slug: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["type"] == PROBLEMS + slug
    return body


async def _enter(client: Client, who: Registrant, code: str) -> aiohttp.ClientResponse:
    return await client.post(
        f"/v1/registrations/{who.id}/otp", json={"code": code}, headers=who.auth
    )


async def _as_if_sent_earlier(db: asyncpg.Pool, who: Registrant, channel: str) -> None:
    """Move the last send back past the cooldown (the clock moves, no one waits)."""
    await db.execute(
        "UPDATE contact_codes SET send_started_at = send_started_at - interval '1 day'"
        " WHERE registration_id = $1 AND channel = $2",
        who.id,
        channel,
    )


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


# --- email -------------------------------------------------------------------------------


async def test_following_the_emailed_link_passes_the_email_check_once(
    wired: Settings, db: asyncpg.Pool, simulators: Running, browser: aiohttp.ClientSession
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 1)
        (mail,) = await _mails(simulators, who)
        link = _link_in(mail)
        assert link.startswith(f"http://{client.host}:{client.port}/v1/verify/email?token=")
        assert link in mail.body  # the plain-text part, and the HTML one
        assert "href" in mail.html
        await _until_state(db, who, Check.EMAIL, "waiting")

        # A mail scanner fetches the link, as often as it likes: it gets the page with the
        # button, and confirms nothing.
        for _ in range(3):
            async with browser.get(link) as page:
                assert page.status == 200
                assert page.content_type == "text/html"
            async with browser.head(link) as probe:
                assert probe.status == 200
        assert await _state(db, who, Check.EMAIL) == "waiting"

        async with browser.post(link) as response:  # the page's button
            assert response.status == 200
            assert await response.json() == {
                "id": str(who.id),
                "check": "email",
                "result": "verified",
            }
        assert await _state(db, who, Check.EMAIL) == "passed"
        async with browser.post(link) as again:
            assert again.status == 200
            assert (await again.json())["result"] == "already_verified"

        status = await client.get(f"/v1/registrations/{who.id}", headers=who.auth)
        assert (await status.json())["checks"]["email"]["state"] == "passed"
    assert len(simulators.mailbox.for_address(who.email)) == 1


async def test_an_altered_or_junk_token_is_refused_never_with_a_500(
    wired: Settings, db: asyncpg.Pool, simulators: Running, keyring: Keyring
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 2)
        token = _token_in(_link_in((await _mails(simulators, who))[0]))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        altered = [
            token[:i] + ("B" if token[i] == "A" else "A") + token[i + 1 :]
            for i in (0, 1, 17, 40, 60, 96)
        ]
        # The last character's low bits encode nothing: same bytes, not the same token.
        last = alphabet[alphabet.index(token[-1]) ^ 1]
        altered.append(token[:-1] + last)
        assert base64.urlsafe_b64decode(altered[-1] + "==") == base64.urlsafe_b64decode(
            token + "=="
        )
        junk = ["", "x", "%FF%FE", "%00", "A" * 98, "A" * 5000, "%C3%BC" * 98, "+" * 98]
        junk += ["/" * 98, "==", token + "A", token[:-1], token + "%0A", f"{token}&token=x"]
        # Well formed but not signed here (altered, or made up): unknown, as a link never sent.
        for value in [*altered, "A" * 98]:
            response = await client.post(URL(f"/v1/verify/email?token={value}", encoded=True))
            await _problem(response, 404, "unknown-link")
        junk.remove("A" * 98)
        for value in junk:
            response = await client.post(URL(f"/v1/verify/email?token={value}", encoded=True))
            await _problem(response, 400, "invalid-link")
        await _problem(await client.post("/v1/verify/email"), 400, "invalid-link")

        # Genuine signatures, but no such link: unknown registration, replaced secret.
        stranger = keyring.email_link_token(uuid.uuid4(), os.urandom(16), 2**40)
        await _problem(
            await client.post("/v1/verify/email", params={"token": stranger}), 404, "unknown-link"
        )
        guessed = keyring.email_link_token(who.id, os.urandom(16), 2**40)
        await _problem(
            await client.post("/v1/verify/email", params={"token": guessed}), 410, "link-replaced"
        )
        assert await _state(db, who, Check.EMAIL) != "passed"
        # The genuine token still works after all that.
        response = await client.post("/v1/verify/email", params={"token": token})
        assert response.status == 200


@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]{98}", fullmatch=True))
def test_no_token_string_but_a_genuine_one_is_accepted(token: str) -> None:
    assert (
        Keyring.from_secret("a-key-for-this-property-0123456789").open_email_link_token(token)
        is None
    )


async def test_an_expired_link_is_refused(
    wired: Settings, db: asyncpg.Pool, simulators: Running, keyring: Keyring
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 3)
        token = _token_in(_link_in((await _mails(simulators, who))[0]))
        link = keyring.open_email_link_token(token)
        assert link is not None
        assert link.registration_id == who.id
        assert link.expires_at_s - dt.datetime.now(dt.UTC).timestamp() > 47 * 3600

        # The token's own expiry has passed (the same secret, signed with an earlier expiry).
        past = keyring.email_link_token(who.id, link.secret, link.expires_at_s - 48 * 3600)
        response = await client.post("/v1/verify/email", params={"token": past})
        await _problem(response, 410, "link-expired")
        # The stored expiry has passed.
        await db.execute(
            "UPDATE contact_codes SET expires_at = now() - interval '1 second'"
            " WHERE registration_id = $1 AND channel = 'email'",
            who.id,
        )
        response = await client.post("/v1/verify/email", params={"token": token})
        await _problem(response, 410, "link-expired")
        assert await _state(db, who, Check.EMAIL) != "passed"


async def test_a_resent_link_replaces_the_old_one_up_to_the_limit(
    wired: Settings, db: asyncpg.Pool, simulators: Running, browser: aiohttp.ClientSession
) -> None:
    async with _stack(wired.replace(resend_max=2), db) as client:
        who = await _register(client, 4)
        resend = f"/v1/registrations/{who.id}/email/resend"
        links = [_link_in((await _mails(simulators, who))[0])]
        await _until_state(db, who, Check.EMAIL, "waiting")

        too_soon = await client.post(resend, headers=who.auth)
        await _problem(too_soon, 429, "resend-too-soon")
        assert 1 <= int(too_soon.headers["Retry-After"]) <= wired.resend_cooldown_s
        await _problem(await client.post(resend), 404, "not-found")

        for sent in (2, 3):
            await _as_if_sent_earlier(db, who, "email")
            response = await client.post(resend, headers=who.auth)
            assert response.status == 202
            assert (await response.json())["resends_left"] == 3 - sent
            links.append(_link_in((await _mails(simulators, who, sent))[-1]))
            await _until_state(db, who, Check.EMAIL, "waiting")
        await _as_if_sent_earlier(db, who, "email")
        await _problem(await client.post(resend, headers=who.auth), 429, "resend-limit-reached")

        assert len(set(links)) == 3
        for old in links[:2]:
            async with browser.post(old) as response:
                await _problem(response, 410, "link-replaced")
        async with browser.post(links[2]) as response:
            assert response.status == 200
        assert await _state(db, who, Check.EMAIL) == "passed"
        await _problem(await client.post(resend, headers=who.auth), 409, "already-verified")
    assert len(simulators.mailbox.for_address(who.email)) == 3


# --- phone -------------------------------------------------------------------------------


async def test_the_right_code_passes_the_phone_check(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 5)
        (code,) = await _codes(simulators, who)
        (sms,) = simulators.outbox.for_number(who.phone)
        assert "Prakerja" in sms.text

        response = await _enter(client, who, code)
        assert response.status == 200
        assert await response.json() == {"id": str(who.id), "check": "phone", "result": "verified"}
        assert await _state(db, who, Check.PHONE) == "passed"
        again = await _enter(client, who, code)
        assert (await again.json())["result"] == "already_verified"
        await _problem(await _enter(client, who, _wrong(code)), 409, "already-verified")


async def test_the_code_route_needs_the_access_token_and_a_six_digit_code(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 6)
        (code,) = await _codes(simulators, who)
        url = f"/v1/registrations/{who.id}/otp"
        other = await (await client.post("/v1/registrations", json=person(7, seed=31))).json()
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": f"Bearer {other['access_token']}"},
        ):
            await _problem(
                await client.post(url, json={"code": code}, headers=headers), 404, "not-found"
            )
        await _problem(
            await client.post("/v1/registrations/nope/otp", json={"code": code}, headers=who.auth),
            404,
            "not-found",
        )
        for body in ({"code": code[:5]}, {"code": int(code)}, {"kode": code}, [code]):
            response = await client.post(url, json=body, headers=who.auth)
            await _problem(response, 400, "malformed-code")
        response = await client.post(url, data=b"{", headers=who.auth)
        await _problem(response, 400, "malformed-code")
        attempts = await db.fetchval(
            "SELECT attempts_left FROM contact_codes WHERE registration_id = $1"
            " AND channel = 'sms'",
            who.id,
        )
        assert attempts == wired.otp_max_attempts  # none of that counted
        assert (await _enter(client, who, code)).status == 200


async def test_five_wrong_codes_lock_the_code_even_for_the_right_one(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 8)
        (code,) = await _codes(simulators, who)
        left = []
        for _ in range(wired.otp_max_attempts):
            body = await _problem(await _enter(client, who, _wrong(code)), 422, "wrong-code")
            left.append(body["attempts_left"])
        assert left == [4, 3, 2, 1, 0]
        await _problem(await _enter(client, who, code), 429, "otp-locked")
        await _problem(await _enter(client, who, _wrong(code)), 429, "otp-locked")
        assert await _state(db, who, Check.PHONE) != "passed"


async def test_concurrent_wrong_codes_get_no_extra_attempts(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 9)
        (code,) = await _codes(simulators, who)
        guesses = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 13)]
        responses = await asyncio.gather(*(_enter(client, who, g) for g in guesses))
        statuses = sorted(r.status for r in responses)
        assert statuses == [422] * 5 + [429] * 7
        left = sorted([(await r.json())["attempts_left"] for r in responses if r.status == 422])
        assert left == [0, 1, 2, 3, 4]
        await _problem(await _enter(client, who, code), 429, "otp-locked")


async def test_an_expired_code_is_refused_without_costing_an_attempt(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 10)
        (code,) = await _codes(simulators, who)
        await db.execute(
            "UPDATE contact_codes SET expires_at = now() - interval '1 second'"
            " WHERE registration_id = $1 AND channel = 'sms'",
            who.id,
        )
        await _problem(await _enter(client, who, code), 410, "code-expired")
        await _problem(await _enter(client, who, _wrong(code)), 410, "code-expired")
        attempts = await db.fetchval(
            "SELECT attempts_left FROM contact_codes WHERE registration_id = $1"
            " AND channel = 'sms'",
            who.id,
        )
        assert attempts == wired.otp_max_attempts
        assert await _state(db, who, Check.PHONE) != "passed"


async def test_a_resent_code_replaces_the_old_one_and_obeys_the_cooldown(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    async with _stack(wired, db) as client:
        who = await _register(client, 11)
        resend = f"/v1/registrations/{who.id}/otp/resend"
        (old,) = await _codes(simulators, who)
        await _until_state(db, who, Check.PHONE, "waiting")
        # Locked by wrong guesses: a new code brings new attempts.
        for _ in range(wired.otp_max_attempts):
            await _enter(client, who, _wrong(old))

        too_soon = await client.post(resend, headers=who.auth)
        await _problem(too_soon, 429, "resend-too-soon")
        assert 1 <= int(too_soon.headers["Retry-After"]) <= wired.resend_cooldown_s
        await _as_if_sent_earlier(db, who, "sms")
        response = await client.post(resend, headers=who.auth)
        assert response.status == 202
        assert await response.json() == {
            "id": str(who.id),
            "check": "phone",
            "resends_left": wired.resend_max - 1,
        }
        _, new = await _codes(simulators, who, 2)
        await _until_state(db, who, Check.PHONE, "waiting")
        await _problem(await client.post(resend, headers=who.auth), 429, "resend-too-soon")

        if new != old:  # one chance in a million that the new code is the old one
            body = await _problem(await _enter(client, who, old), 422, "wrong-code")
            assert body["attempts_left"] == wired.otp_max_attempts - 1
        assert (await _enter(client, who, new)).status == 200
        assert await _state(db, who, Check.PHONE) == "passed"
    assert len(simulators.outbox.for_number(who.phone)) == 2


# --- sending -------------------------------------------------------------------------------


async def test_refused_sends_are_retried_and_delivered_once(
    wired: Settings, db: asyncpg.Pool, simulators: Running
) -> None:
    simulators.set_behaviour("smtp", outage=True)  # 421 to the mail's content
    simulators.set_behaviour("sms", outage=True)  # 503 from the gateway
    async with _stack(wired, db) as client:
        who = await _register(client, 12)

        async def retried() -> list[int]:
            rows = await db.fetch(
                "SELECT attempts FROM checks WHERE registration_id = $1 AND state = 'retrying'"
                " AND check_name IN ('email', 'phone')",
                who.id,
            )
            return [r["attempts"] for r in rows]

        await eventually(retried, lambda attempts: len(attempts) == 2 and min(attempts) >= 2)
        simulators.set_behaviour("smtp", outage=False)
        simulators.set_behaviour("sms", outage=False)
        await _until_state(db, who, Check.EMAIL, "waiting")
        await _until_state(db, who, Check.PHONE, "waiting")
    # Sent in the end, once: each refused send released its intent for the next attempt.
    assert len(simulators.mailbox.for_address(who.email)) == 1
    assert len(simulators.outbox.for_number(who.phone)) == 1
    refused = simulators.stats("smtp")["rejected_outage"]
    assert isinstance(refused, int)
    assert refused >= 2


async def test_no_code_link_or_contact_in_the_database_or_the_logs(
    wired: Settings,
    db: asyncpg.Pool,
    simulators: Running,
    browser: aiohttp.ClientSession,
    keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _stack(wired, db, as_deployed=True) as client:
        who = await _register(client, 13)
        link = _link_in((await _mails(simulators, who))[0])
        (code,) = await _codes(simulators, who)
        await _until_state(db, who, Check.EMAIL, "waiting")
        await _until_state(db, who, Check.PHONE, "waiting")
        # Every answer of the edge's new routes, logged as it would be in production.
        await _problem(await _enter(client, who, _wrong(code)), 422, "wrong-code")
        await _problem(
            await client.post(f"/v1/registrations/{who.id}/otp/resend", headers=who.auth),
            429,
            "resend-too-soon",
        )
        assert (await _enter(client, who, code)).status == 200
        for _ in range(2):
            async with browser.post(link) as response:
                assert response.status == 200
        await _problem(await client.post(f"{URL(link).path}?token=x"), 400, "invalid-link")
        assert await _state(db, who, Check.PHONE) == "passed"

    token = _token_in(link)
    opened = keyring.open_email_link_token(token)
    assert opened is not None
    # The table, value by value as stored, and as PostgreSQL renders it (bytea in hex).
    stored = await db.fetch("SELECT * FROM contact_codes WHERE registration_id = $1", who.id)
    assert len(stored) == 2
    for row in stored:
        for value in row.values():
            if isinstance(value, bytes):
                assert code.encode() not in value
                assert opened.secret not in value
                assert token.encode() not in value
            elif isinstance(value, str):
                assert code not in value
            elif isinstance(value, int):
                assert value != int(code)
    rendered = await db.fetchval(
        "SELECT string_agg(c::text, ' ') FROM contact_codes c WHERE registration_id = $1", who.id
    )
    assert opened.secret.hex() not in rendered
    assert token not in rendered

    phone = who.phone.removeprefix("+62").removeprefix("62").removeprefix("0")
    secrets_sent = {code, token, link, who.email, who.email.split("@")[0], phone}
    routes = set()
    for record in caplog.records:
        text = f"{record.getMessage()} {getattr(record, 'fields', '')} {record.exc_text or ''}"
        for value in secrets_sent:
            assert value not in text, (record.name, record.levelname)
        if record.name == "intake.access":
            routes.add(record.getMessage())
    assert "POST /v1/verify/email 200" in routes  # the access log did run
    assert "POST /v1/registrations/{id}/otp 422" in routes


async def test_an_email_worker_killed_after_sending_never_sends_again(
    wired: Settings,
    db: asyncpg.Pool,
    simulators: Running,
    browser: aiohttp.ClientSession,
    spawn: Spawn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with inprocess.edge(wired) as client:
        linked = wired.replace(public_base_url=f"http://{client.host}:{client.port}")
        async with inprocess.persist_worker(wired, db), inprocess.dispatcher(wired, db):
            first = spawn(["worker", "email"], linked, "email-worker")
            # kill -9 the moment the mail is in the mailbox: the SMTP server has not answered
            # yet, so the worker can neither record the send nor acknowledge the task.
            deliver = simulators.mailbox.add

            def deliver_then_kill(mail: Mail) -> None:
                deliver(mail)
                if first.alive():
                    os.kill(first.pid, signal.SIGKILL)

            monkeypatch.setattr(simulators.mailbox, "add", deliver_then_kill)
            who = await _register(client, 14)
            await _mails(simulators, who)
            assert await asyncio.to_thread(first.wait, 30) == -signal.SIGKILL
            intent = await db.fetchrow(
                "SELECT generation, send_started_at, sent_at FROM contact_codes"
                " WHERE registration_id = $1 AND channel = 'email'",
                who.id,
            )
            assert intent["send_started_at"] is not None
            assert intent["sent_at"] is None
            assert await _state(db, who, Check.EMAIL) == "pending"  # the task is not acked

            # RabbitMQ redelivers the task to a new worker, which does not send again.
            second = spawn(["worker", "email"], linked, "email-worker")
            await eventually(lambda: _state(db, who, Check.EMAIL), lambda s: s == "waiting", 60)
            assert second.terminate() == 0
        (mail,) = simulators.mailbox.for_address(who.email)
        after = await db.fetchrow(
            "SELECT generation, send_started_at, sent_at FROM contact_codes"
            " WHERE registration_id = $1 AND channel = 'email'",
            who.id,
        )
        assert dict(after) == dict(intent)
        async with browser.post(_link_in(mail)) as response:  # the one mail's link works
            assert response.status == 200
    for worker in (first, second):
        assert who.email not in worker.log()
        assert _token_in(_link_in(mail)) not in worker.log()
