"""The naive synchronous baseline (``benchmarks.naive``) as a real process, against this run's
PostgreSQL database and a real Dukcapil simulator: what it stores, and what it answers when the
form is invalid or the ministry fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from core.keys import Keyring
from core.settings import Settings
from intake.validation import today_wib
from simulators.admin import AdminClient
from simulators.population import Proportions, Registrant, population
from simulators.server import Ports, Running, SimulatorConfig, run_simulators
from tests.support.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "naive-test-secret-key-0123456789abcdef0123456789"
SEED, COUNT = 31, 60
MINISTRY_TIMEOUT_S = 1.0
# Larger Dukcapil shares than the defaults, so that a small population has each outcome.
SHARES = Proportions(not_found=0.15, mismatch_full_name=0.1)


@dataclass(frozen=True, slots=True)
class Naive:
    """The running server, the simulator behind it, and a client for both."""

    url: str
    sims: Running
    admin: AdminClient
    http: aiohttp.ClientSession
    people: list[Registrant]

    async def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        async with self.http.post(
            f"{self.url}/v1/registrations", data=body, headers={"Content-Type": content_type}
        ) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    async def register(self, form: dict[str, Any]) -> tuple[int, Any]:
        return await self.post(orjson.dumps(form))

    def person(self, dukcapil: str) -> Registrant:
        return next(p for p in self.people if p.kind == "valid" and p.truth.dukcapil == dukcapil)


def _population(today: dt.date) -> list[Registrant]:
    return population(
        COUNT, seed=SEED, today=today, invalid_share=0.0, duplicate_share=0.0, proportions=SHARES
    )


@pytest.fixture
async def sims() -> AsyncIterator[Running]:
    config = SimulatorConfig(
        ports=Ports.ephemeral(),
        seed=SEED,
        count=COUNT,
        today=today_wib(),
        invalid_share=0.0,
        duplicate_share=0.0,
        proportions=SHARES,
    )
    async with run_simulators(config) as running:
        yield running


@pytest.fixture
def naive_process(
    settings: Settings, sims: Running, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log_path = tmp_path / "naive.log"
    command = [
        sys.executable,
        "-m",
        "benchmarks.naive",
        "--port",
        str(port),
        "--database-url",
        settings.database_url,
        "--dukcapil-url",
        sims.urls["dukcapil"],
        "--pool-size",
        "2",
        "--ministry-timeout",
        str(MINISTRY_TIMEOUT_S),
        "--secret-key",
        SECRET,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, port, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.fixture
async def naive(
    naive_process: tuple[subprocess.Popen[bytes], int, Path],
    sims: Running,
    db: asyncpg.Pool,
) -> AsyncIterator[Naive]:
    process, port, log_path = naive_process
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, url, process, log_path)
            yield Naive(
                url,
                sims,
                AdminClient(http, sims.urls["dukcapil"]),
                http,
                _population(sims.config.today or today_wib()),
            )
        # SIGTERM stops it cleanly (off the loop: the simulators run in it).
        process.terminate()
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, _log(log_path)
    finally:
        await db.execute("DROP TABLE IF EXISTS naive_registrations")


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"naive server exited:\n{_log(log_path)}")
        try:
            async with http.get(f"{url}/readyz") as response:
                if response.status == 200:
                    assert await response.json() == {"status": "ready"}
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"naive server not ready:\n{_log(log_path)}")


async def _rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, nik_hmac, payload, dukcapil FROM naive_registrations"
    )
    return rows


async def test_a_valid_registration_is_verified_and_stored_encrypted(
    naive: Naive, db: asyncpg.Pool
) -> None:
    person = naive.person("match")
    nik = person.form["nik"]

    status, body = await naive.register(person.form)

    assert status == 202, body
    assert body["status"] == "accepted"
    assert body["dukcapil"] == "match"
    rows = await _rows(db)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == uuid.UUID(body["id"])
    assert row["dukcapil"] == "match"
    keyring = Keyring.from_secret(SECRET)
    assert row["nik_hmac"] != nik.encode()
    assert row["nik_hmac"] == keyring.nik_hmac(nik)  # keyed with --secret-key
    assert nik.encode() not in row["payload"]
    stored = orjson.loads(keyring.decrypt(row["payload"], row["id"].bytes))
    assert stored["nik"] == nik
    assert naive.sims.stats("dukcapil")["served"] == 1


async def test_not_found_and_mismatch_are_stored_as_dukcapil_says(
    naive: Naive, db: asyncpg.Pool
) -> None:
    ids = {}
    for truth, expected in (("not_found", "not_found"), ("mismatch_full_name", "mismatch")):
        status, body = await naive.register(naive.person(truth).form)
        assert (status, body["dukcapil"]) == (202, expected), body
        ids[uuid.UUID(body["id"])] = expected
    assert {row["id"]: row["dukcapil"] for row in await _rows(db)} == ids


async def test_an_invalid_form_is_refused_before_anything_is_stored(
    naive: Naive, db: asyncpg.Pool
) -> None:
    form = {**naive.person("match").form, "phone": "0211234567"}  # a landline

    status, body = await naive.register(form)

    assert status == 422, body
    assert {"field": "phone", "code": "phone_format"} in [
        {"field": e["field"], "code": e["code"]} for e in body["errors"]
    ]
    assert (await naive.post(b"{not json"))[0] == 400
    assert (await naive.post(orjson.dumps(form), content_type="text/plain"))[0] == 415
    assert await _rows(db) == []
    assert naive.sims.stats("dukcapil")["calls"] == 0


async def test_a_failing_or_slow_ministry_fails_the_registration_and_stores_nothing(
    naive: Naive, db: asyncpg.Pool
) -> None:
    form = naive.person("match").form

    await naive.admin.set_behaviour(outage=True, outage_mode="503")
    status, body = await naive.register(form)
    assert status == 502, body
    assert await _rows(db) == []

    await naive.admin.set_behaviour(outage_mode="refuse")  # the connection closed unanswered
    status, body = await naive.register(form)
    assert status == 502, body
    assert await _rows(db) == []

    slow_ms = MINISTRY_TIMEOUT_S * 1000 * 3
    await naive.admin.set_behaviour(outage=False, latency_median_ms=slow_ms)
    started = time.monotonic()
    status, body = await naive.register(form)
    assert status == 504, body
    assert time.monotonic() - started < slow_ms / 1000
    assert await _rows(db) == []

    stats = await naive.admin.stats()
    assert stats["rejected_outage"] == 2
    assert stats["calls"] == 3  # each registration did reach the ministry

    # The ministry back to health: the same server stores the registration.
    await naive.admin.set_behaviour(latency_median_ms=0)
    status, body = await naive.register(form)
    assert (status, body["dukcapil"]) == (202, "match"), body
    assert len(await _rows(db)) == 1
