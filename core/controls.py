"""Operator controls of the verification lanes: forced breakers and maintenance windows.

A ministry or gateway announces maintenance, or an operator sees a registry misbehave in a way
the automatic breaker does not catch (or catches wrongly). Two controls, per check (lane), in
PostgreSQL (migration 0012), read by every lane worker about once a second:

- **the breaker mode**: ``auto`` (the lane's own circuit breaker decides, ``workers/flow.py``),
  ``open`` (no call is made: the lane stops consuming and the tasks in hand wait, as when the
  breaker is open) or ``closed`` (calls go through whatever they return: the breaker never
  opens);
- **maintenance windows** of a registry (start, end, reason): while one is on, the lane behaves
  as forced open. No call is made, so no attempt is counted and nothing is dead-lettered
  because of it; the tasks wait in their queue (or in hand, for at most
  ``lane_control_hand_back_s``: then they go back to the queue) and are done after it ends.

Operators act through ``intake lanes ...`` and the admin API (``admin/``); each action and its
row in the append-only ``admin_audit`` are written in one transaction. Times are shown in WIB,
as waves' are. No personal data is held here (a reason is an operator's note, never a label).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

import asyncpg

from core import audit
from core.verification import Check
from core.waves import WIB

REASON_MAX = 200


class ControlError(Exception):
    """An operator's request that cannot be done; ``code`` says why (machine-readable:
    ``invalid``, ``not_found``, ``conflict``), ``field`` which input is wrong, if one is."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class BreakerMode(enum.StrEnum):
    """What an operator set for a lane's circuit breaker."""

    AUTO = "auto"  # the lane's own breaker decides
    OPEN = "open"  # no call is made
    CLOSED = "closed"  # every call is made; the breaker never opens


class WindowState(enum.StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    OVER = "over"
    CANCELLED = "cancelled"  # before it started (one cancelled while active is over)


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window of one registry: its lane makes no call from ``starts_at`` until
    ``ends_at`` (or until it was cancelled, if earlier)."""

    id: int
    check: Check
    starts_at: dt.datetime
    ends_at: dt.datetime
    reason: str
    created_by: str
    cancelled_at: dt.datetime | None = None

    @property
    def until(self) -> dt.datetime:
        """When it ends (or ended): its end, or its cancellation if earlier."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends_at:
            return self.cancelled_at
        return self.ends_at

    def state(self, now: dt.datetime) -> WindowState:
        if self.cancelled_at is not None and self.cancelled_at <= self.starts_at:
            return WindowState.CANCELLED
        if now >= self.until:
            return WindowState.OVER
        return WindowState.ACTIVE if now >= self.starts_at else WindowState.SCHEDULED

    def to_obj(self, now: dt.datetime) -> dict[str, Any]:
        """The window as the admin API and ``intake lanes`` show it (times in WIB)."""
        return {
            "id": self.id,
            "check": self.check.value,
            "state": self.state(now).value,
            "starts_at": self.starts_at.astimezone(WIB).isoformat(),
            "ends_at": self.ends_at.astimezone(WIB).isoformat(),
            "cancelled_at": None
            if self.cancelled_at is None
            else self.cancelled_at.astimezone(WIB).isoformat(),
            "reason": self.reason,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class LaneControl:
    """What one lane applies: the operator's breaker mode and the window on now, if any."""

    breaker: BreakerMode = BreakerMode.AUTO
    window: Window | None = None

    @property
    def effective(self) -> BreakerMode:
        """A maintenance window forces the breaker open, whatever the mode says."""
        return BreakerMode.OPEN if self.window is not None else self.breaker


def parse_check(text: str, code: str = "invalid") -> Check:
    """A check's name; raises :class:`ControlError` with ``code`` (``not_found`` for a path)."""
    try:
        return Check(text)
    except ValueError:
        choices = ", ".join(c.value for c in Check)
        raise ControlError(code, f"no lane named {text!r} (one of {choices})", "check") from None


def parse_mode(text: object) -> BreakerMode:
    try:
        return BreakerMode(str(text)) if isinstance(text, str) else BreakerMode("")
    except ValueError:
        raise ControlError("invalid", "state must be open, closed or auto", "state") from None


_WINDOW = (
    "SELECT id, check_name, starts_at, ends_at, reason, created_by, cancelled_at"
    " FROM maintenance_windows"
)
_RETURNING = " RETURNING id, check_name, starts_at, ends_at, reason, created_by, cancelled_at"

# One round trip per lane worker per second: the mode (no row: auto) and the window on now
# (the one ending last, if several overlap), by the database's clock.
_READ = f"""
    SELECT (SELECT breaker FROM lane_controls WHERE check_name = $1) AS breaker, w.*
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        {_WINDOW}
        WHERE check_name = $1 AND cancelled_at IS NULL
          AND starts_at <= clock_timestamp() AND ends_at > clock_timestamp()
        ORDER BY ends_at DESC LIMIT 1
    ) AS w ON true
"""  # noqa: S608 (constants)


def _window(row: asyncpg.Record) -> Window:
    return Window(
        row["id"],
        Check(row["check_name"]),
        row["starts_at"],
        row["ends_at"],
        row["reason"],
        row["created_by"],
        row["cancelled_at"],
    )


class LaneControls:
    """The lanes' controls in PostgreSQL, and the operator actions on them (each audited)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def read(self, check: Check) -> LaneControl:
        """What ``check``'s lane applies now (its workers call this about once a second)."""
        row = await self._pool.fetchrow(_READ, check.value)
        assert row is not None
        window = None if row["id"] is None else _window(row)
        return LaneControl(BreakerMode(row["breaker"] or BreakerMode.AUTO), window)

    async def lanes(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Every lane's breaker mode (who set it, when) and the window on at ``now``."""
        modes = {
            row["check_name"]: row
            for row in await self._pool.fetch(
                "SELECT check_name, breaker, updated_at, updated_by FROM lane_controls"
            )
        }
        active: dict[Check, Window] = {}
        for window in await self.windows(now):
            if window.state(now) is WindowState.ACTIVE and window.check not in active:
                active[window.check] = window
        lanes = []
        for check in Check:
            mode = modes.get(check.value)
            on = active.get(check)
            control = LaneControl(BreakerMode(mode["breaker"]) if mode else BreakerMode.AUTO, on)
            lanes.append(
                {
                    "check": check.value,
                    "breaker": control.breaker.value,
                    "effective": control.effective.value,
                    "updated_at": None
                    if mode is None
                    else mode["updated_at"].astimezone(WIB).isoformat(),
                    "updated_by": None if mode is None else mode["updated_by"],
                    "maintenance": None if on is None else on.to_obj(now),
                }
            )
        return lanes

    async def set_breaker(self, actor: str, check: Check, mode: BreakerMode) -> BreakerMode:
        """Force ``check``'s breaker open or closed, or give it back (``auto``); the mode it
        had before."""
        async with self._pool.acquire() as connection, connection.transaction():
            before = await connection.fetchval(
                "SELECT breaker FROM lane_controls WHERE check_name = $1 FOR UPDATE", check.value
            )
            await connection.execute(
                "INSERT INTO lane_controls (check_name, breaker, updated_by) VALUES ($1, $2, $3)"
                " ON CONFLICT (check_name) DO UPDATE SET breaker = EXCLUDED.breaker,"
                " updated_at = clock_timestamp(), updated_by = EXCLUDED.updated_by",
                check.value,
                mode.value,
                actor,
            )
            was = BreakerMode(before or BreakerMode.AUTO)
            await audit.record(
                connection, actor, "lane.breaker", check.value, {"state": mode, "was": was}
            )
        return was

    async def add_window(
        self,
        actor: str,
        check: Check,
        starts_at: dt.datetime,
        ends_at: dt.datetime,
        reason: str,
        now: dt.datetime,
    ) -> Window:
        """Schedule a maintenance window (it may have started already; it must not be over)."""
        if starts_at.tzinfo is None or ends_at.tzinfo is None:
            raise ControlError("invalid", "times need an offset", "starts_at")
        if not starts_at < ends_at:
            raise ControlError("invalid", "a window starts before it ends", "ends_at")
        if ends_at <= now:
            raise ControlError("invalid", "the window would be over already", "ends_at")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
            raise ControlError("invalid", f"a reason is 1-{REASON_MAX} characters", "reason")
        if not reason.isprintable():
            raise ControlError("invalid", "a reason is one line of printable text", "reason")
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "INSERT INTO maintenance_windows (check_name, starts_at, ends_at, reason,"  # noqa: S608 (constants)
                " created_by) VALUES ($1, $2, $3, $4, $5)" + _RETURNING,
                check.value,
                starts_at,
                ends_at,
                reason.strip(),
                actor,
            )
            window = _window(row)
            detail = window.to_obj(now)
            del detail["state"], detail["created_by"]
            await audit.record(connection, actor, "maintenance.add", check.value, detail)
        return window

    async def windows(self, now: dt.datetime, *, everything: bool = False) -> list[Window]:
        """The windows not over at ``now`` (``everything``: past and cancelled ones too), in
        order of start."""
        if everything:
            rows = await self._pool.fetch(_WINDOW + " ORDER BY starts_at, id")
        else:
            rows = await self._pool.fetch(
                _WINDOW + " WHERE cancelled_at IS NULL AND ends_at > $1 ORDER BY starts_at, id",
                now,
            )
        return [_window(row) for row in rows]

    async def cancel_window(self, actor: str, window_id: int, now: dt.datetime) -> Window:
        """Cancel a scheduled window, or end an active one at ``now``."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_WINDOW + " WHERE id = $1 FOR UPDATE", window_id)
            if row is None:
                raise ControlError("not_found", f"no maintenance window {window_id}")
            window = _window(row)
            state = window.state(now)
            if state in (WindowState.OVER, WindowState.CANCELLED):
                raise ControlError("conflict", f"maintenance window {window_id} is {state}")
            row = await connection.fetchrow(
                "UPDATE maintenance_windows SET cancelled_at = $2, cancelled_by = $3"  # noqa: S608 (constants)
                " WHERE id = $1" + _RETURNING,
                window_id,
                now,
                actor,
            )
            await audit.record(
                connection,
                actor,
                "maintenance.cancel",
                window.check.value,
                {"id": window_id, "was": state, "at": now.astimezone(WIB).isoformat()},
            )
        return _window(row)
