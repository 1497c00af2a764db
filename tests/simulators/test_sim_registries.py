"""The Dapodik and DTKS simulators list exactly the students and welfare recipients."""

from __future__ import annotations

import aiohttp

from simulators.population import Registrant
from simulators.server import Running
from tests.simulators.sim_support import post_json


async def test_dapodik_lists_exactly_the_students(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    url = f"{sims.urls['dapodik']}/v1/students/lookup"
    enrolled = 0
    for person in people:
        status, body = await post_json(http, url, {"nik": person.form["nik"]})
        assert (status, body) == (200, {"enrolled": person.truth.student})
        enrolled += body["enrolled"]
    assert 0 < enrolled < len(people)


async def test_dtks_lists_exactly_the_welfare_recipients(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    url = f"{sims.urls['dtks']}/v1/recipients/lookup"
    recipients = 0
    for person in people:
        status, body = await post_json(http, url, {"nik": person.form["nik"]})
        assert (status, body) == (200, {"recipient": person.truth.welfare})
        recipients += body["recipient"]
    assert 0 < recipients < len(people)


async def test_an_unknown_nik_is_in_neither(sims: Running, http: aiohttp.ClientSession) -> None:
    nik = {"nik": "3171011705900000"}
    assert await post_json(http, f"{sims.urls['dapodik']}/v1/students/lookup", nik) == (
        200,
        {"enrolled": False},
    )
    assert await post_json(http, f"{sims.urls['dtks']}/v1/recipients/lookup", nik) == (
        200,
        {"recipient": False},
    )


async def test_a_malformed_nik_is_400(sims: Running, http: aiohttp.ClientSession) -> None:
    for url in (
        f"{sims.urls['dapodik']}/v1/students/lookup",
        f"{sims.urls['dtks']}/v1/recipients/lookup",
    ):
        for body in ({"nik": 3171011705900001}, {"nik": "31710117059000x1"}, {}):
            assert await post_json(http, url, body) == (
                400,
                {"error": "invalid_fields", "fields": ["nik"]},
            )
