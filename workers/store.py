"""Writing registrations to PostgreSQL, idempotently and in batches.

:meth:`RegistrationStore.write` is the whole exactly-once story on the database side: the
registration id is the primary key and inserts skip existing ids, so a redelivered batch never
makes a second row; the NIK claim and the registration are written in one transaction, so a
crash leaves either both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from core.envelope import Envelope
from core.keys import Keyring

# First the claims: the earliest submission of a NIK (within the batch, by time; across
# batches, by commit order) claims it. Ids already stored are skipped so that a redelivery,
# or an Idempotency-Key reused with another NIK, claims nothing. Rows are taken in key order
# so that concurrent workers lock claims in the same order and cannot deadlock.
_CLAIM_SQL = """
INSERT INTO nik_claims (nik_hmac, registration_id)
SELECT b.nik_hmac, b.id
FROM unnest($1::uuid[], $2::bytea[], $3::timestamptz[]) AS b (id, nik_hmac, submitted_at)
WHERE NOT EXISTS (SELECT 1 FROM registrations r WHERE r.id = b.id)
ORDER BY b.nik_hmac, b.submitted_at, b.id
ON CONFLICT (nik_hmac) DO NOTHING
"""

# Then the registrations, each either the holder of its NIK's claim or a duplicate.
_INSERT_SQL = """
INSERT INTO registrations
    (id, nik_hmac, nik_enc, personal_enc, status, reject_reason, submitted_at)
SELECT b.id, b.nik_hmac, b.nik_enc, b.personal_enc,
       CASE WHEN c.registration_id = b.id THEN 'received' ELSE 'rejected' END,
       CASE WHEN c.registration_id = b.id THEN NULL ELSE 'duplicate_nik' END,
       b.submitted_at
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::timestamptz[])
     AS b (id, nik_hmac, nik_enc, personal_enc, submitted_at)
JOIN nik_claims c ON c.nik_hmac = b.nik_hmac
ORDER BY b.id
ON CONFLICT (id) DO NOTHING
RETURNING status
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did: rows inserted as received or as duplicates; the rest existed."""

    received: int
    duplicates: int
    already_stored: int


class RegistrationStore:
    """Encrypts and writes registrations; one transaction per batch."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    async def write(self, envelopes: Sequence[Envelope]) -> WriteResult:
        """Store a batch in one transaction; idempotent for ids already stored."""
        unique: dict[object, Envelope] = {}
        for e in envelopes:
            unique.setdefault(e.id, e)  # the same id twice in one batch: keep the first
        batch = list(unique.values())
        keyring = self._keyring
        ids, hmacs, nik_enc, personal_enc, times = [], [], [], [], []
        for e in batch:
            r, context = e.registration, e.id.bytes
            ids.append(e.id)
            hmacs.append(keyring.nik_hmac(r.nik))
            nik_enc.append(keyring.encrypt(r.nik.encode(), context))
            personal = orjson.dumps(
                {
                    "full_name": r.full_name,
                    "birth_place": r.birth_place,
                    "birth_date": r.birth_date,
                    "email": r.email,
                    "phone": r.phone,
                }
            )
            personal_enc.append(keyring.encrypt(personal, context))
            times.append(e.submitted_at)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_CLAIM_SQL, ids, hmacs, times)
            rows = await connection.fetch(_INSERT_SQL, ids, hmacs, nik_enc, personal_enc, times)
        received = sum(1 for row in rows if row["status"] == "received")
        duplicates = len(rows) - received
        return WriteResult(received, duplicates, len(envelopes) - len(rows))
