"""How a simulated server behaves: how slow it is, how much it serves at once, how it fails.

:class:`Behaviour` is the configuration, immutable and replaced whole at run time.
:class:`Gate` applies it to every call, independently of the protocol: a call enters with
``async with gate.admission():`` and either runs (after its simulated latency) or is refused
with :class:`Refused`, which the protocol maps to its own answer (an HTTP status, an SMTP reply
code, a dropped connection); :func:`simulators.jsonhttp.http_middleware` does it for aiohttp.

The gate's promises:

- At most ``capacity`` calls run at once; at most ``queue_limit`` more wait, first come first
  served; any further call is refused at once (``503`` with ``Retry-After``, or ``429``) or hangs
  (``overload="hang"``) until its client gives up, bounded server-side by ``max_hang_s``.
- During an ``outage`` every call fails: ``503``, a hang, or a connection closed unanswered
  (``refuse``). A call admitted before the outage began still gets its answer.
- An admitted call fails with probability ``error_rate`` (an HTTP 500) after its latency,
  instead of running.
- Latencies are lognormal with the configured median and 99th percentile, drawn from an RNG
  seeded per simulator: for the same seed and the same order of calls, the same delays.
- Replacing the latency ends the delays already being waited out, so that switching a slow
  server to fast takes effect at once; closing the gate ends every delay and every hang.
- The counters add up: ``calls == served + errors + rejected_overload + rejected_outage +
  cancelled + in_flight + queued``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

OverloadMode = Literal["503", "429", "hang"]
OutageMode = Literal["503", "hang", "refuse"]
OVERLOAD_MODES: tuple[str, ...] = get_args(OverloadMode)
OUTAGE_MODES: tuple[str, ...] = get_args(OutageMode)

# The 99th percentile of the standard normal distribution: a lognormal's p99 is
# median * exp(Z_99 * sigma).
Z_99 = 2.3263478740408408


class BehaviourError(ValueError):
    """A behaviour field is unknown or its value is invalid. The message names the field."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One simulated server's behaviour. Every field can be replaced while it runs."""

    # Latency of a served call, lognormal; a p99 at or below the median means a fixed delay.
    latency_median_ms: float = 0.0
    latency_p99_ms: float = 0.0
    # Calls served at once, and calls allowed to wait for a free slot beyond those.
    capacity: int = 100
    queue_limit: int = 100
    # Beyond capacity + queue_limit: "503" (with Retry-After), "429", or "hang".
    overload: OverloadMode = "503"
    retry_after_s: int = 1
    # The longest a call hangs server-side (overload or outage "hang") before its connection
    # is closed unanswered; also the cap of any one latency.
    max_hang_s: float = 30.0
    # Share of served calls that fail with a 500.
    error_rate: float = 0.0
    # Every call fails while on: "503", "hang", or "refuse" (connection closed, no answer).
    outage: bool = False
    outage_mode: OutageMode = "503"

    def __post_init__(self) -> None:
        if self.latency_median_ms < 0 or self.latency_p99_ms < 0:
            raise BehaviourError("latency_median_ms and latency_p99_ms must not be negative")
        if self.capacity < 1:
            raise BehaviourError("capacity must be at least 1")
        if self.queue_limit < 0:
            raise BehaviourError("queue_limit must not be negative")
        if self.overload not in OVERLOAD_MODES:
            raise BehaviourError(f"overload must be one of {', '.join(OVERLOAD_MODES)}")
        if self.outage_mode not in OUTAGE_MODES:
            raise BehaviourError(f"outage_mode must be one of {', '.join(OUTAGE_MODES)}")
        if self.retry_after_s < 0:
            raise BehaviourError("retry_after_s must not be negative")
        if not self.max_hang_s > 0:
            raise BehaviourError("max_hang_s must be positive")
        if not 0.0 <= self.error_rate <= 1.0:
            raise BehaviourError("error_rate must be within [0, 1]")

    def replace(self, **changes: Any) -> Behaviour:
        """A copy with some fields changed, validated like a new one."""
        unknown = set(changes) - set(field_types())
        if unknown:
            raise BehaviourError(f"unknown behaviour field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def apply_json(self, changes: Mapping[str, object]) -> Behaviour:
        """A copy with the fields of a decoded JSON object changed; types are checked strictly
        (a bool is not a number, a number is not a string) but an integer may be a float."""
        converted: dict[str, Any] = {}
        types = field_types()
        for name, value in changes.items():
            expected = types.get(name)
            if expected is None:
                raise BehaviourError(f"unknown behaviour field: {name}")
            converted[name] = _convert(name, expected, value)
        return self.replace(**converted)

    def to_json(self) -> dict[str, object]:
        """The fields as a JSON-ready mapping."""
        return dataclasses.asdict(self)

    def latency_s(self, rng: random.Random) -> float:
        """One latency in seconds, drawn from ``rng``; capped at ``max_hang_s``."""
        median_ms, p99_ms = self.latency_median_ms, self.latency_p99_ms
        if median_ms <= 0:
            return 0.0
        if p99_ms <= median_ms:
            return min(median_ms / 1000, self.max_hang_s)
        sigma = math.log(p99_ms / median_ms) / Z_99
        return min(rng.lognormvariate(math.log(median_ms), sigma) / 1000, self.max_hang_s)


def field_types() -> dict[str, type]:
    """Each behaviour field and the Python type of its values (taken from the defaults)."""
    default = Behaviour()
    return {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(Behaviour)}


def _convert(name: str, expected: type, value: object) -> object:
    if expected is bool and isinstance(value, bool):
        return value
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, str):
        return value
    raise BehaviourError(f"{name} must be of type {expected.__name__}")


@dataclass(slots=True)
class Counters:
    """Live counts of one gate. ``in_flight`` and ``queued`` are current values, the ``max_``
    ones their highest since the last reset, the others cumulative."""

    calls: int = 0
    served: int = 0
    errors: int = 0
    rejected_overload: int = 0
    rejected_outage: int = 0
    cancelled: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    queued: int = 0
    max_queued: int = 0

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        return dataclasses.asdict(self)

    def reset(self) -> None:
        """Zero the cumulative counters; calls still running or waiting are counted again as
        calls, so that the counters keep adding up."""
        in_flight, queued = self.in_flight, self.queued
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)
        self.in_flight = self.max_in_flight = in_flight
        self.queued = self.max_queued = queued
        self.calls = in_flight + queued


class Refused(Exception):
    """The gate refused a call. ``reason`` is "overload", "outage" or "error"; ``answer`` is
    what the client should get: "503", "429", "500" or "refuse" (no answer: close the
    connection)."""

    def __init__(self, reason: str, answer: str, retry_after_s: int) -> None:
        super().__init__(reason, answer)
        self.reason = reason
        self.answer = answer
        self.retry_after_s = retry_after_s


class Gate:
    """Applies a :class:`Behaviour` to calls, with live :class:`Counters` and a seeded RNG."""

    def __init__(self, name: str, behaviour: Behaviour | None = None, *, seed: int = 0) -> None:
        self.name = name
        self.counters = Counters()
        self._behaviour = behaviour or Behaviour()
        # Simulated delays and faults, not security: a seeded, reproducible generator.
        self._rng = random.Random(f"simulator-gate:{name}:{seed}")  # noqa: S311
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sleepers: set[asyncio.Future[None]] = set()
        self._hangers: set[asyncio.Future[None]] = set()
        self._closed = False

    @property
    def behaviour(self) -> Behaviour:
        """The behaviour in force."""
        return self._behaviour

    def set_behaviour(self, behaviour: Behaviour) -> None:
        """Replace the behaviour. New calls get it at once; calls already admitted keep their
        slot, but a changed latency ends the delays being waited out, and a larger capacity
        admits waiting calls."""
        old, self._behaviour = self._behaviour, behaviour
        if (old.latency_median_ms, old.latency_p99_ms) != (
            behaviour.latency_median_ms,
            behaviour.latency_p99_ms,
        ):
            _wake_all(self._sleepers)
        self._grant()
        changed = {
            f.name: getattr(behaviour, f.name)
            for f in dataclasses.fields(behaviour)
            if getattr(old, f.name) != getattr(behaviour, f.name)
        }
        log.info("behaviour changed", extra={"fields": {"simulator": self.name, **changed}})

    def update(self, **changes: Any) -> Behaviour:
        """Replace some fields of the behaviour (see :meth:`set_behaviour`); returns the new
        behaviour."""
        self.set_behaviour(self._behaviour.replace(**changes))
        return self._behaviour

    def stats(self) -> dict[str, object]:
        """The counters and the behaviour in force, JSON-ready."""
        return {
            "simulator": self.name,
            **self.counters.snapshot(),
            "behaviour": self._behaviour.to_json(),
        }

    def close(self) -> None:
        """End every hang and every delay now and skip those to come (on shutdown), so that
        stopping is quick."""
        self._closed = True
        _wake_all(self._hangers)
        _wake_all(self._sleepers)

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """Admit one call: the body runs holding a slot, after the simulated latency; or
        :class:`Refused` is raised before it runs. A body that raises counts as an error."""
        counters = self.counters
        counters.calls += 1
        behaviour = self._behaviour
        if behaviour.outage:
            counters.rejected_outage += 1
            await self._refuse("outage", behaviour.outage_mode, behaviour)
        await self._acquire(behaviour)
        try:
            behaviour = self._behaviour
            delay_s = behaviour.latency_s(self._rng)
            if delay_s > 0:
                await self._wait(self._sleepers, delay_s)
            if behaviour.error_rate > 0 and self._rng.random() < behaviour.error_rate:
                counters.errors += 1
                raise Refused("error", "500", behaviour.retry_after_s)
            try:
                yield
            except asyncio.CancelledError:
                raise
            except Exception:
                counters.errors += 1
                raise
            counters.served += 1
        except asyncio.CancelledError:
            counters.cancelled += 1
            raise
        finally:
            counters.in_flight -= 1
            self._grant()

    async def _refuse(self, reason: str, mode: str, behaviour: Behaviour) -> None:
        if mode == "hang":
            await self._wait(self._hangers, behaviour.max_hang_s)
            mode = "refuse"  # a hang ends with the connection closed, unanswered
        raise Refused(reason, mode, behaviour.retry_after_s)

    async def _acquire(self, behaviour: Behaviour) -> None:
        counters = self.counters
        if counters.in_flight < behaviour.capacity and not self._waiters:
            self._take_slot()
            return
        if len(self._waiters) < behaviour.queue_limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            counters.queued += 1
            counters.max_queued = max(counters.max_queued, counters.queued)
            try:
                await waiter  # resolved by _grant, which also takes the slot for us
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    counters.in_flight -= 1  # granted just as we were cancelled: give it back
                    self._grant()
                elif waiter in self._waiters:  # else _grant already dropped it
                    self._waiters.remove(waiter)
                    counters.queued -= 1
                counters.cancelled += 1
                raise
            return
        counters.rejected_overload += 1
        await self._refuse("overload", behaviour.overload, behaviour)

    def _take_slot(self) -> None:
        counters = self.counters
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)

    def _grant(self) -> None:
        """Hand free slots to waiting calls, oldest first."""
        while self._waiters and self.counters.in_flight < self._behaviour.capacity:
            waiter = self._waiters.popleft()
            self.counters.queued -= 1
            if waiter.done():  # cancelled: its call is leaving the queue
                continue
            self._take_slot()
            waiter.set_result(None)

    async def _wait(self, waiting: set[asyncio.Future[None]], delay_s: float) -> None:
        """Wait ``delay_s``, or less if the future is woken through ``waiting``; not at all
        once the gate is closed."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_s, _wake, done)
        waiting.add(done)
        try:
            await done
        finally:
            timer.cancel()
            waiting.discard(done)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake_all(futures: set[asyncio.Future[None]]) -> None:
    for future in list(futures):
        _wake(future)
