"""Connecting to RabbitMQ: one node of a cluster, whichever answers.

``INTAKE_AMQP_URL`` names one node, or several nodes of one cluster separated by commas, each a
full URL (``amqp://u:p@rabbit-0:5672/intake,amqp://u:p@rabbit-1:5672/intake``). Every node of
a cluster serves every queue (a quorum queue's leader may be elsewhere: the node forwards), so
a client may use any of them; what matters is that it does not keep knocking on a dead one.

:func:`connect` tries the nodes in turn and returns the first connection made. Each process
starts at a node of its own (random), which spreads a fleet's connections over the cluster, and
each later call starts at the node *after* the one it last connected to: a connection lost is
most often a node lost, and the reconnection goes to the next node instead of waiting for that
one to come back. A single URL behaves as before.

The callers keep their own reconnect loops (plain connections that fail fast, see
:mod:`intake.publisher`); this only chooses where each attempt goes.
"""

from __future__ import annotations

import random
import urllib.parse

import aio_pika
import yarl
from aio_pika.abc import AbstractConnection

CONNECT_TIMEOUT_S = 5.0

# Per setting (a process has one, tests several): the index of the node last connected to.
_last: dict[str, int] = {}


def nodes(amqp_url: str) -> list[str]:
    """The URLs of the nodes named by the setting, in its order."""
    urls = [part.strip() for part in amqp_url.split(",") if part.strip()]
    if not urls:
        raise ValueError("no RabbitMQ URL given")
    for url in urls:
        if urllib.parse.urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ValueError("each RabbitMQ URL must start with amqp:// or amqps://")
    return urls


def first(amqp_url: str) -> str:
    """The first node's URL (what reads the setting's vhost or credentials needs)."""
    return nodes(amqp_url)[0]


def with_heartbeat(url: str, heartbeat_s: int | None) -> str:
    """``url`` asking for an AMQP heartbeat of ``heartbeat_s`` seconds, unless it names one
    itself (``?heartbeat=``) or ``heartbeat_s`` is None (the client's default: 60 s)."""
    if heartbeat_s is None:
        return url
    parsed = yarl.URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=heartbeat_s))


async def connect(
    amqp_url: str, timeout_s: float = CONNECT_TIMEOUT_S, heartbeat_s: int | None = None
) -> AbstractConnection:
    """A connection to a node of ``amqp_url``: the next one after the last connected to, else
    the one after that, and so on; the last node's error if none answers. ``heartbeat_s``: the
    AMQP heartbeat to ask for where the URL names none (see :func:`with_heartbeat`)."""
    urls = nodes(amqp_url)
    last = _last.get(amqp_url)
    # Spreading, not secrecy: any generator will do.
    start = random.randrange(len(urls)) if last is None else last + 1  # noqa: S311
    error: BaseException | None = None
    for step in range(len(urls)):
        index = (start + step) % len(urls)
        try:
            connection = await aio_pika.connect(
                with_heartbeat(urls[index], heartbeat_s), timeout=timeout_s
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            error = exc
            continue
        _last[amqp_url] = index
        return connection
    assert error is not None
    raise error
