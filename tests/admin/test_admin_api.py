"""The admin API (admin/app.py): refused without a valid credential, audited under the
credential's name, problem documents for what cannot be done, and absent from the edge's
public port. A real aiohttp server on the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin.app import create_app
from admin.commands import new_token
from core.settings import Settings, SettingsError
from core.waves import WIB
from tests.support import inprocess

TOKEN = "an-operators-token-of-some-length"


def _settings(settings: Settings) -> Settings:
    return settings.replace(admin_tokens=f"ops-ana:{hashlib.sha256(TOKEN.encode()).hexdigest()}")


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_app(_settings(settings)))) as client:
        yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _wave(name: str, hours: float = 1) -> dict[str, object]:
    now = dt.datetime.now(WIB)
    return {
        "name": name,
        "opens_at": (now + dt.timedelta(hours=hours)).isoformat(),
        "closes_at": (now + dt.timedelta(days=3)).isoformat(),
        "quota": 164000,
        "policy": {"dtks": "lower"},
    }


async def test_without_a_valid_credential_nothing_is_served(admin: TestClient) -> None:  # type: ignore[type-arg]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (
            ("GET", "/v1/waves"),
            ("POST", "/v1/waves"),
            ("GET", "/v1/audit"),
            ("GET", "/openapi.json"),
            ("GET", "/v1/lanes"),
            ("PUT", "/v1/lanes/dukcapil/breaker"),
            ("GET", "/v1/maintenance"),
            ("POST", "/v1/maintenance"),
            ("DELETE", "/v1/maintenance/1"),
            ("GET", "/nope"),
        ):
            response = await admin.request(method, path, headers=headers, json=_wave("x"))
            assert response.status == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["type"].endswith("/unauthorized")
    served = await admin.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert served.status == 200
    assert (await served.json())["info"]["title"].endswith("admin API")
    response = await admin.get("/v1/waves", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"waves": []}


async def test_operators_act_and_are_audited_by_name(admin: TestClient) -> None:  # type: ignore[type-arg]
    created = await admin.post("/v1/waves", headers=AUTH, json=_wave("api-wave"))
    assert created.status == 201
    assert (await created.json())["state"] == "scheduled"
    again = await admin.post("/v1/waves", headers=AUTH, json=_wave("api-wave", hours=2))
    assert again.status == 409
    invalid = await admin.post("/v1/waves", headers=AUTH, json={**_wave("bad"), "quota": 0})
    assert invalid.status == 422
    assert invalid.headers["Content-Type"] == "application/problem+json"
    opened = await admin.post("/v1/waves/api-wave/open", headers=AUTH)
    assert (opened.status, (await opened.json())["state"]) == (200, "open")
    assert (await admin.post("/v1/waves/api-wave/open", headers=AUTH)).status == 409
    assert (await admin.get("/v1/waves/nope", headers=AUTH)).status == 404
    closed = await admin.post("/v1/waves/api-wave/close", headers=AUTH)
    assert (await closed.json())["state"] == "closed"
    audit = await (await admin.get("/v1/audit?limit=10", headers=AUTH)).json()
    mine = [e for e in audit["entries"] if e["subject"] == "api-wave"]
    assert [(e["actor"], e["action"]) for e in mine] == [
        ("ops-ana", "wave.close"),
        ("ops-ana", "wave.open"),
        ("ops-ana", "wave.create"),
    ]
    assert (await admin.get("/v1/audit?limit=0", headers=AUTH)).status == 422


async def test_the_admin_api_is_not_on_the_public_port(settings: Settings) -> None:
    # The edge serves none of it, even with a valid admin credential ...
    async with inprocess.edge(_settings(settings)) as edge:
        for method, path in (
            ("GET", "/v1/waves"),
            ("POST", "/v1/waves/x/open"),
            ("GET", "/v1/audit"),
            ("GET", "/v1/lanes"),
            ("PUT", "/v1/lanes/dukcapil/breaker"),
            ("POST", "/v1/maintenance"),
            ("DELETE", "/v1/maintenance/1"),
        ):
            response = await edge.request(method, path, headers=AUTH)
            assert response.status in (404, 405), (method, path)
    # ... and the two cannot share a port.
    with pytest.raises(SettingsError, match="ADMIN_PORT"):
        Settings(admin_port=8080, edge_port=8080).check()


def test_a_token_is_made_with_the_entry_the_server_keeps() -> None:
    token, entry = new_token("ops-budi")
    name, _, digest = entry.partition(":")
    assert name == "ops-budi"
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in entry
    Settings(admin_tokens=entry).check()  # a valid setting
    for bad in ("ops", "ops:xyz", f"a b:{digest}", f"ops:{digest},ops:{digest}"):
        with pytest.raises(SettingsError):
            Settings(admin_tokens=bad).check()
    made = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "token", "ops-citra"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert "ops-citra:" in made.stdout
