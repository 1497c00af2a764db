"""The overload benchmark's arithmetic: goodput over the steady part of an offer, and each
design's goodput against the edge's at its capacity."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import pytest

from benchmarks._support import BenchError, free_port
from benchmarks.loadgen import Offered
from benchmarks.overload import bounds, goodput_bound, ratios, summarise
from benchmarks.quota import CpuQuota
from tests.support.processes import stop_async


def _result(accepted_per_second: list[int]) -> dict[str, Any]:
    latency = {"p50": 5.0, "p90": 9.0, "p99": 20.0, "p99.9": 30.0, "max": 40.0}
    return {
        "series": [
            {
                "t": float(i + 1),
                "offered": 100,
                "sent": 100,
                "accepted": n,
                "shed": 100 - n,
                "errors": 0,
                "latency_ms": latency,
            }
            for i, n in enumerate(accepted_per_second)
        ],
        "answers": {"202": sum(accepted_per_second), "503": 30},
        "scheduled": 1_000,
        "accepted": sum(accepted_per_second),
        "first_answer_latency_ms": latency,
        "latency_ms": latency,
        "attempts": {"mean": 1.2, "max": 3, "registrants_by_attempts": {"1": 800, "2": 200}},
        "timeouts": 0,
        "outcomes": {"accepted": sum(accepted_per_second), "gave_up": 4},
        "last_accepted_s": 12.0,
        "retry_after_s": {"1": 30},
        "generator": {"cpu_share": 0.1},
        "max_inflight": 50,
    }


def test_goodput_is_the_steady_part_of_the_offer() -> None:
    # The first second (connections opening) and what comes after the offer are left out.
    run = summarise(Offered(_result([10, 90, 90, 90, 90, 50, 50]), []), 100.0, 1.0, 4.0)
    assert run["goodput_per_s"] == 90.0
    assert run["share_503"] == pytest.approx(30 / (470 + 30), abs=1e-4)
    assert run["gave_up"] == 4
    assert run["attempts"]["max"] == 3
    assert len(run["series"]) == 7


def test_every_design_is_compared_with_the_edge_at_its_capacity() -> None:
    def runs(*goodputs: float) -> dict[str, Any]:
        multiples = (0.5, 1.0, 2.0)
        return {
            "runs": [
                {"multiple": m, "goodput_per_s": g}
                for m, g in zip(multiples, goodputs, strict=True)
            ]
        }

    results = {"designs": {"edge": runs(50, 100, 90), "naive": runs(40, 30, 0)}}
    assert ratios(results) == {
        "edge": {"0.5x": 0.5, "1x": 1.0, "2x": 0.9},
        "naive": {"0.5x": 0.4, "1x": 0.3, "2x": 0.0},
    }
    # Without the edge, a design is compared with itself at 1x.
    assert ratios({"designs": {"edge-lb": runs(1, 2, 3)}}) == {
        "edge-lb": {"0.5x": 0.5, "1x": 1.0, "2x": 1.5}
    }


def test_a_quota_is_a_share_of_one_core() -> None:
    with pytest.raises(BenchError, match="share of one core"):
        CpuQuota(0.0)
    with pytest.raises(BenchError, match="share of one core"):
        CpuQuota(1.5)


def test_the_goodput_bound_spends_every_cpu_second_on_acceptances_and_refusals() -> None:
    # A refusal costing a tenth of an acceptance: at 5x, g a + (5 C - g) a / 10 = C a.
    assert goodput_bound(5.0, 0.1) == pytest.approx(0.5 / 0.9)
    assert goodput_bound(2.0, 0.1) == pytest.approx(0.8 / 0.9)
    assert goodput_bound(1.0, 0.1) == 1.0
    assert goodput_bound(5.0, 0.25) == 0.0  # refusals alone take all of it
    assert goodput_bound(3.0, 1.0) == 0.0
    # 0.9 of capacity at 5x needs refusals at about a fortieth of an acceptance.
    assert goodput_bound(5.0, 0.024) >= 0.9 > goodput_bound(5.0, 0.026)
    assert bounds(0.1) == {"2x": 0.889, "3x": 0.778, "5x": 0.556}


async def test_the_refusal_floor_answers_every_request_with_one_prepared_503() -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.refusal", f"--port={port}"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{url}/readyz") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("benchmarks.refusal never answered")
            for _ in range(3):  # on one keep-alive connection, one answer per request
                async with session.post(f"{url}/v1/registrations", json={"nik": "1"}) as response:
                    assert response.status == 503
                    assert response.headers["Retry-After"] == "5"
                    assert (await response.json())["status"] == 503
    finally:
        code = await stop_async(server)
    assert code == 0
