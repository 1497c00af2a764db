"""Retention and the person's rights on a real PostgreSQL and blob store: the retention job
erases exactly the registrations whose purpose ended and none still needed (a table of cases),
keeps what the once-in-a-lifetime rule needs, deletes a shared photo only with its last user,
and is resumable and idempotent; a person's data is exported whole and erased by NIK, leaving no
personal data in the rows or the blob directory, and a new registration of the NIK is still
refused; every action is in the audit log without the NIK."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from PIL import Image

from core import person, retention, rotation
from core.blobs import BlobRef, BlobStore
from core.checks import load_subject
from core.envelope import Envelope, Registration
from core.ids import uuid7
from core.keys import Keyring
from core.photo_strip import strip_metadata
from core.photo_vault import PhotoVault
from core.settings import Settings
from tests.support.people import person as a_person
from tests.support.photos import encode, sample
from tests.support.processes import intake_output as intake
from workers.store import RegistrationStore, prepare

SEED = 1717
NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=400)
RECENT = NOW - dt.timedelta(days=5)
PERIODS = retention.Periods(
    rejected=dt.timedelta(days=30),
    abandoned=dt.timedelta(days=30),
    unselected=dt.timedelta(days=60),
    selected=dt.timedelta(days=120),
)
MAX_BYTES = 5_000_000


def photo(seed: int) -> bytes:
    """A phone-like JPEG with a GPS position in its EXIF; distinct per seed."""
    exif = Image.Exif()
    exif[0x8825] = {1: "S", 2: (6.0, 54.0, 53.0), 3: "E", 4: (107.0, 36.0, 35.0)}
    return encode(sample("astronaut").rotate(seed), "JPEG", quality=80, exif=exif.tobytes())


@pytest.fixture
def vault(settings: Settings, tmp_path: Path) -> PhotoVault:
    return PhotoVault(BlobStore(tmp_path / "blobs"), Keyring.from_settings(settings))


async def register(db: asyncpg.Pool, keyring: Keyring, form: dict[str, Any]) -> uuid.UUID:
    """Store a registration as the persist worker does; its id."""
    registration = Registration(
        nik=form["nik"],
        full_name=form["full_name"],
        birth_place=form["birth_place"],
        birth_date=dt.date.fromisoformat(form["birth_date"]),
        email=form["email"],
        phone="+62" + form["phone"][1:],
    )
    envelope = Envelope(uuid7(), dt.datetime.now(dt.UTC), registration)
    await RegistrationStore(db).write(prepare(keyring, [envelope]))
    return envelope.id


async def set_row(db: asyncpg.Pool, who: uuid.UUID, **values: Any) -> None:
    columns = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=2))
    await db.execute(f"UPDATE registrations SET {columns} WHERE id = $1", who, *values.values())  # noqa: S608


async def add_check(
    db: asyncpg.Pool, who: uuid.UUID, name: str, state: str, at: dt.datetime
) -> None:
    await db.execute(
        "INSERT INTO checks (registration_id, check_name, state, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $4)",
        who,
        name,
        state,
        at,
    )


async def add_code(db: asyncpg.Pool, who: uuid.UUID, expires_at: dt.datetime) -> None:
    await db.execute(
        "INSERT INTO contact_codes (registration_id, channel, secret_hmac, expires_at, sent_at)"
        " VALUES ($1, 'email', $2, $3, $3)",
        who,
        os.urandom(32),
        expires_at,
    )


async def add_photo(db: asyncpg.Pool, vault: PhotoVault, who: uuid.UUID, upload: bytes) -> str:
    ref = await vault.store(db, upload)
    await db.execute(
        "INSERT INTO photos (registration_id, blob_hmac, size_bytes, phash, outcome)"
        " VALUES ($1, $2, $3, 12345, 'ok')",
        who,
        ref.name,
        ref.size_bytes,
    )
    return ref.name


async def add_wave(db: asyncpg.Pool, name: str, closes_at: dt.datetime, *, selected: bool) -> int:
    wave_id: int = await db.fetchval(
        "INSERT INTO waves (name, opens_at, closes_at, quota, policy)"
        " VALUES ($1, $2, $3, 10, '{}') RETURNING id",
        name,
        closes_at - dt.timedelta(days=3),
        closes_at,
    )
    if selected:
        await db.execute(
            "INSERT INTO wave_selections (wave_id, seed, started_at, finished_at, joined,"
            " eligible, selected, digest) VALUES ($1, $2, $3, $3, 0, 0, 0, $4)",
            wave_id,
            os.urandom(32),
            closes_at + dt.timedelta(minutes=1),
            os.urandom(32),
        )
    return wave_id


async def join(
    db: asyncpg.Pool, wave_id: int, who: uuid.UUID, outcome: str | None, *, sent: bool = True
) -> None:
    await db.execute(
        "INSERT INTO wave_joins (wave_id, registration_id, situation, joined_at, outcome)"
        " VALUES ($1, $2, 'laid_off', now(), $3)",
        wave_id,
        who,
        outcome,
    )
    if outcome is not None:
        await db.execute(
            "INSERT INTO notifications (wave_id, registration_id, channel, outcome, state,"
            " sent_at) VALUES ($1, $2, 'email', $3, $4, $5)",
            wave_id,
            who,
            outcome,
            "sent" if sent else "pending",
            NOW if sent else None,
        )
    if outcome == "selected":
        await db.execute(
            "INSERT INTO benefit_niks (nik_hmac, wave_id, registration_id)"
            " SELECT nik_hmac, $1, id FROM registrations WHERE id = $2",
            wave_id,
            who,
        )


async def audit_mark(db: asyncpg.Pool) -> int:
    """The last audit row so far (the table is append-only: earlier tests' rows stay)."""
    mark: int = await db.fetchval("SELECT coalesce(max(id), 0) FROM admin_audit")
    return mark


async def audit_rows(db: asyncpg.Pool, after: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT actor, action, subject, detail::text AS detail FROM admin_audit"
        " WHERE id > $1 ORDER BY id",
        after,
    )
    return rows


@dataclass
class World:
    ids: dict[str, uuid.UUID]
    forms: dict[str, dict[str, Any]]
    blobs: dict[str, str]


async def world(db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault) -> World:
    """One registration per case of the table, with its checks, codes, photo and waves."""
    names = [
        "rejected_old",
        "rejected_recent",
        "duplicate_old",
        "abandoned_old",
        "abandoned_recent",
        "abandoned_old_retrying",
        "abandoned_old_live_code",
        "review_old",
        "verified_recent",
        "verified_old",
        "verified_old_open_wave",
        "unselected_old_wave",
        "unselected_recent_wave",
        "unselected_old_pending_notification",
        "selected_old",
        "selected_recent",
        "shared_photo_old",
        "shared_photo_recent",
    ]
    forms = {name: a_person(i, seed=SEED) for i, name in enumerate(names)}
    forms["duplicate_old"] = forms["rejected_recent"]  # a second registration of one NIK
    ids = {name: await register(db, keyring, forms[name]) for name in names}
    old_wave = await add_wave(db, "old", OLD + dt.timedelta(days=10), selected=True)
    recent_wave = await add_wave(db, "recent", RECENT, selected=True)
    open_wave = await add_wave(db, "open", NOW + dt.timedelta(days=1), selected=False)

    for name in ("rejected_old", "rejected_recent", "shared_photo_old", "shared_photo_recent"):
        at = OLD if name.endswith("_old") else RECENT
        await set_row(
            db, ids[name], status="rejected", reject_reason="nik_not_found", decided_at=at
        )
        await add_check(db, ids[name], "dukcapil", "failed", at)
        await add_check(db, ids[name], "photo", "passed", at)
        await add_code(db, ids[name], at + dt.timedelta(days=2))
    await set_row(db, ids["duplicate_old"], stored_at=OLD)
    for name in ("abandoned_old", "abandoned_old_retrying", "abandoned_old_live_code"):
        await set_row(db, ids[name], stored_at=OLD)
        await add_check(db, ids[name], "email", "waiting", OLD)
        await add_code(db, ids[name], OLD + dt.timedelta(days=2))
    await add_check(db, ids["abandoned_old"], "dukcapil", "passed", OLD)
    await add_check(db, ids["abandoned_old_retrying"], "dukcapil", "retrying", OLD)
    await db.execute(  # its code was resent just now: the registrant is back
        "UPDATE contact_codes SET expires_at = $2, resent_at = $3 WHERE registration_id = $1",
        ids["abandoned_old_live_code"],
        NOW + dt.timedelta(hours=1),
        NOW,
    )
    await add_check(db, ids["abandoned_recent"], "email", "waiting", RECENT)
    await set_row(
        db, ids["review_old"], status="review", reject_reason="photo_reused", decided_at=OLD
    )
    await set_row(db, ids["verified_recent"], status="verified", decided_at=RECENT)
    for name in (
        "verified_old",
        "verified_old_open_wave",
        "unselected_old_wave",
        "unselected_recent_wave",
        "unselected_old_pending_notification",
        "selected_old",
        "selected_recent",
    ):
        await set_row(db, ids[name], status="verified", decided_at=OLD)
        await add_check(db, ids[name], "email", "passed", OLD)
    await join(db, open_wave, ids["verified_old_open_wave"], None)
    await join(db, old_wave, ids["unselected_old_wave"], "not_selected")
    await join(db, recent_wave, ids["unselected_recent_wave"], "not_selected")
    await join(db, old_wave, ids["unselected_old_pending_notification"], "not_selected", sent=False)
    await join(db, old_wave, ids["selected_old"], "selected")
    await join(db, recent_wave, ids["selected_recent"], "selected")

    blobs = {}
    for i, name in enumerate(names):
        if name.startswith("shared_photo"):
            continue
        blobs[name] = await add_photo(db, vault, ids[name], photo(i))
    shared = photo(99)
    for name in ("shared_photo_old", "shared_photo_recent"):
        blobs[name] = await add_photo(db, vault, ids[name], shared)
    return World(ids, forms, blobs)


ERASED = {
    "rejected_old": ("rejected", "nik_not_found", "rejected"),
    "duplicate_old": ("rejected", "duplicate_nik", "rejected"),
    "abandoned_old": ("rejected", "abandoned", "abandoned"),
    "verified_old": ("verified", None, "unselected"),
    "unselected_old_wave": ("verified", None, "unselected"),
    "selected_old": ("verified", None, "selected"),
    "shared_photo_old": ("rejected", "nik_not_found", "rejected"),
}


async def snapshot(db: asyncpg.Pool) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await db.fetch(
        "SELECT id, nik_hmac, nik_enc, personal_enc, status, reject_reason, erased_at,"
        " (SELECT count(*) FROM contact_codes k WHERE k.registration_id = r.id) AS codes,"
        " (SELECT blob_hmac FROM photos p WHERE p.registration_id = r.id) AS photo"
        " FROM registrations r"
    )
    return {row["id"]: row for row in rows}


async def test_retention_erases_exactly_the_ended_and_keeps_what_is_needed(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    audit_from = await audit_mark(db)
    w = await world(db, keyring, vault)
    before = await snapshot(db)
    claims_before = await db.fetch("SELECT * FROM nik_claims ORDER BY nik_hmac")
    benefits_before = await db.fetch("SELECT * FROM benefit_niks ORDER BY nik_hmac")

    dry = await retention.run(db, vault.blobs, PERIODS, batch=3, dry_run=True, now=NOW)
    assert dry.to_obj()["registrations"] == {
        "rejected": 3,
        "abandoned": 1,
        "unselected": 2,
        "selected": 1,
    }
    assert await snapshot(db) == before
    assert await audit_rows(db, audit_from) == []

    # Resumable: the table is read 3 ids at a time; one batch (the first page with candidates),
    # then the rest.
    pages = [sorted(w.ids.values())[i : i + 3] for i in range(0, len(w.ids), 3)]
    to_erase = {w.ids[name] for name in ERASED}
    first_page = next(set(page) & to_erase for page in pages if set(page) & to_erase)
    first = await retention.run(db, vault.blobs, PERIODS, batch=3, max_batches=1, now=NOW)
    assert (first.batches, first.done) == (1, False)
    erased_first = {
        row["id"]
        for row in await db.fetch("SELECT id FROM registrations WHERE erased_at IS NOT NULL")
    }
    assert erased_first == first_page
    assert sum(first.by_why.values()) == len(first_page)
    rest = await retention.run(db, vault.blobs, PERIODS, batch=3, now=NOW)
    assert rest.done
    assert sum(first.by_why.values()) + sum(rest.by_why.values()) == len(ERASED)
    assert first.by_why + rest.by_why == {
        "rejected": 3,
        "abandoned": 1,
        "unselected": 2,
        "selected": 1,
    }

    after = await snapshot(db)
    erased = {name for name, who in w.ids.items() if after[who]["erased_at"] is not None}
    assert erased == set(ERASED)
    for name, who in w.ids.items():
        row, was = after[who], before[who]
        assert row["nik_hmac"] == was["nik_hmac"]
        if name in ERASED:
            status, reason, _ = ERASED[name]
            assert (row["status"], row["reject_reason"]) == (status, reason), name
            assert (row["nik_enc"], row["personal_enc"], row["codes"], row["photo"]) == (
                None,
                None,
                0,
                None,
            ), name
            async with db.acquire() as connection:
                assert await load_subject(connection, keyring, who) is None
        else:
            assert row == was, name
    # Only the erased ones' own blobs and keys are gone; the shared one stays with its user.
    for name, blob in w.blobs.items():
        gone = name in ERASED and name != "shared_photo_old"
        assert vault.blobs.exists(blob) is not gone, name
        key = await db.fetchval("SELECT count(*) FROM photo_keys WHERE blob_hmac = $1", blob)
        assert key == (0 if gone else 1), name
    shared = w.blobs["shared_photo_recent"]
    assert await vault.open(db, BlobRef(shared, 0), max_bytes=MAX_BYTES) == strip_metadata(
        photo(99)
    )
    # The abandoned one is closed: its waiting check failed, nobody works on it again.
    assert (
        await db.fetchval(
            "SELECT state || ':' || reason FROM checks WHERE registration_id = $1 AND check_name"
            " = 'email'",
            w.ids["abandoned_old"],
        )
        == "failed:abandoned"
    )
    assert await db.fetch("SELECT * FROM nik_claims ORDER BY nik_hmac") == claims_before
    assert await db.fetch("SELECT * FROM benefit_niks ORDER BY nik_hmac") == benefits_before
    audited = await audit_rows(db, audit_from)
    assert {row["action"] for row in audited} == {"retention.erase"}
    assert {row["actor"] for row in audited} == {"retention"}
    assert sorted(i for row in audited for i in orjson.loads(row["detail"])["registrations"]) == (
        sorted(str(w.ids[name]) for name in ERASED)
    )

    # Idempotent: nothing more to do, nothing changed, nothing audited.
    again = await retention.run(db, vault.blobs, PERIODS, batch=3, now=NOW)
    assert sum(again.by_why.values()) == 0
    assert again.done
    assert await snapshot(db) == after
    assert len(await audit_rows(db, audit_from)) == len(audited)

    # The shared photo goes with its last user.
    await set_row(db, w.ids["shared_photo_recent"], decided_at=OLD)
    last = await retention.run(db, vault.blobs, PERIODS, now=NOW)
    assert last.by_why == {"rejected": 1}
    assert last.blobs_deleted == 1
    assert not vault.blobs.exists(shared)
    assert await db.fetchval("SELECT count(*) FROM photo_keys WHERE blob_hmac = $1", shared) == 0


async def test_an_orphan_photo_key_and_its_blob_are_swept_after_a_day(
    db: asyncpg.Pool, vault: PhotoVault
) -> None:
    old = await vault.store(db, photo(1))
    fresh = await vault.store(db, photo(2))
    await db.execute("UPDATE photo_keys SET created_at = $2 WHERE blob_hmac = $1", old.name, OLD)
    report = await retention.run(db, vault.blobs, PERIODS, now=NOW)
    assert (report.orphan_keys, report.blobs_deleted) == (1, 1)
    assert not vault.blobs.exists(old)
    assert vault.blobs.exists(fresh)
    assert await db.fetchval("SELECT count(*) FROM photo_keys") == 1


def files_in(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def erase_everything_searchable(
    db: asyncpg.Pool, blob_root: Path, form: dict[str, Any], blob: str
) -> None:
    """No personal value of ``form`` in any row of any table, nor its blob on disk."""
    secrets = [
        form["nik"],
        form["full_name"],
        form["email"],
        form["phone"][1:],
        form["birth_date"],
        form["birth_place"],
    ]
    tables = [
        row["relname"]
        for row in await db.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'public'"
        )
    ]
    for table in tables:
        text = "\n".join(
            row["t"]
            for row in await db.fetch(f"SELECT t::text AS t FROM {table} t")  # noqa: S608
        )
        for secret in secrets:
            assert secret not in text, (table, secret)
            assert secret.encode().hex() not in text, (table, secret)
    files = await asyncio.to_thread(files_in, blob_root)
    assert blob not in files
    for content in files.values():
        assert all(secret.encode() not in content for secret in secrets)


async def test_export_and_erase_by_nik(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault, settings: Settings
) -> None:
    audit_from = await audit_mark(db)
    form = a_person(1, seed=SEED + 1)
    other = a_person(2, seed=SEED + 1)
    first = await register(db, keyring, form)
    second = await register(db, keyring, form)  # a duplicate of the same person
    bystander = await register(db, keyring, other)
    await set_row(db, first, status="received", dispatched_at=NOW)
    await add_check(db, first, "email", "passed", NOW)
    await add_check(db, first, "dukcapil", "pending", NOW)
    await add_check(db, first, "photo", "pending", NOW)
    await add_code(db, first, NOW + dt.timedelta(hours=1))
    upload = photo(7)
    blob = await add_photo(db, vault, first, upload)
    await add_photo(db, vault, bystander, photo(8))
    open_wave = await add_wave(db, "open", NOW + dt.timedelta(days=1), selected=False)
    await join(db, open_wave, first, None)

    async with db.acquire() as connection, connection.transaction():
        document = await person.export(
            connection, keyring, vault, form["nik"], actor="ops:ana", max_photo_bytes=MAX_BYTES
        )
    exported = orjson.loads(person.dumps(document))
    assert [r["id"] for r in exported["registrations"]] == [str(first), str(second)]
    mine = exported["registrations"][0]
    assert mine["nik"] == form["nik"]
    assert mine["personal"]["full_name"] == form["full_name"]
    assert mine["personal"]["email"] == form["email"]
    assert mine["personal"]["birth_date"] == form["birth_date"]
    assert {c["check_name"]: c["state"] for c in mine["checks"]} == {
        "email": "passed",
        "dukcapil": "pending",
        "photo": "pending",
    }
    assert [c["channel"] for c in mine["contact_codes"]] == ["email"]
    assert "secret_hmac" not in mine["contact_codes"][0]
    assert base64.b64decode(mine["photo"]["content_base64"]) == strip_metadata(upload)
    assert [j["wave"] for j in mine["wave_joins"]] == ["open"]
    assert exported["registrations"][1]["reason"] == "duplicate_nik"
    assert exported["nik_claim"]["registration_id"] == str(first)

    erased = await person.erase_now(
        db, keyring, vault.blobs, form["nik"], actor="ops:ana", reason="ticket 42"
    )
    assert sorted(erased["erased"]) == sorted([str(first), str(second)])
    assert erased["blobs_deleted"] == 1
    row = await db.fetchrow("SELECT * FROM registrations WHERE id = $1", first)
    assert (row["status"], row["reject_reason"], row["nik_enc"], row["personal_enc"]) == (
        "rejected",
        "erased",
        None,
        None,
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM checks WHERE registration_id = $1 AND state <> 'passed'"
            " AND NOT (state = 'failed' AND reason = 'erased')",
            first,
        )
        == 0
    )
    assert (
        await db.fetchval("SELECT count(*) FROM wave_joins WHERE registration_id = $1", first) == 0
    )
    await erase_everything_searchable(db, vault.blobs.root, form, blob)
    # The bystander is untouched.
    async with db.acquire() as connection:
        subject = await load_subject(connection, keyring, bystander)
    assert subject is not None
    assert subject.full_name == other["full_name"]

    # The export after the erasure: the registrations and the outcome, no personal data.
    async with db.acquire() as connection, connection.transaction():
        after = await person.export(
            connection, keyring, vault, form["nik"], actor="ops:ana", max_photo_bytes=MAX_BYTES
        )
    assert [(r["nik"], r["personal"], r["photo"]) for r in after["registrations"]] == [
        (None, None, None),
        (None, None, None),
    ]

    # intake keys status counts ciphertexts by version: an erased row has none.
    assert all(version is not None for _, version, _ in await rotation.versions(db))

    # Once in a lifetime: the NIK is still refused.
    again = await register(db, keyring, form)
    assert (
        await db.fetchval("SELECT reject_reason FROM registrations WHERE id = $1", again)
        == "duplicate_nik"
    )

    audited = await audit_rows(db, audit_from)
    assert [(r["actor"], r["action"]) for r in audited] == [
        ("ops:ana", "person.export"),
        ("ops:ana", "person.erase"),
        ("ops:ana", "person.export"),
    ]
    hashed = keyring.nik_hmac(form["nik"]).hex()
    assert {r["subject"] for r in audited} == {f"nik_hmac:{hashed}"}
    assert "ticket 42" in audited[1]["detail"]
    assert all(form["nik"] not in r["detail"] + r["subject"] for r in audited)


async def test_an_erased_beneficiary_is_still_refused(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    form = a_person(3, seed=SEED + 2)
    who = await register(db, keyring, form)
    await set_row(db, who, status="verified", decided_at=RECENT)
    wave = await add_wave(db, "recent", RECENT, selected=True)
    await join(db, wave, who, "selected")
    await person.erase_now(db, keyring, vault.blobs, form["nik"], actor="ops:ana", reason="asked")
    assert await db.fetchval("SELECT status FROM registrations WHERE id = $1", who) == "verified"
    again = await register(db, keyring, form)
    assert (
        await db.fetchval("SELECT reject_reason FROM registrations WHERE id = $1", again)
        == "benefit_received"
    )
    # The selection's record stays: the join's outcome, the benefit.
    assert await db.fetchval("SELECT outcome FROM wave_joins WHERE registration_id = $1", who) == (
        "selected"
    )


async def test_the_commands(
    db: asyncpg.Pool, keyring: Keyring, settings: Settings, tmp_path: Path
) -> None:
    import dataclasses

    settings = dataclasses.replace(settings, blob_dir=str(tmp_path / "blobs"))
    vault = PhotoVault(BlobStore(tmp_path / "blobs"), keyring)
    audit_from = await audit_mark(db)
    form = a_person(4, seed=SEED + 3)
    who = await register(db, keyring, form)
    await set_row(db, who, status="rejected", reject_reason="nik_not_found", decided_at=OLD)
    blob = await add_photo(db, vault, who, photo(3))

    counted = orjson.loads(intake(settings, "retention", "run", "--dry-run"))
    assert counted["registrations"]["rejected"] == 1
    assert counted["dry_run"]
    assert vault.blobs.exists(blob)

    exported = orjson.loads(intake(settings, "person", "export", "--nik", form["nik"]))
    assert exported["registrations"][0]["personal"]["phone"] == "+62" + form["phone"][1:]
    assert "16 digits" in intake(settings, "person", "export", "--nik", "12", code=2)

    done = orjson.loads(intake(settings, "retention", "run"))
    assert done["registrations"]["rejected"] == 1
    assert done["blobs_deleted"] == 1
    assert not vault.blobs.exists(blob)
    erased = orjson.loads(
        intake(settings, "person", "erase", "--nik", form["nik"], "--reason", "asked")
    )
    assert (erased["registrations"], erased["erased"]) == ([str(who)], [])  # by the job before
    intake(
        settings,
        "person",
        "erase",
        "--nik",
        a_person(5, seed=SEED + 3)["nik"],
        "--reason",
        "x",
        code=1,
    )
    actors = await audit_rows(db, audit_from)
    assert {r["actor"] for r in actors} >= {"retention"}
    assert any(r["actor"].startswith("cli:") for r in actors)

    # The CronJob's weekly file sweep: the first whole pass of the week walks the blob files.
    weekly = ("retention", "run", "--sweep-files-every", "7")
    assert orjson.loads(intake(settings, *weekly))["file_sweep"] is True
    assert orjson.loads(intake(settings, *weekly))["file_sweep"] is False
    assert await db.fetchval("SELECT count(*) FROM retention_runs WHERE outcome = 'ok'") == 4


ADMIN_TOKEN = "an-operators-token-for-the-persons-routes"


async def test_the_admin_routes(
    db: asyncpg.Pool, keyring: Keyring, settings: Settings, tmp_path: Path
) -> None:
    import hashlib

    from aiohttp.test_utils import TestClient, TestServer

    from admin.app import create_app

    audit_from = await audit_mark(db)
    settings = settings.replace(
        blob_dir=str(tmp_path / "blobs"),
        admin_tokens=f"ops-budi:{hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}",
    )
    vault = PhotoVault(BlobStore(tmp_path / "blobs"), keyring)
    form = a_person(6, seed=SEED + 4)
    who = await register(db, keyring, form)
    upload = photo(6)
    blob = await add_photo(db, vault, who, upload)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with TestClient(TestServer(create_app(settings))) as admin:
        for body, field in (({}, "nik"), ({"nik": "123"}, "nik"), ({"nik": form["nik"]}, "reason")):
            response = await admin.post("/v1/persons/erase", json=body, headers=auth)
            assert response.status == 422, body
            assert (await response.json())["errors"][0]["field"] == field
        unknown = await admin.post(
            "/v1/persons/export", json={"nik": a_person(7, seed=SEED + 4)["nik"]}, headers=auth
        )
        assert unknown.status == 404
        response = await admin.post("/v1/persons/export", json={"nik": form["nik"]}, headers=auth)
        assert response.status == 200
        exported = await response.json()
        assert exported["registrations"][0]["personal"]["full_name"] == form["full_name"]
        assert base64.b64decode(
            exported["registrations"][0]["photo"]["content_base64"]
        ) == strip_metadata(upload)
        response = await admin.post(
            "/v1/persons/erase", json={"nik": form["nik"], "reason": "ticket 7"}, headers=auth
        )
        assert response.status == 200
        assert (await response.json())["erased"] == [str(who)]
    assert not vault.blobs.exists(blob)
    row = await db.fetchrow("SELECT nik_enc, personal_enc FROM registrations WHERE id = $1", who)
    assert tuple(row) == (None, None)
    audited = await audit_rows(db, audit_from)
    assert [(r["actor"], r["action"]) for r in audited] == [
        ("ops-budi", "person.export"),
        ("ops-budi", "person.export"),
        ("ops-budi", "person.erase"),
    ]
    assert all(form["nik"] not in r["detail"] + r["subject"] for r in audited)


async def test_the_status_route_answers_for_an_erased_registration(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault, settings: Settings
) -> None:
    from tests.support import inprocess

    form = a_person(8, seed=SEED + 5)
    who = await register(db, keyring, form)
    await set_row(db, who, dispatched_at=NOW)
    await add_check(db, who, "photo", "waiting", NOW)
    await person.erase_now(db, keyring, vault.blobs, form["nik"], actor="ops:ana", reason="asked")
    async with inprocess.edge(settings) as client:
        response = await client.get(
            f"/v1/registrations/{who}",
            headers={"Authorization": f"Bearer {keyring.access_token(who)}"},
        )
        assert response.status == 200
        body = await response.json()
    assert (body["status"], body["reason"]) == ("rejected", "erased")
    assert body["checks"]["photo"]["state"] == "failed"
    assert form["full_name"] not in orjson.dumps(body).decode()


async def test_a_join_being_written_keeps_the_registration_from_the_job(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    """A candidate whose join of an open wave is being inserted (its transaction not committed)
    is skipped, not erased: the join's foreign key holds a key-share lock on the registration,
    which the job's FOR UPDATE SKIP LOCKED passes over; once the join commits it is in flight."""
    form = a_person(9, seed=SEED + 6)
    who = await register(db, keyring, form)
    await set_row(db, who, status="verified", decided_at=OLD)
    open_wave = await add_wave(db, "open", NOW + dt.timedelta(days=1), selected=False)
    async with db.acquire() as joining:
        transaction = joining.transaction()
        await transaction.start()
        await joining.execute(
            "INSERT INTO wave_joins (wave_id, registration_id, situation, joined_at)"
            " VALUES ($1, $2, 'laid_off', now())",
            open_wave,
            who,
        )
        during = await retention.run(db, vault.blobs, PERIODS, now=NOW)
        await transaction.commit()
    assert sum(during.by_why.values()) == 0
    assert await db.fetchval("SELECT erased_at FROM registrations WHERE id = $1", who) is None
    after = await retention.run(db, vault.blobs, PERIODS, now=NOW)
    assert sum(after.by_why.values()) == 0  # joined an open wave: in flight


async def test_the_selection_counts_an_erased_joiner_not_verified(
    db: asyncpg.Pool, keyring: Keyring
) -> None:
    from core import selection
    from core.waves import Waves

    kept, erased = a_person(10, seed=SEED + 7), a_person(11, seed=SEED + 7)
    ids = [await register(db, keyring, form) for form in (kept, erased)]
    wave_id = await add_wave(db, "closing", NOW - dt.timedelta(minutes=1), selected=False)
    for who in ids:
        await set_row(db, who, status="verified", decided_at=RECENT)
        await join(db, wave_id, who, None)
    await set_row(db, ids[1], nik_enc=None, personal_enc=None, erased_at=NOW)  # a race's result
    wave = await Waves(db).get("closing")
    async with db.acquire() as connection:
        joiners = await selection.load_joiners(connection, keyring, wave, NOW)
    reasons = {j.registration_id: j.ineligible for j in joiners}
    assert reasons == {ids[0]: None, ids[1]: selection.Ineligible.NOT_VERIFIED}


def test_the_cluster_runs_the_job_daily_with_the_blob_volume() -> None:
    """k8s/retention.yaml: a CronJob running a command the CLI parses, never two at once,
    sweeping the blob files weekly, with the blob volume at INTAKE_BLOB_DIR and the settings it
    requires."""
    from cli.main import build_parser
    from tests.support import kustomize

    docs = kustomize.build()
    (cron,) = [
        d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "intake-retention"
    ]
    (config,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "intake-config"
    ]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action, args.dry_run) == ("retention", "run", False)
    # The blob volume is walked by the first whole pass of each week, not every night.
    assert (args.sweep_files, args.sweep_files_every) == (False, 7)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config["data"]["INTAKE_BLOB_DIR"] in mounts
    env = {e["name"] for e in container["env"]}
    assert {"INTAKE_SECRET_KEY_FILE", "INTAKE_DATABASE_URL_FILE"} <= env


async def test_the_file_sweep_deletes_only_what_nothing_names(
    db: asyncpg.Pool, keyring: Keyring, vault: PhotoVault
) -> None:
    """--sweep-files: an old file without key or photo row goes (an erasure's file after a crash),
    and an old temporary; a keyed file, a fresh unkeyed one and a legacy clear photo a row
    names stay."""
    form = a_person(12, seed=SEED + 8)
    who = await register(db, keyring, form)
    keyed = (await vault.store(db, photo(21))).name
    legacy = os.urandom(32).hex()
    await db.execute(
        "INSERT INTO photos (registration_id, blob_hmac, size_bytes) VALUES ($1, $2, 3)",
        who,
        legacy,
    )
    orphan, fresh = os.urandom(32).hex(), os.urandom(32).hex()
    for name in (legacy, orphan, fresh):
        await vault.blobs.put(name, b"sealed bytes")
    tmp = vault.blobs.root / ".tmp"
    stale = tmp / "crashed-write"
    stale.write_bytes(b"x")
    long_ago = (NOW - dt.timedelta(days=3)).timestamp()
    for path in (
        vault.blobs.path(keyed),
        vault.blobs.path(legacy),
        vault.blobs.path(orphan),
        stale,
    ):
        os.utime(path, (long_ago, long_ago))
    report = await retention.run(db, vault.blobs, PERIODS, now=NOW, files=True)
    assert report.files_swept == 2
    assert {n: vault.blobs.exists(n) for n in (keyed, legacy, orphan, fresh)} == {
        keyed: True,
        legacy: True,
        orphan: False,
        fresh: True,
    }
    assert not stale.exists()
    without = await retention.run(db, vault.blobs, PERIODS, now=NOW)
    assert without.files_swept == 0
