"""Waves: when verified registrants may join, how many are selected, and by what policy.

A wave opens and closes at set times (operators write them in WIB, Jakarta time), selects a
quota of the registrants who joined it, and ranks them by its :class:`Policy`, which changed
between the programme's waves (who is eligible by age, whether people already on DTKS social
assistance are ranked lower or excluded), so it is data, checked here. Waves do not overlap:
at most one is open at a time.

Operators act on waves with ``intake waves ...`` and the admin API (``admin/``); each action and
its row in the append-only ``admin_audit`` are written in one transaction, so that nothing
happens unrecorded. No personal data is held here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

WIB = dt.timezone(dt.timedelta(hours=7), "WIB")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class WaveError(Exception):
    """An operator's request that cannot be done; ``code`` says why (machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Situation(enum.StrEnum):
    """What a registrant declares when joining a wave (their work situation)."""

    LAID_OFF = "laid_off"  # lost their job (the programme's first concern in 2020)
    SMALL_BUSINESS = "small_business"  # runs a small or micro business hit by the crisis
    JOB_SEEKER = "job_seeker"
    EMPLOYED = "employed"
    OTHER = "other"


_FIRST = (Situation.LAID_OFF, Situation.SMALL_BUSINESS)


class DtksRank(enum.StrEnum):
    """How a registrant already on DTKS (social assistance) is ranked."""

    EQUAL = "equal"  # like anyone else
    LOWER = "lower"  # after everyone not on DTKS with the same score (wave 1)
    EXCLUDED = "excluded"  # not eligible


@dataclass(frozen=True, slots=True)
class Policy:
    """A wave's eligibility and ranking rules."""

    min_age: int = 18
    max_age: int | None = None
    dtks: DtksRank = DtksRank.LOWER
    # Situations ranked before every other (at any score); the rest follow by score.
    first: tuple[Situation, ...] = _FIRST
    # Test attempts a registrant may make for this wave.
    test_attempts: int = 1

    @classmethod
    def from_obj(cls, obj: Any) -> Policy:
        """A policy from its JSON document; raises :class:`WaveError` (``invalid``)."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise WaveError("invalid", "the policy must be a JSON object")
        unknown = set(obj) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise WaveError("invalid", f"unknown policy fields: {', '.join(sorted(unknown))}")
        min_age, max_age = obj.get("min_age", 18), obj.get("max_age")
        if not isinstance(min_age, int) or isinstance(min_age, bool) or not 18 <= min_age <= 120:
            raise WaveError("invalid", "min_age must be a whole number from 18 to 120")
        if max_age is not None and (
            not isinstance(max_age, int) or isinstance(max_age, bool) or not min_age <= max_age
        ):
            raise WaveError("invalid", "max_age must be a whole number, at least min_age")
        try:
            dtks = DtksRank(obj.get("dtks", DtksRank.LOWER))
        except ValueError:
            raise WaveError("invalid", "dtks must be equal, lower or excluded") from None
        first = obj.get("first", [s.value for s in _FIRST])
        if not isinstance(first, list) or not all(isinstance(s, str) for s in first):
            raise WaveError("invalid", "first must be a list of situations")
        try:
            situations = tuple(dict.fromkeys(Situation(s) for s in first))
        except ValueError:
            choices = ", ".join(s.value for s in Situation)
            raise WaveError("invalid", f"first holds situations among {choices}") from None
        attempts = obj.get("test_attempts", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 10:
            raise WaveError("invalid", "test_attempts must be a whole number from 1 to 10")
        return cls(min_age, max_age, dtks, situations, attempts)

    def to_obj(self) -> dict[str, Any]:
        return {
            "min_age": self.min_age,
            "max_age": self.max_age,
            "dtks": self.dtks.value,
            "first": [s.value for s in self.first],
            "test_attempts": self.test_attempts,
        }


class WaveState(enum.StrEnum):
    SCHEDULED = "scheduled"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Wave:
    id: int
    name: str
    opens_at: dt.datetime
    closes_at: dt.datetime
    quota: int
    policy: Policy
    closed_at: dt.datetime | None

    def state(self, now: dt.datetime) -> WaveState:
        if (self.closed_at is not None and self.closed_at <= now) or now >= self.closes_at:
            return WaveState.CLOSED
        return WaveState.OPEN if now >= self.opens_at else WaveState.SCHEDULED

    def to_obj(self, now: dt.datetime) -> dict[str, Any]:
        """The wave as the admin API and ``intake waves`` show it (times in WIB)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state(now).value,
            "opens_at": self.opens_at.astimezone(WIB).isoformat(),
            "closes_at": self.closes_at.astimezone(WIB).isoformat(),
            "closed_at": None
            if self.closed_at is None
            else self.closed_at.astimezone(WIB).isoformat(),
            "quota": self.quota,
            "policy": self.policy.to_obj(),
        }


def parse_time(text: str) -> dt.datetime:
    """An operator's time: ISO 8601, in WIB when it gives no offset."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise WaveError("invalid", f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=WIB)


_SELECT = "SELECT id, name, opens_at, closes_at, quota, policy, closed_at FROM waves"
_RETURNING = " RETURNING id, name, opens_at, closes_at, quota, policy, closed_at"


def wave_from_row(row: asyncpg.Record) -> Wave:
    """A wave from a row of ``waves`` (all its columns)."""
    return _wave(row)


def _wave(row: asyncpg.Record) -> Wave:
    return Wave(
        row["id"],
        row["name"],
        row["opens_at"],
        row["closes_at"],
        row["quota"],
        Policy.from_obj(orjson.loads(row["policy"])),
        row["closed_at"],
    )


class Waves:
    """The waves in PostgreSQL, and the operator actions on them (each audited)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        actor: str,
        name: str,
        opens_at: dt.datetime,
        closes_at: dt.datetime,
        quota: int,
        policy: Policy,
    ) -> Wave:
        """A new wave; ``conflict`` if the name is taken or it overlaps another wave."""
        if not _NAME_RE.fullmatch(name):
            raise WaveError("invalid", "a name is 1-63 of a-z, 0-9 and -, not starting with -")
        if opens_at.tzinfo is None or closes_at.tzinfo is None or not opens_at < closes_at:
            raise WaveError("invalid", "a wave opens before it closes (times with an offset)")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise WaveError("invalid", "the quota is a whole number of at least 1")
        async with self._pool.acquire() as connection, connection.transaction():
            await self._lock(connection)
            if await connection.fetchval("SELECT 1 FROM waves WHERE name = $1", name):
                raise WaveError("conflict", f"a wave named {name} exists")
            await self._no_overlap(connection, opens_at, closes_at, None)
            row = await connection.fetchrow(
                "INSERT INTO waves (name, opens_at, closes_at, quota, policy)"  # noqa: S608 (constants)
                " VALUES ($1, $2, $3, $4, $5)" + _RETURNING,
                name,
                opens_at,
                closes_at,
                quota,
                orjson.dumps(policy.to_obj()).decode(),
            )
            wave = _wave(row)
            await _audit(connection, actor, "wave.create", name, wave.to_obj(opens_at))
        return wave

    async def all(self) -> list[Wave]:
        rows = await self._pool.fetch(_SELECT + " ORDER BY opens_at")
        return [_wave(row) for row in rows]

    async def get(self, name: str) -> Wave:
        row = await self._pool.fetchrow(_SELECT + " WHERE name = $1", name)
        if row is None:
            raise WaveError("not_found", f"no wave named {name}")
        return _wave(row)

    async def open_now(self, actor: str, name: str, now: dt.datetime) -> Wave:
        """Open a scheduled wave at ``now`` instead of its opening time."""
        async with self._pool.acquire() as connection, connection.transaction():
            await self._lock(connection)
            wave = await self._for_update(connection, name)
            if wave.state(now) is not WaveState.SCHEDULED:
                raise WaveError("conflict", f"wave {name} is {wave.state(now).value}")
            await self._no_overlap(connection, now, wave.closes_at, wave.id)
            return await _stamp(connection, actor, wave, "opens_at", now)

    async def close_now(self, actor: str, name: str, now: dt.datetime) -> Wave:
        """Close an open wave at ``now``, before its closing time."""
        async with self._pool.acquire() as connection, connection.transaction():
            wave = await self._for_update(connection, name)
            if wave.state(now) is not WaveState.OPEN:
                raise WaveError("conflict", f"wave {name} is {wave.state(now).value}")
            return await _stamp(connection, actor, wave, "closed_at", now)

    async def open_at(self, now: dt.datetime) -> Wave | None:
        """The wave open at ``now``, if one is."""
        row = await self._pool.fetchrow(
            _SELECT + " WHERE opens_at <= $1 AND closes_at > $1"
            " AND (closed_at IS NULL OR closed_at > $1) ORDER BY opens_at LIMIT 1",
            now,
        )
        return None if row is None else _wave(row)

    async def next_after(self, now: dt.datetime) -> Wave | None:
        """The next wave to open after ``now``, if one is scheduled."""
        row = await self._pool.fetchrow(
            _SELECT + " WHERE opens_at > $1 ORDER BY opens_at LIMIT 1", now
        )
        return None if row is None else _wave(row)

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest operator actions, newest first."""
        rows = await self._pool.fetch(
            "SELECT at, actor, action, subject, detail FROM admin_audit ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [
            {
                "at": row["at"].astimezone(WIB).isoformat(),
                "actor": row["actor"],
                "action": row["action"],
                "subject": row["subject"],
                "detail": orjson.loads(row["detail"]),
            }
            for row in rows
        ]

    @staticmethod
    async def _lock(connection: asyncpg.Connection) -> None:
        # Creating and moving waves is rare: one at a time keeps "no overlap" true.
        await connection.execute("LOCK TABLE waves IN SHARE ROW EXCLUSIVE MODE")

    @staticmethod
    async def _for_update(connection: asyncpg.Connection, name: str) -> Wave:
        row = await connection.fetchrow(_SELECT + " WHERE name = $1 FOR UPDATE", name)
        if row is None:
            raise WaveError("not_found", f"no wave named {name}")
        return _wave(row)

    @staticmethod
    async def _no_overlap(
        connection: asyncpg.Connection,
        opens_at: dt.datetime,
        closes_at: dt.datetime,
        other: int | None,
    ) -> None:
        clash = await connection.fetchval(
            "SELECT name FROM waves WHERE id IS DISTINCT FROM $3"
            " AND opens_at < $2 AND coalesce(least(closed_at, closes_at), closes_at) > $1"
            " ORDER BY opens_at LIMIT 1",
            opens_at,
            closes_at,
            other,
        )
        if clash is not None:
            raise WaveError("conflict", f"it would overlap wave {clash}")


# An operator's "now": the column it sets, its statement and its audited action.
_STAMPS = {
    "opens_at": ("UPDATE waves SET opens_at = $2 WHERE id = $1" + _RETURNING, "wave.open"),  # noqa: S608 (constants)
    "closed_at": ("UPDATE waves SET closed_at = $2 WHERE id = $1" + _RETURNING, "wave.close"),  # noqa: S608 (constants)
}


async def _stamp(
    connection: asyncpg.Connection, actor: str, wave: Wave, column: str, now: dt.datetime
) -> Wave:
    """Set ``column`` of ``wave`` to ``now`` and audit it, in the caller's transaction."""
    statement, action = _STAMPS[column]
    row = await connection.fetchrow(statement, wave.id, now)
    await _audit(connection, actor, action, wave.name, {column: now.isoformat()})
    return _wave(row)


async def _audit(
    connection: asyncpg.Connection, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> None:
    await connection.execute(
        "INSERT INTO admin_audit (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        orjson.dumps(detail).decode(),
    )
