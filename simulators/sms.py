"""The SMS gateway simulator: accepts text messages and keeps them, as a phone would.

    POST /v1/messages  {"to": "+628…" or "08…", "text": "..."}
      [Idempotency-Key: ...]
      202 {"id": "..."}
      400 {"error": "invalid_fields", "fields": ["to" | "text"]}

A request repeating an ``Idempotency-Key`` the gateway has seen (the last
:data:`IDEMPOTENCY_KEYS` of them) is answered like the first, with the first message's id, and
delivers nothing: the phone gets the message once, as with real gateways. Without the header
every request is a new message.

Simulator-only (not part of any gateway's API; a test or the demo plays the phone with it):

    GET /_sim/messages?to=+628…
      200 {"messages": [{"id", "to", "text", "received_at"}, ...]}   oldest first
    GET /_sim/messages?after=N[&limit=M]
      every number's messages numbered above N (:mod:`simulators.feed`)
    GET /_sim/messages/counts
      200 {"accepted": n, "deduplicated": n}   messages delivered; repeats answered, not sent

``to`` may be given in any Indonesian mobile form (``08…``, ``628…``, ``+628…``, separators
allowed); messages are filed under the normalised ``+628…``. In a query string a literal ``+``
means a space, so ``?to=+628…`` unencoded works too. The gateway keeps the last
:data:`MESSAGES_PER_NUMBER` messages of each number, in memory only, and never logs a number or
a text.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass

from aiohttp import web

from simulators.admin import admin_routes
from simulators.behaviour import Gate
from simulators.feed import Feed, parse_after
from simulators.jsonhttp import (
    BadRequest,
    application,
    http_middleware,
    json_response,
    read_object,
    strings,
)

MESSAGES_PER_NUMBER = 50
IDEMPOTENCY_KEYS = 1_000_000
# A concatenated SMS of ten parts; longer texts are refused as a real gateway would.
TEXT_MAX_CHARS = 1530
_SEPARATORS = str.maketrans("", "", " -.()")
_MOBILE_RE = re.compile(r"(?:\+62|62|0)(8[0-9]{8,11})")


def normalise_number(number: str) -> str | None:
    """An Indonesian mobile number as ``+628…``, or ``None`` if it is not one."""
    # A leading space is a "+" that a query string turned into a space.
    match = _MOBILE_RE.fullmatch(number.strip().translate(_SEPARATORS))
    if match is None:
        match = _MOBILE_RE.fullmatch("+" + number.strip().translate(_SEPARATORS))
    return None if match is None else "+62" + match.group(1)


@dataclass(frozen=True, slots=True)
class Sms:
    """One message as the phone received it."""

    id: str
    to: str
    text: str
    received_at: dt.datetime

    def to_json(self) -> dict[str, str]:
        """The message as served by the read-back hook."""
        return {
            "id": self.id,
            "to": self.to,
            "text": self.text,
            "received_at": self.received_at.isoformat(),
        }


class Outbox:
    """The messages the gateway accepted, by normalised number; bounded per number."""

    def __init__(self, per_number: int = MESSAGES_PER_NUMBER) -> None:
        self._by_number: defaultdict[str, deque[Sms]] = defaultdict(
            lambda: deque(maxlen=per_number)
        )
        self.accepted = 0
        self.deduplicated = 0  # requests repeating an idempotency key: answered, not sent
        self._keys: OrderedDict[str, str] = OrderedDict()  # idempotency key -> message id
        self.feed = Feed()

    def add(self, to: str, text: str, key: str | None = None) -> str:
        """Keep a message for ``to`` (already normalised); returns its id: a new one, or the
        first's when ``key`` repeats an idempotency key (then nothing is delivered)."""
        if key is not None and key in self._keys:
            self.deduplicated += 1
            return self._keys[key]
        message = Sms(uuid.uuid4().hex, to, text, dt.datetime.now(dt.UTC))
        self._by_number[to].append(message)
        self.accepted += 1
        self.feed.append(message.to_json())
        if key is not None:
            self._keys[key] = message.id
            if len(self._keys) > IDEMPOTENCY_KEYS:
                self._keys.popitem(last=False)
        return message.id

    def for_number(self, number: str) -> list[Sms]:
        """The messages kept for ``number`` (any mobile form), oldest first."""
        normalised = normalise_number(number)
        if normalised is None or normalised not in self._by_number:
            return []
        return list(self._by_number[normalised])


def create_app(outbox: Outbox, gate: Gate) -> web.Application:
    """The gateway's API over ``outbox``, behind ``gate``, with the ``/_sim/`` routes."""

    async def send(request: web.Request) -> web.Response:
        try:
            to, text = strings(await read_object(request), "to", "text")
            number = normalise_number(to)
            if number is None:
                raise BadRequest("invalid_fields", ["to"])
            if len(text) > TEXT_MAX_CHARS:
                raise BadRequest("invalid_fields", ["text"])
        except BadRequest as exc:
            return exc.response()
        key = request.headers.get("Idempotency-Key") or None
        return json_response({"id": outbox.add(number, text, key)}, status=202)

    async def counts(request: web.Request) -> web.Response:
        return json_response({"accepted": outbox.accepted, "deduplicated": outbox.deduplicated})

    async def messages(request: web.Request) -> web.Response:
        to = request.query.get("to")
        page = parse_after(request.query)
        if not to and page is not None:
            found, last = outbox.feed.after(*page)
            return json_response({"messages": found, "last": last})
        if not to:
            return BadRequest("invalid_fields", ["to"]).response()
        return json_response({"messages": [m.to_json() for m in outbox.for_number(to)]})

    app = application([http_middleware(gate)])
    app.add_routes(
        [
            web.post("/v1/messages", send),
            web.get("/_sim/messages", messages),
            web.get("/_sim/messages/counts", counts),
            *admin_routes(gate),
        ]
    )
    return app
