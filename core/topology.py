"""The RabbitMQ topology, declared idempotently by every process that uses it.

- ``intake`` (direct exchange) routes accepted registrations to ``intake.registrations``.
- ``intake.registrations`` is a quorum queue (replicated, confirmed once a majority has it) with
  an explicit delivery limit (RabbitMQ 3.x has none by default: a message that keeps crashing
  its consumer would otherwise loop for ever), dead-lettering to ``intake.dlx``, and a length
  limit (in messages and in bytes) with ``reject-publish`` so that a full queue nacks the
  publisher (the edge answers 503) instead of silently dropping the oldest registrations.
- ``intake.dlx`` (direct) routes dead letters to ``intake.registrations.dlq``.
- ``intake.tests`` and ``intake.joins`` (quorum, bound to ``intake`` with the keys ``tests`` and
  ``joins``) carry a registrant's test answers and wave joins to the participation worker,
  with the same delivery limit and dead-lettering (to ``intake.tests.dlq``, ``intake.joins.dlq``)
  and a length limit with ``reject-publish``.

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
TESTS_QUEUE = "intake.tests"
TESTS_ROUTING_KEY = "tests"
JOINS_QUEUE = "intake.joins"
JOINS_ROUTING_KEY = "joins"
PARTICIPATION_QUEUES = (TESTS_QUEUE, JOINS_QUEUE)


@dataclass(frozen=True, slots=True)
class Topology:
    """The declared exchanges and queues of one channel."""

    exchange: AbstractExchange
    dead_letter_exchange: AbstractExchange
    persist_queue: AbstractQueue
    persist_dlq: AbstractQueue
    tests_queue: AbstractQueue
    joins_queue: AbstractQueue


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


def participation_queue_arguments(settings: Settings, queue: str) -> dict[str, FieldValue]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue,
        "x-max-length": settings.participation_queue_max_length,
        "x-overflow": "reject-publish",
    }


async def _declare_participation(
    channel: AbstractChannel,
    exchange: AbstractExchange,
    dlx: AbstractExchange,
    settings: Settings,
    queue: str,
    routing_key: str,
) -> AbstractQueue:
    dlq = await channel.declare_queue(
        f"{queue}.dlq", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dlx, routing_key=queue)
    declared = await channel.declare_queue(
        queue, durable=True, arguments=participation_queue_arguments(settings, queue)
    )
    await declared.bind(exchange, routing_key=routing_key)
    return declared


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
    tests = await _declare_participation(
        channel, exchange, dlx, settings, TESTS_QUEUE, TESTS_ROUTING_KEY
    )
    joins = await _declare_participation(
        channel, exchange, dlx, settings, JOINS_QUEUE, JOINS_ROUTING_KEY
    )
    return Topology(exchange, dlx, queue, dlq, tests, joins)


# --- verification lanes --------------------------------------------------------------------
#
# ``intake.verify`` (topic) routes a task to its lane's quorum queue ``intake.verify.<check>``
# by the routing key ``<check>``. A retry waits in a shared delay queue ``intake.delay.<n>s``
# (quorum, message TTL, at-least-once dead-lettering): it is published to ``intake.delay``
# (topic) with the key ``<n>.<check>``, expires, and is dead-lettered back to ``intake.verify``
# with its key unchanged, which the lane queue also binds (``*.<check>``). No message sits
# unacknowledged in a consumer while it waits (RabbitMQ's consumer timeout is 30 minutes).
# A delay queue has a fixed TTL, its tier; a message may carry a shorter per-message expiry
# (jitter), so a message waits at most its tier behind an earlier one.

VERIFY_EXCHANGE = "intake.verify"
DELAY_EXCHANGE = "intake.delay"
RETRY_TIERS_S = (1, 5, 30, 120, 600)


def lane_queue(check: str) -> str:
    return f"intake.verify.{check}"


def lane_dlq(check: str) -> str:
    return f"{lane_queue(check)}.dlq"


def delay_queue(tier_s: int) -> str:
    return f"intake.delay.{tier_s}s"


def retry_tier(delay_s: float) -> int:
    """The smallest delay tier that can hold a delay of ``delay_s`` (the largest otherwise)."""
    for tier_s in RETRY_TIERS_S:
        if delay_s <= tier_s:
            return tier_s
    return RETRY_TIERS_S[-1]


def lane_queue_arguments(settings: Settings, check: str) -> dict[str, FieldValue]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": lane_queue(check),
        "x-max-length": settings.lane_queue_max_length,
        "x-overflow": "reject-publish",
    }


def delay_queue_arguments(tier_s: int) -> dict[str, FieldValue]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": tier_s * 1000,
        "x-dead-letter-exchange": VERIFY_EXCHANGE,
        # At-least-once dead-lettering (RabbitMQ 3.10+, quorum queues, needs reject-publish):
        # an expired retry is not dropped if its re-routing fails.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True, slots=True)
class LaneTopology:
    """The exchanges of the verification lanes and the declared lane queues."""

    verify_exchange: AbstractExchange
    delay_exchange: AbstractExchange
    dead_letter_exchange: AbstractExchange
    queues: dict[str, AbstractQueue]
    dlqs: dict[str, AbstractQueue]


async def declare_lanes(
    channel: AbstractChannel, settings: Settings, checks: tuple[str, ...]
) -> LaneTopology:
    """Declare the verification exchanges, the delay queues and the lanes of ``checks``."""
    verify = await channel.declare_exchange(
        VERIFY_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    delay = await channel.declare_exchange(
        DELAY_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for tier_s in RETRY_TIERS_S:
        waiting = await channel.declare_queue(
            delay_queue(tier_s), durable=True, arguments=delay_queue_arguments(tier_s)
        )
        await waiting.bind(delay, routing_key=f"{tier_s}.*")
    queues, dlqs = {}, {}
    for check in checks:
        dlq = await channel.declare_queue(
            lane_dlq(check), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx, routing_key=lane_queue(check))
        queue = await channel.declare_queue(
            lane_queue(check), durable=True, arguments=lane_queue_arguments(settings, check)
        )
        await queue.bind(verify, routing_key=check)
        await queue.bind(verify, routing_key=f"*.{check}")
        queues[check], dlqs[check] = queue, dlq
    return LaneTopology(verify, delay, dlx, queues, dlqs)
