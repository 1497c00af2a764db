"""The registrant's side of the email and phone checks: following the email link, entering the
SMS code, and asking for a new link or code.

    GET  /v1/verify/email?token=...             the link from the email: a page with a button
    POST /v1/verify/email?token=...             the button: the email check passes
    POST /v1/registrations/{id}/otp             {"code": "123456"}, with the bearer token
    POST /v1/registrations/{id}/email/resend    a new link, with the bearer token
    POST /v1/registrations/{id}/otp/resend      a new code, with the bearer token

The lanes store each secret as a keyed HMAC in ``contact_codes`` (``verifiers/contact.py``);
here a secret is checked and used under that row's lock, in the transaction that records the
check as passed (``core.checks``), so a secret is used once and concurrent entries of a code
cannot get more than ``otp_max_attempts`` tries between them. A resend replaces the secret with
a new generation and puts the check back in the outbox for the dispatcher. Codes and tokens are
never logged; any token string gets an answer, never a 500.

Following the link only shows a page (``intake/static/src/confirm.html``); its button confirms
with a ``POST``. Mail scanners and link previews fetch every link in a message, with ``GET``
or ``HEAD``, before the registrant sees it: were the ``GET`` to confirm, they would confirm
addresses nobody read, and use the link up. The page is the same for every token (static,
served from memory by :mod:`intake.page`): the token is checked when the button is pressed.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from core import checks, limits, metrics
from core.checks import FINAL_STATES
from core.keys import EmailLink, Keyring
from core.verification import Check, Passed
from intake import page
from intake.access import authorized_id
from intake.appkeys import DB, KEYRING, SETTINGS
from intake.limits import per_client, route_of, too_many
from intake.problems import problem, unavailable

log = logging.getLogger(__name__)

EMAIL, SMS = "email", "sms"
_CODE_RE = re.compile(r"[0-9]{6}")
# What an email link's token looks like (core.keys.Keyring.email_link_token: 73 bytes in
# unpadded URL-safe base64), as the OpenAPI document says.
_LINK_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{98}")
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

# The live secret of a registration and channel, locked; times compared in the database's clock.
_LOCK_SQL = """
SELECT generation, secret_hmac, attempts_left, used_at, expires_at <= now() AS expired,
       extract(epoch FROM now() - send_started_at)::float8 AS since_sent_s, resends
FROM contact_codes WHERE registration_id = $1 AND channel = $2 FOR UPDATE
"""
_USE_SQL = "UPDATE contact_codes SET used_at = now() WHERE registration_id = $1 AND channel = $2"
_WRONG_SQL = """
UPDATE contact_codes SET attempts_left = attempts_left - 1
WHERE registration_id = $1 AND channel = $2 RETURNING attempts_left
"""
_RENEW_SQL = """
UPDATE contact_codes SET generation = generation + 1, secret_hmac = NULL, expires_at = NULL,
    attempts_left = NULL, send_started_at = NULL, sent_at = NULL, used_at = NULL,
    resends = resends + 1, resent_at = now()
WHERE registration_id = $1 AND channel = $2
"""


def add_routes(app: web.Application) -> None:
    """Add the email link, OTP and resend routes to the edge application."""
    # GET (and HEAD) only show the page: mail scanners that fetch links must not use them up.
    app.router.add_get("/v1/verify/email", email_link_page)
    app.router.add_post("/v1/verify/email", follow_email_link)
    app.router.add_post("/v1/registrations/{id}/otp", per_client(enter_otp))
    app.router.add_post("/v1/registrations/{id}/email/resend", per_client(resend_email_link))
    app.router.add_post("/v1/registrations/{id}/otp/resend", per_client(resend_otp))


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _verified(registration_id: uuid.UUID, check: Check, already: bool) -> web.Response:
    result = "already_verified" if already else "verified"
    return _answer(200, {"id": str(registration_id), "check": check.value, "result": result})


def _database_down(request: web.Request, exc: BaseException) -> web.Response:
    log.warning("contact route failed: %s", type(exc).__name__)
    return unavailable("database_unreachable", request.app[SETTINGS].edge_retry_after_s)


def _bearer(request: web.Request) -> uuid.UUID | None:
    return authorized_id(request, request.app[KEYRING])


def _unknown_link() -> web.Response:
    return problem(404, "unknown-link", "This link is not known")


def _not_found() -> web.Response:
    return problem(404, "not-found", "No such registration")


async def _pass(
    connection: asyncpg.Connection, registration_id: uuid.UUID, check: Check, channel: str
) -> None:
    """Use the secret and record the check passed (and decide the registration), unless the
    check is final already."""
    await connection.execute(_USE_SQL, registration_id, channel)
    state = await checks.lock_state(connection, registration_id, check)
    if state is not None and state not in FINAL_STATES:
        await checks.record_passed(connection, registration_id, check, Passed())


async def email_link_page(request: web.Request) -> web.StreamResponse:
    """``GET /v1/verify/email?token=``: the page with the button; it changes nothing."""
    return page.serve(request, "confirm.html")


async def follow_email_link(request: web.Request) -> web.StreamResponse:
    """``POST /v1/verify/email?token=``: the email check passes; single use."""
    tokens = request.query.getall("token", [])
    if len(tokens) != 1 or not _LINK_TOKEN_RE.fullmatch(tokens[0]):
        return problem(400, "invalid-link", "The link is malformed")
    link = request.app[KEYRING].open_email_link_token(tokens[0])
    if link is None:
        # Well formed, as the document describes a token, but not signed here (altered or
        # made up): the same answer as a genuine link that was never sent.
        return _unknown_link()
    try:
        async with request.app[DB].acquire() as connection, connection.transaction():
            return await _use_link(connection, request.app[KEYRING], link)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)


async def _use_link(
    connection: asyncpg.Connection, keyring: Keyring, link: EmailLink
) -> web.Response:
    registration_id = link.registration_id
    row = await connection.fetchrow(_LOCK_SQL, registration_id, EMAIL)
    if row is None:
        return _unknown_link()
    digest = keyring.contact_code_hmac(EMAIL, registration_id, row["generation"], link.secret)
    if row["secret_hmac"] is None or not hmac.compare_digest(digest, row["secret_hmac"]):
        return problem(410, "link-replaced", "A newer link replaced this one")
    if row["used_at"] is not None:
        return _verified(registration_id, Check.EMAIL, already=True)
    # Both say the same unless the clocks disagree; the stricter wins.
    if row["expired"] or link.expires_at_s <= time.time():
        return problem(410, "link-expired", "The link has expired; ask for a new one")
    await _pass(connection, registration_id, Check.EMAIL, EMAIL)
    return _verified(registration_id, Check.EMAIL, already=False)


async def enter_otp(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations/{id}/otp``: the phone check passes when the code is right."""
    registration_id = _bearer(request)
    if registration_id is None:
        return _not_found()
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        return problem(400, "malformed-code", 'The body must be {"code": "<six digits>"}')
    try:
        async with request.app[DB].acquire() as connection, connection.transaction():
            return await _check_code(connection, request.app[KEYRING], registration_id, code)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)


async def _check_code(
    connection: asyncpg.Connection, keyring: Keyring, registration_id: uuid.UUID, code: str
) -> web.Response:
    row = await connection.fetchrow(_LOCK_SQL, registration_id, SMS)
    if row is None or row["secret_hmac"] is None:
        return problem(409, "code-not-sent", "No code is waiting to be entered")
    digest = keyring.contact_code_hmac(SMS, registration_id, row["generation"], code.encode())
    right = hmac.compare_digest(digest, row["secret_hmac"])
    if row["used_at"] is not None:
        if right:
            return _verified(registration_id, Check.PHONE, already=True)
        return problem(409, "already-verified", "This is verified already")
    if row["attempts_left"] is None or row["attempts_left"] <= 0:
        return problem(429, "otp-locked", "Too many wrong codes; ask for a new code")
    if row["expired"]:
        return problem(410, "code-expired", "The code has expired; ask for a new one")
    if not right:
        left = await connection.fetchval(_WRONG_SQL, registration_id, SMS)
        return problem(422, "wrong-code", "The code is wrong", attempts_left=left)
    await _pass(connection, registration_id, Check.PHONE, SMS)
    return _verified(registration_id, Check.PHONE, already=False)


async def resend_email_link(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations/{id}/email/resend``: a new link replaces the live one."""
    return await _resend(request, Check.EMAIL, EMAIL)


async def resend_otp(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations/{id}/otp/resend``: a new code replaces the live one."""
    return await _resend(request, Check.PHONE, SMS)


async def _resend(request: web.Request, check: Check, channel: str) -> web.StreamResponse:
    registration_id = _bearer(request)
    if registration_id is None:
        return _not_found()
    try:
        async with request.app[DB].acquire() as connection, connection.transaction():
            return await _renew(request, connection, registration_id, check, channel)
    except _DB_ERRORS as exc:
        return _database_down(request, exc)


async def _renew(
    request: web.Request,
    connection: asyncpg.Connection,
    registration_id: uuid.UUID,
    check: Check,
    channel: str,
) -> web.Response:
    settings = request.app[SETTINGS]
    row = await connection.fetchrow(_LOCK_SQL, registration_id, channel)
    state = await checks.lock_state(connection, registration_id, check)
    stored = await connection.fetchrow(
        "SELECT status, nik_hmac FROM registrations WHERE id = $1", registration_id
    )
    status = None if stored is None else stored["status"]
    if status is not None and status != "received":
        return problem(409, "registration-closed", "The registration is decided already")
    if state == "passed":
        return problem(409, "already-verified", "This is verified already")
    # Only once the lane recorded the send: a resend never races the send it replaces.
    if row is None or state != "waiting":
        return problem(409, "not-sent-yet", "The first one is still being sent")
    if row["resends"] >= settings.resend_max:
        return problem(429, "resend-limit-reached", "No more resends are allowed")
    since_s = row["since_sent_s"]
    if since_s is not None and since_s < settings.resend_cooldown_s:
        wait_s = max(1, math.ceil(settings.resend_cooldown_s - since_s))
        return problem(
            429,
            "resend-too-soon",
            "Please wait before asking again",
            headers={"Retry-After": str(wait_s)},
        )
    if settings.limit_nik_attempts > 0 and stored is not None:
        # The person's attempts, across all of the NIK's registrations (core.limits); counted
        # in this transaction, so a resend that fails is not counted.
        retry_after_s = await limits.hit(
            connection,
            limits.NIK,
            bytes(stored["nik_hmac"]),
            settings.limit_nik_window_s,
            settings.limit_nik_attempts,
        )
        if retry_after_s is not None:
            metrics.LIMITED.labels(limits.NIK, str(route_of(request))).inc()
            return too_many(limits.NIK, retry_after_s)
    await connection.execute(_RENEW_SQL, registration_id, channel)
    await checks.requeue(connection, registration_id, check)
    left = settings.resend_max - row["resends"] - 1
    return _answer(202, {"id": str(registration_id), "check": check.value, "resends_left": left})
