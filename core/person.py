"""The person's rights of access and erasure (UU PDP No. 27/2022), found by NIK: every
registration of the NIK is found by its keyed hash (``registrations.nik_hmac``), so the NIK is
used only to compute it and never stored or logged.

- :func:`export`: one document of everything stored about the person, decrypted: each
  registration's personal data, its outcome and checks, its contact codes' history (never a
  secret: only their HMACs are stored), its photo (decrypted, as base64), test attempts, wave
  joins, notifications, and the once-in-a-lifetime records (claim, benefit).
- :func:`erase`: what the retention job does (``core.retention.erase``), at once and whatever the
  registration's state: one not decided yet is rejected as ``erased`` (its open checks failed,
  its joins of waves not selected yet withdrawn, its pending notifications then found without
  anyone to tell). Kept: the NIK's HMAC and the outcome, which the once-in-a-lifetime rule needs.

Each action is one row of ``admin_audit`` with the actor, in the action's transaction; its
subject is the NIK's HMAC (hex), never the NIK.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Any

import asyncpg
import orjson

from core import audit, retention
from core.blobs import BlobError, BlobRef, BlobStore
from core.keys import DecryptionError, Keyring
from core.photo_vault import PhotoVault

_NIK = re.compile(r"[0-9]{16}")
ERASED_REASON = "erased"

_REGISTRATIONS_SQL = """
SELECT id, nik_enc, personal_enc, status, reject_reason, priority, submitted_at, stored_at,
       dispatched_at, decided_at, erased_at
FROM registrations WHERE nik_hmac = $1 ORDER BY submitted_at, id
"""
_CHECKS_SQL = """
SELECT check_name, state, attempts, reason, created_at, updated_at, finished_at
FROM checks WHERE registration_id = $1 ORDER BY check_name
"""
_CODES_SQL = """
SELECT channel, generation, expires_at, attempts_left, send_started_at, sent_at, used_at,
       resends, resent_at
FROM contact_codes WHERE registration_id = $1 ORDER BY channel
"""
_PHOTO_SQL = """
SELECT blob_hmac, size_bytes, uploaded_at, phash, analysed_at, outcome
FROM photos WHERE registration_id = $1
"""
_ATTEMPTS_SQL = """
SELECT w.name AS wave, t.attempt, t.served_at, t.deadline_at, t.submitted_at, t.correct,
       t.score, t.scored_at
FROM test_attempts t JOIN waves w ON w.id = t.wave_id
WHERE t.registration_id = $1 ORDER BY t.served_at, t.attempt
"""
_JOINS_SQL = """
SELECT w.name AS wave, j.situation, j.joined_at, j.outcome, j.rank
FROM wave_joins j JOIN waves w ON w.id = j.wave_id
WHERE j.registration_id = $1 ORDER BY j.joined_at
"""
_NOTIFICATIONS_SQL = """
SELECT w.name AS wave, n.channel, n.outcome, n.state, n.created_at, n.sent_at
FROM notifications n JOIN waves w ON w.id = n.wave_id
WHERE n.registration_id = $1 ORDER BY n.created_at, n.channel
"""
_CLAIM_SQL = "SELECT registration_id, claimed_at FROM nik_claims WHERE nik_hmac = $1"
_BENEFIT_SQL = """
SELECT w.name AS wave, b.registration_id, b.granted_at
FROM benefit_niks b JOIN waves w ON w.id = b.wave_id WHERE b.nik_hmac = $1
"""
_LOCK_SQL = """
SELECT id FROM registrations WHERE nik_hmac = $1 ORDER BY id FOR UPDATE
"""


class InvalidNik(ValueError):
    """Not a NIK (16 digits)."""


def nik_hmac(keyring: Keyring, nik: str) -> bytes:
    """The NIK's keyed hash, the only form in which it is looked up; raises :class:`InvalidNik`."""
    if not _NIK.fullmatch(nik):
        raise InvalidNik("a NIK is 16 digits")
    return keyring.nik_hmac(nik)


def subject_of(hashed: bytes) -> str:
    """The audit subject of a person: their NIK's HMAC, never the NIK."""
    return f"nik_hmac:{hashed.hex()}"


async def export(
    connection: asyncpg.Connection,
    keyring: Keyring,
    vault: PhotoVault,
    nik: str,
    *,
    actor: str,
    max_photo_bytes: int,
) -> dict[str, Any]:
    """Everything stored about the person with ``nik``, decrypted; the export audited (the
    caller's transaction). Photos as base64 (``content_base64``; None if it cannot be read)."""
    hashed = nik_hmac(keyring, nik)
    registrations = []
    for row in await connection.fetch(_REGISTRATIONS_SQL, hashed):
        registration_id: uuid.UUID = row["id"]
        registrations.append(
            {
                "id": str(registration_id),
                **_personal(keyring, row),
                "status": row["status"],
                "reason": row["reject_reason"],
                "priority": row["priority"],
                "submitted_at": row["submitted_at"],
                "stored_at": row["stored_at"],
                "dispatched_at": row["dispatched_at"],
                "decided_at": row["decided_at"],
                "erased_at": row["erased_at"],
                "checks": _rows(await connection.fetch(_CHECKS_SQL, registration_id)),
                "contact_codes": _rows(await connection.fetch(_CODES_SQL, registration_id)),
                "photo": await _photo(connection, vault, registration_id, max_photo_bytes),
                "test_attempts": _rows(await connection.fetch(_ATTEMPTS_SQL, registration_id)),
                "wave_joins": _rows(await connection.fetch(_JOINS_SQL, registration_id)),
                "notifications": _rows(await connection.fetch(_NOTIFICATIONS_SQL, registration_id)),
            }
        )
    claim = await connection.fetchrow(_CLAIM_SQL, hashed)
    document = {
        "nik": nik,
        "exported_at": dt.datetime.now(dt.UTC),
        "registrations": registrations,
        "nik_claim": _row(claim) if claim is not None else None,
        "benefit": _rows(await connection.fetch(_BENEFIT_SQL, hashed)),
        "kept_for_ever": "the NIK's keyed hash with its claim and benefit (once in a lifetime)",
    }
    await audit.record(
        connection,
        actor,
        "person.export",
        subject_of(hashed),
        {"registrations": [r["id"] for r in registrations]},
    )
    return document


async def erase(
    connection: asyncpg.Connection, keyring: Keyring, nik: str, *, actor: str, reason: str
) -> tuple[list[uuid.UUID], retention.Erased]:
    """Erase the person's personal data now, in the caller's transaction (delete the returned
    blobs after it commits), audited with ``reason`` (the request's ground, e.g. a ticket):
    the person's registrations, and what was erased now (not what was erased before)."""
    hashed = nik_hmac(keyring, nik)
    ids = [row["id"] for row in await connection.fetch(_LOCK_SQL, hashed)]
    erased = await retention.erase(
        connection, ids, withdraw_reason=ERASED_REASON, withdraw_joins=True
    )
    await audit.record(
        connection,
        actor,
        "person.erase",
        subject_of(hashed),
        {
            "reason": reason,
            "registrations": [str(i) for i in ids],
            "erased": [str(i) for i in erased.registrations],
            "photos": erased.photos,
        },
    )
    return ids, erased


async def erase_now(
    pool: asyncpg.Pool, keyring: Keyring, blobs: BlobStore, nik: str, *, actor: str, reason: str
) -> dict[str, Any]:
    """:func:`erase` in a transaction of its own, then the blobs nobody needs deleted."""
    async with pool.acquire() as connection, connection.transaction():
        ids, erased = await erase(connection, keyring, nik, actor=actor, reason=reason)
    deleted = await retention.delete_blobs(blobs, erased.blobs)
    return {
        "registrations": [str(i) for i in ids],
        "erased": [str(i) for i in erased.registrations],
        "contact_codes": erased.contact_codes,
        "photos": erased.photos,
        "blobs_deleted": deleted,
    }


def dumps(document: dict[str, Any]) -> bytes:
    """The export as JSON (timestamps ISO 8601, ids as strings)."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def _personal(keyring: Keyring, row: asyncpg.Record) -> dict[str, Any]:
    if row["personal_enc"] is None or row["nik_enc"] is None:
        return {"nik": None, "personal": None}
    context = row["id"].bytes
    try:
        return {
            "nik": keyring.decrypt(row["nik_enc"], context).decode(),
            "personal": orjson.loads(keyring.decrypt(row["personal_enc"], context)),
        }
    except DecryptionError:
        return {"nik": None, "personal": None, "unreadable": True}


async def _photo(
    connection: asyncpg.Connection, vault: PhotoVault, registration_id: uuid.UUID, max_bytes: int
) -> dict[str, Any] | None:
    row = await connection.fetchrow(_PHOTO_SQL, registration_id)
    if row is None:
        return None
    photo = _row(row)
    try:
        content = await vault.open(
            connection, BlobRef(row["blob_hmac"], row["size_bytes"]), max_bytes=max_bytes
        )
    except BlobError:
        photo["content_base64"] = None
    else:
        photo["content_base64"] = base64.b64encode(content).decode()
    return photo


def _row(row: asyncpg.Record) -> dict[str, Any]:
    return {
        key: str(value) if isinstance(value, uuid.UUID) else value for key, value in row.items()
    }


def _rows(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [_row(row) for row in rows]
