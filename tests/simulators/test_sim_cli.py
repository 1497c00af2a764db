"""``python -m simulators.cli`` (what ``intake simulate`` runs): flags, readiness, answers from
the population of its --seed and --count, JSON logs without personal data, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from simulators.cli import build_parser, config_from_args
from simulators.population import population
from tests.simulators.sim_support import GUARD, claim_of, expected_dukcapil, post_json
from tests.support.processes import free_port
from tests.support.waiting import eventually

SIMS = ("dukcapil", "dapodik", "dtks", "sms", "smtp", "smtp-admin")


def test_flags_become_the_configuration() -> None:
    args = build_parser().parse_args(
        [
            "--seed=9",
            "--count=50",
            "--today=2020-04-11",
            "--student-share=0.5",
            "--dukcapil-capacity=50",
            "--dukcapil-latency-median-ms=80",
            "--dukcapil-latency-p99-ms=900",
            "--dtks-outage",
            "--dtks-outage-mode=refuse",
            "--sms-overload=429",
            "--smtp-port=2525",
        ]
    )
    config = config_from_args(args)
    assert (config.seed, config.count, config.today) == (9, 50, dt.date(2020, 4, 11))
    assert config.proportions.student == 0.5
    dukcapil = config.behaviour("dukcapil")
    assert (dukcapil.capacity, dukcapil.latency_median_ms, dukcapil.latency_p99_ms) == (
        50,
        80.0,
        900.0,
    )
    assert (config.behaviour("dtks").outage, config.behaviour("dtks").outage_mode) == (
        True,
        "refuse",
    )
    assert config.behaviour("sms").overload == "429"
    assert config.ports.smtp == 2525
    assert config.ports.dukcapil == 8101


def test_an_invalid_behaviour_flag_is_a_usage_error() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--dukcapil-overload=502"])
    with pytest.raises(ValueError, match="capacity"):
        config_from_args(parser.parse_args(["--dukcapil-capacity=0"]))


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, log: Path
) -> None:
    async def probe() -> int:
        assert process.returncode is None, _log_text(log)
        try:
            async with http.get(url) as response:
                return response.status
        except aiohttp.ClientConnectionError:
            return 0

    await eventually(probe, lambda status: status == 200, timeout_s=60)


async def test_the_command_serves_its_population_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SIMS}
    log = tmp_path / "simulate.log"
    flags = ["--seed=4", "--count=400", "--today=2020-04-11", "--log-level=DEBUG"]
    flags += ["--dtks-capacity=3", *(f"--{name}-port={port}" for name, port in ports.items())]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators.cli", *flags, stdout=out, stderr=out
        )
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    people = population(400, seed=4, today=dt.date(2020, 4, 11))
    try:
        async with aiohttp.ClientSession(timeout=GUARD) as http:
            await _wait_ready(http, f"{base['dukcapil']}/_sim/stats", process, log)
            verify = f"{base['dukcapil']}/v1/nik/verify"
            for person in people:
                if person.kind == "valid":
                    answer = await post_json(http, verify, claim_of(person))
                    assert answer == expected_dukcapil(person)
            async with http.get(f"{base['dtks']}/_sim/stats") as response:
                assert (await response.json())["behaviour"]["capacity"] == 3
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    text = _log_text(log)
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert [entry["msg"] for entry in lines] == [
        "simulators ready",
        "simulators stopping",
        "simulators stopped",
    ]
    assert lines[0]["people"] == 400
    for person in people:
        assert person.form["nik"] not in text
        assert person.form["full_name"] not in text


def _log_text(log: Path) -> str:
    return log.read_text()
