"""The ``/metrics`` endpoint over real HTTP: Prometheus' text format, async collectors refreshed
before each scrape and left out when they fail or hang, a port shared by two processes' worth of
endpoints, nothing at all on port 0."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from core import metrics_http
from core.metrics_http import MetricsEndpoint
from core.settings import Settings
from tests.support.metrics import scrape
from tests.support.processes import free_port


class Counted:
    """An async collector that serves how often it was refreshed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, "Refreshes so far.", value=self.refreshes)


class Hanging(Counted):
    """A refresh that never ends (a database that does not answer)."""

    async def refresh(self) -> None:
        await asyncio.Event().wait()


class Failing(Counted):
    async def refresh(self) -> None:
        raise OSError("connection refused")


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("test_things", "Things.", registry=registry).inc(3)
    return registry


async def test_the_endpoint_serves_the_registry_and_refreshes_its_collectors_per_scrape() -> None:
    port = free_port()
    collector = Counted("test_refreshes")
    endpoint = MetricsEndpoint("127.0.0.1", port, registry=_registry(), collectors=[collector])
    await endpoint.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        first = await scrape(url)
        assert first.value("test_things_total") == 3
        second = await scrape(url)
        assert (first.value("test_refreshes"), second.value("test_refreshes")) == (2, 3)
    finally:
        await endpoint.close()


async def test_a_hanging_or_failing_collector_is_left_out_of_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    endpoint = MetricsEndpoint(
        "127.0.0.1",
        port,
        registry=_registry(),
        collectors=[Hanging("test_hanging"), Failing("test_failing"), Counted("test_fine")],
        refresh_timeout_s=0.2,
    )
    await endpoint.start()
    try:
        with caplog.at_level(logging.WARNING, logger="core.metrics_http"):
            for _ in range(2):
                # Answers although one collector never finishes refreshing.
                served = await scrape(f"http://127.0.0.1:{port}/metrics")
                assert served.value("test_things_total") == 3
                assert served.get("test_fine") is not None
                assert served.get("test_hanging") is None
                assert served.get("test_failing") is None
        warnings = [r for r in caplog.records if r.name == "core.metrics_http"]
        # Once per failing collector, not once per scrape.
        assert sorted(str(getattr(r, "fields", {}).get("collector")) for r in warnings) == [
            "Failing",
            "Hanging",
        ]
    finally:
        await endpoint.close()


async def test_two_endpoints_share_one_port() -> None:
    # As several edge processes of one machine do (SO_REUSEPORT).
    port = free_port()
    endpoints = [MetricsEndpoint("127.0.0.1", port, registry=_registry()) for _ in range(2)]
    for endpoint in endpoints:
        await endpoint.start()
    try:
        served = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert served.value("test_things_total") == 3
    finally:
        for endpoint in endpoints:
            await endpoint.close()


async def test_port_zero_serves_nothing() -> None:
    async with metrics_http.serving(Settings(metrics_port=0)) as endpoint:
        assert endpoint is None
    port = free_port()
    async with metrics_http.serving(Settings(metrics_port=port)) as endpoint:
        assert endpoint is not None
        assert endpoint.address == f"http://127.0.0.1:{port}"
        # The default registry of this process (not in multiprocess mode), where the system's
        # metrics are defined.
        served = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert served.get("intake_registrations_accepted_total") is not None
        assert "CPython" in served.by("python_info", "implementation")
