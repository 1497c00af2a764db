"""The RabbitMQ topology, declared idempotently by every process that uses it.

- ``intake`` (direct exchange) routes accepted registrations to ``intake.registrations``.
- ``intake.registrations`` is a quorum queue (replicated, confirmed once a majority has it) with
  an explicit delivery limit (RabbitMQ 3.x has none by default: a message that keeps crashing
  its consumer would otherwise loop for ever), dead-lettering to ``intake.dlx``, and a length
  limit (in messages and in bytes) with ``reject-publish`` so that a full queue nacks the
  publisher (the edge answers 503) instead of silently dropping the oldest registrations.
- ``intake.dlx`` (direct) routes dead letters to ``intake.registrations.dlq``.

Declaring with the same arguments is a no-op; with different ones RabbitMQ refuses with
PRECONDITION_FAILED, which is the right outcome: queue arguments are changed with policies
or a migration, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import FieldValue

from core.settings import Settings

EXCHANGE = "intake"
DEAD_LETTER_EXCHANGE = "intake.dlx"
PERSIST_QUEUE = "intake.registrations"
PERSIST_ROUTING_KEY = "registrations"
PERSIST_DLQ = "intake.registrations.dlq"


@dataclass(frozen=True, slots=True)
class Topology:
    """The declared exchanges and queues of one channel."""

    exchange: AbstractExchange
    dead_letter_exchange: AbstractExchange
    persist_queue: AbstractQueue
    persist_dlq: AbstractQueue


def persist_queue_arguments(settings: Settings) -> dict[str, FieldValue]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": PERSIST_QUEUE,
        "x-max-length": settings.persist_queue_max_length,
        "x-max-length-bytes": settings.persist_queue_max_bytes,
        "x-overflow": "reject-publish",
    }


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare (or confirm) the whole topology on ``channel``."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq = await channel.declare_queue(
        PERSIST_DLQ, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dlx, routing_key=PERSIST_QUEUE)
    queue = await channel.declare_queue(
        PERSIST_QUEUE, durable=True, arguments=persist_queue_arguments(settings)
    )
    await queue.bind(exchange, routing_key=PERSIST_ROUTING_KEY)
    return Topology(exchange, dlx, queue, dlq)
