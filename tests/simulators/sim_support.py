"""Helpers shared by the simulator tests: the population's parameters and small HTTP calls."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

from simulators.population import Registrant
from simulators.server import Running

TODAY = dt.date(2020, 4, 11)
SEED = 2020
COUNT = 3_000
# Only a guard against a hang in the system under test, never a wait for a condition.
GUARD = aiohttp.ClientTimeout(total=30)
DUKCAPIL_FIELDS = ("nik", "full_name", "birth_place", "birth_date")

StartSimulators = Callable[..., AbstractAsyncContextManager[Running]]


async def post_json(
    http: aiohttp.ClientSession, url: str, body: object
) -> tuple[int, dict[str, Any]]:
    """POST ``body``; the status and the decoded JSON object answered."""
    async with http.post(url, json=body) as response:
        answer = await response.json()
        assert isinstance(answer, dict)
        return response.status, answer


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET ``url``, expecting a 200 with a JSON object."""
    async with http.get(url) as response:
        assert response.status == 200, response.status
        answer = await response.json()
        assert isinstance(answer, dict)
        return answer


def claim_of(person: Registrant, **changes: str) -> dict[str, Any]:
    """What a verifier sends Dukcapil for ``person``'s form (with ``changes``)."""
    return {**{k: person.form[k] for k in DUKCAPIL_FIELDS}, **changes}


def expected_dukcapil(person: Registrant) -> tuple[int, dict[str, Any]]:
    """The status and body Dukcapil must answer for ``person``'s own form."""
    truth = person.truth.dukcapil
    if truth == "match":
        return 200, {"result": "match"}
    if truth == "not_found":
        return 404, {"result": "not_found"}
    return 200, {"result": "mismatch", "fields": [truth.removeprefix("mismatch_")]}
