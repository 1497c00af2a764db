"""Operator tools for dead-letter queues: ``intake dlq list`` and ``intake dlq replay``.

Listing shows each dead-letter queue's depth and, for the first messages, why they died (our
``x-intake-reason`` header, or RabbitMQ's ``x-death`` reason such as ``delivery_limit``), never
their bodies. Listing takes messages without acknowledging them and closes its channel, which
returns them to the queue unchanged.

Replaying moves messages back to where they came from: a registration batch to the persist
queue, a verification task to its lane with its attempt count reset. Each message is
republished with a confirm before it is acknowledged in the DLQ, so a replay interrupted at any
point loses nothing (at worst a message is in both places, and every consumer is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from core import broker, topology
from core.settings import Settings
from core.verification import Check, Task, TaskError


@dataclass(frozen=True, slots=True)
class DeadLetter:
    queue: str
    reason: str
    count: int  # how many registrations (a batch) or tasks it holds
    first_death: str | None


# A participation queue's dead letters, by their queue (they go back to it as they are).
_PARTICIPATION_DLQS = {
    f"{topology.TESTS_QUEUE}.dlq": topology.TESTS_ROUTING_KEY,
    f"{topology.JOINS_QUEUE}.dlq": topology.JOINS_ROUTING_KEY,
}


def dead_letter_queues() -> list[str]:
    return [
        topology.PERSIST_DLQ,
        *(topology.lane_dlq(c.value) for c in Check),
        *_PARTICIPATION_DLQS,
    ]


def _reason(message: AbstractIncomingMessage) -> str:
    headers: dict[str, Any] = dict(message.headers or {})
    if "x-intake-reason" in headers:
        return str(headers["x-intake-reason"])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason", "unknown"))
    return "unknown"


async def list_dead_letters(settings: Settings, sample: int = 20) -> dict[str, Any]:
    """Depth of every DLQ and the reasons of up to ``sample`` messages of each."""
    connection = await broker.connect(settings.amqp_url)
    report: dict[str, Any] = {}
    async with connection:
        setup = await connection.channel()
        await topology.declare(setup, settings)
        await topology.declare_lanes(setup, settings, tuple(c.value for c in Check))
        for name in dead_letter_queues():
            queue = await setup.declare_queue(name, passive=True)
            depth = queue.declaration_result.message_count or 0
            peeked = await _peek(connection, name, min(sample, depth))
            report[name] = {
                "messages": depth,
                "sample": [
                    {"reason": d.reason, "count": d.count, "first_death": d.first_death}
                    for d in peeked
                ],
            }
    return report


async def _peek(
    connection: aio_pika.abc.AbstractConnection, name: str, limit: int
) -> list[DeadLetter]:
    if limit <= 0:
        return []
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=limit)
    queue = await channel.get_queue(name, ensure=False)
    seen: list[DeadLetter] = []
    done = asyncio.Event()

    async def take(message: AbstractIncomingMessage) -> None:
        count = (message.headers or {}).get("count", 1)
        death = message.headers.get("x-first-death-queue") if message.headers else None
        seen.append(
            DeadLetter(
                name,
                _reason(message),
                int(count) if isinstance(count, int) else 1,
                str(death) if death else None,
            )
        )
        if len(seen) >= limit:
            done.set()

    await queue.consume(take)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 5)
    await channel.close()  # unacknowledged: every message goes back as it was
    return seen


async def replay(settings: Settings, queue_name: str, limit: int | None = None) -> int:
    """Move up to ``limit`` messages (all by default) from a DLQ back to their queue."""
    if queue_name not in dead_letter_queues():
        raise ValueError(f"not a dead-letter queue: {queue_name}")
    connection = await broker.connect(settings.amqp_url)
    moved = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await topology.declare(channel, settings)
        lanes = await topology.declare_lanes(channel, settings, tuple(c.value for c in Check))
        queue = await channel.get_queue(queue_name, ensure=False)
        while limit is None or moved < limit:
            message = await queue.get(fail=False)
            if message is None:
                break
            if queue_name == topology.PERSIST_DLQ:
                await declared.exchange.publish(
                    _copy(message, message.body), topology.PERSIST_ROUTING_KEY, mandatory=True
                )
            elif queue_name in _PARTICIPATION_DLQS:
                routing_key = _PARTICIPATION_DLQS[queue_name]
                await declared.exchange.publish(
                    _copy(message, message.body), routing_key, mandatory=True
                )
            else:
                try:
                    task = Task.from_json(message.body)
                except TaskError:
                    await message.nack(requeue=True)
                    break  # leave an unreadable task where it is, for a person to look at
                fresh = Task(task.registration_id, task.check, attempt=1)
                await lanes.verify_exchange.publish(
                    _copy(message, fresh.to_json()), task.check.value, mandatory=True
                )
            await message.ack()
            moved += 1
    return moved


def _copy(message: AbstractIncomingMessage, body: bytes) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
    return aio_pika.Message(
        body,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )
