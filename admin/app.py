"""The admin API (``intake admin``): operators create, list, open, close and inspect waves, force
a lane's circuit breaker, schedule and cancel registries' maintenance windows, export or erase
one person's data (``core.person``), and read the audit log. It listens on
``INTAKE_ADMIN_HOST:INTAKE_ADMIN_PORT``, never on the edge's public port, and every request
needs ``Authorization: Bearer <token>`` of one of the credentials in ``INTAKE_ADMIN_TOKENS``
(stored as SHA-256 digests): the credential's name is
the actor recorded in the audit log. Errors are RFC 9457 problem documents.

    GET  /v1/waves                 every wave, in opening order
    POST /v1/waves                 {name, opens_at, closes_at, quota, policy?} -> 201
    GET  /v1/waves/{name}
    POST /v1/waves/{name}/open     open a scheduled wave now
    POST /v1/waves/{name}/close    close an open wave now
    GET  /v1/lanes                 every lane's breaker mode and maintenance window on now
    PUT  /v1/lanes/{check}/breaker {state: open|closed|auto}: force the lane's breaker open
                                   (no call), closed (it never opens), or give it back
    GET  /v1/maintenance?all=true  the windows not over yet (all: past and cancelled too)
    POST /v1/maintenance           {check, starts_at, ends_at, reason} -> 201: the lane makes
                                   no call from starts_at to ends_at (times in WIB unless
                                   offset); its tasks wait, no attempt counted
    DELETE /v1/maintenance/{id}    cancel a scheduled window, or end an active one now
    GET  /v1/audit?limit=N         the latest operator actions, newest first
    POST /v1/persons/export        {nik}: everything stored about the person, decrypted
                                   (photos as base64); 404 if none (audited either way)
    POST /v1/persons/erase         {nik, reason}: erase it now, but the NIK's keyed hash and
                                   the outcome (audited). The NIK is in the body, never in a
                                   URL (which proxies and access logs keep)
    GET  /openapi.json             the OpenAPI document of this API (admin/openapi.json)

Lanes take effect within about a second (``INTAKE_LANE_CONTROL_POLL_S``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from core import person
from core.blobs import BlobStore
from core.controls import ControlError, LaneControls, parse_check, parse_mode
from core.keys import Keyring
from core.photo_vault import PhotoVault
from core.settings import Settings
from core.waves import Policy, WaveError, Waves, parse_time

SETTINGS = web.AppKey("settings", Settings)
WAVES = web.AppKey("waves", Waves)
CONTROLS = web.AppKey("controls", LaneControls)
CREDENTIALS = web.AppKey("credentials", dict[str, bytes])
POOL = web.AppKey("pool", asyncpg.Pool)
KEYRING = web.AppKey("keyring", Keyring)
BLOBS = web.AppKey("blobs", BlobStore)
ACTOR = web.RequestKey("actor", str)  # the authenticated credential's name

_TYPE_BASE = "https://intake.example/problems/"
_STATUS = {"invalid": 422, "not_found": 404, "conflict": 409}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _problem(
    status: int,
    slug: str,
    title: str,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> web.Response:
    body: dict[str, object] = {"type": _TYPE_BASE + slug, "title": title, "status": status}
    if errors:
        body["errors"] = errors
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


def authenticate(credentials: dict[str, bytes], authorization: str) -> str | None:
    """The name of the credential whose token ``authorization`` carries, or None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = hashlib.sha256(token.strip().encode()).digest()
    found = None
    for name, expected in credentials.items():  # every one compared: no early exit to time
        if hmac.compare_digest(digest, expected):
            found = name
    return found


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    actor = authenticate(request.app[CREDENTIALS], request.headers.get("Authorization", ""))
    if actor is None:
        return _problem(
            401,
            "unauthorized",
            "A valid admin bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="intake-admin"'},
        )
    request[ACTOR] = actor
    try:
        return await handler(request)
    except WaveError as exc:
        return _problem(_STATUS.get(exc.code, 400), exc.code.replace("_", "-"), exc.message)
    except ControlError as exc:
        errors = None
        if exc.field is not None and exc.code == "invalid":
            errors = [{"field": exc.field, "code": exc.code, "message": exc.message}]
        return _problem(
            _STATUS.get(exc.code, 400), exc.code.replace("_", "-"), exc.message, errors=errors
        )
    except web.HTTPException as exc:
        return _problem(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def list_waves(request: web.Request) -> web.StreamResponse:
    now = _now()
    return _json(200, {"waves": [w.to_obj(now) for w in await request.app[WAVES].all()]})


async def create_wave(request: web.Request) -> web.StreamResponse:
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise WaveError("invalid", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise WaveError("invalid", "the body must be a JSON object")
    missing = [k for k in ("name", "opens_at", "closes_at", "quota") if k not in body]
    if missing:
        raise WaveError("invalid", f"missing: {', '.join(missing)}")
    if not all(isinstance(body[k], str) for k in ("name", "opens_at", "closes_at")):
        raise WaveError("invalid", "name, opens_at and closes_at are strings")
    wave = await request.app[WAVES].create(
        request[ACTOR],
        body["name"],
        parse_time(body["opens_at"]),
        parse_time(body["closes_at"]),
        body["quota"],
        Policy.from_obj(body.get("policy")),
    )
    return _json(201, wave.to_obj(_now()))


async def show_wave(request: web.Request) -> web.StreamResponse:
    wave = await request.app[WAVES].get(request.match_info["name"])
    return _json(200, wave.to_obj(_now()))


async def open_wave(request: web.Request) -> web.StreamResponse:
    now = _now()
    wave = await request.app[WAVES].open_now(request[ACTOR], request.match_info["name"], now)
    return _json(200, wave.to_obj(now))


async def close_wave(request: web.Request) -> web.StreamResponse:
    now = _now()
    wave = await request.app[WAVES].close_now(request[ACTOR], request.match_info["name"], now)
    return _json(200, wave.to_obj(now))


async def audit(request: web.Request) -> web.StreamResponse:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise WaveError("invalid", "limit is a whole number") from None
    if not 1 <= limit <= 1000:
        raise WaveError("invalid", "limit is from 1 to 1000")
    return _json(200, {"entries": await request.app[WAVES].audit(limit)})


_DOCUMENT = resources.files("admin").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_DOCUMENT, content_type="application/json")


async def _object(request: web.Request) -> dict[str, Any]:
    """The request's body, a JSON object (else ``invalid``)."""
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ControlError("invalid", "the body is not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise ControlError("invalid", "the body must be a JSON object", "body")
    return body


def _time(body: dict[str, Any], field: str) -> dt.datetime:
    value = body.get(field)
    if not isinstance(value, str):
        raise ControlError("invalid", f"{field} is a time (ISO 8601, WIB unless offset)", field)
    try:
        return parse_time(value)
    except WaveError as exc:
        raise ControlError("invalid", exc.message, field) from None


async def list_lanes(request: web.Request) -> web.StreamResponse:
    return _json(200, {"lanes": await request.app[CONTROLS].lanes(_now())})


async def force_breaker(request: web.Request) -> web.StreamResponse:
    check = parse_check(request.match_info["check"], "not_found")
    body = await _object(request)
    mode = parse_mode(body.get("state"))
    controls = request.app[CONTROLS]
    was = await controls.set_breaker(request[ACTOR], check, mode)
    lane = next(lane for lane in await controls.lanes(_now()) if lane["check"] == check.value)
    return _json(200, {**lane, "was": was.value})


async def list_windows(request: web.Request) -> web.StreamResponse:
    everything = request.query.get("all", "false")
    if everything not in ("true", "false"):
        raise ControlError("invalid", "all is true or false", "all")
    now = _now()
    windows = await request.app[CONTROLS].windows(now, everything=everything == "true")
    return _json(200, {"windows": [w.to_obj(now) for w in windows]})


async def add_window(request: web.Request) -> web.StreamResponse:
    body = await _object(request)
    check = body.get("check")
    if not isinstance(check, str):
        raise ControlError("invalid", "check is a lane's name", "check")
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise ControlError("invalid", "reason is a short text", "reason")
    now = _now()
    window = await request.app[CONTROLS].add_window(
        request[ACTOR],
        parse_check(check),
        _time(body, "starts_at"),
        _time(body, "ends_at"),
        reason,
        now,
    )
    return _json(201, window.to_obj(now))


async def cancel_window(request: web.Request) -> web.StreamResponse:
    text = request.match_info["id"]
    if not text.isdigit() or len(text) > 18:
        raise ControlError("not_found", f"no maintenance window {text}")
    now = _now()
    window = await request.app[CONTROLS].cancel_window(request[ACTOR], int(text), now)
    return _json(200, window.to_obj(now))


async def _nik(request: web.Request, *fields: str) -> tuple[str, dict[str, Any]]:
    """The body's NIK (16 digits) and the body, each field in ``fields`` a non-empty string."""
    body = await _object(request)
    nik = body.get("nik")
    if not isinstance(nik, str):
        raise ControlError("invalid", "nik is required (a string)", "nik")
    try:
        person.nik_hmac(request.app[KEYRING], nik)
    except person.InvalidNik as exc:
        raise ControlError("invalid", str(exc), "nik") from None
    for field in fields:
        value = body.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ControlError("invalid", f"{field} is required (a string)", field)
    return nik, body


async def export_person(request: web.Request) -> web.StreamResponse:
    nik, _ = await _nik(request)
    keyring = request.app[KEYRING]
    async with request.app[POOL].acquire() as connection, connection.transaction():
        document = await person.export(
            connection,
            keyring,
            PhotoVault(request.app[BLOBS], keyring),
            nik,
            actor=request[ACTOR],
            max_photo_bytes=request.app[SETTINGS].photo_max_bytes,
        )
    if not document["registrations"]:
        raise ControlError("not_found", "no registration of this NIK is stored")
    return web.Response(body=person.dumps(document), content_type="application/json")


async def erase_person(request: web.Request) -> web.StreamResponse:
    nik, body = await _nik(request, "reason")
    result = await person.erase_now(
        request.app[POOL],
        request.app[KEYRING],
        request.app[BLOBS],
        nik,
        actor=request[ACTOR],
        reason=body["reason"],
    )
    if not result["registrations"]:
        raise ControlError("not_found", "no registration of this NIK is stored")
    return _json(200, result)


def create_app(settings: Settings) -> web.Application:
    """The admin application; its database pool opens and closes with it."""
    app = web.Application(middlewares=[auth_middleware], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[CREDENTIALS] = settings.admin_credentials()
    app[KEYRING] = Keyring.from_settings(settings)
    app[BLOBS] = BlobStore(Path(settings.blob_dir))
    app.router.add_get("/v1/waves", list_waves)
    app.router.add_post("/v1/waves", create_wave)
    app.router.add_get("/v1/waves/{name}", show_wave)
    app.router.add_post("/v1/waves/{name}/open", open_wave)
    app.router.add_post("/v1/waves/{name}/close", close_wave)
    app.router.add_get("/v1/lanes", list_lanes)
    app.router.add_put("/v1/lanes/{check}/breaker", force_breaker)
    app.router.add_get("/v1/maintenance", list_windows)
    app.router.add_post("/v1/maintenance", add_window)
    app.router.add_delete("/v1/maintenance/{id}", cancel_window)
    app.router.add_get("/v1/audit", audit)
    app.router.add_post("/v1/persons/export", export_person)
    app.router.add_post("/v1/persons/erase", erase_person)
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(_database)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(app[SETTINGS].database_url, min_size=0, max_size=2)
    app[WAVES] = Waves(pool)
    app[CONTROLS] = LaneControls(pool)
    app[POOL] = pool
    yield
    await pool.close()


def run(settings: Settings) -> None:
    """Entry point of ``intake admin``."""
    web.run_app(
        create_app(settings),
        host=settings.admin_host,
        port=settings.admin_port,
        access_log=None,
        print=None,
    )
