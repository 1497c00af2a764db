"""The edge's HTTP application: routes, the accept path and the status look-up.

The accept path never touches the database or a ministry: validate, hand the envelope to the
:class:`~intake.publisher.BatchPublisher`, and answer 202 only once the broker confirmed it.
Admission is decided from the headers alone, before the body is read: a shed registration costs
a 503 and nothing else (see :meth:`~intake.publisher.BatchPublisher.admit`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.resources
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson
from aiohttp import web

from core import limits, metrics
from core.keys import Keyring
from core.settings import Settings
from intake import contact_routes, page, participation_routes, photo_routes
from intake import line as place_in_line
from intake.access import authorized_id
from intake.accesslog import AccessLogger
from intake.appkeys import DB, GATE, HTTP_METRICS, KEYRING, LINE_RATES, PUBLISHER, SETTINGS, STATE
from intake.express import Express
from intake.gate import Gate
from intake.httpmetrics import HttpMetrics
from intake.limits import (
    CLIENT_LIMITER,
    NIK_BLOCKS,
    ClientLimiter,
    Limited,
    NikBlocks,
    per_client,
    too_many,
)
from intake.problems import problem, unavailable
from intake.publisher import BatchPublisher, Unavailable
from intake.registering import (
    REGISTRATIONS_PATH,
    BadIdempotencyKey,
    accepted_document,
    envelope_for,
)
from intake.validation import ValidationFailed

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _invalid(response: web.Response) -> web.Response:
    """A registration refused with a 4xx before publishing: counted, then answered."""
    metrics.REGISTRATIONS_INVALID.inc()
    return response


def _shed(gate: Gate, reason: str) -> web.Response:
    """A registration answered 503: counted by reason, then answered with its Retry-After."""
    gate.count(reason)
    return unavailable(reason, gate.retry_after_s(reason, asyncio.get_running_loop().time()))


def _read_at(request: web.Request, now_s: float) -> float:
    """When the request was read, backdated by its wait for the loop (intake.protocol records
    it); the handler's own start under another protocol (aiohttp's test server)."""
    read_at: float | None = getattr(request.protocol, "read_at_s", None)
    return now_s if read_at is None else min(read_at, now_s)


async def register(request: web.Request) -> web.StreamResponse:
    """``POST /v1/registrations``: 202 after the broker's confirm, or a 4xx/503 problem."""
    settings, publisher, gate = request.app[SETTINGS], request.app[PUBLISHER], request.app[GATE]
    loop_now = asyncio.get_running_loop().time()
    waited_s = loop_now - _read_at(request, loop_now)
    taken = getattr(request.protocol, "taken", None)  # intake.protocol.EdgeRequestHandler
    admitted_at = taken() if taken is not None else None
    if admitted_at is not None:
        gate.handling()
    if request.content_type != "application/json":
        return _invalid(problem(415, "unsupported-media-type", "The body must be application/json"))
    if request.content_length is not None and request.content_length > settings.edge_max_body_bytes:
        return _invalid(problem(413, "too-large", "The body is too large"))
    try:
        # Before the body is read or parsed. Most sheds were answered earlier, as the request
        # was parsed (intake.protocol); these are the rest. The unread body of a shed request
        # is drained by aiohttp after the answer (its "lingering" read, up to 10 s; else the
        # connection is closed), so the next request on a keep-alive connection starts where
        # it should.
        if admitted_at is None and waited_s > gate.burst_s:
            raise Unavailable("queue_delay")  # not asked early, and waited too long already
        probe = publisher.admit()
    except Unavailable as exc:
        return _shed(gate, exc.reason)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _invalid(problem(413, "too-large", "The body is too large"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _invalid(problem(400, "malformed-json", "The body is not valid JSON"))
    now = dt.datetime.now(dt.UTC)
    keyring = request.app[KEYRING]
    try:
        registration_id, item = envelope_for(
            body, request.headers.get("Idempotency-Key"), keyring, now, request.app[NIK_BLOCKS]
        )
    except Limited as exc:
        metrics.LIMITED.labels(limits.NIK, REGISTRATIONS_PATH).inc()
        return too_many(limits.NIK, exc.retry_after_s)
    except ValidationFailed as exc:
        return _invalid(
            problem(422, "invalid-registration", "The registration is invalid", errors=exc.errors)
        )
    except BadIdempotencyKey:
        return _invalid(
            problem(400, "bad-idempotency-key", "Idempotency-Key must be 1-255 characters")
        )
    try:
        confirmed = publisher.submit(item, probe=probe)
        # Within the deadline, counted from when the request was read. A registration whose
        # confirm comes later may still be stored: its retry (same Idempotency-Key, same id)
        # is then stored once.
        async with asyncio.timeout(max(0.0, gate.deadline_s - waited_s) + 1e-3):
            await confirmed
    except Unavailable as exc:
        return _shed(gate, exc.reason)
    except TimeoutError:
        return _shed(gate, "deadline")
    gate.accepted()
    metrics.REGISTRATIONS_ACCEPTED.inc()
    document, status_url = accepted_document(registration_id, keyring)
    return web.Response(
        status=202, body=document, content_type="application/json", headers={"Location": status_url}
    )


async def registration_status(request: web.Request) -> web.StreamResponse:
    """``GET /v1/registrations/{id}`` with ``Authorization: Bearer <access_token>``."""
    registration_id = authorized_id(request, request.app[KEYRING])
    if registration_id is None:
        return problem(404, "not-found", "No such registration")
    try:
        async with request.app[DB].acquire() as connection:
            row = await connection.fetchrow(
                "SELECT status, reject_reason, priority, submitted_at, stored_at, decided_at"
                " FROM registrations WHERE id = $1",
                registration_id,
            )
            checks = await connection.fetch(
                "SELECT check_name, state, reason, finished_at FROM checks"
                " WHERE registration_id = $1 ORDER BY check_name",
                registration_id,
            )
            line = await place_in_line.line_of(
                connection, request.app[LINE_RATES], registration_id, row and row["status"]
            )
            participation = await participation_routes.participation_status(
                connection, registration_id
            )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("status look-up failed: %s", type(exc).__name__)
        return unavailable("database_unreachable", request.app[SETTINGS].edge_retry_after_s)
    if row is None:
        # The token proves the edge accepted it: it is still queued for storage.
        return _json(
            200, {"id": str(registration_id), "status": "queued", "line": place_in_line.queued()}
        )
    return _json(
        200,
        {
            "id": str(registration_id),
            "status": row["status"],
            "reason": row["reject_reason"],
            "priority": row["priority"],
            "submitted_at": row["submitted_at"],
            "stored_at": row["stored_at"],
            "decided_at": row["decided_at"],
            # Each check's state; a check not started yet is not listed.
            "checks": {
                c["check_name"]: {
                    "state": c["state"],
                    "reason": c["reason"],
                    "finished_at": c["finished_at"],
                }
                for c in checks
            },
            "line": line,  # each waiting step's place in line (intake/line.py)
            **participation,  # "test" and "wave": intake/participation_routes.py
        },
    )


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness: the process serves HTTP."""
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Readiness: the broker is connected and the edge is not shutting down."""
    if request.app[STATE]["stopping"]:
        return _json(503, {"status": "stopping"})
    if not request.app[PUBLISHER].ready:
        return _json(503, {"status": "broker_unreachable"})
    return _json(200, {"status": "ready"})


async def openapi(request: web.Request) -> web.StreamResponse:
    """The OpenAPI 3 document of this edge."""
    spec = importlib.resources.files("intake").joinpath("openapi.json").read_bytes()
    return web.Response(body=spec, content_type="application/json")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route template, method and status class, and time it from when its
    request was read, backdated by its wait for the loop (as the express path and the early 503
    do): what the client waited, not only what the handler took."""
    loop = asyncio.get_running_loop()
    read_at = _read_at(request, loop.time())
    response = await handler(request)  # errors_middleware, inside, turns errors into answers
    request.app[HTTP_METRICS].record(request, response.status, loop.time() - read_at)
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP exceptions into problems, and anything unexpected into a 500 that
    is logged by type and code location only (an exception message may quote personal data)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return problem(413, "too-large", "The body is too large")
        # A 405 names the methods the resource has (RFC 9110 15.5.6: it MUST); aiohttp's own
        # exception carries them.
        allow = exc.headers.get("Allow")
        headers = None if allow is None else {"Allow": allow}
        return problem(
            exc.status, exc.reason.lower().replace(" ", "-"), exc.reason, headers=headers
        )
    except Exception as exc:
        frames = traceback.format_tb(exc.__traceback__)
        log.error("unhandled %s in %s\n%s", type(exc).__name__, request.path, "".join(frames))
        return problem(500, "internal", "Internal error")


def create_app(settings: Settings, keyring: Keyring, publisher: BatchPublisher) -> web.Application:
    """Assemble the edge application; the publisher and the database pool start with it."""
    app = web.Application(
        client_max_size=settings.edge_max_body_bytes,
        middlewares=[metrics_middleware, errors_middleware],
    )
    if settings.limit_client_requests > 0:  # (on the routes added with per_client only)
        app[CLIENT_LIMITER] = ClientLimiter(settings, keyring, lambda: app[DB])
    app[SETTINGS], app[KEYRING], app[PUBLISHER] = settings, keyring, publisher
    app[GATE] = Gate(settings, publisher)
    app[HTTP_METRICS] = HttpMetrics()
    app[LINE_RATES] = place_in_line.Rates(settings)
    app[NIK_BLOCKS] = NikBlocks(settings)
    metrics.init_edge()
    app[STATE] = {"stopping": False}
    app.router.add_post("/v1/registrations", register)
    app.router.add_get("/v1/registrations/{id}", per_client(registration_status))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    page.add_routes(app)  # the registrant's page, /app/ (intake/page.py)
    contact_routes.add_routes(app)
    photo_routes.add_routes(app)
    participation_routes.add_routes(app)
    app.cleanup_ctx.append(_resources)
    return app


def express_path(app: web.Application, access_log: AccessLogger | None = None) -> Express:
    """The express path of ``app``'s edge (:mod:`intake.express`), for its site."""
    return Express(
        app[SETTINGS],
        app[KEYRING],
        app[PUBLISHER],
        app[GATE],
        app[HTTP_METRICS],
        access_log,
        app[NIK_BLOCKS],
    )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    await app[PUBLISHER].start()
    # min_size=0: the edge starts and accepts registrations even when PostgreSQL is down;
    # only the status look-up needs it.
    app[DB] = await asyncpg.create_pool(
        app[SETTINGS].database_url, min_size=0, max_size=4, command_timeout=5
    )
    async with app[GATE].running(), app[NIK_BLOCKS].running(app[DB]):
        yield
    await app[PUBLISHER].close()
    await app[DB].close()
