"""The express path: a simple registration accepted without aiohttp's request machinery.

Profiled under load, an accepted registration spent about a third of the edge's CPU in
aiohttp's machinery (a task per request, the request and response objects, routing, two
middlewares, header serialisation) rather than in the work of accepting it. Most of a wave's
requests are the simplest kind: one whole ``POST /v1/registrations`` in one read, on an idle
keep-alive connection, with a valid JSON body. :class:`Express` takes those straight from the
connection (:class:`intake.protocol.EdgeRequestHandler`, which already answers shed ones there)
and does what :func:`intake.app.register` does, with the same functions
(:mod:`intake.registering`): validate, derive the id, hand the envelope to the publisher, and
answer ``202`` from the confirm's callback, or ``503`` when it fails or the deadline passes
first. No task, no coroutine, no request object: a timer and a callback.

Anything else goes to aiohttp, unchanged: a head that is not plainly well formed (checked
against a strict grammar, so that nothing aiohttp would refuse is taken), a duplicated
``Content-Type``, ``Content-Length`` or ``Idempotency-Key``, another content type, malformed
JSON, an invalid registration (aiohttp's handler answers the ``4xx`` with its per-field errors,
from the same validation). The answers are the same either way: status, body and headers
(``Server`` aside), the metrics and the access log line.

While a taken registration waits for its confirm, whatever else arrives on its connection is
held (reading paused beyond ``HOLD_MAX_BYTES``) and parsed once it is answered, so that a
client that pipelines gets its answers in order. A graceful shutdown waits for the answer.
``INTAKE_EDGE_EXPRESS=false`` turns the path off (every request through aiohttp).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from typing import Protocol

import orjson

from core import limits, metrics
from core.keys import Keyring
from core.settings import Settings
from intake.accesslog import AccessLogger
from intake.gate import Gate
from intake.httpmetrics import HttpMetrics
from intake.limits import TOO_MANY_TITLE, Limited, NikBlocks
from intake.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from intake.protocol import HttpDate
from intake.publisher import BatchPublisher, Unavailable
from intake.registering import (
    REGISTRATIONS_PATH,
    BadIdempotencyKey,
    accepted_document,
    envelope_for,
)
from intake.validation import ValidationFailed

log = logging.getLogger(__name__)

# A head taken by the express path: the registration's request line, then header fields
# whose names are tokens and whose values hold no control character but HTAB (RFC 9110 5.5;
# no obs-fold), one of them Host, the whole head at most 8,190 bytes (so is each field, as
# aiohttp requires). The head ends before its blank line.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD = rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n"  # (value: right-strip it)
_HEAD = re.compile(
    rb"POST " + REGISTRATIONS_PATH.encode() + rb" HTTP/1\.1\r\n(?:" + _FIELD + rb")*"
)
_FIELDS = re.compile(_FIELD)
_LINE_BYTES = len(b"POST " + REGISTRATIONS_PATH.encode() + b" HTTP/1.1\r\n")
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_IDEMPOTENCY_KEY = b"idempotency-key"
_HOST = b"host"
_JSON = b"application/json"
# The longest head taken (aiohttp's default limit on a request line or a field is 8,190 bytes).
HEAD_MAX_BYTES = 8190
# The most header fields taken (aiohttp refuses more than 128).
FIELDS_MAX = 64


class Connection(Protocol):
    """What the express path needs of the connection it takes a registration from."""

    def express_taken(self, taken: Taken) -> None:
        """The registration read last is taken: hold what follows until it is answered."""

    def express_answer(self, response: bytes) -> None:
        """Write the answer to the registration taken, and go on with what was held."""


def head_fields(data: bytes, head_end: int) -> tuple[bytes | None, bytes | None] | None:
    """The ``Content-Type`` and ``Idempotency-Key`` of a registration's head (``data`` up to
    ``head_end``, where its blank line starts), each None when absent; None when the head is
    not one the express path takes (see the module)."""
    if head_end > HEAD_MAX_BYTES or _HEAD.fullmatch(data, 0, head_end + 2) is None:
        return None
    fields = _FIELDS.findall(data, _LINE_BYTES, head_end + 2)
    if len(fields) > FIELDS_MAX:
        return None
    content_type = idempotency_key = None
    lengths = hosts = 0
    for name, value in fields:
        name = name.lower()
        if name == _CONTENT_TYPE:
            if content_type is not None:
                return None
            content_type = value.rstrip(b" \t")
        elif name == _IDEMPOTENCY_KEY:
            if idempotency_key is not None:
                return None
            idempotency_key = value.rstrip(b" \t")
        elif name == _CONTENT_LENGTH:
            lengths += 1
        elif name == _HOST:
            hosts += 1
    if lengths > 1 or hosts != 1:  # (HTTP/1.1 requires a Host: aiohttp refuses a request without)
        return None
    return content_type, idempotency_key


class Express:
    """Takes simple registrations off the edge's connections; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        publisher: BatchPublisher,
        gate: Gate,
        http_metrics: HttpMetrics,
        access_log: AccessLogger | None = None,
        blocks: NikBlocks | None = None,
    ) -> None:
        self._keyring = keyring
        self._blocks = blocks
        self._publisher = publisher
        self._gate = gate
        self._http_metrics = http_metrics
        self._access_log = access_log
        self._deadline_s = settings.edge_deadline_s
        self._date = HttpDate()
        self.taken = 0  # registrations taken (answered here)
        self.declined = 0  # registrations offered and left to aiohttp

    def take(self, connection: Connection, data: bytes, head_end: int, read_at_s: float) -> bool:
        """Take the registration that is ``data`` (one whole request, its blank line at
        ``head_end``, admitted by the gate, read at ``read_at_s``, loop time) and answer it
        later on ``connection``; or leave it (False) to aiohttp."""
        fields = head_fields(data, head_end)
        if fields is None:
            self.declined += 1
            return False
        content_type, key = fields
        if content_type is None or content_type.partition(b";")[0].strip().lower() != _JSON:
            self.declined += 1
            return False
        try:
            body = orjson.loads(memoryview(data)[head_end + 4 :])
            idempotency_key = None if key is None else key.decode()
            registration_id, item = envelope_for(
                body, idempotency_key, self._keyring, dt.datetime.now(dt.UTC), self._blocks
            )
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValidationFailed, BadIdempotencyKey):
            self.declined += 1
            return False
        except Limited as exc:
            self.taken += 1
            self._gate.handling()
            now_s = asyncio.get_running_loop().time()
            connection.express_answer(self.limited(exc.retry_after_s, read_at_s, now_s))
            return True
        self.taken += 1
        self._gate.handling()  # admitted as it was read: its "handler" runs now
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        publisher = self._publisher
        try:
            confirmed = publisher.submit(item, probe=publisher.admit())
        except Unavailable as exc:
            connection.express_answer(self.refused(exc.reason, read_at_s, now_s))
            return True
        taken = Taken(self, connection, registration_id, confirmed, read_at_s)
        taken.timer = loop.call_at(read_at_s + self._deadline_s + 1e-3, taken.expired)
        confirmed.add_done_callback(taken.confirmed)
        connection.express_taken(taken)
        return True

    def accepted(self, registration_id: uuid.UUID, read_at_s: float, now_s: float) -> bytes:
        """The ``202`` for a confirmed registration, counted and logged."""
        self._gate.accepted()
        metrics.REGISTRATIONS_ACCEPTED.inc()
        document, status_url = accepted_document(registration_id, self._keyring)
        self._answered(202, read_at_s, now_s)
        return b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nLocation: %b\r\n%b" % (
            status_url.encode(),
            self._framed(document),
        )

    def refused(self, reason: str, read_at_s: float, now_s: float) -> bytes:
        """The ``503`` (with ``Retry-After``) for a registration shed for ``reason``, counted
        and logged."""
        self._gate.count(reason)
        self._answered(503, read_at_s, now_s)
        return self._gate.unavailable(reason, now_s)

    def limited(self, retry_after_s: int, read_at_s: float, now_s: float) -> bytes:
        """The ``429`` (with ``Retry-After``) for a registration of a NIK that reached its
        limit (:mod:`intake.limits`), counted and logged."""
        metrics.LIMITED.labels(limits.NIK, REGISTRATIONS_PATH).inc()
        self._answered(429, read_at_s, now_s)
        document = orjson.dumps(
            {
                "type": PROBLEM_TYPE_BASE + "too-many-attempts",
                "title": TOO_MANY_TITLE,
                "status": 429,
                "limit": limits.NIK,
            }
        )
        return b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: %b\r\nRetry-After: %d\r\n%b" % (
            PROBLEM_CONTENT_TYPE.encode(),
            retry_after_s,
            self._framed(document),
        )

    def failed(self, exc: BaseException, read_at_s: float, now_s: float) -> bytes:
        """The ``500`` for a publish that failed unexpectedly (logged by type only)."""
        log.error("express publish failed: %s", type(exc).__name__)
        self._answered(500, read_at_s, now_s)
        document = orjson.dumps(
            {"type": PROBLEM_TYPE_BASE + "internal", "title": "Internal error", "status": 500}
        )
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: %b\r\n%b" % (
            PROBLEM_CONTENT_TYPE.encode(),
            self._framed(document),
        )

    def _answered(self, status: int, read_at_s: float, now_s: float) -> None:
        self._http_metrics.count(REGISTRATIONS_PATH, "POST", status, now_s - read_at_s)
        if self._access_log is not None:
            self._access_log.answered("POST", REGISTRATIONS_PATH, status, now_s - read_at_s)

    def _framed(self, document: bytes) -> bytes:
        """The end of a response's head and its body."""
        return b"Content-Length: %d\r\nDate: %b\r\nServer: intake\r\n\r\n%b" % (
            len(document),
            self._date(),
            document,
        )


class Taken:
    """A registration the express path took: answered once, by whichever comes first of its
    confirm's outcome and its deadline (or never, if its connection is lost first)."""

    __slots__ = (
        "confirmed_future",
        "connection",
        "express",
        "read_at_s",
        "registration_id",
        "timer",
    )

    def __init__(
        self,
        express: Express,
        connection: Connection,
        registration_id: uuid.UUID,
        confirmed: asyncio.Future[None],
        read_at_s: float,
    ) -> None:
        self.express = express
        self.connection = connection
        self.registration_id = registration_id
        self.confirmed_future = confirmed
        self.read_at_s = read_at_s
        self.timer: asyncio.TimerHandle | None = None  # None once answered or abandoned

    def confirmed(self, future: asyncio.Future[None]) -> None:
        """The publisher settled the registration's future."""
        if self.timer is None:  # answered at its deadline, or its connection was lost
            if not future.cancelled():
                future.exception()  # retrieved: nobody else will
            return
        self.timer.cancel()
        self.timer = None
        now_s = asyncio.get_running_loop().time()
        express = self.express
        exc = future.exception()
        if exc is None:
            response = express.accepted(self.registration_id, self.read_at_s, now_s)
        elif isinstance(exc, Unavailable):
            response = express.refused(exc.reason, self.read_at_s, now_s)
        else:
            response = express.failed(exc, self.read_at_s, now_s)
        self.connection.express_answer(response)

    def expired(self) -> None:
        """The deadline came first: ``503 deadline``. The registration may still be stored
        (its retry, with the same ``Idempotency-Key``, is then stored once)."""
        self.timer = None
        self.confirmed_future.cancel()  # the publisher answers nobody for it
        now_s = asyncio.get_running_loop().time()
        self.connection.express_answer(self.express.refused("deadline", self.read_at_s, now_s))

    def abandon(self) -> None:
        """Its connection was lost: nobody to answer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
