"""The edge's HTTP connections: aiohttp's, with a 503 answered as the request is read.

Shedding is only worth doing if a shed request costs a small fraction of an accepted one:
at five times its capacity an edge sheds four requests for every one it accepts. aiohttp's
cheapest answer (a request object, routing, middleware, a response object, the access log)
costs about half of an accepted registration here, so a 503 answered by a handler leaves too
little CPU for the registrations. :class:`EdgeRequestHandler` is aiohttp's connection protocol
with one addition: in ``data_received``, when the bytes read are exactly one whole
``POST /v1/registrations`` (checked on the bytes: the request line, the end of the head, the
``Content-Length``), the :class:`Shedder` is asked first, and a refused registration is answered
on the spot with prepared bytes: aiohttp's parser never sees it and stays between requests.
Everything else (every other route, every admitted registration, anything unusual) goes to
aiohttp as before.

The shortcut is taken only when it cannot change what a client sees on its connection:
HTTP/1.1 keep-alive (no ``Connection: close``, no chunked body, no upgrade, no ``Expect``), a
body no larger than the edge accepts and all in the bytes read, everything the connection sent
before ending at a request's end, and no earlier request on it still unanswered (so responses
stay in order). Otherwise the request goes the normal way, where the handler asks the same
question (``intake.app.register``).

This leans on aiohttp's ``RequestHandler``: its request count, its payload parser and upgrade
flags, and its ``_handle_request`` (counted to know when a response was written).
:func:`supported` checks that they exist; if a future aiohttp changes them, the edge logs it
and serves without the shortcut (the handler still sheds, at a higher cost), and
``tests/intake/test_overload.py`` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from core import metrics
from intake.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from intake.registering import REGISTRATIONS_PATH

log = logging.getLogger(__name__)


class Shedder(Protocol):
    """What the connection asks about a registration before aiohttp sees it."""

    max_body_bytes: int

    def early_reason(self, now_s: float) -> str | None:
        """The reason to shed a registration read at ``now_s`` (loop time), or None: then it
        is admitted, and counted until its handler runs (or :meth:`release`)."""

    def answer(self, reason: str, now_s: float) -> bytes:
        """The whole HTTP response (503 with ``Retry-After``) for a shed registration; the
        shedder counts it."""

    def delay_s(self, now_s: float) -> float:
        """About how long a request read at ``now_s`` has waited to be read."""

    def release(self) -> None:
        """A registration admitted by :meth:`early_reason` will not reach its handler."""


class Taker(Protocol):
    """What takes an admitted registration off the connection (:class:`intake.express.Express`)."""

    def take(self, connection: Any, data: bytes, head_end: int, read_at_s: float) -> bool:
        """Take the registration ``data`` (one whole request) and answer it later through
        ``connection.express_answer``; or return False to leave it to aiohttp."""


class Taken(Protocol):
    """A registration taken, not yet answered."""

    def abandon(self) -> None:
        """Its connection was lost."""


# What a connection holds, at most, of what follows a registration the express path took
# before it stops reading (a client that pipelines).
HOLD_MAX_BYTES = 64 * 1024


def supported() -> bool:
    """Whether this aiohttp's ``RequestHandler`` has what the shortcut relies on."""
    slots = set(getattr(RequestHandler, "__slots__", ())) | set(BaseProtocol.__slots__)
    names = {
        "_request_count",
        "_payload_parser",
        "_upgraded",
        "_keepalive_timeout",
        "_next_keepalive_close_time",
        "_force_close",
        "_close",
    }
    return names <= slots and hasattr(RequestHandler, "_handle_request")


# The request line of a registration, and what in its head would make the shortcut unsafe: a
# body framed otherwise (chunked), a connection to close or upgrade, an expected 100-continue.
_REGISTRATION_LINE = b"POST " + REGISTRATIONS_PATH.encode() + b" HTTP/1.1\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,9})[ \t]*\r\n", re.IGNORECASE)
_UNUSUAL = re.compile(
    rb"\r\n(?:transfer-encoding|upgrade|expect|connection:[^\r]*close)", re.IGNORECASE
)
_HEAD_END = b"\r\n\r\n"


def _one_request(data: bytes) -> tuple[bool, int]:
    """Whether ``data`` is exactly one whole HTTP/1.1 request, head and body (framed by
    ``Content-Length`` or bodiless), and where its head ends (-1 if it does not)."""
    end = data.find(_HEAD_END)
    if end < 0:
        return False, -1
    if _UNUSUAL.search(data, 0, end + 2):
        return False, end
    length = _CONTENT_LENGTH.search(data, 0, end + 2)
    body = int(length[1]) if length is not None else 0
    return end + 4 + body == len(data), end


# What HTTP itself could not parse, by aiohttp's exception (the first that matches): the part of
# the request, a stable code and a message that quotes nothing the client sent.
_MALFORMED: tuple[tuple[type[HttpProcessingError], str, str, str], ...] = (
    (BadHttpMethod, "request_line", "bad_method", "The method is not an HTTP token"),
    (InvalidURLError, "request_line", "bad_target", "The request target is not a valid URL"),
    (BadStatusLine, "request_line", "invalid", "The request line is not HTTP/1.x"),
    (LineTooLong, "head", "too_long", "A line of the request head is too long"),
    (InvalidHeader, "headers", "invalid", "A header is malformed"),
    (ContentEncodingError, "body", "bad_encoding", "The body's Content-Encoding is invalid"),
    (PayloadEncodingError, "body", "bad_framing", "The body does not match its framing"),
)


# aiohttp's C parser raises a plain BadHttpMessage for most of what it refuses; its message's
# first line says what (and the rest quotes the request): judged by words in that line.
_MALFORMED_BY_WORDS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (("chunk", "body", "payload"), "body", "bad_framing", "The body does not match its framing"),
    (
        ("header", "content-length", "transfer-encoding", "host"),
        "headers",
        "invalid",
        "A header is malformed, repeated or contradicts another",
    ),
    (
        ("method", "version", "status line", "url"),
        "request_line",
        "invalid",
        "The request line is not HTTP/1.x",
    ),
)


# The route label of the requests HTTP could not parse (intake_http_requests_total).
UNPARSED_ROUTE = "unparsed"


def malformed_body(exc: BaseException | None) -> dict[str, Any]:
    """The problem document of a request HTTP could not parse (``400 malformed-request``)."""
    field, code, message = "request", "malformed", "The request is not valid HTTP/1.1"
    for kind, *described in _MALFORMED:
        if isinstance(exc, kind):
            field, code, message = described
            break
    else:
        said = str(getattr(exc, "message", "")).partition("\n")[0].lower()
        for words, *described in _MALFORMED_BY_WORDS:
            if any(word in said for word in words):
                field, code, message = described
                break
    return {
        "type": PROBLEM_TYPE_BASE + "malformed-request",
        "title": "The request could not be parsed",
        "status": 400,
        "errors": [{"field": field, "code": code, "message": message}],
    }


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection protocol, whose own error answers are problems too: a request its
    parser refuses is a ``400 malformed-request`` naming the part at fault, not aiohttp's
    text/plain, and a failure outside any handler a ``500 internal``. Logged by kind only: the
    exception's message quotes the request (a header or the request line)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's: the response has begun
            raise ConnectionError("response already begun, cannot send the error's")
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            log.info("malformed request refused: %s", type(exc).__name__)
            # Counted with the other answers (no route: ``unparsed``), not timed: the parser
            # gave up before the request had a beginning the edge could time it from.
            metrics.HTTP_REQUESTS.labels(UNPARSED_ROUTE, "other", "4xx").inc()
            body = malformed_body(exc)
        else:
            log.error("error outside the handlers: %s (%s)", type(exc).__name__, status)
            body = {
                "type": PROBLEM_TYPE_BASE + "internal",
                "title": "Internal error",
                "status": 500,
            }
        response = web.Response(
            status=body["status"], body=orjson.dumps(body), content_type=PROBLEM_CONTENT_TYPE
        )
        response.force_close()
        return response


class EdgeRequestHandler(ProblemRequestHandler):
    """aiohttp's connection protocol, with registrations shed as they are read (see the
    module docstring)."""

    def __init__(
        self, manager: web.Server, shedder: Shedder, express: Taker | None = None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._shedder = shedder
        self._express = express
        self._taken: Taken | None = None  # taken by the express path, not answered yet
        self._held = b""  # what arrived meanwhile
        self._held_paused = False
        self._express_idle: asyncio.Future[None] | None = None  # a shutdown waits on it
        # Whether everything this connection sent so far ended at a request's end: aiohttp's
        # parser holds no partial request, so the next bytes start one.
        self._at_boundary = True
        self._answered = 0  # requests whose response aiohttp has written (or given up on)
        self.read_at_s: float | None = None
        # When a registration admitted early was read (loop time, not backdated), until its
        # handler takes it (intake.app.register calls taken()).
        self.admitted_at_s: float | None = None

    def data_received(self, data: bytes) -> None:
        # The hot path of a shed registration: keep it short (see the module docstring).
        if self._taken is not None:  # the express path answers first (in order)
            self._held += data
            if len(self._held) > HOLD_MAX_BYTES and not self._held_paused:
                self._held_paused = True
                if self.transport is not None:
                    self.transport.pause_reading()
            return
        now = self._loop.time()
        if self._at_boundary and data and not (self._force_close or self._close):
            # (aiohttp feeds itself b"" to re-parse what it held)
            whole, head_end = _one_request(data)
            if not whole:
                self._at_boundary = False  # for good: the shortcut is for the simple case
            elif (
                data.startswith(_REGISTRATION_LINE)
                and len(data) - head_end - 4 <= self._shedder.max_body_bytes
                and self._idle()
            ):
                reason = self._shedder.early_reason(now)
                if reason is None:
                    express = self._express
                    read_at_s = now - self._shedder.delay_s(now)
                    if express is not None and express.take(self, data, head_end, read_at_s):
                        return
                    self.admitted_at_s = now
                elif self.transport is not None:
                    self.transport.write(self._shedder.answer(reason, now))
                    return  # aiohttp never sees it; its parser is still between requests
        self.read_at_s = now - self._shedder.delay_s(now)
        super().data_received(data)

    def express_taken(self, taken: Taken) -> None:
        """The express path took the registration just read; it answers with
        :meth:`express_answer`."""
        self._taken = taken
        self._keep_alive_from_now()

    def express_answer(self, response: bytes) -> None:
        """The express path's answer to the registration it took; then what arrived since."""
        self._taken = None
        if self.transport is not None:
            self.transport.write(response)
        self._keep_alive_from_now()
        if self._express_idle is not None and not self._express_idle.done():
            self._express_idle.set_result(None)
        if self._held:
            held, self._held = self._held, b""
            if self._held_paused:
                self._held_paused = False
                if self.transport is not None:
                    self.transport.resume_reading()
            self.data_received(held)

    def _keep_alive_from_now(self) -> None:
        # aiohttp's keep-alive timer closes a connection idle for its timeout; the express
        # path's requests are activity it does not see.
        if self._keepalive_timeout > 0:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        """aiohttp's graceful shutdown, after the express path's answer (if one is due)."""
        if self._taken is not None:
            self._express_idle = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._express_idle
        await super().shutdown(timeout)

    def taken(self) -> float | None:
        """The handler of a registration took it: when it was admitted early, if it was."""
        admitted, self.admitted_at_s = self.admitted_at_s, None
        return admitted

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._taken is not None:
            self._taken.abandon()
            self._taken, self._held = None, b""
            if self._express_idle is not None and not self._express_idle.done():
                self._express_idle.set_result(None)
        if self.admitted_at_s is not None:
            self.admitted_at_s = None
            self._shedder.release()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No request on this connection is unanswered: every request aiohttp parsed has had
        its response written (a client that pipelines gets its answers in order)."""
        return (
            self._request_count == self._answered
            and not self._upgraded
            and self._payload_parser is None
        )

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        # aiohttp's: run the handler and write its response (finish_response) for one request.
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._answered += 1


def protocol_factory(
    server: web.Server, shedder: Shedder, express: Taker | None = None
) -> Callable[[], RequestHandler]:
    """What makes the edge's connections: :class:`EdgeRequestHandler`, built with what
    ``web.Server.__call__`` passes to aiohttp's own (or aiohttp's, see :func:`supported`)."""
    kwargs = dict(server._kwargs)
    if not supported():
        log.warning("this aiohttp's RequestHandler is not as expected: no early 503s")

        def plain() -> RequestHandler:
            return ProblemRequestHandler(server, loop=server._loop, **kwargs)

        return plain

    def factory() -> RequestHandler:
        return EdgeRequestHandler(server, shedder, express, loop=server._loop, **kwargs)

    return factory


class HttpDate:
    """The ``Date`` header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value
