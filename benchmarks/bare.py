"""The reference server of :mod:`benchmarks.edge`: the ceiling of aiohttp on one core.

``POST /v1/registrations`` reads the body, parses it with orjson, and answers ``202`` with a
small JSON document shaped like the edge's (id, status, status URL, a token-sized string),
without validating or publishing anything. ``GET /readyz`` answers 200. uvloop, no access log.

    taskset -c 0 python -m benchmarks.bare --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid

import orjson
import uvloop
from aiohttp import web

_TOKEN = "x" * 32  # the edge's access token is 32 characters of URL-safe base64


async def register(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/json":
        return web.Response(status=415)
    try:
        orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400)
    registration_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
    status_url = f"/v1/registrations/{registration_id}"
    return web.Response(
        status=202,
        body=orjson.dumps(
            {
                "id": registration_id,
                "status": "accepted",
                "status_url": status_url,
                "access_token": _TOKEN,
            }
        ),
        content_type="application/json",
        headers={"Location": status_url},
    )


async def readyz(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=8 * 1024)
    app.router.add_post("/v1/registrations", register)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
