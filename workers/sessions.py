"""The reconnect loop every long-running worker shares."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq

from core.health import Health

log = logging.getLogger(__name__)

# The AMQP heartbeat the long-running workers ask for. A node that goes silent (cut off by a
# network partition, or paused as its cluster's minority: its close never arrives) is given up
# after three heartbeats and a second without a frame (aiormq: 16 s here, 183 s with the
# client's default of 60 s), and the session reconnects to the next node; the deliveries held
# on the silent connection are redelivered once the broker sees it closed. Longer than the
# edge's (intake.publisher.HEARTBEAT_S): a worker's loop may be busy for a moment, and nobody
# waits on its answer.
HEARTBEAT_S = 5
# A consumer with nothing in hand, yet no delivery for this long while its queue holds ready
# messages, is stuck: its session ends and another connection subscribes.
STALL_S = 10.0
# A consumer with nothing in hand and no delivery for this long subscribes afresh whatever its
# queue holds: the broker may hold deliveries for it that never reached it (unacknowledged on
# its channel, invisible to a passive declare), which only the channel's close gives back.
IDLE_RESUBSCRIBE_S = 30.0
# How long a worker waits for the broker's confirm of a publish (a task, its next attempt, a
# dead letter). RabbitMQ 3.10 can leave a confirm unanswered for good when the queue's leader
# died under it; past this the publish counts as failed: the session ends, the connection is
# closed, and what was not confirmed is published again by the next one.
CONFIRM_TIMEOUT_S = 15.0


class SessionBroken(Exception):
    """A publish or an acknowledgement failed under a delivery's handler (no confirm within
    :data:`CONFIRM_TIMEOUT_S`, the channel gone): the session ends and another connection
    takes over; the delivery, never acknowledged, is given back when this one closes."""


class ConsumerStalled(Exception):
    """A consumer received nothing while its queue held ready messages. RabbitMQ 3.10 can
    leave a consumer (and a publisher) that way when it subscribed while its quorum queue was
    electing a leader: its queue client keeps the dead leader. Another connection subscribes
    afresh."""


async def resubscribe_reason(
    idle_s: float, engaged: bool, ready: Callable[[], Awaitable[int]]
) -> str | None:
    """Why a consumer should subscribe afresh (:class:`ConsumerStalled`), if it should:
    ``idle_s`` since its last delivery, ``engaged`` while it holds work or does not consume,
    ``ready`` the messages ready in its queue (asked only when it matters). ``"stalled"``: no
    delivery for ``STALL_S`` while messages are ready; ``"idle"``: none for
    ``IDLE_RESUBSCRIBE_S`` at all."""
    if engaged or idle_s < STALL_S:
        return None
    if idle_s >= IDLE_RESUBSCRIBE_S:
        return "idle"
    return "stalled" if await ready() > 0 else None


async def ready_messages(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """The messages ready in ``queue`` (a passive declare on a channel of its own)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await channel.close()


# A broker session ends with one of these when the connection or the channel goes away
# (ChannelInvalidStateError: an ack or a publish on a channel that died meanwhile).
BROKER_GONE: tuple[type[BaseException], ...] = (
    ConsumerStalled,
    SessionBroken,
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
    health: Health | None = None,
) -> None:
    """Run ``session`` until ``stopping`` is set; when it ends because the broker (or one of
    ``also``) went away, start it again after a capped, jittered exponential backoff. Each
    attempt is progress for ``health`` (a worker whose broker is away is unready, not stuck);
    the session itself says when it serves (``Health.serving``)."""
    delay_s = 0.1
    while not stopping.is_set():
        if health is not None:
            health.beat()
        try:
            await session()
            delay_s = 0.1
        except ConsumerStalled as exc:
            log.info("%s session ended: %s", name, exc)
        except (*BROKER_GONE, *also) as exc:
            log.warning("%s session ended: %s", name, type(exc).__name__)
        finally:
            if health is not None:
                health.serving(False)
        if not stopping.is_set():
            await asyncio.sleep(delay_s * (0.5 + random.random()))  # noqa: S311 - jitter
            delay_s = min(delay_s * 2, 5.0)
