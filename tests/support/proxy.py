"""A TCP proxy that a test can cut, to make a real server unreachable on demand.

In the spirit of aio-pika's own test suite: the system under test connects through the proxy;
:meth:`TcpProxy.cut` closes the listening socket and aborts every open connection, which is what
a client sees when the server process stops; :meth:`TcpProxy.restore` listens again.
:meth:`TcpProxy.stall` holds back whatever the server sends (a broker's confirms among them), as
a congested link or a struggling server would, while what the client sends still goes through
(on the connections open then only, with ``new_connections=False``: one connection wedged while
a new one works); :meth:`TcpProxy.release` delivers everything held, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika

from core.settings import Settings


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()  # whether new connections flow
        self._flowing.set()
        self._gates: set[asyncio.Event] = set()  # each open connection's server side

    @property
    def carrying(self) -> bool:
        """Whether a proxied connection is open."""
        return bool(self._writers)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and abort every proxied connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    def stall(self, *, new_connections: bool = True) -> None:
        """Hold back what the server sends on the open connections, and on those opened
        later unless ``new_connections`` is False, until :meth:`release`."""
        for gate in self._gates:
            gate.clear()
        if new_connections:
            self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()
        for gate in self._gates:
            gate.set()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def close(self) -> None:
        self.release()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        gate = asyncio.Event()
        if self._flowing.is_set():
            gate.set()
        self._gates.add(gate)
        for src, dst, gated in ((reader, up_writer, None), (up_reader, writer, gate)):
            task = asyncio.create_task(self._pipe(src, dst, gated))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if gate is not None:
                self._gates.discard(gate)
            self._writers.discard(dst)
            dst.transport.abort()


@contextlib.asynccontextmanager
async def broker_proxy(settings: Settings) -> AsyncIterator[tuple[TcpProxy, Settings]]:
    """A proxy in front of the settings' RabbitMQ, and the settings that connect through it."""
    url = aio_pika.connection.make_url(settings.amqp_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    try:
        yield (
            proxy,
            settings.replace(amqp_url=str(url.with_host("127.0.0.1").with_port(proxy.port))),
        )
    finally:
        await proxy.close()
