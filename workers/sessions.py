"""The reconnect loop every long-running worker shares."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq

log = logging.getLogger(__name__)

# A broker session ends with one of these when the connection or the channel goes away
# (ChannelInvalidStateError: an ack or a publish on a channel that died meanwhile).
BROKER_GONE: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    TimeoutError,
)


async def keep_running(
    session: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    name: str,
    also: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``session`` until ``stopping`` is set; when it ends because the broker (or one of
    ``also``) went away, start it again after a capped, jittered exponential backoff."""
    delay_s = 0.1
    while not stopping.is_set():
        try:
            await session()
            delay_s = 0.1
        except (*BROKER_GONE, *also) as exc:
            log.warning("%s session ended: %s", name, type(exc).__name__)
        if not stopping.is_set():
            await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
            delay_s = min(delay_s * 2, 5.0)
