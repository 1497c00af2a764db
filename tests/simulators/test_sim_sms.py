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


async def test_the_feed_gives_every_numbers_messages_in_order_in_pages(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    base = sims.urls["sms"]
    for number, text in (("081234567890", "A"), ("081299999999", "B"), ("081234567890", "C")):
        assert (await post_json(http, f"{base}/v1/messages", {"to": number, "text": text}))[
            0
        ] == 202
    body = await get_json(http, f"{base}/_sim/messages?after=0&limit=2")
    assert [(m["text"], m["seq"]) for m in body["messages"]] == [("A", 1), ("B", 2)]
    assert body["messages"][1]["to"] == "+6281299999999"
    assert body["last"] == 2
    rest = await get_json(http, f"{base}/_sim/messages?after={body['last']}")
    assert ([m["text"] for m in rest["messages"]], rest["last"]) == (["C"], 3)
    assert await get_json(http, f"{base}/_sim/messages?after=3") == {"messages": [], "last": 3}
    async with http.get(f"{base}/_sim/messages?after=-1") as response:
        assert response.status == 400
