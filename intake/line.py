"""A registrant's place in line: for each step of their registration that waits in a queue, how
many items of that queue are ahead and about how long until it is done.

The steps and their lines, all read from PostgreSQL (migration ``0011``):

- ``storage``: accepted, not stored yet. The registration is in RabbitMQ's persist queue, where
  no position can be read for one message: no position and no estimate (``not_stored_yet``).
- ``dispatch``: stored, its checks not started (``registrations.dispatched_at`` NULL). Ahead:
  registrations stored and not started that were submitted earlier (the dispatcher takes them
  in that order). Drain: registrations started per second.
- one step per check ``pending`` or ``retrying``. Ahead: the lane's items that entered its
  queue earlier. A pending check entered when the dispatcher published its task
  (``dispatched_at``; a round shares one timestamp, so ``created_at``, the order of the
  publishes, breaks the tie); a retrying one re-enters at the back after its delay, taken as
  when its retry was recorded (``updated_at``: the items published during its delay are counted
  behind it though they are ahead, so its position is low by up to a delay's worth of
  arrivals). A check still in the outbox (pending, not published) has the whole line ahead and
  the outbox's earlier rows of its lane. Drain: what the lane handled per second, every outcome
  it records (a retry too: it frees the front of the line as a pass does, and its item
  re-enters behind this one).
- a check ``waiting`` is the registrant's turn (a link to follow, a code to enter, a photo to
  upload), not a queue: no position (``waiting_for_you``).

The estimate is ``(position + 1) / rate``: the items ahead and this one, at the measured rate.
The rate is the number of the lane's most recent handlings (at most :data:`SAMPLE_MAX`, within
``line_window_s``) over the time from the oldest of them to now, so that it falls as soon as a
lane slows or stops. Its error: a count of ``n`` handlings has a relative standard error of
about ``1/sqrt(n)`` (Poisson arrivals of completions); the stated error is two of those on the
estimate, plus one item's time (the items in hand finish out of order). It covers the
measurement's noise, not a change in the lane's pace after the look-up. No estimate (``eta_s``
null) while fewer than two handlings were seen in the window (``no_drain_measured``) or while
the lane has handled nothing for ``line_stall_s`` since this item entered its line
(``lane_stopped``: a breaker open, a lane held back or without workers).

Cost: each position is one count over the ``checks_line`` index (the lane's backlog only), up
to the items ahead; the rates are cached per edge process for ``line_rate_cache_s``, so a look-up
costs two or three small queries (``benchmarks/line.py`` measures it at a 100,000 backlog).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.settings import Settings

# The most recent handlings a rate is measured over: enough for a 5 % standard error, and a
# bounded index range whatever the lane's speed.
SAMPLE_MAX = 2000
DISPATCH = "dispatch"
# The states in which a lane leaves a check it handled. The email and phone lanes leave it
# ``waiting`` (a link or code sent); their ``passed`` is the registrant's doing, at the edge.
# The photo check is created ``waiting`` (for the upload), so that is not a photo lane outcome.
_HANDLED = {
    "email": ("waiting", "failed", "retrying"),
    "phone": ("waiting", "failed", "retrying"),
}
_HANDLED_DEFAULT = ("passed", "failed", "retrying")

_LANE_DRAIN_SQL = """
SELECT count(*) AS n,
       extract(epoch FROM now() - min(updated_at))::float8 AS oldest_s,
       extract(epoch FROM now() - max(updated_at))::float8 AS newest_s
FROM (SELECT updated_at FROM checks
      WHERE check_name = $1 AND state <> 'pending' AND state = ANY($2::text[])
        AND updated_at > now() - make_interval(secs => $3)
      ORDER BY updated_at DESC LIMIT $4) AS recent
"""
_DISPATCH_DRAIN_SQL = """
SELECT count(*) AS n,
       extract(epoch FROM now() - min(dispatched_at))::float8 AS oldest_s,
       extract(epoch FROM now() - max(dispatched_at))::float8 AS newest_s
FROM (SELECT dispatched_at FROM registrations
      WHERE dispatched_at IS NOT NULL AND dispatched_at > now() - make_interval(secs => $1)
      ORDER BY dispatched_at DESC LIMIT $2) AS recent
"""
# The registration's place in the dispatcher's backlog, counted only while it is in it.
_DISPATCH_LINE_SQL = """
SELECT r.dispatched_at IS NULL AS undispatched,
       extract(epoch FROM now() - r.stored_at)::float8 AS in_line_s,
       CASE WHEN r.dispatched_at IS NULL THEN
         (SELECT count(*) FROM registrations u
          WHERE u.dispatched_at IS NULL AND u.status = 'received'
            AND u.submitted_at < r.submitted_at)
       END AS ahead
FROM registrations r WHERE r.id = $1
"""
# The line key of checks_line (migration 0011) is
# (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END, created_at,
# registration_id), over rows in state pending or retrying with dispatched_at set.
_CHECKS_LINE_SQL = """
SELECT c.check_name, c.state,
       extract(epoch FROM now() - coalesce(
         CASE WHEN c.state = 'retrying' THEN c.updated_at ELSE c.dispatched_at END,
         c.created_at))::float8 AS in_line_s,
       CASE
         WHEN c.state = 'waiting' THEN NULL
         WHEN c.dispatched_at IS NULL THEN
           (SELECT count(*) FROM checks a
            WHERE a.check_name = c.check_name
              AND a.state IN ('pending', 'retrying') AND a.dispatched_at IS NOT NULL)
           + (SELECT count(*) FROM checks o
              WHERE o.dispatched_at IS NULL AND o.state = 'pending'
                AND o.check_name = c.check_name
                AND (o.created_at, o.registration_id) < (c.created_at, c.registration_id))
         ELSE
           (SELECT count(*) FROM checks a
            WHERE a.check_name = c.check_name
              AND a.state IN ('pending', 'retrying') AND a.dispatched_at IS NOT NULL
              AND (CASE WHEN a.state = 'retrying' THEN a.updated_at ELSE a.dispatched_at END,
                   a.created_at, a.registration_id)
                < (CASE WHEN c.state = 'retrying' THEN c.updated_at ELSE c.dispatched_at END,
                   c.created_at, c.registration_id))
       END AS ahead
FROM checks c
WHERE c.registration_id = $1 AND c.state IN ('pending', 'retrying', 'waiting')
ORDER BY c.check_name
"""


@dataclass(frozen=True, slots=True)
class Drain:
    """A lane's recent handlings as measured at ``measured_at`` (``time.monotonic``): how many
    (``count``), and how long before the measurement the oldest and the newest happened."""

    count: int
    oldest_s: float
    newest_s: float
    measured_at: float

    def rate(self, now: float) -> float | None:
        """Handlings per second from the oldest sampled one to ``now``; None under two."""
        if self.count < 2:
            return None
        return self.count / max(self.oldest_s + (now - self.measured_at), 1e-3)

    def idle_s(self, now: float) -> float:
        """Seconds since the newest handling (infinite: none seen)."""
        if self.count == 0:
            return math.inf
        return self.newest_s + (now - self.measured_at)


class Rates:
    """Each lane's drain, measured in PostgreSQL and kept for ``line_rate_cache_s`` in this
    process, so that a crowd reading its status costs one measurement per lane and interval.
    While one request measures a lane again, the others use the previous measurement."""

    def __init__(self, settings: Settings) -> None:
        self._window_s = settings.line_window_s
        self._ttl_s = settings.line_rate_cache_s
        self.stall_s = settings.line_stall_s
        self._cached: dict[str, Drain] = {}
        self._measuring: set[str] = set()

    async def drain(self, connection: asyncpg.Connection, lane: str) -> Drain:
        cached = self._cached.get(lane)
        if cached is not None and (
            time.monotonic() - cached.measured_at < self._ttl_s or lane in self._measuring
        ):
            return cached
        self._measuring.add(lane)
        try:
            if lane == DISPATCH:
                row = await connection.fetchrow(_DISPATCH_DRAIN_SQL, self._window_s, SAMPLE_MAX)
            else:
                handled = list(_HANDLED.get(lane, _HANDLED_DEFAULT))
                row = await connection.fetchrow(
                    _LANE_DRAIN_SQL, lane, handled, self._window_s, SAMPLE_MAX
                )
            drain = Drain(
                count=row["n"],
                oldest_s=row["oldest_s"] or 0.0,
                newest_s=row["newest_s"] or 0.0,
                measured_at=time.monotonic(),
            )
            self._cached[lane] = drain
            return drain
        finally:
            self._measuring.discard(lane)


def estimate(ahead: int, in_line_s: float, drain: Drain, stall_s: float) -> dict[str, Any]:
    """The step's line object: its position and, when one can be made, its estimate."""
    now = time.monotonic()
    rate = drain.rate(now)
    step: dict[str, Any] = {
        "position": ahead,
        "eta_s": None,
        "error_s": None,
        "rate_per_s": None if rate is None else round(rate, 2),
    }
    if min(drain.idle_s(now), in_line_s) > stall_s:
        return step | {"basis": "lane_stopped"}
    if rate is None:
        return step | {"basis": "no_drain_measured"}
    eta_s = (ahead + 1) / rate
    error_s = 2 * eta_s / math.sqrt(drain.count) + 1 / rate
    # The error is rounded up, so that rounding never makes it smaller than stated.
    rounded_error_s = math.ceil(error_s * 10) / 10
    return step | {"basis": "measured", "eta_s": round(eta_s, 1), "error_s": rounded_error_s}


def queued() -> dict[str, Any]:
    """The line of a registration not stored yet: in RabbitMQ, where it has no position."""
    return {"storage": _no_line("not_stored_yet")}


def _no_line(basis: str) -> dict[str, Any]:
    return {"position": None, "eta_s": None, "error_s": None, "basis": basis, "rate_per_s": None}


async def line_of(
    connection: asyncpg.Connection, rates: Rates, registration_id: uuid.UUID, status: str | None
) -> dict[str, Any]:
    """Each waiting step of a stored registration: ``dispatch``, or its checks by name (empty
    once it is decided)."""
    if status != "received":
        return {}
    row = await connection.fetchrow(_DISPATCH_LINE_SQL, registration_id)
    if row is None:
        return {}
    if row["undispatched"]:
        drain = await rates.drain(connection, DISPATCH)
        return {DISPATCH: estimate(row["ahead"], row["in_line_s"], drain, rates.stall_s)}
    line: dict[str, Any] = {}
    for check in await connection.fetch(_CHECKS_LINE_SQL, registration_id):
        name = check["check_name"]
        if check["state"] == "waiting":
            line[name] = _no_line("waiting_for_you")
            continue
        drain = await rates.drain(connection, name)
        line[name] = estimate(check["ahead"], check["in_line_s"], drain, rates.stall_s)
    return line
