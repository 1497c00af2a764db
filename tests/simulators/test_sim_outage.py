"""Outages and random errors switched on and off while the simulators run, through the same
``/_sim/`` routes a benchmark in another process uses; the counters agree."""

from __future__ import annotations

import aiohttp
import pytest

from simulators.admin import AdminClient
from simulators.population import Registrant
from simulators.server import Running
from tests.simulators.sim_support import claim_of, post_json


def _claim(people: list[Registrant]) -> dict[str, str]:
    person = next(p for p in people if p.kind == "valid" and p.truth.dukcapil == "match")
    return claim_of(person)


async def test_an_outage_switched_on_and_off_at_run_time(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    admin = AdminClient(http, sims.urls["dukcapil"])
    url = f"{sims.urls['dukcapil']}/v1/nik/verify"
    claim = _claim(people)
    assert (await post_json(http, url, claim))[0] == 200

    behaviour = await admin.set_behaviour(outage=True, retry_after_s=3)
    assert behaviour["outage"] is True
    for _ in range(3):
        async with http.post(url, json=claim) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "3"
            assert await response.json() == {"error": "service_unavailable", "reason": "outage"}

    await admin.set_behaviour(outage=False)
    assert await post_json(http, url, claim) == (200, {"result": "match"})

    stats = await admin.stats()
    assert (stats["calls"], stats["served"], stats["rejected_outage"]) == (5, 2, 3)
    assert stats["behaviour"]["outage"] is False
    after_reset = await admin.reset()
    assert (after_reset["calls"], after_reset["served"]) == (0, 0)


async def test_a_refusing_outage_closes_the_connection(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    admin = AdminClient(http, sims.urls["dapodik"])
    await admin.set_behaviour(outage=True, outage_mode="refuse")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_json(http, f"{sims.urls['dapodik']}/v1/students/lookup", {"nik": "1" * 16})
    await admin.set_behaviour(outage=False)
    status, _ = await post_json(
        http, f"{sims.urls['dapodik']}/v1/students/lookup", {"nik": "1" * 16}
    )
    assert status == 200
    stats = await admin.stats()
    assert (stats["calls"], stats["served"], stats["rejected_outage"]) == (2, 1, 1)


async def test_a_hanging_outage_ends_by_the_clients_timeout(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    admin = AdminClient(http, sims.urls["sms"])
    await admin.set_behaviour(outage=True, outage_mode="hang")
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{sims.urls['sms']}/v1/messages",
            json={"to": "081234567890", "text": "x"},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ):
            pass
    assert (await admin.stats())["rejected_outage"] == 1
    assert sims.outbox.accepted == 0


async def test_error_rate_one_gives_500s(sims: Running, http: aiohttp.ClientSession) -> None:
    admin = AdminClient(http, sims.urls["dtks"])
    await admin.set_behaviour(error_rate=1.0)
    url = f"{sims.urls['dtks']}/v1/recipients/lookup"
    for _ in range(5):
        status, body = await post_json(http, url, {"nik": "1" * 16})
        assert (status, body) == (500, {"error": "internal_error", "reason": "error"})
    await admin.set_behaviour(error_rate=0.0)
    assert (await post_json(http, url, {"nik": "1" * 16}))[0] == 200
    stats = await admin.stats()
    assert (stats["calls"], stats["errors"], stats["served"]) == (6, 5, 1)


async def test_an_invalid_behaviour_change_is_refused_and_changes_nothing(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    url = f"{sims.urls['dukcapil']}/_sim/behaviour"
    for body in ({"capacity": 0}, {"overload": "502"}, {"outage": "yes"}, {"colour": 1}):
        status, answer = await post_json(http, url, body)
        assert (status, answer["error"]) == (400, "invalid_behaviour"), body
    async with http.post(url, data=b"[") as response:
        assert response.status == 400
    assert sims.gates["dukcapil"].behaviour == sims.config.behaviour("dukcapil")


async def test_the_control_routes_answer_during_an_outage(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    for name in ("dukcapil", "dapodik", "dtks", "sms", "smtp"):
        admin = AdminClient(http, sims.urls[name])
        await admin.set_behaviour(outage=True, outage_mode="refuse")
        stats = await admin.stats()
        assert stats["simulator"] == name
        assert stats["behaviour"]["outage_mode"] == "refuse"
    async with http.get(f"{sims.urls['sms']}/_sim/messages?to=081234567890") as response:
        assert response.status == 200
