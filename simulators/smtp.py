"""The SMTP simulator: a real SMTP server (aiosmtpd) that keeps what it receives, as a mailbox.

The server runs in the caller's event loop (``loop.create_server`` with aiosmtpd's ``SMTP``
protocol), not in aiosmtpd's ``Controller`` thread: one loop, no locks, and it stops with the
rest of the simulators. It accepts any sender and any recipient, without TLS or AUTH.

Each message (the DATA command) passes the simulator's :class:`~simulators.behaviour.Gate`:

    served                       250 OK, and the message is kept
    overload ("503" or "429")    451 4.7.1 (try again later)
    outage "503"                 421 4.3.2 (service not available)
    error (error_rate)           451 4.3.0 (local error)
    "refuse", or a hang's end    the connection is closed without a reply

Messages are parsed with the ``email`` package and kept per recipient (the last
:data:`MESSAGES_PER_RECIPIENT`), in memory. A mailbox keeps one message per ``Message-ID``, as
Gmail does: a message whose ``Message-ID`` the recipient already received is accepted (250) and
dropped, and counted as a duplicate; a message without one is always kept. Simulator-only
read-back, on the SMTP simulator's HTTP admin application (with its ``/_sim/stats`` and
``/_sim/behaviour``):

    GET /_sim/mail?to=addr
      200 {"messages": [{"from", "to", "subject", "body", "html", "links", "received_at"}]}
    GET /_sim/mail?after=N[&limit=M]
      every recipient's messages numbered above N (:mod:`simulators.feed`)
    GET /_sim/mail/counts
      200 {"received": n, "duplicates": n}   messages kept; repeated Message-IDs dropped

``body`` is the text/plain part, ``html`` the text/html part (or ""), ``links`` every http(s)
URL found in either, in order of appearance, without repeats. Addresses are matched
case-insensitively. aiosmtpd logs recipients and message lines; its logger is capped at
WARNING and its records are stripped of their arguments, so no address or content is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import html
import logging
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, cast

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from simulators.admin import admin_routes
from simulators.behaviour import Gate, Refused
from simulators.feed import Feed, parse_after
from simulators.jsonhttp import BadRequest, application, json_response

MESSAGES_PER_RECIPIENT = 50
HOSTNAME = "smtp.simulator.invalid"
_LINK_RE = re.compile(r"https?://[^\s<>\"']+")
_REPLIES = {
    ("overload", "503"): "451 4.7.1 Too busy, try again later",
    ("overload", "429"): "451 4.7.1 Too busy, try again later",
    ("outage", "503"): "421 4.3.2 Service not available",
    ("error", "500"): "451 4.3.0 Local error, try again later",
}


@dataclass(frozen=True, slots=True)
class Mail:
    """One message as a recipient's mailbox holds it."""

    sender: str
    to: str
    subject: str
    body: str
    html: str
    links: tuple[str, ...]
    received_at: dt.datetime
    message_id: str | None = None

    def to_json(self) -> dict[str, object]:
        """The message as served by the read-back hook."""
        return {
            "from": self.sender,
            "to": self.to,
            "subject": self.subject,
            "body": self.body,
            "html": self.html,
            "links": list(self.links),
            "received_at": self.received_at.isoformat(),
        }


def parse(sender: str, recipient: str, content: bytes) -> Mail:
    """A received message's subject, text and HTML parts, and links."""
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # the default policy's message class
    text, markup = _part(message, "plain"), _part(message, "html")
    links = [*_LINK_RE.findall(text), *_LINK_RE.findall(html.unescape(markup))]
    return Mail(
        sender=sender,
        to=recipient,
        subject=str(message.get("subject", "")),
        body=text,
        html=markup,
        links=tuple(dict.fromkeys(links)),
        received_at=dt.datetime.now(dt.UTC),
        message_id=str(message["message-id"]).strip() if message.get("message-id") else None,
    )


def _part(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    if not isinstance(part, EmailMessage) or part.get_content_subtype() != subtype:
        return ""
    content = part.get_content()
    return content if isinstance(content, str) else ""


class Mailbox:
    """Every recipient's received messages, oldest first; bounded per recipient."""

    def __init__(self, per_recipient: int = MESSAGES_PER_RECIPIENT) -> None:
        self._by_recipient: defaultdict[str, deque[Mail]] = defaultdict(
            lambda: deque(maxlen=per_recipient)
        )
        self.received = 0
        self.duplicates = 0  # messages dropped: their recipient had their Message-ID already
        self._seen: set[tuple[str, str]] = set()  # (recipient, Message-ID)
        self.feed = Feed()

    def add(self, mail: Mail) -> None:
        """Keep ``mail`` in its recipient's mailbox (and in the feed), unless the recipient
        already received its ``Message-ID``."""
        if mail.message_id is not None:
            seen = (mail.to.lower(), mail.message_id)
            if seen in self._seen:
                self.duplicates += 1
                return
            self._seen.add(seen)
        self._by_recipient[mail.to.lower()].append(mail)
        self.received += 1
        self.feed.append(mail.to_json())

    def for_address(self, address: str) -> list[Mail]:
        """The messages kept for ``address`` (case-insensitive), oldest first."""
        key = address.strip().lower()
        # A "+" in a query string arrives as a space; addresses hold no spaces.
        key = key.replace(" ", "+")
        return list(self._by_recipient.get(key, ()))


class _Handler:
    """aiosmtpd's hook: each DATA passes the gate and is parsed into the mailbox."""

    def __init__(self, mailbox: Mailbox, gate: Gate) -> None:
        self._mailbox = mailbox
        self._gate = gate

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            async with self._gate.admission():
                for recipient in envelope.rcpt_tos:
                    self._mailbox.add(parse(envelope.mail_from or "", recipient, raw))
                return "250 OK"
        except Refused as refused:
            reply = _REPLIES.get((refused.reason, refused.answer))
            if reply is None:  # "refuse": drop the connection without a word
                if server.transport is not None:
                    cast(asyncio.Transport, server.transport).abort()
                return "421 4.3.2 Closing connection"  # never sent
            return reply


class SmtpServer:
    """The SMTP listener in the running loop; :meth:`close` also ends open sessions."""

    def __init__(self, mailbox: Mailbox, gate: Gate) -> None:
        self.mailbox = mailbox
        self.gate = gate
        self.port = 0
        self._handler = _Handler(mailbox, gate)
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``0``: any free port); returns the bound port."""
        _quiet_aiosmtpd()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def _session(self) -> SMTP:
        protocol = _TrackedSMTP(self._sessions, self._handler, hostname=HOSTNAME)
        self._sessions.add(protocol)
        return protocol

    async def close(self) -> None:
        """Stop listening and close every open session."""
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            await self._server.wait_closed()
            self._server = None
        # Let aiosmtpd's session tasks see their connections lost before the loop moves on.
        for _ in range(3):
            await asyncio.sleep(0)


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, forgetting itself when its connection ends."""

    def __init__(self, sessions: set[SMTP], handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, loop=asyncio.get_running_loop(), **kwargs)
        self._tracked_in = sessions

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracked_in.discard(self)
        super().connection_lost(exc)


def admin_app(mailbox: Mailbox, gate: Gate) -> web.Application:
    """The SMTP simulator's HTTP side: ``GET /_sim/mail?to=`` (or ``?after=``) and the control
    routes."""

    async def mail(request: web.Request) -> web.Response:
        to = request.query.get("to")
        page = parse_after(request.query)
        if not to and page is not None:
            messages, last = mailbox.feed.after(*page)
            return json_response({"messages": messages, "last": last})
        if not to:
            return BadRequest("invalid_fields", ["to"]).response()
        return json_response({"messages": [m.to_json() for m in mailbox.for_address(to)]})

    async def counts(request: web.Request) -> web.Response:
        return json_response({"received": mailbox.received, "duplicates": mailbox.duplicates})

    app = application()
    app.add_routes(
        [web.get("/_sim/mail", mail), web.get("/_sim/mail/counts", counts), *admin_routes(gate)]
    )
    return app


class _Redact(logging.Filter):
    """Keeps a record's message template and drops its arguments and traceback, where
    aiosmtpd puts addresses, commands and message lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.msg = f"{record.msg} ({record.exc_info[0].__name__})"
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command (addresses included) at INFO and every line of DATA at
    DEBUG on the "mail.log" logger: cap it and redact what remains."""
    logger = logging.getLogger("mail.log")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _Redact) for f in logger.filters):
        logger.addFilter(_Redact())
