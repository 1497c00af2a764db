"""Personal data never reaches a log line, whatever path a registration takes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import aiohttp
import asyncpg

from core import topology
from core.settings import Settings
from tests.support.people import person
from tests.support.processes import Process, free_port, wait_until_ready
from tests.support.waiting import eventually

Spawn = Callable[..., Process]


def _sensitive_values(registrant: dict[str, Any]) -> set[str]:
    values = {registrant["nik"], registrant["full_name"], registrant["email"], registrant["phone"]}
    values.add("+62" + registrant["phone"].lstrip("0"))  # the normalised form
    values.add(registrant["phone"].lstrip("0"))
    return values


async def test_no_nik_name_email_or_phone_in_any_log_line(
    settings: Settings, db: asyncpg.Pool, spawn: Spawn
) -> None:
    port = free_port()
    debug = settings.replace(edge_port=port, log_level="DEBUG", edge_access_log=True)
    edge = spawn(["edge"], debug)
    worker = spawn(["worker"], debug)
    wait_until_ready(port, edge)

    valid = [person(i, seed=11) for i in range(50)]
    duplicates = [{**p, "email": f"dup{i}@contoh.co.id"} for i, p in enumerate(valid[:10])]
    invalid = [
        {**person(100, seed=11), "birth_date": "2015-01-01"},  # underage, NIK mismatch
        # Invalid, and unlike any number a log line may hold by chance (a timestamp's
        # microseconds, a duration): "12345" once matched one.
        {**person(101, seed=11), "phone": "nomor-rumah-saya"},
        {**person(102, seed=11), "email": "not-an-email"},
        {**person(103, seed=11), "nik": person(103, seed=11)["nik"][:12] + "0000"},
        {**person(104, seed=11), "full_name": "R2-D2 " + person(104, seed=11)["full_name"]},
    ]
    sent = valid + duplicates + invalid
    statuses: list[int] = []
    ids: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as session:
        for registrant in sent:
            url = f"http://127.0.0.1:{port}/v1/registrations"
            async with session.post(url, json=registrant) as response:
                statuses.append(response.status)
                if response.status == 202:
                    body = await response.json()
                    ids.append((body["status_url"], body["access_token"]))
        # A malformed body that contains a NIK-like value, and the status look-ups.
        await session.post(
            f"http://127.0.0.1:{port}/v1/registrations",
            data=b'{"nik": "' + valid[0]["nik"].encode() + b'"',
            headers={"Content-Type": "application/json"},
        )
        for status_url, token in ids[:5]:
            headers = {"Authorization": f"Bearer {token}"}
            await session.get(f"http://127.0.0.1:{port}{status_url}", headers=headers)
    assert (statuses.count(202), statuses.count(422)) == (60, 5)

    # A poison message so that the worker's error paths log too.
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await topology.declare(channel, settings)
        await declared.exchange.publish(
            aio_pika.Message(valid[1]["nik"].encode()), topology.PERSIST_ROUTING_KEY
        )
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM registrations"), lambda n: n == 60, 60
    )
    await asyncio.sleep(0.5)
    assert edge.terminate() == 0
    assert worker.terminate() == 0

    logs = edge.log() + worker.log()
    assert "POST /v1/registrations 202" in logs  # the logs were really captured
    assert "unreadable message" in logs
    leaked = sorted(v for r in sent for v in _sensitive_values(r) if v in logs)
    assert leaked == []
    tokens = [token for _, token in ids]
    assert not [t for t in tokens if t in logs]
    assert not [u for u, _ in ids if u.rsplit("/", 1)[1] in logs]  # ids only in the database
