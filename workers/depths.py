"""The queue depths ``intake supervise`` scales on: messages ready in each kind's queue, read
with passive declares on a connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika

from core import broker
from workers.sessions import BROKER_GONE

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0


class QueueDepths:
    """Each kind's queue depth, read on demand; the connection is made again after a loss."""

    def __init__(self, amqp_url: str, queues: dict[str, tuple[str, ...]]) -> None:
        self._amqp_url = amqp_url
        self._queues = queues  # kind -> its queues (their depths are summed)
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._broker_down = False

    async def read(self) -> dict[str, int]:
        """Messages ready in each kind's queue; a kind whose queue is not declared yet (its
        workers declare it) or cannot be read is left out, and all of them while the broker
        is unreachable (one warning, then one line when it is back)."""
        try:
            depths = await asyncio.wait_for(self._passive_declares(), READ_TIMEOUT_S)
        except BROKER_GONE as exc:
            if not self._broker_down:
                log.warning("queue depths unreadable: %s; not scaling", type(exc).__name__)
            self._broker_down = True
            await self.close()
            return {}
        if self._broker_down:
            log.info("queue depths readable again")
        self._broker_down = False
        return depths

    async def close(self) -> None:
        if self._amqp is not None:
            with contextlib.suppress(*BROKER_GONE):
                await self._amqp.close()
            self._amqp = None

    async def _passive_declares(self) -> dict[str, int]:
        if self._amqp is None or self._amqp.is_closed:
            self._amqp = await broker.connect(self._amqp_url)
        depths: dict[str, int] = {}
        channel = await self._amqp.channel()
        try:
            for kind, names in self._queues.items():
                for name in names:
                    try:
                        declared = await channel.declare_queue(name, passive=True)
                    except aio_pika.exceptions.ChannelNotFoundEntity:
                        channel = await self._amqp.channel()  # the refusal closed the channel
                        continue
                    ready = int(declared.declaration_result.message_count or 0)
                    depths[kind] = depths.get(kind, 0) + ready
        finally:
            if not channel.is_closed:
                await channel.close()
        return depths
