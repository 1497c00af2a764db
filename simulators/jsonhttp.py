"""The HTTP plumbing every simulated API shares: JSON bodies in and out, and the gate.

:func:`http_middleware` puts a :class:`~simulators.behaviour.Gate` in front of an API and turns
its refusals into HTTP (a 503 or 429 with ``Retry-After``, a 500, or a connection closed
unanswered). Answers never quote a submitted value: a bad request names the fields at fault,
not their contents, because the contents are personal data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from simulators.behaviour import Gate, Refused

# Requests are a few fields; anything larger is refused by aiohttp with a 413.
MAX_BODY_BYTES = 16 * 1024
NIK_RE = re.compile(r"[0-9]{16}")


class BadRequest(Exception):
    """The body is not what the API expects; ``fields`` names the fields at fault."""

    def __init__(self, error: str, fields: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.fields = fields or []

    def response(self) -> web.Response:
        """The 400 answer."""
        body: dict[str, object] = {"error": self.error}
        if self.fields:
            body["fields"] = self.fields
        return json_response(body, status=400)


def json_response(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``body`` serialised with orjson as ``application/json``."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def application(middlewares: Iterable[Middleware] = ()) -> web.Application:
    """An application with the simulators' body size limit and the given middlewares."""
    return web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`BadRequest`."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("not_an_object")
    return body


def strings(body: dict[str, Any], *names: str) -> list[str]:
    """The named fields of ``body``, each a non-empty string, or :class:`BadRequest` naming
    every field that is not."""
    missing = [name for name in names if not isinstance(body.get(name), str) or not body[name]]
    if missing:
        raise BadRequest("invalid_fields", missing)
    return [str(body[name]) for name in names]


def nik_of(body: dict[str, Any]) -> str:
    """The ``nik`` field: 16 digits, or :class:`BadRequest`."""
    (nik,) = strings(body, "nik")
    if not NIK_RE.fullmatch(nik):
        raise BadRequest("invalid_fields", ["nik"])
    return nik


def http_middleware(gate: Gate) -> Middleware:
    """An aiohttp middleware applying ``gate`` to every route except the simulator-only
    ``/_sim/`` ones (statistics, behaviour, read-back), which must answer during an outage."""

    @web.middleware
    async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        try:
            async with gate.admission():
                return await handler(request)
        except Refused as refused:
            return refusal(request, refused)

    return gate_middleware


_ERRORS = {"503": "service_unavailable", "429": "too_many_requests", "500": "internal_error"}


def refusal(request: web.Request, refused: Refused) -> web.StreamResponse:
    """The HTTP answer to a refused call; for "refuse", the connection is closed instead."""
    if refused.answer == "refuse":
        if request.transport is not None:
            request.transport.abort()
        # Never sent: the connection is gone. aiohttp needs a response to finish the request.
        return web.Response(status=503)
    headers = {}
    if refused.answer in ("503", "429"):
        headers["Retry-After"] = str(refused.retry_after_s)
    return web.Response(
        status=int(refused.answer),
        body=orjson.dumps({"error": _ERRORS[refused.answer], "reason": refused.reason}),
        content_type="application/json",
        headers=headers,
    )


def nik_lookup_app(
    gate: Gate,
    path: str,
    answer: Callable[[str], dict[str, Any]],
    extra_routes: Iterable[web.RouteDef] = (),
) -> web.Application:
    """A ministry register answering ``POST path {"nik"}`` with ``answer(nik)``, behind
    ``gate``. A POST, so that the NIK never appears in a URL or an access log."""

    async def lookup(request: web.Request) -> web.Response:
        try:
            nik = nik_of(await read_object(request))
        except BadRequest as exc:
            return exc.response()
        return json_response(answer(nik))

    app = application([http_middleware(gate)])
    app.add_routes([web.post(path, lookup), *extra_routes])
    return app
