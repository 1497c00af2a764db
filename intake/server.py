"""Running the edge: uvloop, the access log, and a graceful SIGTERM.

On SIGTERM (or SIGINT) the edge reports not ready, stops accepting connections, lets the
requests in flight finish (each waits for its confirm or fails with 503 within the publish
timeout), flushes the publisher and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvloop
from aiohttp import web

from core import logs, metrics, metrics_http
from core.keys import Keyring
from core.settings import Settings, SettingsError
from intake.accesslog import ACCESS_LOGGER, AccessLogger
from intake.app import create_app, express_path
from intake.appkeys import GATE, STATE
from intake.listener import EdgeSite
from intake.publisher import BatchPublisher

log = logging.getLogger(__name__)


async def serve(settings: Settings, *, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. ``/metrics`` is served on
    ``INTAKE_METRICS_PORT`` (if set), never on the public port."""
    if settings.metrics_port and settings.metrics_port == settings.edge_port:
        raise SettingsError("INTAKE_METRICS_PORT must not be the edge's public port")
    async with metrics_http.serving(settings):
        await _serve(settings, sock)


async def _serve(settings: Settings, sock: socket.socket | None) -> None:
    keyring = Keyring.from_settings(settings)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    access_log = None
    if settings.edge_access_log:
        # Written in batches (core/logs.py): one write per line cost a fifth of the edge.
        logs.buffer_logger(ACCESS_LOGGER, "edge")
        access_log = AccessLogger(logging.getLogger(ACCESS_LOGGER), "")
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=access_log.logger if access_log is not None else None,
        shutdown_timeout=settings.edge_shutdown_timeout_s,
        handle_signals=False,
    )
    await runner.setup()
    # Connections answer shed registrations as they are parsed (intake.protocol), and take
    # simple registrations straight off the connection (intake.express).
    site = EdgeSite(
        runner,
        app[GATE],
        host=settings.edge_host,
        port=settings.edge_port,
        sock=sock,
        backlog=settings.edge_backlog,
        reuse_port=True,
        express=express_path(app, access_log) if settings.edge_express else None,
    )
    await site.start()
    log.info("edge listening", extra={"fields": {"address": site.name}})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("edge stopping")
    app[STATE]["stopping"] = True
    await runner.cleanup()  # stop listening, finish in-flight requests, close the publisher
    log.info("edge stopped")


def run(settings: Settings) -> None:
    """Entry point of ``intake edge``."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    finally:
        metrics.process_exiting()
