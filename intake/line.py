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
The lane's most recent handlings are sampled (at most :data:`SAMPLE_MAX`, within
``line_window_s``); the rate is that of the newer half of the sample (from its median handling
to now), so that it follows a lane that speeds up (a concurrency limit still growing) or slows
down; with fewer than :data:`HALVES_MIN` handlings, that of the whole sample. Its error: a
count of ``n`` handlings has a relative standard error of about ``1/sqrt(n)`` (Poisson arrivals
of completions): two of those on the estimate; plus the change of pace within the sample (the
difference between the estimate at the newer half's rate and at the whole sample's); plus one
item's time (the items in hand finish out of order). It covers the measurement's noise and the
pace's recent drift, not a change of pace after the look-up. No estimate (``eta_s``
null) while fewer than two handlings were seen in the window (``no_drain_measured``) or while
the lane has handled nothing for ``line_stall_s`` since this item entered its line
(``lane_stopped``: a breaker open, a lane held back or without workers).

Cost: a position is a count over the ``checks_line`` index (the lane's backlog only): exact
over the items ahead while they are few, and from a per-lane rank table beyond (see
:meth:`Rates.ahead`), so that a look-up at the back of a long line costs about what one at its
front does; the rates are cached per edge process for ``line_rate_cache_s``
(``tests/intake/test_line.py`` reports the figures at a 100,000 backlog).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.settings import Settings

# Under this many handlings in the sample, the rate is the whole sample's (halves too noisy).
HALVES_MIN = 8
# The most recent handlings a rate is measured over: enough for a 5 % standard error, and a
# bounded index range whatever the lane's speed.
SAMPLE_MAX = 2000
DISPATCH = "dispatch"
# A position is counted exactly over the index up to about this many items ahead; beyond, from
# the lane's rank table (every STRIDE-th key, read at most every RANK_TABLE_TTL_S), the items from
# the nearest boundary to this one counted exactly, less those handled since the table was
# read.
EXACT_UP_TO = 5000
STRIDE = 1000
# How long a rank table is used: reading one is a scan of the whole line (40-80 ms at a
# 100,000 backlog), while a look-up's correction counts the lane's handlings since it was read
# (about rate x age index entries), so it is read far less often than the rates.
RANK_TABLE_TTL_S = 5.0
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
       extract(epoch FROM now() - max(updated_at))::float8 AS newest_s,
       extract(epoch FROM now()
               - percentile_disc(0.5) WITHIN GROUP (ORDER BY updated_at))::float8 AS middle_s
FROM (SELECT updated_at FROM checks
      WHERE check_name = $1 AND state <> 'pending' AND state = ANY($2::text[])
        AND updated_at > now() - make_interval(secs => $3)
      ORDER BY updated_at DESC LIMIT $4) AS recent
"""
_DISPATCH_DRAIN_SQL = """
SELECT count(*) AS n,
       extract(epoch FROM now() - min(dispatched_at))::float8 AS oldest_s,
       extract(epoch FROM now() - max(dispatched_at))::float8 AS newest_s,
       extract(epoch FROM now()
               - percentile_disc(0.5) WITHIN GROUP (ORDER BY dispatched_at))::float8 AS middle_s
FROM (SELECT dispatched_at FROM registrations
      WHERE dispatched_at IS NOT NULL AND dispatched_at > now() - make_interval(secs => $1)
      ORDER BY dispatched_at DESC LIMIT $2) AS recent
"""
# The registration, and whether it waits for the dispatcher.
_DISPATCH_LINE_SQL = """
SELECT dispatched_at IS NULL AS undispatched, submitted_at,
       extract(epoch FROM now() - stored_at)::float8 AS in_line_s
FROM registrations WHERE id = $1
"""
# The dispatcher's line: registrations stored and not started, by submission (its order).
_DISPATCH_AHEAD_SQL = """
SELECT count(*) FROM registrations
WHERE dispatched_at IS NULL AND status = 'received' AND submitted_at < $1
"""
_DISPATCH_BETWEEN_SQL = """
SELECT count(*) FROM registrations
WHERE dispatched_at IS NULL AND status = 'received' AND submitted_at >= $1 AND submitted_at < $2
"""
_DISPATCH_TABLE_SQL = """
SELECT submitted_at, ahead, now() AS taken_at
FROM (SELECT submitted_at, rank() OVER (ORDER BY submitted_at) - 1 AS ahead,
             row_number() OVER (ORDER BY submitted_at) AS n
      FROM registrations WHERE dispatched_at IS NULL AND status = 'received') AS line
WHERE n % $1 = 0
ORDER BY n
"""
_DISPATCHED_SINCE_SQL = """
SELECT count(*) FROM registrations WHERE dispatched_at IS NOT NULL AND dispatched_at >= $1
"""
# The line key of checks_line (migration 0011) is
# (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END, created_at,
# registration_id), over rows in state pending or retrying with dispatched_at set.
_CHECKS_SQL = """
SELECT check_name, state, dispatched_at IS NULL AS in_outbox,
       CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END AS line_at,
       created_at, registration_id,
       extract(epoch FROM now() - coalesce(
         CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
         created_at))::float8 AS in_line_s
FROM checks
WHERE registration_id = $1 AND state IN ('pending', 'retrying', 'waiting')
ORDER BY check_name
"""
_AHEAD_SQL = """
SELECT count(*) FROM checks
WHERE check_name = $1 AND state IN ('pending', 'retrying') AND dispatched_at IS NOT NULL
  AND (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
       created_at, registration_id) < ($2, $3, $4)
"""
_WHOLE_LINE_SQL = """
SELECT count(*) FROM checks
WHERE check_name = $1 AND state IN ('pending', 'retrying') AND dispatched_at IS NOT NULL
"""
# From a boundary of the rank table (included) to a key (excluded), or to the end.
_BETWEEN_SQL = """
SELECT count(*) FROM checks
WHERE check_name = $1 AND state IN ('pending', 'retrying') AND dispatched_at IS NOT NULL
  AND (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
       created_at, registration_id) >= ($2, $3, $4)
  AND (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
       created_at, registration_id) < ($5, $6, $7)
"""
_FROM_SQL = """
SELECT count(*) FROM checks
WHERE check_name = $1 AND state IN ('pending', 'retrying') AND dispatched_at IS NOT NULL
  AND (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
       created_at, registration_id) >= ($2, $3, $4)
"""
# Every $2-th item of the line, in order, with the number ahead of it.
_RANK_TABLE_SQL = """
SELECT line_at, created_at, registration_id, n - 1 AS ahead, now() AS taken_at
FROM (SELECT CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END AS line_at,
             created_at, registration_id,
             row_number() OVER (ORDER BY
               CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END,
               created_at, registration_id) AS n
      FROM checks
      WHERE check_name = $1 AND state IN ('pending', 'retrying')
        AND dispatched_at IS NOT NULL) AS line
WHERE n % $2 = 0
ORDER BY n
"""
# The lane's items handled since a rank table was read: they left the front of the line.
_HANDLED_SINCE_SQL = """
SELECT count(*) FROM checks
WHERE check_name = $1 AND state <> 'pending' AND state = ANY($2::text[]) AND updated_at >= $3
"""
_OUTBOX_AHEAD_SQL = """
SELECT count(*) FROM checks
WHERE dispatched_at IS NULL AND state = 'pending' AND check_name = $1
  AND (created_at, registration_id) < ($2, $3)
"""

# A line's order: (line_at, created_at, registration_id) for a check, (submitted_at,) for the
# dispatcher's line.
Key = tuple[dt.datetime, dt.datetime, uuid.UUID] | tuple[dt.datetime]


@dataclass(frozen=True, slots=True)
class RankTable:
    """Every :data:`STRIDE`-th key of a lane's line, in order, with the number of items that
    were ahead of each, as read at ``taken_at`` (PostgreSQL's clock)."""

    keys: list[Key]
    ahead: list[int]
    taken_at: dt.datetime | None
    measured_at: float


@dataclass(frozen=True, slots=True)
class Drain:
    """A lane's recent handlings as measured at ``measured_at`` (``time.monotonic``): how many
    (``count``), and how long before the measurement the oldest and the newest happened."""

    count: int
    oldest_s: float
    newest_s: float
    measured_at: float
    middle_s: float = 0.0  # the median handling's age at the measurement

    def rate(self, now: float) -> float | None:
        """Handlings per second from the oldest sampled one to ``now``; None under two."""
        if self.count < 2:
            return None
        return self.count / max(self.oldest_s + (now - self.measured_at), 1e-3)

    def recent(self, now: float) -> tuple[float, int] | None:
        """(handlings per second, handlings counted) of the sample's newer half: from its
        median handling to ``now``; None under :data:`HALVES_MIN` handlings."""
        if self.count < HALVES_MIN:
            return None
        newer = self.count - self.count // 2
        return newer / max(self.middle_s + (now - self.measured_at), 1e-3), newer

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
        self._tables: dict[str, RankTable] = {}
        self.table_ttl_s = max(RANK_TABLE_TTL_S, self._ttl_s)
        self._reading: set[str] = set()
        self.from_table = 0  # positions answered from a rank table, for the tests

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
                middle_s=row["middle_s"] or 0.0,
            )
            self._cached[lane] = drain
            return drain
        finally:
            self._measuring.discard(lane)

    async def _table(self, connection: asyncpg.Connection, lane: str) -> RankTable:
        cached = self._tables.get(lane)
        if cached is not None and (
            time.monotonic() - cached.measured_at < self.table_ttl_s or lane in self._reading
        ):
            return cached
        self._reading.add(lane)
        try:
            keys: list[Key]
            if lane == DISPATCH:
                rows = await connection.fetch(_DISPATCH_TABLE_SQL, STRIDE)
                keys = [(r["submitted_at"],) for r in rows]
            else:
                rows = await connection.fetch(_RANK_TABLE_SQL, lane, STRIDE)
                keys = [(r["line_at"], r["created_at"], r["registration_id"]) for r in rows]
            table = RankTable(
                keys=keys,
                ahead=[r["ahead"] for r in rows],
                taken_at=rows[0]["taken_at"] if rows else None,
                measured_at=time.monotonic(),
            )
            self._tables[lane] = table
            return table
        finally:
            self._reading.discard(lane)

    async def ahead(self, connection: asyncpg.Connection, lane: str, key: Key | None) -> int:
        """How many items of ``lane``'s line are ahead of ``key`` (None: the whole line).

        Exact up to about :data:`EXACT_UP_TO`. Beyond, from the rank table: the items ahead of
        the nearest boundary when the table was read, less the lane's items handled since
        (the line only loses items at its front: a new or retried item enters at its back),
        plus the items from that boundary to ``key``, counted now. Exact while the line is
        still; high by the handlings whose transaction was open when the table was read (for
        the dispatcher's line: up to one round)."""
        table = await self._table(connection, lane)
        index = len(table.keys) - 1 if key is None else bisect.bisect_right(table.keys, key) - 1
        if index >= 0 and table.ahead[index] >= EXACT_UP_TO:
            boundary = table.keys[index]
            handled: int
            beyond: int
            if lane == DISPATCH:
                assert key is not None
                handled = await connection.fetchval(_DISPATCHED_SINCE_SQL, table.taken_at)
                beyond = await connection.fetchval(_DISPATCH_BETWEEN_SQL, *boundary, *key)
            else:
                handled = await connection.fetchval(
                    _HANDLED_SINCE_SQL,
                    lane,
                    list(_HANDLED.get(lane, _HANDLED_DEFAULT)),
                    table.taken_at,
                )
                beyond = await (
                    connection.fetchval(_FROM_SQL, lane, *boundary)
                    if key is None
                    else connection.fetchval(_BETWEEN_SQL, lane, *boundary, *key)
                )
            position = table.ahead[index] - handled + beyond
            if position >= EXACT_UP_TO:
                self.from_table += 1
                return position
        exact: int
        if lane == DISPATCH:
            assert key is not None
            exact = await connection.fetchval(_DISPATCH_AHEAD_SQL, *key)
        elif key is None:
            exact = await connection.fetchval(_WHOLE_LINE_SQL, lane)
        else:
            exact = await connection.fetchval(_AHEAD_SQL, lane, *key)
        return exact


def estimate(ahead: int, in_line_s: float, drain: Drain, stall_s: float) -> dict[str, Any]:
    """The step's line object: its position and, when one can be made, its estimate."""
    now = time.monotonic()
    whole = drain.rate(now)
    recent = drain.recent(now)
    rate, counted = recent if recent is not None else (whole, drain.count)
    step: dict[str, Any] = {
        "position": ahead,
        "eta_s": None,
        "error_s": None,
        "rate_per_s": None if rate is None else round(rate, 2),
    }
    if min(drain.idle_s(now), in_line_s) > stall_s:
        return step | {"basis": "lane_stopped"}
    if rate is None or whole is None:
        return step | {"basis": "no_drain_measured"}
    eta_s = (ahead + 1) / rate
    drift_s = abs(eta_s - (ahead + 1) / whole)
    error_s = 2 * eta_s / math.sqrt(counted) + drift_s + 1 / rate
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
        ahead = await rates.ahead(connection, DISPATCH, (row["submitted_at"],))
        drain = await rates.drain(connection, DISPATCH)
        return {DISPATCH: estimate(ahead, row["in_line_s"], drain, rates.stall_s)}
    line: dict[str, Any] = {}
    for check in await connection.fetch(_CHECKS_SQL, registration_id):
        name = check["check_name"]
        if check["state"] == "waiting":
            line[name] = _no_line("waiting_for_you")
            continue
        if check["in_outbox"]:  # behind the whole line and the outbox's earlier rows
            ahead = await rates.ahead(connection, name, None) + await connection.fetchval(
                _OUTBOX_AHEAD_SQL, name, check["created_at"], check["registration_id"]
            )
        else:
            key = (check["line_at"], check["created_at"], check["registration_id"])
            ahead = await rates.ahead(connection, name, key)
        drain = await rates.drain(connection, name)
        line[name] = estimate(ahead, check["in_line_s"], drain, rates.stall_s)
    return line
