"""Waves as data (core/waves.py) on the real PostgreSQL: scheduled, open, closed by time or by
an operator, never overlapping, every action in the append-only audit log."""

from __future__ import annotations

import datetime as dt
import subprocess

import asyncpg
import orjson
import pytest

from core.settings import Settings
from core.waves import WIB, DtksRank, Policy, Situation, WaveError, Waves, WaveState, parse_time
from tests.support import processes

T0 = dt.datetime(2020, 4, 11, 12, 0, tzinfo=WIB)


def _at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


async def test_a_wave_is_scheduled_then_open_then_closed(
    settings: Settings, db: asyncpg.Pool
) -> None:
    waves = Waves(db)
    wave = await waves.create("ops", "gelombang-1", _at(0), _at(100), 164_000, Policy())
    assert [w.name for w in await waves.all()] == ["gelombang-1"]
    assert wave.state(_at(-1)) is WaveState.SCHEDULED
    assert wave.state(_at(0)) is WaveState.OPEN
    assert wave.state(_at(100)) is WaveState.CLOSED
    assert await waves.open_at(_at(-1)) is None
    assert (await waves.open_at(_at(50))) == wave
    assert (await waves.next_after(_at(-1))) == wave
    assert await waves.next_after(_at(1)) is None
    shown = wave.to_obj(_at(1))
    assert shown["state"] == "open"
    assert shown["opens_at"] == "2020-04-11T12:00:00+07:00"  # operators read WIB
    assert shown["policy"] == {
        "min_age": 18,
        "max_age": None,
        "dtks": "lower",
        "first": ["laid_off", "small_business"],
        "test_attempts": 1,
    }


async def test_waves_never_overlap_and_names_are_unique(
    settings: Settings, db: asyncpg.Pool
) -> None:
    waves = Waves(db)
    await waves.create("ops", "w1", _at(0), _at(10), 10, Policy())
    for name, opens, closes in (("w2", 5, 15), ("w2", -5, 1), ("w2", 1, 2)):
        with pytest.raises(WaveError) as refused:
            await waves.create("ops", name, _at(opens), _at(closes), 10, Policy())
        assert refused.value.code == "conflict"
    with pytest.raises(WaveError, match="exists"):
        await waves.create("ops", "w1", _at(20), _at(30), 10, Policy())
    await waves.create("ops", "w2", _at(10), _at(20), 10, Policy())  # back to back is fine
    for name, opens, closes, quota in (
        ("Bad Name", 30, 40, 1),
        ("w3", 30, 40, 0),
        ("w3", 40, 30, 1),
    ):
        with pytest.raises(WaveError) as refused:
            await waves.create("ops", name, _at(opens), _at(closes), quota, Policy())
        assert refused.value.code == "invalid"


async def test_operators_open_early_and_close_early(settings: Settings, db: asyncpg.Pool) -> None:
    waves = Waves(db)
    await waves.create("ops", "early", _at(10), _at(20), 10, Policy())
    with pytest.raises(WaveError, match="scheduled"):
        await waves.close_now("ops", "early", _at(5))
    opened = await waves.open_now("ops", "early", _at(5))
    assert opened.state(_at(5)) is WaveState.OPEN
    with pytest.raises(WaveError, match="open"):
        await waves.open_now("ops", "early", _at(6))
    closed = await waves.close_now("ana", "early", _at(7))
    assert closed.state(_at(7)) is WaveState.CLOSED
    assert closed.closed_at == _at(7)
    assert await waves.open_at(_at(8)) is None
    with pytest.raises(WaveError) as missing:
        await waves.get("nope")
    assert missing.value.code == "not_found"
    # Every action, in order, under its actor.
    entries = [e for e in await waves.audit(100) if e["subject"] == "early"]
    assert [(e["actor"], e["action"]) for e in reversed(entries)] == [
        ("ops", "wave.create"),
        ("ops", "wave.open"),
        ("ana", "wave.close"),
    ]


async def test_the_audit_log_cannot_be_rewritten(settings: Settings, db: asyncpg.Pool) -> None:
    waves = Waves(db)
    await waves.create("ops", "w-audit", _at(0), _at(1), 1, Policy())
    for statement in (
        "UPDATE admin_audit SET actor = 'someone else'",
        "DELETE FROM admin_audit",
        "TRUNCATE admin_audit",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    assert any(e["subject"] == "w-audit" and e["actor"] == "ops" for e in await waves.audit(100))


def test_a_policy_is_checked() -> None:
    assert Policy.from_obj({"dtks": "excluded", "max_age": 64}) == Policy(18, 64, DtksRank.EXCLUDED)
    bad: object
    for bad in (
        [],
        {"dtks": "never"},
        {"min_age": 17},
        {"min_age": 30, "max_age": 20},
        {"x": 1},
        {"min_age": True},
    ):
        with pytest.raises(WaveError):
            Policy.from_obj(bad)
    assert parse_time("2020-04-16T16:00") == dt.datetime(2020, 4, 16, 16, 0, tzinfo=WIB)
    assert parse_time("2020-04-16T09:00+00:00") == dt.datetime(2020, 4, 16, 16, 0, tzinfo=WIB)
    with pytest.raises(WaveError):
        parse_time("Thursday")


def test_intake_waves_acts_and_is_audited_as_the_cli_user(settings: Settings) -> None:
    def intake(*args: str) -> subprocess.CompletedProcess[str]:
        return processes.intake(settings, "waves", *args)

    now = dt.datetime.now(WIB)
    created = intake(
        "create",
        "cli-wave",
        "--opens",
        (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "--closes",
        (now + dt.timedelta(days=5)).strftime("%Y-%m-%dT%H:%M"),
        "--quota",
        "100",
        "--policy",
        '{"dtks": "excluded"}',
    )
    assert created.returncode == 0, created.stderr
    assert orjson.loads(created.stdout)["state"] == "scheduled"
    assert orjson.loads(intake("open", "cli-wave").stdout)["state"] == "open"
    refused = intake("open", "cli-wave")
    assert refused.returncode == 1
    assert "conflict" in refused.stderr
    assert [w["name"] for w in orjson.loads(intake("list").stdout)] == ["cli-wave"]
    assert orjson.loads(intake("close", "cli-wave").stdout)["state"] == "closed"
    audit = [e for e in orjson.loads(intake("audit").stdout) if e["subject"] == "cli-wave"]
    assert [e["action"] for e in audit] == ["wave.close", "wave.open", "wave.create"]
    assert all(e["actor"].startswith("cli:") for e in audit)


def test_policy_ranks_situations_first_and_allows_attempts() -> None:
    policy = Policy.from_obj({"first": ["laid_off"], "test_attempts": 2})
    assert policy.first == (Situation.LAID_OFF,)
    assert policy.test_attempts == 2
    assert Policy.from_obj(policy.to_obj()) == policy
    for bad in ({"first": ["retired"]}, {"first": "laid_off"}, {"test_attempts": 0}):
        with pytest.raises(WaveError):
            Policy.from_obj(bad)
