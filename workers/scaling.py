"""How many worker processes each kind should have: the scaling rule of ``intake supervise``
(:mod:`workers.supervisor`), pure arithmetic over what it measured, and each kind's bounds.

**The rule.** Every ``supervise_interval_s`` the supervisor reads each kind's queue depth ``D``
(passive declare: messages ready, not those held by workers) and the workers' status files
(``core.status``: work processed and acknowledged, in the queue's unit). Over a window of the
last few samples (five intervals, at least 3 s) it estimates

- the service rate ``S``, the sum of the workers' processed-per-second;
- the net drain ``N = -dD/dt`` and the arrival rate ``A = S - N``;
- the per-worker rate ``r``, what one worker can do: ``S / workers`` measured while a backlog
  waited throughout the window (the workers were busy all along), smoothed and remembered as
  the kind's capacity (a higher rate seen later raises it). While the queue is short the workers
  idle at times and ``S / workers`` only shows what arrives: it is not used.

Without status files (a worker that writes none) the depth alone is used: a queue that shrinks
by ``N`` under a lasting backlog with ``n`` workers shows ``r >= N / n``; arrivals count as
``n * r - N``.

    desired = ceil((A + D / target_drain_s) / r), clamped to [min, max]

i.e. enough workers to serve what arrives and to drain the backlog within the target time.
Before ``r`` is known, a backlog that lasts the whole window doubles the workers (the workers
there are not shown to reduce it), a passing one changes nothing, and an empty queue asks for
the minimum. Then one step is taken:

- **up at once**, at most doubling, once the workers added by the previous step have started
  (written a status file, or been running for a few seconds), and within the PostgreSQL
  connection budget (``INTAKE_SUPERVISE_DB_CONNECTIONS``: every worker's pool counts);
- **never up while a lane's circuit breaker is open** (or half-open) in any of its workers:
  the ministry is down, and more workers would only add probes;
- **down slowly**: one worker, once ``desired`` has stayed below the current count for
  ``supervise_cooldown_s``, and then again only after another cooldown.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core import topology
from core.settings import Settings, SettingsError
from core.verification import WORKER_KINDS

PERSIST, DISPATCH, PARTICIPATION = "persist", "dispatch", "participation"
WAVES, NOTIFY = "waves", "notify"
# Kinds that run exactly once, not scaled on a queue: their work is in PostgreSQL (the
# dispatcher's outbox, the waves to select, the notifications to send).
SINGLE = frozenset({DISPATCH, WAVES, NOTIFY})
# PostgreSQL connections each kind's pool may open (workers/persist.py, workers/dispatch.py,
# workers/participation.py, workers/selection.py, workers/notify.py; a lane's is
# INTAKE_LANE_DB_CONNECTIONS).
_PERSIST_CONNECTIONS, _DISPATCH_CONNECTIONS = 2, 3
_PARTICIPATION_CONNECTIONS = 4
_WAVES_CONNECTIONS, _NOTIFY_CONNECTIONS = 2, 3
# The shortest span of status samples a worker's rate is computed over.
_MIN_RATE_SPAN_S = 0.5
_OPEN_BREAKER = ("open", "half_open")


@dataclass(frozen=True, slots=True)
class Limits:
    """Fewest and most processes of one kind."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Load:
    """What is known about one kind's queue at a tick. Rates are in the queue's unit per
    second (messages for the persist worker, tasks for a lane); None: not known."""

    depth: int
    per_worker_rate: float | None = None
    arrival_rate: float | None = None
    net_drain_rate: float | None = None
    # A backlog waited throughout the estimation window (the workers were busy all along).
    sustained: bool = False
    breaker_open: bool = False


def desired_workers(load: Load, current: int, limits: Limits, target_drain_s: float) -> int:
    """Workers needed to serve the arrivals and drain the backlog within ``target_drain_s``,
    clamped to ``limits``."""
    rate = load.per_worker_rate
    if rate is not None and rate > 0:
        arrivals = load.arrival_rate or 0.0
        wanted = math.ceil((arrivals + load.depth / target_drain_s) / rate - 1e-9)
    elif load.depth > 0 and load.sustained:
        wanted = 2 * max(current, 1)  # a backlog the workers are not shown to reduce
    elif load.depth > 0:
        wanted = current  # a short queue, nothing measured yet: wait and see
    else:
        wanted = limits.low  # nothing waits, nothing is known: the fewest will do
    return max(limits.low, min(limits.high, wanted))


def next_workers(
    current: int,
    desired: int,
    limits: Limits,
    *,
    breaker_open: bool,
    calm_s: float,
    cooldown_s: float,
) -> int:
    """One step from ``current`` toward ``desired``: up at once but at most doubling, not at all
    while the breaker is open; down by one once ``desired`` has been below ``current`` for
    ``calm_s >= cooldown_s``. The bounds themselves always hold."""
    if current < limits.low:
        return limits.low
    if current > limits.high:
        return limits.high
    if desired > current:
        if breaker_open:
            return current
        return min(desired, max(2 * current, 1))
    if desired < current and calm_s >= cooldown_s:
        return current - 1
    return current


class RateEstimator:
    """Rates of one kind from successive samples of its queue depth and its workers' status
    files, over the last ``window_s`` seconds (see the module docstring)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.capacity: float | None = None  # per worker, measured while a backlog waited
        self._depths: deque[tuple[float, int]] = deque()
        self._counts: dict[int, deque[tuple[float, float]]] = {}

    def observe(
        self, now: float, depth: int, statuses: Iterable[Mapping[str, object]], workers: int
    ) -> Load:
        """Add a sample taken at ``now`` (Unix time, the clock of the status files' ``at``)."""
        self._depths.append((now, depth))
        while len(self._depths) > 2 and self._depths[0][0] < now - self.window_s:
            self._depths.popleft()
        (first_at, first_depth), (last_at, _) = self._depths[0], self._depths[-1]
        drain = (first_depth - depth) / (last_at - first_at) if last_at > first_at else None
        sustained = len(self._depths) >= 2 and all(d > 0 for _, d in self._depths)

        breaker_open, rates = False, []
        seen = set()
        for status in statuses:
            breaker_open = breaker_open or status.get("breaker") in _OPEN_BREAKER
            rate = self._worker_rate(now, status)
            pid = status.get("pid")
            if isinstance(pid, int):
                seen.add(pid)
            if rate is not None:
                rates.append(rate)
        for pid in set(self._counts) - seen:
            del self._counts[pid]

        service = sum(rates) if rates else None
        per_worker = service / len(rates) if service is not None else None
        from_depth = per_worker is None and drain is not None and drain > 0 and workers > 0
        if from_depth:
            assert drain is not None
            per_worker = drain / workers  # a lower bound: arrivals are unknown
        if per_worker is not None and per_worker > 0 and not breaker_open:
            if sustained:
                self.capacity = (
                    per_worker if self.capacity is None else (self.capacity + per_worker) / 2
                )
            elif not from_depth and self.capacity is not None and per_worker > self.capacity:
                # Work acknowledged is a lower bound of capacity even when the workers idle
                # at times (not the depth: a starting worker's prefetch also empties it).
                self.capacity = per_worker

        arrivals = None
        if service is not None and drain is not None:
            arrivals = max(0.0, service - drain)
        elif self.capacity is not None and sustained and drain is not None:
            arrivals = max(0.0, self.capacity * workers - drain)
        # Only a rate measured under a lasting backlog says what a worker can do; workers that
        # idle at times show what arrives (with noise: scaling on it would flap).
        return Load(depth, self.capacity, arrivals, drain, sustained, breaker_open)

    def _worker_rate(self, now: float, status: Mapping[str, object]) -> float | None:
        pid, processed, at = status.get("pid"), status.get("processed"), status.get("at")
        if not (
            isinstance(pid, int)
            and isinstance(processed, int | float)
            and isinstance(at, int | float)
        ):
            return None
        history = self._counts.setdefault(pid, deque())
        if history and processed < history[-1][1]:
            history.clear()  # not the same process any more
        if not history or at > history[-1][0]:
            history.append((float(at), float(processed)))
        while len(history) > 2 and history[0][0] < now - self.window_s:
            history.popleft()
        (first_at, first), (last_at, last) = history[0], history[-1]
        if last_at - first_at < _MIN_RATE_SPAN_S:
            return None
        return (last - first) / (last_at - first_at)


def worker_limits(settings: Settings, kinds: Sequence[str]) -> dict[str, Limits]:
    """Each kind's bounds: the general ones, the photo lane's capped by the cores, the
    per-kind overrides, and exactly one dispatcher."""
    overrides = settings.worker_limits()
    unknown = set(overrides) - set(WORKER_KINDS)
    if unknown:
        raise SettingsError(f"INTAKE_SUPERVISE_WORKER_LIMITS: unknown kinds {sorted(unknown)}")
    fixed = sorted(SINGLE & set(overrides))
    if fixed:
        raise SettingsError(
            "INTAKE_SUPERVISE_WORKER_LIMITS: the dispatcher, the selection (waves) and the"
            f" notifier always run once, not {', '.join(fixed)}"
        )
    low, high = settings.supervise_min_workers, settings.supervise_max_workers
    limits = {}
    for kind in kinds:
        if kind in SINGLE:
            limits[kind] = Limits(1, 1)
        elif kind in overrides:
            limits[kind] = Limits(*overrides[kind])
        elif kind == "photo":
            cores = max(1, (os.cpu_count() or 1) // settings.photo_workers)
            limits[kind] = Limits(low, max(low, min(high, cores)))
        else:
            limits[kind] = Limits(low, high)
    return limits


def db_connections(settings: Settings, kind: str) -> int:
    """The most PostgreSQL connections one worker of ``kind`` opens."""
    if kind == PERSIST:
        return _PERSIST_CONNECTIONS
    if kind == DISPATCH:
        return _DISPATCH_CONNECTIONS
    if kind == PARTICIPATION:
        return _PARTICIPATION_CONNECTIONS
    if kind == WAVES:
        return _WAVES_CONNECTIONS
    if kind == NOTIFY:
        return _NOTIFY_CONNECTIONS
    return settings.lane_db_connections


def queues_of(kind: str) -> tuple[str, ...]:
    """The queues whose depth (summed) scales ``kind`` (none: a kind that runs once, not
    scaled)."""
    if kind in SINGLE:
        return ()
    if kind == PERSIST:
        return (topology.PERSIST_QUEUE,)
    if kind == PARTICIPATION:
        return topology.PARTICIPATION_QUEUES
    return (topology.lane_queue(kind),)


# --- the supervisor -------------------------------------------------------------------------
