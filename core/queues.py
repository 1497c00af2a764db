"""Queue depths as the application sees them: a passive declare of every queue of the topology.

RabbitMQ's own ``rabbitmq_prometheus`` plugin exports the same and more; this collector makes
the system's dashboards and the supervisor independent of the plugin being enabled, and names
exactly the project's queues. A passive declare of a queue that does not exist (yet) closes the
channel: that queue is skipped and the channel reopened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core import broker, topology
from core.verification import Check


def queue_names() -> list[str]:
    """Every queue of the topology."""
    names = [topology.PERSIST_QUEUE, topology.PERSIST_DLQ]
    names += [f"{q}{suffix}" for q in topology.PARTICIPATION_QUEUES for suffix in ("", ".dlq")]
    for check in Check:
        names += [topology.lane_queue(check), topology.lane_dlq(check)]
    names += [topology.delay_queue(tier) for tier in topology.RETRY_TIERS_S]
    return names


class QueueCollector(Collector):
    """Serves the depths last read by :meth:`refresh` (at most once per ``min_interval_s``)."""

    def __init__(self, amqp_url: str, min_interval_s: float = 1.0) -> None:
        self._url = amqp_url
        self._min_interval_s = min_interval_s
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._read_at = 0.0
        self.depths: dict[str, tuple[int, int]] = {}  # queue -> (ready, consumers)

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < self._min_interval_s:
            return
        depths: dict[str, tuple[int, int]] = {}
        try:
            for name in queue_names():
                channel = await self._open()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    self._channel = None  # the broker closed it
                    continue
                result = queue.declaration_result
                depths[name] = (result.message_count or 0, result.consumer_count or 0)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
            await self.close()
            self.depths = {}  # unknown: no samples rather than stale ones
            return
        self.depths = depths
        self._read_at = time.monotonic()

    async def _open(self) -> AbstractChannel:
        if self._connection is None or self._connection.is_closed:
            self._connection = await broker.connect(self._url)
            self._channel = None
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        return self._channel

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = self._channel = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "intake_queue_messages_ready",
            "Messages waiting in each queue, not yet delivered (passive declare).",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "intake_queue_consumers", "Consumers of each queue (passive declare).", labels=["queue"]
        )
        for name, (count, consuming) in sorted(self.depths.items()):
            ready.add_metric([name], count)
            consumers.add_metric([name], consuming)
        yield ready
        yield consumers
