"""A key rotation on a running system, on real RabbitMQ and PostgreSQL: registrations and photos
stored before, during and after it are read by edges and workers holding both keys; the
re-encryption job moves every stored ciphertext to the new key in resumable batches; the NIK's
look-up key does not change, so a NIK registered before the rotation is still a repeat after."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from core import rotation, topology
from core.blobs import BlobRef, BlobStore
from core.checks import load_subject
from core.keys import DecryptionError, Keyring
from core.photo_strip import strip_metadata
from core.photo_vault import PhotoVault
from core.settings import Settings
from core.verification import Check
from demo.selfies import selfie
from tests.support import inprocess
from tests.support.people import person
from tests.support.photos import phone_selfie
from tests.support.processes import intake_output as intake
from tests.support.waiting import eventually

NEW_SECRET = "the-second-master-secret-after-the-rotation-0123456789"
SEED = 53


@pytest.fixture
async def lanes_declared(settings: Settings) -> AsyncIterator[None]:
    """The lane queues the dispatcher publishes to, emptied after the test (no lane runs but
    the photo lane, at the end)."""
    amqp = await aio_pika.connect(settings.amqp_url)
    async with amqp:
        channel = await amqp.channel()
        lanes = await topology.declare_lanes(channel, settings, tuple(Check))
        yield
        for queue in lanes.queues.values():
            await queue.purge()


async def register(settings: Settings, db: asyncpg.Pool, indexes: range) -> list[uuid.UUID]:
    """Register people ``indexes`` through an edge with ``settings``' keys, stored by a persist
    worker with the same keys."""
    return await inprocess.registered(settings, db, [person(i, seed=SEED) for i in indexes])


async def upload_photo(settings: Settings, db: asyncpg.Pool, index: int, who: uuid.UUID) -> None:
    await eventually(
        lambda: db.fetchval(
            "SELECT state FROM checks WHERE registration_id = $1 AND check_name = 'photo'", who
        ),
        lambda state: state == "waiting",
        20,
    )
    token = Keyring.from_settings(settings).access_token(who)
    async with inprocess.edge(settings) as client:
        response = await client.put(
            f"/v1/registrations/{who}/photo",
            data=selfie("one_face", 700 + index, side=256),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"},
        )
        assert response.status == 202


async def versions(db: asyncpg.Pool) -> dict[str, dict[int, int]]:
    found: dict[str, dict[int, int]] = {}
    for column, version, count in await rotation.versions(db):
        found.setdefault(column, {})[version] = count
    return found


async def all_read(db: asyncpg.Pool, keyring: Keyring, ids: dict[int, uuid.UUID]) -> None:
    """Every registration decrypts with ``keyring`` to what was sent."""
    async with db.acquire() as connection:
        for index, registration_id in ids.items():
            subject = await load_subject(connection, keyring, registration_id)
            assert subject is not None
            sent = person(index, seed=SEED)
            assert (subject.nik, subject.full_name) == (sent["nik"], sent["full_name"])


async def test_reads_before_during_and_after_a_rotation(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path, lanes_declared: None
) -> None:
    old = settings.replace(blob_dir=str(tmp_path / "blobs"))
    listed = old.replace(secret_keys=f"2:{NEW_SECRET}", secret_key_current=1)  # rollout, step 1
    new = old.replace(secret_keys=f"2:{NEW_SECRET}")  # step 2: the new key is current
    old_keys, new_keys = Keyring.from_settings(old), Keyring.from_settings(new)
    ids: dict[int, uuid.UUID] = {}

    async with inprocess.dispatcher(old, db):
        # Before: one key.
        ids.update(zip(range(4), await register(old, db, range(4)), strict=True))
        for index in (0, 1):
            await upload_photo(old, db, index, ids[index])
        await all_read(db, old_keys, ids)
        assert await versions(db) == {
            "registrations.nik_enc": {1: 4},
            "registrations.personal_enc": {1: 4},
            "photo_keys.key_enc": {1: 2},
        }

        # The rollout: an edge already writing the new key, a persist worker that lists it but
        # still writes the old one. It opens the edge's batches, sealed under the new key.
        forms = [person(i, seed=SEED) for i in range(4, 8)]
        async with inprocess.edge(new) as client:
            for index, form in zip(range(4, 8), forms, strict=True):
                response = await client.post("/v1/registrations", json=form)
                assert response.status == 202
                ids[index] = uuid.UUID((await response.json())["id"])
        async with inprocess.persist_worker(listed, db):
            await eventually(
                lambda: db.fetchval("SELECT count(*) FROM registrations"), lambda n: n == 8
            )
        # Every process on the new key.
        ids.update(zip(range(8, 12), await register(new, db, range(8, 12)), strict=True))
        await upload_photo(new, db, 8, ids[8])
        assert await versions(db) == {
            "registrations.nik_enc": {1: 8, 2: 4},
            "registrations.personal_enc": {1: 8, 2: 4},
            "photo_keys.key_enc": {1: 2, 2: 1},
        }
        await all_read(db, new_keys, ids)
        with pytest.raises(DecryptionError):
            await all_read(db, old_keys, ids)  # the new rows are not readable without it

        # During the re-encryption: one batch, then new registrations, then the rest.
        first = await rotation.reencrypt(db, new_keys, batch_size=3, max_batches=1)
        assert (first.registrations, first.photo_keys, first.batches, first.done) == (
            3,
            0,
            1,
            False,
        )
        assert (await versions(db))["registrations.nik_enc"] == {1: 5, 2: 7}
        await all_read(db, new_keys, ids)
        ids.update(zip(range(12, 14), await register(new, db, range(12, 14)), strict=True))
        rest = await rotation.reencrypt(db, new_keys, batch_size=3)
        assert (rest.registrations, rest.photo_keys, rest.skipped, rest.done) == (5, 2, 0, True)

    # After: everything under the new key, read by the new keyring only.
    assert await versions(db) == {
        "registrations.nik_enc": {2: 14},
        "registrations.personal_enc": {2: 14},
        "photo_keys.key_enc": {2: 3},
    }
    await all_read(db, new_keys, ids)
    for index in (0, 8, 13):
        with pytest.raises(DecryptionError):
            await all_read(db, old_keys, {index: ids[index]})
    again = await rotation.reencrypt(db, new_keys, batch_size=3)  # idempotent: nothing left
    assert (again.registrations, again.photo_keys, again.batches, again.done) == (0, 0, 0, True)

    # The photos stored under the old key are opened by the photo lane with their re-wrapped
    # keys (the blobs were not rewritten) and pass.
    photos = [ids[0], ids[1], ids[8]]
    async with inprocess.dispatcher(new, db), inprocess.lanes(new, db, (Check.PHOTO,)):
        await eventually(
            lambda: db.fetch(
                "SELECT state FROM checks WHERE check_name = 'photo' AND registration_id = ANY($1)",
                photos,
            ),
            lambda rows: [r["state"] for r in rows] == ["passed"] * 3,
            60,
        )

    # The NIK's look-up key did not change: a NIK registered before is a repeat after.
    repeat = {**person(0, seed=SEED), "email": "lagi0@contoh.co.id"}
    (repeated,) = await inprocess.registered(new, db, [repeat])
    row = await db.fetchrow(
        "SELECT status, reject_reason FROM registrations WHERE id = $1", repeated
    )
    assert (row["status"], row["reject_reason"]) == ("rejected", "duplicate_nik")


async def test_the_intake_keys_command(settings: Settings, db: asyncpg.Pool) -> None:
    await register(settings, db, range(20, 25))
    new = settings.replace(secret_keys=f"2:{NEW_SECRET}")
    status = intake(new, "keys", "status")
    assert "current key version: 2; readable: (1, 2)" in status
    assert "registrations.nik_enc\tversion 1\t5" in status
    first = intake(new, "keys", "reencrypt", "--batch", "2", "--max-batches", "1")
    assert "2 registration(s)" in first
    assert "not done: run it again to go on" in first
    rest = intake(new, "keys", "reencrypt", "--batch", "2")
    assert "3 registration(s), 0 photo key(s) in 2 batch(es); 0 photo(s) stored in clear" in rest
    assert rest.rstrip().endswith("done")
    status = intake(new, "keys", "status")
    assert "registrations.personal_enc\tversion 2\t5" in status
    assert "version 1" not in status
    # Without the key the rows are under now: refused, said plainly, nothing rewritten.
    refused = intake(settings, "keys", "reencrypt", code=1)
    assert "under a key version not listed" in refused
    assert "Traceback" not in refused
    for secret in (NEW_SECRET, settings.secret_key):
        assert secret not in status + first + rest + refused


async def test_photos_stored_in_clear_before_0013_are_sealed_by_the_job(
    settings: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """A photo uploaded before migration 0013 is a clear file named by its SHA-256, with no key
    row: the job stores it as the edge stores photos now, points its rows at the new name and
    deletes the clear file; a second run finds nothing."""
    first, second, lost = await register(settings, db, range(30, 33))
    keyring = Keyring.from_settings(settings)
    vault = PhotoVault(BlobStore(tmp_path / "blobs"), keyring)
    clear = phone_selfie()
    old_name = hashlib.sha256(clear).hexdigest()
    await vault.blobs.put(old_name, clear)  # as the store wrote it before
    missing = hashlib.sha256(b"a photo whose file is gone").hexdigest()
    for registration_id, name in ((first, old_name), (second, old_name), (lost, missing)):
        await db.execute(
            "INSERT INTO photos (registration_id, blob_hmac, size_bytes, phash, outcome)"
            " VALUES ($1, $2, $3, 42, 'ok')",
            registration_id,
            name,
            len(clear),
        )
    done = await rotation.reencrypt(db, keyring, batch_size=10, photos=vault)
    assert (done.clear_photos_sealed, done.skipped, done.done) == (1, 1, True)
    rows = await db.fetch(
        "SELECT registration_id, blob_hmac, phash, outcome FROM photos ORDER BY registration_id"
    )
    new_name = keyring.photo_name(clear)
    assert {r["registration_id"]: r["blob_hmac"] for r in rows} == {
        first: new_name,
        second: new_name,
        lost: missing,
    }
    assert {(r["phash"], r["outcome"]) for r in rows} == {(42, "ok")}  # the analysis is kept
    assert not vault.blobs.exists(old_name)
    opened = await vault.open(db, BlobRef(new_name, len(clear)), max_bytes=len(clear))
    assert opened == strip_metadata(clear)
    assert b"TelefonPintar-X9" not in vault.blobs.path(new_name).read_bytes()
    again = await rotation.reencrypt(db, keyring, batch_size=10, photos=vault)
    assert (again.clear_photos_sealed, again.skipped, again.done) == (0, 1, True)
