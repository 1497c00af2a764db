"""No simulator logs a NIK, name, email, phone, code or link, even at DEBUG level."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage

import aiohttp
import pytest

from simulators.population import Registrant
from simulators.server import Running
from tests.simulators.sim_support import claim_of, get_json, post_json

CODE = "482913"
LINK = "https://prakerja.example/verify?token=rahasia-7f3a"


def _send_mail(running: Running, to: str) -> None:
    message = EmailMessage()
    message["From"] = "noreply@prakerja.example"
    message["To"] = to
    message["Subject"] = f"Kode {CODE}"
    message.set_content(f"Tautan: {LINK}")
    with smtplib.SMTP(running.smtp_host, running.smtp_port, timeout=30) as client:
        client.send_message(message)


async def test_no_personal_value_in_any_log_record(
    sims: Running,
    http: aiohttp.ClientSession,
    people: list[Registrant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    chosen = [p for p in people if p.kind == "valid"][:40]
    sensitive = {CODE, LINK}
    for person in chosen:
        form = person.form
        sensitive |= {form["nik"], form["full_name"], form["email"], form["phone"]}
        sensitive.add("+62" + form["phone"].removeprefix("0"))
        claim = claim_of(person)
        await post_json(http, f"{sims.urls['dukcapil']}/v1/nik/verify", claim)
        await post_json(http, f"{sims.urls['dukcapil']}/v1/nik/verify", {**claim, "nik": "1"})
        await post_json(http, f"{sims.urls['dapodik']}/v1/students/lookup", {"nik": form["nik"]})
        await post_json(http, f"{sims.urls['dtks']}/v1/recipients/lookup", {"nik": form["nik"]})
        sms = {"to": form["phone"], "text": f"Kode OTP {CODE}"}
        await post_json(http, f"{sims.urls['sms']}/v1/messages", sms)
        await get_json(http, f"{sims.urls['sms']}/_sim/messages?to={form['phone']}")
    for person in chosen[:5]:
        await asyncio.to_thread(_send_mail, sims, person.form["email"])
        await get_json(http, f"{sims.urls['smtp']}/_sim/mail?to={person.form['email']}")
    # Faults too: an outage, random errors, a bogus SMTP command.
    sims.set_behaviour("dukcapil", outage=True)
    await post_json(http, f"{sims.urls['dukcapil']}/v1/nik/verify", claim_of(chosen[0]))
    sims.set_behaviour("smtp", error_rate=1.0)
    with pytest.raises(smtplib.SMTPDataError):
        await asyncio.to_thread(_send_mail, sims, chosen[0].form["email"])
    await asyncio.to_thread(_bogus_smtp_command, sims, chosen[1].form["email"])

    logged = "\n".join(
        f"{record.getMessage()} {getattr(record, 'fields', '')}" for record in caplog.records
    )
    assert logged  # the behaviour changes were logged
    leaked = sorted(value for value in sensitive if value in logged)
    assert not leaked, leaked


def _bogus_smtp_command(running: Running, address: str) -> None:
    with smtplib.SMTP(running.smtp_host, running.smtp_port, timeout=30) as client:
        client.docmd(f"XWHO {address}")
