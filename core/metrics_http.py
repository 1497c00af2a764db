"""``GET /metrics``: a process's Prometheus endpoint, on a port of its own.

A process serves on ``INTAKE_METRICS_HOST:INTAKE_METRICS_PORT`` (0: it serves none), never on
the edge's public port, bound with ``SO_REUSEPORT`` so that several edge processes of one machine
can share it (in multiprocess mode each answers with the aggregate of all of them).

What it serves: in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the aggregate of every
process's files (:func:`core.metrics.serving_registry`), else this process's default registry;
plus the *async collectors* given to it, whose figures are read elsewhere (the funnel from
PostgreSQL, :class:`core.funnel.FunnelCollector`; the queue depths from RabbitMQ,
:class:`core.queues.QueueCollector`). Before each scrape their ``refresh()`` is awaited, each
bounded by a timeout: a collector whose refresh fails or is too slow is left out of that scrape
(and logged, once per failing streak), so that a slow database never hangs a scrape nor blanks
the process's own figures.

Given a :class:`core.health.Health` (the workers do), it also answers the probes: ``GET
/readyz`` and ``GET /healthz``, ``200`` or ``503`` with the reason as JSON. They read only that
object: a probe costs no query and no call to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core.health import Health, Verdict
from core.metrics import serving_registry
from core.settings import Settings

log = logging.getLogger(__name__)

# The longest a scrape waits for an async collector's refresh (Prometheus' default scrape
# timeout is 10 s; a scrape must answer well within it).
REFRESH_TIMEOUT_S = 3.0


class AsyncCollector(Protocol):
    """A collector whose figures are read, asynchronously, before each scrape."""

    async def refresh(self) -> None: ...

    def collect(self) -> Iterable[Metric]: ...


class _Union(Collector):
    def __init__(self, parts: Sequence[Collector | AsyncCollector]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


class MetricsEndpoint:
    """The ``/metrics`` endpoint of one process; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: Collector | None = None,
        collectors: Sequence[AsyncCollector] = (),
        refresh_timeout_s: float = REFRESH_TIMEOUT_S,
        health: Health | None = None,
    ) -> None:
        if registry is None:
            registry = serving_registry() or REGISTRY
        self._host, self._port = host, port
        self._registry = registry
        self._collectors = list(collectors)
        self._refresh_timeout_s = refresh_timeout_s
        self._locks = [asyncio.Lock() for _ in self._collectors]
        self._failing = [False for _ in self._collectors]
        self._health = health
        self._runner: web.AppRunner | None = None
        self.address = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        if self._health is not None:
            app.router.add_get("/healthz", self._live)
            app.router.add_get("/readyz", self._ready)
        return app

    async def _live(self, request: web.Request) -> web.Response:
        assert self._health is not None
        return _probe(self._health.live())

    async def _ready(self, request: web.Request) -> web.Response:
        assert self._health is not None
        return _probe(self._health.ready())

    def add(self, collector: AsyncCollector) -> None:
        """Serve ``collector`` too from the next scrape on (one whose source, e.g. a database
        pool, exists only once the endpoint already serves the probes)."""
        self._collectors.append(collector)
        self._locks.append(asyncio.Lock())
        self._failing.append(False)

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_port=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self.address = runner, site.name
        log.info("metrics endpoint listening", extra={"fields": {"address": site.name}})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def render(self) -> bytes:
        """The exposition text, with every async collector that could be refreshed."""
        fresh = await self._refresh()
        union = _Union([self._registry, *fresh])
        # Off the event loop: merging many processes' files takes a few milliseconds.
        return await asyncio.to_thread(generate_latest, union)

    async def _refresh(self) -> list[AsyncCollector]:
        results = await asyncio.gather(
            *(self._refresh_one(i) for i in range(len(self._collectors)))
        )
        return [c for c, ok in zip(self._collectors, results, strict=True) if ok]

    async def _refresh_one(self, index: int) -> bool:
        collector = self._collectors[index]
        name = type(collector).__name__
        try:
            async with self._locks[index], asyncio.timeout(self._refresh_timeout_s):
                await collector.refresh()
        except Exception as exc:  # whatever it is, the scrape goes on without this collector
            if not self._failing[index]:
                log.warning(
                    "metrics collector not refreshed; left out of the scrape",
                    extra={"fields": {"collector": name, "error": type(exc).__name__}},
                )
            self._failing[index] = True
            return False
        if self._failing[index]:
            log.info("metrics collector refreshed again", extra={"fields": {"collector": name}})
        self._failing[index] = False
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await self.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _probe(verdict: Verdict) -> web.Response:
    if verdict.ok:
        return web.json_response({"ok": True})
    return web.json_response({"ok": False, "reason": verdict.reason}, status=503)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    *,
    registry: Collector | None = None,
    collectors: Sequence[AsyncCollector] = (),
    health: Health | None = None,
) -> AsyncIterator[MetricsEndpoint | None]:
    """Serve ``/metrics`` (and, given ``health``, the probes) on ``settings.metrics_port``
    while inside (None: port 0, no endpoint)."""
    if not settings.metrics_port:
        yield None
        return
    endpoint = MetricsEndpoint(
        settings.metrics_host,
        settings.metrics_port,
        registry=registry,
        collectors=collectors,
        health=health,
    )
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.close()
