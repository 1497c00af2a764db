"""The cheapest refusal Python can make: the floor under the edge's shed (benchmarks.overload).

An asyncio protocol on uvloop that answers every request it reads with one prepared ``503``
(``Retry-After``, a problem body the size of the edge's): no parsing, no decision, no counting,
no clock. What one of its answers costs is what a refusal costs on this machine before any of
the edge's own work: the ``recv`` and ``send`` on loopback, the event loop's turn, one Python
callback. ``GET /readyz`` answers 200 so that the benchmark's rig can wait for it. One request
per read (no pipelining), as the benchmark's clients send them.

    taskset -c 0 python -m benchmarks.refusal --port 8098
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

_BODY = (
    b'{"type":"https://prakerja-intake.example/problems/service-unavailable",'
    b'"title":"Service Unavailable","status":503,"reason":"queue_delay"}'
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
    b"Content-Length: %d\r\nRetry-After: 5\r\nServer: intake\r\n\r\n%b" % (len(_BODY), _BODY)
)
READY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class Refuse(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(READY if data.startswith(b"GET /readyz ") else REFUSAL)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Refuse, host, port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8098)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
