"""The naive asynchronous edge, as a baseline: aio-pika, one publisher confirm per request.

The obvious way to put a broker behind an aiohttp handler, written competently with the
project's own parts: ``POST /v1/registrations`` validates the form (the edge's own
:func:`intake.validation.validate`), publishes it to the persist exchange as a sealed one-item
batch message (what the persist worker takes, so that it is stored and audited like the edge's)
with publisher confirms, awaits the confirm and answers ``202``. What it does not have is what
the comparison measures: no group commit (every registration pays a publish and a confirm of
its own), no admission control (every request is taken, however long it waits), no deadline.
A failed publish is a ``503`` without ``Retry-After``.

    INTAKE_AMQP_URL=amqp://guest:guest@127.0.0.1/intake python -m benchmarks.naive_amqp --port 8097
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal

import aio_pika
import orjson
import uvloop
from aiohttp import web

from core import envelope, topology
from core.envelope import Envelope
from core.ids import uuid7
from core.keys import Keyring
from core.settings import Settings
from intake.problems import problem
from intake.validation import ValidationFailed, today_wib, validate

MAX_BODY_BYTES = 8 * 1024  # the edge's default limit
EXCHANGE = web.AppKey("exchange", aio_pika.abc.AbstractExchange)
KEYRING = web.AppKey("keyring", Keyring)


async def register(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/json":
        return problem(415, "unsupported-media-type", "The body must be application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return problem(400, "malformed-json", "The body is not valid JSON")
    now = dt.datetime.now(dt.UTC)
    try:
        registration = validate(body, today_wib(now))
    except ValidationFailed as exc:
        return problem(
            422, "invalid-registration", "The registration is invalid", errors=exc.errors
        )
    keyring = request.app[KEYRING]
    key = request.headers.get("Idempotency-Key")
    registration_id = keyring.idempotent_id(key) if key else uuid7()
    item = Envelope(registration_id, now, registration).to_json()
    message = aio_pika.Message(
        keyring.seal_message(envelope.join_batch([item]), envelope.BATCH_SEAL_CONTEXT),
        content_type=envelope.BATCH_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={"schema_version": envelope.SCHEMA_VERSION, "count": 1},
    )
    try:
        await request.app[EXCHANGE].publish(message, topology.PERSIST_ROUTING_KEY, mandatory=True)
    except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
        return problem(503, "unavailable", "The broker did not take it")
    return web.Response(
        status=202,
        body=orjson.dumps({"id": str(registration_id), "status": "accepted"}),
        content_type="application/json",
    )


async def readyz(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


async def serve(host: str, port: int, settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await topology.declare(channel, settings)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app[EXCHANGE] = declared.exchange
        app[KEYRING] = Keyring.from_secret(settings.secret_key)
        app.router.add_post("/v1/registrations", register)
        app.router.add_get("/readyz", readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=settings.edge_backlog).start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env()  # INTAKE_AMQP_URL, INTAKE_SECRET_KEY as the edge's
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
