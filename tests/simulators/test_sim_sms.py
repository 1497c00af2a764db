"""The SMS gateway simulator keeps what it is sent; the read-back hook plays the phone."""

from __future__ import annotations

import aiohttp

from simulators.server import Running
from tests.simulators.sim_support import get_json, post_json


async def test_a_message_is_accepted_and_read_back_under_any_number_form(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    base = sims.urls["sms"]
    first = await post_json(http, f"{base}/v1/messages", {"to": "0812-3456-7890", "text": "A"})
    second = await post_json(http, f"{base}/v1/messages", {"to": "+6281234567890", "text": "B"})
    assert first[0] == second[0] == 202
    assert first[1]["id"] != second[1]["id"]

    for form in ("+6281234567890", "%2B6281234567890", "081234567890", "6281234567890"):
        body = await get_json(http, f"{base}/_sim/messages?to={form}")
        messages = body["messages"]
        assert [m["text"] for m in messages] == ["A", "B"], form
        assert [m["id"] for m in messages] == [first[1]["id"], second[1]["id"]]
        assert {m["to"] for m in messages} == {"+6281234567890"}

    other = await get_json(http, f"{base}/_sim/messages?to=081299999999")
    assert other == {"messages": []}
    assert sims.outbox.accepted == 2
    assert sims.stats("sms")["served"] == 2  # the read-back hook is not counted


async def test_an_invalid_recipient_or_text_is_400(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    url = f"{sims.urls['sms']}/v1/messages"
    landline = await post_json(http, url, {"to": "0211234567", "text": "x"})
    assert landline == (400, {"error": "invalid_fields", "fields": ["to"]})
    too_long = await post_json(http, url, {"to": "081234567890", "text": "x" * 2000})
    assert too_long == (400, {"error": "invalid_fields", "fields": ["text"]})
    missing = await post_json(http, url, {"to": "081234567890"})
    assert missing == (400, {"error": "invalid_fields", "fields": ["text"]})
    async with http.get(f"{sims.urls['sms']}/_sim/messages") as response:
        assert response.status == 400
    assert sims.outbox.accepted == 0
