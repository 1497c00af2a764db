"""The ``ci`` profile of the wave benchmark, as ``make bench`` runs it, inside the test suite: it
fails on a lost or duplicated registration or on an error a registrant saw, never on a time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson

from core.settings import Settings
from intake.validation import today_wib
from simulators.population import population
from tests.support import services


def test_the_ci_wave_loses_nothing_and_no_registrant_sees_an_error(
    settings: Settings, tmp_path: Path
) -> None:
    name = f"intake_test_wave_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **settings.to_env(), "INTAKE_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.wave",
            "--profile=ci",
            f"--vhost={name}",
            f"--database={name}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [path] = tmp_path.glob("wave-ci-*.json")
    result = orjson.loads(path.read_bytes())

    people = population(
        3_000, seed=2020, today=today_wib(), invalid_share=0.10, duplicate_share=0.05
    )
    valid = sum(1 for p in people if p.kind in ("valid", "duplicate"))
    assert 0 < valid < len(people)
    audit = result["audit"]
    assert audit["verified"] is True
    assert audit["accepted"] == audit["stored"] == valid
    assert audit["missing"] == audit["stored_twice"] == audit["stored_not_accepted"] == 0
    # Every invalid form refused, no valid one, and nothing else: no 5xx, no timeout.
    assert result["generator"]["outcomes"] == {"accepted": valid, "refused": len(people) - valid}
    assert result["errors"] == {}
    assert set(result["generator"]["answers"]) <= {"202", "422", "503"}
    # The report's parts: the generator's own ceiling, latencies, the plots over time.
    assert result["ceiling"]["answers_per_s"] > 0
    assert result["generator"]["latency_ms"]["p99"] > 0
    series = result["series"]
    assert sum(s.get("accepted", 0) for s in series) == valid
    assert series[-1]["funnel"]["registered"] == valid
    written = {Path(p).name for p in result["plots"]}
    assert {"ci-rate.png", "ci-latency.png", "ci-queues.png", "ci-funnel.png"} <= written
    for plot in result["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**verified**" in done.stdout

    # The benchmark's own vhost and database are gone.
    assert name not in services.rabbitmqctl("list_vhosts", "name").split()
    assert asyncio.run(_database_exists(settings, name)) is False


async def _database_exists(settings: Settings, name: str) -> bool:
    connection = await asyncpg.connect(settings.database_url)
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    return found is not None
