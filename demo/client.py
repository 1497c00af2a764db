"""A lean HTTP/1.1 client for a wave of registrations (the demo's forms, the benchmarks' load
generator): keep-alive connections as asyncio protocols, responses parsed by ``httptools``
(llhttp, the parser Node.js uses).

The client shares the machine with the system it loads and must not be what limits the wave.
aiohttp's client costs about 300 µs of CPU per request on this project's reference machine (its
session, its request and response objects, cookie and redirect handling); a raw protocol that
writes a prepared request and parses the status, two headers and the body costs a fraction of
it, so the client's ceiling is well above what the system under test can take (the load
generator measures and reports that ceiling). No pipelining: one request at a time per
connection, as a browser sends a form.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import httptools


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: bytes | None


class ConnectionLost(Exception):
    """The connection closed or failed before the whole answer arrived."""


class _Protocol(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_headers_done",
        "_parser",
        "_retry_after",
        "_transport",
        "_waiter",
        "closed",
        "keep_alive",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._retry_after: bytes | None = None
        self.closed = False
        self.keep_alive = True

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionLost(str(exc) if exc else "closed by the server"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"unparsable answer: {exc}"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        answer = Answer(self._parser.get_status_code(), b"".join(self._body), self._retry_after)
        self._body, self._retry_after = [], None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self._transport is not None
        assert self._waiter is None
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class Pool:
    """At most ``size`` keep-alive connections to one server; a request waits for a free one.

    A connection that failed, timed out or was closed by the server is dropped and a new one
    opened by the next request that needs it.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._idle: list[_Protocol] = []
        self._slots = asyncio.Semaphore(size)
        self.opened = 0

    def request_head(self, method: str, path: str) -> bytes:
        """The request line and the Host header, for :meth:`request`'s prepared bytes."""
        return f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode()

    async def request(self, raw: bytes, timeout_s: float) -> Answer:
        """Send ``raw`` (a complete HTTP/1.1 request) and return the answer within
        ``timeout_s``, the wait for a free connection included; raises
        :class:`ConnectionLost`, :class:`OSError` or :class:`TimeoutError`."""
        async with asyncio.timeout(timeout_s), self._slots:
            protocol = self._idle.pop() if self._idle else None
            if protocol is None or protocol.closed:
                protocol = await self._connect()
            try:
                answer: Answer = await protocol.send(raw)
            except BaseException:
                protocol.close()
                raise
            if protocol.keep_alive and not protocol.closed:
                self._idle.append(protocol)
            else:
                protocol.close()
            return answer

    async def open(self) -> None:
        """Open every connection now (a wave's opening then pays for none of them): the people
        of a real wave come through the load balancer in front of the edges, whose connections
        to the edges are kept alive."""
        opened = await asyncio.gather(
            *(self._connect() for _ in range(self.size - len(self._idle)))
        )
        self._idle.extend(opened)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        self.opened += 1
        return protocol

    def close(self) -> None:
        for protocol in self._idle:
            protocol.close()
        self._idle.clear()
