"""A registration's path through the real edge, RabbitMQ, the persist worker and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from core.settings import Settings
from tests.support import inprocess, openapi
from tests.support.people import person
from tests.support.waiting import eventually

JSON = {"Content-Type": "application/json"}


async def _status(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(
        body["status_url"], headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


async def test_valid_registration_goes_from_202_to_a_row(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with inprocess.edge(settings) as client, inprocess.persist_worker(settings, db):
        response = await client.post("/v1/registrations", json=person(1))
        assert response.status == 202
        body = await response.json()
        assert (
            response.headers["Location"] == body["status_url"] == f"/v1/registrations/{body['id']}"
        )
        status = await eventually(lambda: _status(client, body), lambda s: s["status"] != "queued")
        assert status["status"] == "received"
        rows = await db.fetch("SELECT id, status FROM registrations")
        assert [(r["id"], r["status"]) for r in rows] == [(uuid.UUID(body["id"]), "received")]


async def test_status_is_queued_until_stored_and_needs_the_token(settings: Settings) -> None:
    async with inprocess.edge(settings) as client:  # no worker: the registration stays queued
        body = await (await client.post("/v1/registrations", json=person(2))).json()
        openapi.validate("Accepted", body)
        queued = await _status(client, body)
        assert queued["status"] == "queued"
        openapi.validate("RegistrationStatus", queued)
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": body["access_token"]},
        ):
            response = await client.get(body["status_url"], headers=headers)
            assert response.status == 404
        other = f"/v1/registrations/{uuid.uuid4()}"
        response = await client.get(
            other, headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert response.status == 404


async def test_second_registration_of_a_nik_is_rejected_as_duplicate(
    settings: Settings, db: asyncpg.Pool
) -> None:
    first, again = person(3), {**person(3), "email": "lain@contoh.co.id", "phone": "081399998888"}
    async with inprocess.edge(settings) as client, inprocess.persist_worker(settings, db):
        a = await (await client.post("/v1/registrations", json=first)).json()
        await eventually(lambda: _status(client, a), lambda s: s["status"] == "received")
        b = await (await client.post("/v1/registrations", json=again)).json()
        status = await eventually(lambda: _status(client, b), lambda s: s["status"] != "queued")
    assert (status["status"], status["reason"]) == ("rejected", "duplicate_nik")
    openapi.validate("RegistrationStatus", status)
    assert await db.fetchval("SELECT count(*) FROM nik_claims") == 1


async def test_same_nik_twice_in_one_batch_keeps_the_earlier(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with inprocess.edge(settings) as client:  # both queued before any worker runs
        ids = []
        for email in ("satu@contoh.co.id", "dua@contoh.co.id"):
            response = await client.post("/v1/registrations", json={**person(4), "email": email})
            ids.append(uuid.UUID((await response.json())["id"]))
    async with inprocess.persist_worker(settings, db):
        rows = await eventually(
            lambda: db.fetch("SELECT id, status FROM registrations ORDER BY submitted_at"),
            lambda rows: len(rows) == 2,
        )
    assert [(r["id"], r["status"]) for r in rows] == [(ids[0], "received"), (ids[1], "rejected")]


async def test_idempotency_key_makes_a_retry_the_same_registration(
    settings: Settings, db: asyncpg.Pool
) -> None:
    headers = {"Idempotency-Key": "7f1c0e9a-retry-me"}
    async with inprocess.edge(settings) as client, inprocess.persist_worker(settings, db):
        first = await (
            await client.post("/v1/registrations", json=person(5), headers=headers)
        ).json()
        retry = await (
            await client.post("/v1/registrations", json=person(5), headers=headers)
        ).json()
        assert (first["id"], first["access_token"]) == (retry["id"], retry["access_token"])
        await eventually(lambda: _status(client, retry), lambda s: s["status"] != "queued")
        await eventually(
            lambda: db.fetchval("SELECT count(*) FROM registrations"), lambda n: n >= 1, 5
        )
    assert await db.fetchval("SELECT count(*) FROM registrations") == 1
    assert (await _status_row(db, first["id"])) == "received"


async def _status_row(db: asyncpg.Pool, registration_id: str) -> str:
    status: str = await db.fetchval(
        "SELECT status FROM registrations WHERE id = $1", uuid.UUID(registration_id)
    )
    return status


async def test_personal_data_is_stored_only_encrypted(settings: Settings, db: asyncpg.Pool) -> None:
    registrant = person(6)
    async with inprocess.edge(settings) as client, inprocess.persist_worker(settings, db):
        body = await (await client.post("/v1/registrations", json=registrant)).json()
        await eventually(lambda: _status(client, body), lambda s: s["status"] == "received")
    row = await db.fetchrow("SELECT * FROM registrations")
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
    for field in ("nik", "full_name", "email", "birth_place"):
        assert registrant[field].encode() not in stored
    assert b"812" + registrant["phone"][4:].encode() not in stored
