"""The Dukcapil simulator answers every synthetic person as their truth says."""

from __future__ import annotations

from collections import Counter

import aiohttp

from simulators.population import Registrant
from simulators.server import Running
from tests.simulators.sim_support import claim_of, expected_dukcapil, post_json


async def test_every_person_gets_the_answer_their_truth_says(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    url = f"{sims.urls['dukcapil']}/v1/nik/verify"
    checked = Counter[str]()
    for person in people:
        if person.kind not in ("valid", "duplicate"):
            continue
        assert await post_json(http, url, claim_of(person)) == expected_dukcapil(person)
        checked[person.truth.dukcapil] += 1
    assert len(checked) == 5, checked  # every outcome was exercised
    stats = sims.stats("dukcapil")
    assert stats["calls"] == stats["served"] == checked.total()


async def test_names_and_places_ignore_case_and_spacing(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    person = next(p for p in people if p.kind == "valid" and p.truth.dukcapil == "match")
    claim = claim_of(
        person,
        full_name="  " + "   ".join(person.form["full_name"].upper().split()) + " ",
        birth_place=person.form["birth_place"].lower(),
    )
    url = f"{sims.urls['dukcapil']}/v1/nik/verify"
    assert await post_json(http, url, claim) == (200, {"result": "match"})


async def test_every_differing_field_is_reported_in_order(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    person = next(p for p in people if p.kind == "valid" and p.truth.dukcapil == "match")
    claim = claim_of(person, full_name="Orang Lain", birth_place="Ternate", birth_date="1970-01-01")
    status, body = await post_json(http, f"{sims.urls['dukcapil']}/v1/nik/verify", claim)
    assert (status, body["fields"]) == (200, ["full_name", "birth_place", "birth_date"])


async def test_malformed_requests_are_400_without_echoing_values(
    sims: Running, http: aiohttp.ClientSession, people: list[Registrant]
) -> None:
    url = f"{sims.urls['dukcapil']}/v1/nik/verify"
    person = people[0]
    bad_nik = claim_of(person, nik="12345")
    assert await post_json(http, url, bad_nik) == (
        400,
        {"error": "invalid_fields", "fields": ["nik"]},
    )
    missing = {"nik": person.form["nik"], "full_name": person.form["full_name"]}
    status, body = await post_json(http, url, missing)
    assert (status, body["fields"]) == (400, ["birth_place", "birth_date"])
    status, body = await post_json(http, url, claim_of(person, birth_date="11/04/2020"))
    if person.truth.dukcapil != "not_found":
        assert (status, body["fields"]) == (400, ["birth_date"])
    async with http.post(url, data=b"{not json") as response:
        assert response.status == 400
        assert await response.json() == {"error": "malformed_json"}
    async with http.post(url, json=[1, 2]) as response:
        assert response.status == 400
    async with http.get(url) as response:
        assert response.status == 405
