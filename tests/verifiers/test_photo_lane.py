"""The photo check end to end: the edge's upload route, the persist worker, the dispatcher and
the photo lane with its process pool, on real RabbitMQ and PostgreSQL, with real photographs
(scikit-image's samples, encoded here, small to keep the suite fast)."""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from PIL import Image

from core import topology
from core.blobs import BlobRef, BlobStore
from core.keys import Keyring
from core.photo_vault import PhotoVault
from core.settings import Settings
from core.verification import Check, Task
from tests.support import inprocess
from tests.support.people import person
from tests.support.photos import encode, phone_selfie, sample, selfie
from tests.support.waiting import eventually

Client = TestClient[Request, Application]
PROBLEMS = "https://intake.example/problems/"
MAX_BYTES = 300_000


def two_faces() -> bytes:
    portrait = np.asarray(sample("astronaut"))
    return encode(Image.fromarray(np.hstack([portrait, portrait])), "JPEG", quality=80)


def no_face() -> bytes:
    return encode(sample("coffee"), "JPEG", quality=80)


def bomb_png(width: int = 6000, height: int = 6000) -> bytes:
    """A valid 1-bit PNG of 36 Mpx in a few kilobytes (a decompression bomb for the limits)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row_bytes = 1 + (width + 7) // 8
    idat = zlib.compress(bytes(row_bytes * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@dataclass(frozen=True, slots=True)
class Registrant:
    id: uuid.UUID
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    client: Client
    db: asyncpg.Pool
    settings: Settings
    seen: aio_pika.abc.AbstractQueue

    async def register(self, index: int) -> Registrant:
        response = await self.client.post("/v1/registrations", json=person(index, seed=41))
        assert response.status == 202
        body = await response.json()
        registrant = Registrant(uuid.UUID(body["id"]), body["access_token"])
        await eventually(lambda: self.photo_state(registrant), lambda s: s == "waiting", 20)
        return registrant

    async def upload(
        self, who: Registrant, photo: bytes, content_type: str = "image/jpeg"
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.put(
            f"/v1/registrations/{who.id}/photo",
            data=photo,
            headers={**who.auth, "Content-Type": content_type},
        )
        return response.status, await response.json(content_type=None)

    async def photo_state(self, who: Registrant) -> str | None:
        state: str | None = await self.db.fetchval(
            "SELECT state FROM checks WHERE registration_id = $1 AND check_name = 'photo'", who.id
        )
        return state

    async def outcome(self, who: Registrant) -> tuple[str, str | None, str, str | None]:
        """(check state, check reason, registration status, its reason) once the check is
        final."""
        await eventually(lambda: self.photo_state(who), lambda s: s in ("passed", "failed"), 30)
        row = await self.db.fetchrow(
            "SELECT c.state, c.reason, r.status, r.reject_reason FROM checks c"
            " JOIN registrations r ON r.id = c.registration_id"
            " WHERE c.registration_id = $1 AND c.check_name = 'photo'",
            who.id,
        )
        assert row is not None
        return (row["state"], row["reason"], row["status"], row["reject_reason"])


@pytest.fixture
async def stack(settings: Settings, db: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Stack]:
    wired = settings.replace(blob_dir=str(tmp_path / "blobs"), photo_max_bytes=MAX_BYTES)
    amqp = await aio_pika.connect(wired.amqp_url)
    async with amqp:
        channel = await amqp.channel()
        lanes = await topology.declare_lanes(channel, wired, tuple(Check))
        await lanes.queues[Check.PHOTO].purge()
        # A copy of every verification task and retry published while the test runs.
        seen = await channel.declare_queue(exclusive=True, auto_delete=True)
        await seen.bind(lanes.verify_exchange, routing_key="#")
        await seen.bind(lanes.delay_exchange, routing_key="#")
        async with (
            inprocess.edge(wired) as client,
            inprocess.persist_worker(wired, db),
            inprocess.dispatcher(wired, db),
            inprocess.lanes(wired, db, (Check.PHOTO,)),
        ):
            yield Stack(client, db, wired, seen)


async def test_a_selfie_with_one_face_passes(stack: Stack) -> None:
    who = await stack.register(1)
    status, body = await stack.upload(who, selfie())
    assert status == 202
    assert body == {"id": str(who.id), "check": "photo", "size_bytes": len(selfie())}
    assert await stack.outcome(who) == ("passed", None, "received", None)
    row = await stack.db.fetchrow("SELECT * FROM photos WHERE registration_id = $1", who.id)
    assert row["outcome"] == "ok"
    assert row["phash"] is not None
    assert row["analysed_at"] is not None
    # Taken once: a different photo now is refused, the same one is not analysed again.
    status, body = await stack.upload(who, no_face())
    assert (status, body["type"]) == (409, PROBLEMS + "photo-already-uploaded")


async def test_each_bad_photo_rejects_the_registration_with_its_reason(stack: Stack) -> None:
    cases = {
        "photo_no_face": (no_face(), "image/jpeg"),
        "photo_multiple_faces": (two_faces(), "image/jpeg"),
        "photo_not_an_image": (b"this is not a photograph at all", "image/jpeg"),
        "photo_truncated": (selfie()[: len(selfie()) // 2], "image/jpeg"),
        "photo_too_many_pixels": (bomb_png(), "image/png"),
    }
    uploaded = {}
    for index, (reason, (photo, content_type)) in enumerate(cases.items()):
        who = await stack.register(10 + index)
        status, _ = await stack.upload(who, photo, content_type)
        assert status == 202, reason
        uploaded[reason] = who
    for reason, who in uploaded.items():
        assert await stack.outcome(who) == ("failed", reason, "rejected", reason)
    # Decided: no new photo is taken.
    status, body = await stack.upload(uploaded["photo_no_face"], selfie())
    assert (status, body["type"]) == (409, PROBLEMS + "registration-closed")


async def test_a_registration_rejected_when_stored_refuses_its_photo_as_closed(
    stack: Stack,
) -> None:
    """A repeated NIK is rejected when stored and never gets checks: its upload is refused as
    closed for good, not as "not ready yet" (a client would retry that for ever)."""
    first = await stack.register(50)
    form = {**person(50, seed=41), "email": "lagi50@contoh.co.id"}
    response = await stack.client.post("/v1/registrations", json=form)
    assert response.status == 202
    body = await response.json()
    again = Registrant(uuid.UUID(body["id"]), body["access_token"])
    await eventually(
        lambda: stack.db.fetchval("SELECT status FROM registrations WHERE id = $1", again.id),
        lambda status: status == "rejected",
        20,
    )
    status, problem = await stack.upload(again, selfie())
    assert (status, problem["type"]) == (409, PROBLEMS + "registration-closed")
    assert (await stack.upload(first, selfie()))[0] == 202


async def test_the_same_selfie_on_a_second_registration_goes_to_review(stack: Stack) -> None:
    first, second = await stack.register(30), await stack.register(31)
    original = sample("astronaut")
    assert (await stack.upload(first, encode(original, "JPEG", quality=95)))[0] == 202
    assert await stack.outcome(first) == ("passed", None, "received", None)
    # Re-encoded and resized: other bytes, the same perceptual hash (within a few bits).
    larger = original.resize((600, 600), Image.Resampling.LANCZOS)
    assert (await stack.upload(second, encode(larger, "JPEG", quality=80)))[0] == 202
    assert await stack.outcome(second) == ("failed", "photo_reused", "review", "photo_reused")


async def test_the_edge_refuses_without_token_wrong_type_or_too_large(stack: Stack) -> None:
    who = await stack.register(40)
    url = f"/v1/registrations/{who.id}/photo"
    jpeg = {"Content-Type": "image/jpeg"}
    for headers in (jpeg, {**jpeg, "Authorization": "Bearer nope"}):
        response = await stack.client.put(url, data=selfie(), headers=headers)
        assert response.status == 404
    other = await stack.register(41)
    response = await stack.client.put(url, data=selfie(), headers={**jpeg, **other.auth})
    assert response.status == 404
    response = await stack.client.put(
        url, data=b"GIF89a", headers={**who.auth, "Content-Type": "image/gif"}
    )
    assert (response.status, (await response.json())["type"]) == (
        415,
        PROBLEMS + "unsupported-media-type",
    )
    # Too large, announced by Content-Length, and streamed without one.
    status, body = await stack.upload(who, bytes(MAX_BYTES + 1))
    assert (status, body["type"]) == (413, PROBLEMS + "too-large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BYTES // 65536 + 2):
            yield bytes(65536)

    response = await stack.client.put(url, data=chunks(), headers={**who.auth, **jpeg})
    assert response.status == 413
    assert not _files(Path(stack.settings.blob_dir)), "nothing may be stored"
    assert await stack.db.fetchval("SELECT count(*) FROM photos") == 0
    assert await stack.photo_state(who) == "waiting"


async def test_no_message_carries_the_photo(stack: Stack) -> None:
    who = await stack.register(50)
    photo = selfie()
    assert (await stack.upload(who, photo))[0] == 202
    assert await stack.outcome(who) == ("passed", None, "received", None)
    name = await stack.db.fetchval(
        "SELECT blob_hmac FROM photos WHERE registration_id = $1", who.id
    )
    photo_tasks = []
    while (message := await stack.seen.get(fail=False, no_ack=True)) is not None:
        assert len(message.body) < 200
        assert photo[:64] not in message.body
        assert name.encode() not in message.body
        task = Task.from_json(message.body)  # a task, and nothing else
        if task.check is Check.PHOTO:
            photo_tasks.append(task)
    assert photo_tasks == [Task(who.id, Check.PHOTO, 1)]


async def test_the_stored_photo_is_sealed_stripped_and_named_by_a_keyed_hash(stack: Stack) -> None:
    who = await stack.register(60)
    photo = phone_selfie()
    with Image.open(io.BytesIO(photo)) as img:
        assert img.getexif().get_ifd(0x8825)  # the upload carries a position
    assert (await stack.upload(who, photo))[0] == 202
    (stored,) = _files(Path(stack.settings.blob_dir))
    keyring = Keyring.from_settings(stack.settings)
    # Named by the keyed hash, not by the SHA-256 anyone holding the photo could compute.
    assert stored.name == keyring.photo_name(photo)
    assert hashlib.sha256(photo).hexdigest() not in {stored.name, *map(str, stored.parents)}
    name = await stack.db.fetchval(
        "SELECT blob_hmac FROM photos WHERE registration_id = $1", who.id
    )
    assert name == stored.name
    assert await stack.db.fetchval("SELECT count(*) FROM photos WHERE blob_hmac = $1", name) == 1
    # Encrypted: no run of the upload's bytes, no EXIF value is in the file.
    sealed = stored.read_bytes()
    for start in range(0, len(photo) - 32, 997):
        assert photo[start : start + 32] not in sealed
    for value in (b"TelefonPintar-X9", b"SN-3174011234567890", b"Exif"):
        assert value not in sealed
    # Decrypted (as only the photo lane does): no EXIF but the orientation, the same pixels.
    vault = PhotoVault(BlobStore(Path(stack.settings.blob_dir)), keyring)
    clear = await vault.open(stack.db, BlobRef(name, len(photo)), max_bytes=MAX_BYTES)
    assert b"TelefonPintar-X9" not in clear
    with Image.open(io.BytesIO(clear)) as img, Image.open(io.BytesIO(photo)) as original:
        assert dict(img.getexif()) == {0x0112: 6}
        assert np.array_equal(np.asarray(img), np.asarray(original))
    # The lane turns it upright and finds the face, as it did in the upload.
    assert await stack.outcome(who) == ("passed", None, "received", None)


async def test_the_same_bytes_again_are_answered_as_before_and_stored_once(stack: Stack) -> None:
    who, other = await stack.register(70), await stack.register(71)
    photo = selfie()
    first = await stack.upload(who, photo)
    again = await stack.upload(who, photo)  # a client retrying an upload whose answer it lost
    assert first == again == (202, {"id": str(who.id), "check": "photo", "size_bytes": len(photo)})
    status, body = await stack.upload(who, no_face())
    assert (status, body["type"]) == (409, PROBLEMS + "photo-already-uploaded")
    assert await stack.outcome(who) == ("passed", None, "received", None)
    # The same selfie on another registration: one blob, one key, found by its keyed hash.
    assert (await stack.upload(other, photo))[0] == 202
    assert await stack.outcome(other) == ("failed", "photo_reused", "review", "photo_reused")
    names = await stack.db.fetch("SELECT DISTINCT blob_hmac FROM photos")
    assert [row["blob_hmac"] for row in names] == [
        Keyring.from_settings(stack.settings).photo_name(photo)
    ]
    stored = [p.name for p in _files(Path(stack.settings.blob_dir))]
    assert stored.count(names[0]["blob_hmac"]) == 1  # (and the refused photo's, unreferenced)
    keys = await stack.db.fetchval(
        "SELECT count(*) FROM photo_keys WHERE blob_hmac = $1", names[0]["blob_hmac"]
    )
    assert keys == 1
