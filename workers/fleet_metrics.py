"""The figures ``intake supervise`` serves about itself beside its workers' aggregate: its
processes and restarts by kind, and whether verification is held back, read from its plan on
each scrape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core import metrics
from workers.pressure import EdgePressure


class Fleet(Protocol):
    """What the collector reads of the supervisor."""

    @property
    def restarts(self) -> Mapping[str, int]: ...

    @property
    def pressure(self) -> EdgePressure: ...

    def process_counts(self) -> dict[str, int]: ...


class FleetCollector(Collector):
    """The supervisor's own figures, read from its plan when scraped (``core.metrics``:
    ``intake_worker_processes``, ``intake_worker_restarts_total``)."""

    def __init__(self, supervisor: Fleet) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        processes = GaugeMetricFamily(*metrics.WORKER_PROCESSES, labels=["kind"])
        for kind, count in sorted(self._supervisor.process_counts().items()):
            processes.add_metric([kind], count)
        yield processes
        restarts = CounterMetricFamily(*metrics.WORKER_RESTARTS, labels=["kind"])
        for kind, count in sorted(dict(self._supervisor.restarts).items()):
            restarts.add_metric([kind], count)
        yield restarts
        held = GaugeMetricFamily(*metrics.VERIFICATION_HELD)
        held.add_metric([], int(self._supervisor.pressure.held))
        yield held
