"""Status files: what a running worker or edge tells ``intake supervise`` about itself.

A worker started by the supervisor finds a path in ``INTAKE_WORKER_STATUS_FILE`` (empty: no
file). :func:`report_forever` writes the worker's snapshot there as one JSON object every
``interval_s``, atomically (a temporary file in the same directory, then ``os.replace``, so that
a reader never sees half a file), and removes it when the worker has stopped. A worker killed
with ``kill -9`` leaves its last file behind; the supervisor removes it.

The snapshot's keys:

- ``kind``: ``persist`` or the lane's check;
- ``pid``;
- ``processed``: work finished and acknowledged since the start, monotonically increasing, in
  the unit of the kind's queue depth: messages for the persist worker (one message carries a
  batch of registrations), tasks for a lane;
- ``inflight``: the same unit, delivered and not yet acknowledged;
- lanes also: ``limit`` (the concurrency limit, a float), ``breaker`` (``closed``, ``open`` or
  ``half_open``) and ``held`` (held back, see below);
- ``at``: added here, the Unix time of the write, so that a reader computes rates from the
  writer's own clock.

Counters and states only: never personal data.

The other way, two signals: :data:`HOLD_SIGNAL` asks the dispatcher or a lane to hold back
(take no new work, finish what it holds: its PostgreSQL and RabbitMQ work stops with it) and
:data:`RELEASE_SIGNAL` to go on; the supervisor sends them while an edge sheds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import orjson

log = logging.getLogger(__name__)

HOLD_SIGNAL = signal.SIGUSR1
RELEASE_SIGNAL = signal.SIGUSR2


async def report_forever(
    path: str,
    snapshot: Callable[[], dict[str, object]],
    stopping: asyncio.Event,
    interval_s: float = 1.0,
) -> None:
    """Write ``snapshot()`` to ``path`` every ``interval_s`` until ``stopping`` is set, then
    remove the file. A failed write is logged once and retried at the next interval: reporting
    never stops the worker."""
    failing = False
    try:
        while not stopping.is_set():
            try:
                write_status(path, snapshot())
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning("status file not written: %s", type(exc).__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
    finally:
        remove_status(path)


@contextlib.asynccontextmanager
async def reporting(
    path: str | None, snapshot: Callable[[], dict[str, object]]
) -> AsyncIterator[None]:
    """While inside, :func:`report_forever` to ``path`` (none when ``path`` is empty): the
    file lasts until the block ends (a worker's tasks in hand done), not just until SIGTERM."""
    if not path:
        yield
        return
    stopped = asyncio.Event()
    reporter = asyncio.create_task(report_forever(path, snapshot, stopped))
    try:
        yield
    finally:
        stopped.set()
        await reporter


def write_status(path: str, snapshot: dict[str, object]) -> None:
    """Write one snapshot atomically (with ``at``, the time of writing)."""
    body = orjson.dumps({**snapshot, "at": time.time()})
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as file:
        file.write(body)
    os.replace(temporary, path)


def remove_status(path: str) -> None:
    """Remove a status file and a temporary file this process may have left."""
    for leftover in (path, f"{path}.{os.getpid()}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


def read_status(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The last snapshot written to ``path``; None when there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as file:
            value = orjson.loads(file.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
