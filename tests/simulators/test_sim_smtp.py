"""The SMTP simulator receives real mail over SMTP; the hook reads it back with its links."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import aiohttp
import pytest

from simulators.server import Running
from tests.simulators.sim_support import get_json

LINK = "https://prakerja.example/verify?token=abc123&id=42"


def _message(to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@prakerja.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(f"Halo,\n\nKlik tautan ini untuk verifikasi email:\n{LINK}\n")
    message.add_alternative(
        f'<p>Halo, <a href="{LINK.replace("&", "&amp;")}">verifikasi</a>.</p>', subtype="html"
    )
    return message


def _send(running: Running, message: EmailMessage) -> None:
    with smtplib.SMTP(running.smtp_host, running.smtp_port, timeout=30) as client:
        client.send_message(message)


async def test_mail_is_received_and_read_back_with_its_links(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    await asyncio.to_thread(_send, sims, _message("Siti.Rahayu@Contoh.co.id", "Verifikasi email"))
    await asyncio.to_thread(_send, sims, _message("budi@contoh.co.id", "Lain"))

    body = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?to=siti.rahayu@contoh.co.id")
    (mail,) = body["messages"]
    assert mail["subject"] == "Verifikasi email"
    assert mail["from"] == "noreply@prakerja.example"
    assert LINK in mail["body"]
    assert "verifikasi" in mail["html"]
    assert mail["links"] == [LINK]  # found in both parts, reported once
    assert sims.mailbox.received == 2
    assert sims.stats("smtp")["served"] == 2


async def test_a_plus_address_is_found_even_unencoded(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    await asyncio.to_thread(_send, sims, _message("siti+prakerja@contoh.co.id", "Plus"))
    for query in ("siti%2Bprakerja@contoh.co.id", "siti+prakerja@contoh.co.id"):
        body = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?to={query}")
        assert [m["subject"] for m in body["messages"]] == ["Plus"], query


async def test_an_unknown_address_has_no_mail(sims: Running, http: aiohttp.ClientSession) -> None:
    body = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?to=nobody@contoh.co.id")
    assert body == {"messages": []}


async def test_the_gate_turns_failures_into_smtp_replies(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    message = _message("dewi@contoh.co.id", "Gagal")
    sims.set_behaviour("smtp", outage=True)
    with pytest.raises(smtplib.SMTPDataError) as outage:
        await asyncio.to_thread(_send, sims, message)
    assert outage.value.smtp_code == 421

    sims.set_behaviour("smtp", outage=False, error_rate=1.0)
    with pytest.raises(smtplib.SMTPDataError) as error:
        await asyncio.to_thread(_send, sims, message)
    assert error.value.smtp_code == 451

    sims.set_behaviour("smtp", error_rate=0.0, outage=True, outage_mode="refuse")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await asyncio.to_thread(_send, sims, message)

    sims.set_behaviour("smtp", outage=False)
    await asyncio.to_thread(_send, sims, message)
    body = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?to=dewi@contoh.co.id")
    assert len(body["messages"]) == 1
    stats = sims.stats("smtp")
    assert (stats["calls"], stats["served"], stats["errors"], stats["rejected_outage"]) == (
        4,
        1,
        1,
        2,
    )


async def test_the_feed_gives_every_recipients_mail_in_order(
    sims: Running, http: aiohttp.ClientSession
) -> None:
    await asyncio.to_thread(_send, sims, _message("a@contoh.co.id", "Pertama"))
    await asyncio.to_thread(_send, sims, _message("b@contoh.co.id", "Kedua"))
    body = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?after=0")
    assert [(m["to"], m["seq"]) for m in body["messages"]] == [
        ("a@contoh.co.id", 1),
        ("b@contoh.co.id", 2),
    ]
    assert body["messages"][0]["links"] == [LINK]
    assert body["last"] == 2
    after = await get_json(http, f"{sims.urls['smtp']}/_sim/mail?after=1")
    assert [m["subject"] for m in after["messages"]] == ["Kedua"]
