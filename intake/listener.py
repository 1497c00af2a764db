"""The edge's listening socket: every connection waiting in the kernel is accepted at once.

A connection the kernel has completed waits in the listening socket's accept queue, where the
edge cannot see it, until the edge accepts it; the browser has sent its request and waits too.
The event loop's own server (uvloop's, libuv's) accepts *one* connection each time the
listening socket is reported ready, that is once per loop iteration: with the loop busy, a
wave's burst of new connections was accepted at about a hundred per second while thousands
waited in the queue, for seconds, before admission could even answer them 503.

:class:`EdgeSite` accepts instead: on every readiness it drains the queue, up to
``ACCEPT_BATCH`` connections, so that a connection waits there a loop iteration or a few, and
admission (:mod:`intake.admission`) keeps iterations short. The backlog (``edge_backlog``) then
only has to hold the connections that arrive during one iteration; the kernel drops the SYNs
beyond it and a browser resends its SYN after a second.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web

from intake.protocol import Shedder, Taker, protocol_factory

log = logging.getLogger(__name__)

# Connections accepted per readiness of the listening socket, at most: setting one up costs
# about as much CPU as a shed registration several times over, so a burst of thousands is taken
# over a few loop iterations rather than in one that would keep every request waiting.
ACCEPT_BATCH = 128


class EdgeSite(web.BaseSite):
    """A TCP site (an address, or an already bound socket) that accepts every waiting
    connection on each readiness and serves it with the edge's connection protocol
    (:class:`~intake.protocol.EdgeRequestHandler`), with the express path ``express`` if
    given (:mod:`intake.express`)."""

    __slots__ = ("_factory", "_host", "_listening", "_port", "_reuse_port", "_sock", "_tasks")

    def __init__(
        self,
        runner: web.BaseRunner,
        shedder: Shedder,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
        express: Taker | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        server = runner.server
        assert server is not None
        self._host, self._port, self._sock, self._reuse_port = host, port, sock, reuse_port
        self._factory = protocol_factory(server, shedder, express)
        self._listening: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        listening = self._listening or self._sock
        host, port = (
            listening.getsockname()[:2] if listening is not None else (self._host, self._port)
        )
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        sock = self._sock
        if sock is None:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        sock.listen(self._backlog)
        sock.setblocking(False)
        self._listening = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        sock = self._listening
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty
            except OSError as exc:  # out of descriptors or memory: the queue keeps them
                log.warning("accept failed: %s", type(exc).__name__)
                return
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(self._factory, connection))
            self._tasks.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("connection not set up: %s", type(task.exception()).__name__)

    async def stop(self) -> None:
        """Stop listening; connections already accepted are the runner's to finish."""
        sock, self._listening = self._listening, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            if self._sock is None:
                sock.close()
        await super().stop()
