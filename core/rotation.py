"""Re-encryption under the current key version, after a rotation (``intake keys reencrypt``).

A rotation lists a new master secret (``INTAKE_SECRET_KEYS``) and makes it current: from then
on new ciphertexts are made under it, and every listed version is read, so nothing stored needs
to change at once. This job then rewrites what is stored under older versions, so that an old
secret can stop mattering: the registrations' ``nik_enc`` and ``personal_enc`` (decrypted and
encrypted again, bound to the same registration id) and the photos' wrapped data keys
(``photo_keys.key_enc``, unwrapped and wrapped again: the photo blobs are not rewritten).

- **Batched**: a batch of ``batch_size`` rows per transaction, found in key order after the last
  one (keyset pagination), so a batch costs the same at the end of the table as at its start.
- **Resumable and idempotent**: a row is chosen by the version byte of its ciphertext, so a run
  stopped anywhere (a crash, ``max_batches``) and started again picks up what is left, and a
  run with nothing left changes nothing.
- **Safe beside the system**: each row is rewritten only if it still holds the ciphertext read
  (compare and set), so a concurrent change (an erasure) is never undone. The edges and workers
  keep running: they read both versions throughout.

The keyed hashes (the NIK's HMAC, a photo's name, the one-time secrets') are not touched: they
stay on version 1's key for ever (``core.keys``).

Given the photo store, the job also seals the photos stored in clear before migration 0013
(a file named by the SHA-256 of its bytes, and no key row): each is stored again as the edge
stores a photo now (metadata stripped, sealed, under its keyed name), the rows that name it are
pointed at the new name in one transaction, and the clear file is deleted once that committed.
A crash between the commit and the deletion leaves the clear file, unreferenced.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from core.blobs import BlobError
from core.keys import Keyring
from core.photo_vault import PhotoVault

_REGISTRATIONS_SQL = """
SELECT id, nik_enc, personal_enc FROM registrations
WHERE id > $1 AND (get_byte(nik_enc, 0) <> $2 OR get_byte(personal_enc, 0) <> $2)
ORDER BY id
LIMIT $3
"""
_REWRITE_REGISTRATIONS_SQL = """
UPDATE registrations r SET nik_enc = b.nik_new, personal_enc = b.personal_new
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[])
    AS b (id, nik_old, personal_old, nik_new, personal_new)
WHERE r.id = b.id AND r.nik_enc = b.nik_old AND r.personal_enc = b.personal_old
"""
_PHOTO_KEYS_SQL = """
SELECT blob_hmac, key_enc FROM photo_keys
WHERE blob_hmac > $1 AND get_byte(key_enc, 0) <> $2
ORDER BY blob_hmac
LIMIT $3
"""
_REWRITE_PHOTO_KEYS_SQL = """
UPDATE photo_keys k SET key_enc = b.new
FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS b (blob_hmac, old, new)
WHERE k.blob_hmac = b.blob_hmac AND k.key_enc = b.old
"""
# Photos stored in clear before migration 0013: named by a SHA-256, without a key row.
_CLEAR_PHOTOS_SQL = """
SELECT DISTINCT p.blob_hmac FROM photos p
WHERE p.blob_hmac > $1
  AND NOT EXISTS (SELECT 1 FROM photo_keys k WHERE k.blob_hmac = p.blob_hmac)
ORDER BY p.blob_hmac
LIMIT $2
"""
_RENAME_PHOTO_SQL = "UPDATE photos SET blob_hmac = $2 WHERE blob_hmac = $1"
# Ciphertexts by key version, for `intake keys status`.
_VERSIONS_SQL = """
SELECT 'registrations.nik_enc' AS what, get_byte(nik_enc, 0) AS version, count(*) AS n
FROM registrations WHERE nik_enc IS NOT NULL GROUP BY 2
UNION ALL
SELECT 'registrations.personal_enc', get_byte(personal_enc, 0), count(*)
FROM registrations WHERE personal_enc IS NOT NULL GROUP BY 2
UNION ALL
SELECT 'photo_keys.key_enc', get_byte(key_enc, 0), count(*) FROM photo_keys GROUP BY 2
ORDER BY 1, 2
"""
_NO_ID = uuid.UUID(int=0)


@dataclass
class Progress:
    """What a run rewrote, and whether it reached the end (``done``)."""

    registrations: int = 0
    photo_keys: int = 0
    clear_photos_sealed: int = 0
    batches: int = 0
    done: bool = False
    skipped: int = 0  # rows changed by someone else meanwhile; clear photos without a file


# One table's batch: (connection, keyring, cursor, batch size, progress) -> the next cursor.
_Batch = Callable[[asyncpg.Connection, Keyring, object, int, "Progress"], Awaitable[object]]


async def reencrypt(
    pool: asyncpg.Pool,
    keyring: Keyring,
    *,
    batch_size: int = 500,
    max_batches: int | None = None,
    pause_s: float = 0.0,
    photos: PhotoVault | None = None,
) -> Progress:
    """Rewrite every stored ciphertext that is not under ``keyring.current``; see the module.

    ``max_batches`` stops the run early (``done`` False; run it again to go on); ``pause_s``
    sleeps between batches, to leave the database to the intake during a wave; ``photos``:
    also seal the photos stored in clear before migration 0013.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    progress = Progress()

    def in_transaction(batch: _Batch) -> Callable[[object], Awaitable[object]]:
        async def step(cursor: object) -> object:
            async with pool.acquire() as connection, connection.transaction():
                return await batch(connection, keyring, cursor, batch_size, progress)

        return step

    steps = [in_transaction(_registrations_batch), in_transaction(_photo_keys_batch)]
    if photos is not None:
        vault = photos
        steps.append(lambda cursor: _clear_photos_batch(pool, vault, cursor, batch_size, progress))
    for step in steps:
        cursor: object = None
        while max_batches is None or progress.batches < max_batches:
            cursor = await step(cursor)
            if cursor is None:
                break
            progress.batches += 1
            if pause_s:
                await asyncio.sleep(pause_s)
        else:
            return progress
    progress.done = True
    return progress


async def versions(pool: asyncpg.Pool) -> list[tuple[str, int, int]]:
    """(column, key version, ciphertexts) for every stored ciphertext column."""
    rows = await pool.fetch(_VERSIONS_SQL)
    return [(row["what"], row["version"], row["n"]) for row in rows]


async def _registrations_batch(
    connection: asyncpg.Connection,
    keyring: Keyring,
    cursor: object,
    batch_size: int,
    progress: Progress,
) -> uuid.UUID | None:
    after = cursor if isinstance(cursor, uuid.UUID) else _NO_ID
    rows = await connection.fetch(_REGISTRATIONS_SQL, after, keyring.current, batch_size)
    if not rows:
        return None
    columns: tuple[list[object], ...] = ([], [], [], [], [])
    for row in rows:
        context = row["id"].bytes
        nik = keyring.reencrypt(row["nik_enc"], context) or row["nik_enc"]
        personal = keyring.reencrypt(row["personal_enc"], context) or row["personal_enc"]
        for column, value in zip(
            columns, (row["id"], row["nik_enc"], row["personal_enc"], nik, personal), strict=True
        ):
            column.append(value)
    status = await connection.execute(_REWRITE_REGISTRATIONS_SQL, *columns)
    rewritten = int(status.split()[-1])
    progress.registrations += rewritten
    progress.skipped += len(rows) - rewritten
    last: uuid.UUID = rows[-1]["id"]
    return last


async def _photo_keys_batch(
    connection: asyncpg.Connection,
    keyring: Keyring,
    cursor: object,
    batch_size: int,
    progress: Progress,
) -> str | None:
    after = cursor if isinstance(cursor, str) else ""
    rows = await connection.fetch(_PHOTO_KEYS_SQL, after, keyring.current, batch_size)
    if not rows:
        return None
    names, old, new = [], [], []
    for row in rows:
        rewrapped = keyring.rewrap_photo_key(row["key_enc"], row["blob_hmac"])
        names.append(row["blob_hmac"])
        old.append(row["key_enc"])
        new.append(rewrapped or row["key_enc"])
    status = await connection.execute(_REWRITE_PHOTO_KEYS_SQL, names, old, new)
    rewritten = int(status.split()[-1])
    progress.photo_keys += rewritten
    progress.skipped += len(rows) - rewritten
    last: str = rows[-1]["blob_hmac"]
    return last


async def _clear_photos_batch(
    pool: asyncpg.Pool, photos: PhotoVault, cursor: object, batch_size: int, progress: Progress
) -> str | None:
    """Seal a batch of the photos stored in clear; the last name looked at (None: no more)."""
    after = cursor if isinstance(cursor, str) else ""
    names: list[str] = [
        row["blob_hmac"] for row in await pool.fetch(_CLEAR_PHOTOS_SQL, after, batch_size)
    ]
    if not names:
        return None
    for name in names:
        try:
            clear = await photos.blobs.read(name)
        except BlobError:
            progress.skipped += 1  # no file: nothing to seal (the lane retries, as before)
            continue
        if hashlib.sha256(clear).hexdigest() != name:
            progress.skipped += 1  # not a clear photo (a sealed one whose key was erased)
            continue
        ref = await photos.store(pool, clear)
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(_RENAME_PHOTO_SQL, name, ref.name)
        photos.blobs.path(name).unlink(missing_ok=True)
        progress.clear_photos_sealed += 1
    return names[-1]
