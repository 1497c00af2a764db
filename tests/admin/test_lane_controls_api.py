"""Operator controls of the lanes through the admin API and ``intake lanes`` (on the real
PostgreSQL): a forced breaker and maintenance windows are stored, listed, cancelled, refused
when invalid (a problem document naming the field), and every action is in the audit log under
its actor. The lanes' own behaviour under them: tests/workers/test_lane_controls.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin.app import create_app
from core.controls import BreakerMode, ControlError, LaneControls, Window, WindowState
from core.settings import Settings
from core.verification import Check
from core.waves import WIB
from tests.support import processes

TOKEN = "another-operators-token-long-enough"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    app = create_app(settings.replace(admin_tokens=f"ops-dewi:{digest}"))
    async with TestClient(TestServer(app)) as client:
        yield client


def _wib(delta: dt.timedelta) -> str:
    return (dt.datetime.now(WIB) + delta).isoformat()


async def test_operators_force_a_breaker_and_are_audited(admin: TestClient) -> None:  # type: ignore[type-arg]
    lanes = await (await admin.get("/v1/lanes", headers=AUTH)).json()
    assert [lane["check"] for lane in lanes["lanes"]] == [c.value for c in Check]
    assert {lane["breaker"] for lane in lanes["lanes"]} == {"auto"}
    forced = await admin.put("/v1/lanes/dukcapil/breaker", headers=AUTH, json={"state": "open"})
    assert forced.status == 200
    body = await forced.json()
    assert (body["breaker"], body["effective"], body["was"]) == ("open", "open", "auto")
    assert body["updated_by"] == "ops-dewi"
    back = await admin.put("/v1/lanes/dukcapil/breaker", headers=AUTH, json={"state": "auto"})
    assert (await back.json())["was"] == "open"
    bad = await admin.put("/v1/lanes/dukcapil/breaker", headers=AUTH, json={"state": "ajar"})
    assert bad.status == 422
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert (await bad.json())["errors"][0]["field"] == "state"
    missing = await admin.put("/v1/lanes/bpjs/breaker", headers=AUTH, json={"state": "open"})
    assert missing.status == 404
    not_json = await admin.put("/v1/lanes/dtks/breaker", headers=AUTH, data=b"{")
    assert not_json.status == 422
    audit = await (await admin.get("/v1/audit?limit=10", headers=AUTH)).json()
    mine = [e for e in audit["entries"] if e["action"] == "lane.breaker"]
    assert [(e["actor"], e["subject"], e["detail"]) for e in mine] == [
        ("ops-dewi", "dukcapil", {"state": "auto", "was": "open"}),
        ("ops-dewi", "dukcapil", {"state": "open", "was": "auto"}),
    ]


async def test_operators_schedule_list_and_cancel_windows(admin: TestClient) -> None:  # type: ignore[type-arg]
    window = {
        "check": "dukcapil",
        "starts_at": _wib(dt.timedelta(hours=1)),
        "ends_at": _wib(dt.timedelta(hours=3)),
        "reason": "Dukcapil: pemeliharaan server",
    }
    created = await admin.post("/v1/maintenance", headers=AUTH, json=window)
    assert created.status == 201
    body = await created.json()
    assert (body["state"], body["check"], body["created_by"]) == (
        "scheduled",
        "dukcapil",
        "ops-dewi",
    )
    assert body["starts_at"].endswith("+07:00")  # operators read WIB
    # One on now, on DTKS, with a time in WIB without an offset.
    now_wib = dt.datetime.now(WIB).replace(tzinfo=None)
    active = await admin.post(
        "/v1/maintenance",
        headers=AUTH,
        json={
            "check": "dtks",
            "starts_at": (now_wib - dt.timedelta(minutes=5)).isoformat(),
            "ends_at": (now_wib + dt.timedelta(hours=1)).isoformat(),
            "reason": "Kemensos migration",
        },
    )
    assert (await active.json())["state"] == "active"
    listed = await (await admin.get("/v1/maintenance", headers=AUTH)).json()
    assert [(w["check"], w["state"]) for w in listed["windows"]] == [
        ("dtks", "active"),
        ("dukcapil", "scheduled"),
    ]
    lanes = {
        lane["check"]: lane
        for lane in (await (await admin.get("/v1/lanes", headers=AUTH)).json())["lanes"]
    }
    assert (lanes["dtks"]["breaker"], lanes["dtks"]["effective"]) == ("auto", "open")
    assert lanes["dtks"]["maintenance"]["reason"] == "Kemensos migration"
    assert lanes["dukcapil"]["maintenance"] is None
    # Invalid windows: 422 naming the field.
    for change, field in (
        ({"check": "bpjs"}, "check"),
        ({"ends_at": window["starts_at"]}, "ends_at"),
        (
            {"ends_at": _wib(dt.timedelta(hours=-1)), "starts_at": _wib(dt.timedelta(hours=-2))},
            "ends_at",
        ),
        ({"starts_at": "tomorrow"}, "starts_at"),
        ({"reason": ""}, "reason"),
        ({"reason": "x" * 201}, "reason"),
        ({"reason": 5}, "reason"),
    ):
        refused = await admin.post("/v1/maintenance", headers=AUTH, json={**window, **change})
        assert refused.status == 422, change
        assert (await refused.json())["errors"][0]["field"] == field, change
    # Cancelled: the scheduled one is cancelled, the active one ends now.
    cancelled = await admin.delete(f"/v1/maintenance/{body['id']}", headers=AUTH)
    assert (await cancelled.json())["state"] == "cancelled"
    assert (await admin.delete(f"/v1/maintenance/{body['id']}", headers=AUTH)).status == 409
    ended = await admin.delete(f"/v1/maintenance/{(await active.json())['id']}", headers=AUTH)
    assert (await ended.json())["state"] == "over"
    assert (await admin.delete("/v1/maintenance/999999", headers=AUTH)).status == 404
    assert (await admin.delete("/v1/maintenance/abc", headers=AUTH)).status == 404
    assert (await (await admin.get("/v1/maintenance", headers=AUTH)).json())["windows"] == []
    everything = await (await admin.get("/v1/maintenance?all=true", headers=AUTH)).json()
    assert len(everything["windows"]) == 2
    assert (await admin.get("/v1/maintenance?all=yes", headers=AUTH)).status == 422
    audit = await (await admin.get("/v1/audit?limit=10", headers=AUTH)).json()
    latest = audit["entries"][:4]  # newest first; the log outlives each test
    assert [(e["actor"], e["action"], e["subject"]) for e in latest] == [
        ("ops-dewi", "maintenance.cancel", "dtks"),
        ("ops-dewi", "maintenance.cancel", "dukcapil"),
        ("ops-dewi", "maintenance.add", "dtks"),
        ("ops-dewi", "maintenance.add", "dukcapil"),
    ]
    assert latest[-1]["detail"]["reason"] == window["reason"]


def test_a_windows_state_follows_the_clock_and_its_cancellation() -> None:
    t0 = dt.datetime(2020, 4, 12, 1, 0, tzinfo=WIB)
    hour = dt.timedelta(hours=1)
    window = Window(1, Check.DUKCAPIL, t0, t0 + 2 * hour, "upgrade", "ops")
    assert [window.state(t0 + k * hour).value for k in (-1, 0, 1, 2)] == [
        "scheduled",
        "active",
        "active",
        "over",
    ]
    ended = Window(1, Check.DUKCAPIL, t0, t0 + 2 * hour, "upgrade", "ops", t0 + hour)
    assert ended.state(t0 + 0.5 * hour) is WindowState.ACTIVE
    assert ended.state(t0 + hour) is WindowState.OVER
    early = Window(1, Check.DUKCAPIL, t0, t0 + 2 * hour, "upgrade", "ops", t0 - hour)
    assert early.state(t0 + 0.5 * hour) is WindowState.CANCELLED


async def test_a_reason_is_one_line_and_times_have_an_offset(
    settings: Settings, db: asyncpg.Pool
) -> None:
    controls = LaneControls(db)
    now = dt.datetime.now(dt.UTC)
    for starts, reason in (
        (now.replace(tzinfo=None), "upgrade"),
        (now, "line one\nline two"),
    ):
        with pytest.raises(ControlError) as refused:
            await controls.add_window(
                "ops", Check.PHONE, starts, now + dt.timedelta(hours=1), reason, now
            )
        assert refused.value.code == "invalid"
    assert await controls.windows(now, everything=True) == []


def test_intake_lanes_acts_and_is_audited_as_the_cli_user(settings: Settings) -> None:
    def intake(*args: str) -> subprocess.CompletedProcess[str]:
        return processes.intake(settings, "lanes", *args)

    forced = intake("breaker", "dapodik", "closed")
    assert forced.returncode == 0, forced.stderr
    assert orjson.loads(forced.stdout) == {"check": "dapodik", "breaker": "closed", "was": "auto"}
    assert intake("breaker", "dapodik", "ajar").returncode == 2  # argparse refuses it
    now = dt.datetime.now(WIB)
    added = intake(
        "maintenance",
        "add",
        "dukcapil",
        "--start",
        (now + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
        "--end",
        (now + dt.timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M"),
        "--reason",
        "Dukcapil maintenance notice",
    )
    assert added.returncode == 0, added.stderr
    window = orjson.loads(added.stdout)
    assert window["state"] == "scheduled"
    listed = orjson.loads(intake("maintenance", "list").stdout)
    assert [w["id"] for w in listed] == [window["id"]]
    lanes = {lane["check"]: lane for lane in orjson.loads(intake("list").stdout)}
    assert lanes["dapodik"]["breaker"] == BreakerMode.CLOSED
    assert orjson.loads(intake("maintenance", "cancel", str(window["id"])).stdout)["state"] == (
        "cancelled"
    )
    again = intake("maintenance", "cancel", str(window["id"]))
    assert again.returncode == 1
    assert "conflict" in again.stderr
    audit = orjson.loads(processes.intake_output(settings, "waves", "audit"))
    assert [e["action"] for e in audit[:3]] == [
        "maintenance.cancel",
        "maintenance.add",
        "lane.breaker",
    ]
    assert all(e["actor"].startswith("cli:") for e in audit[:3])
