"""Writing registrations to PostgreSQL, idempotently and in batches.

:meth:`RegistrationStore.write` is the whole exactly-once story on the database side: the
registration id is the primary key and inserts skip existing ids, so a redelivered batch never
makes a second row; the NIK claim and the registration are written in one transaction, so a
crash leaves either both or neither.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import orjson

from core import database, limits
from core.checks import OUTBOX_CHANNEL
from core.envelope import Envelope
from core.keys import Keyring
from core.settings import Settings

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

# Then the registrations: a NIK that received the benefit in a wave never again
# (``benefit_received``, whatever the claim says: the benefit outlives an erased registration);
# otherwise the holder of its NIK's claim, or a duplicate. The benefit is one primary-key look-up.
_INSERT_SQL = """
INSERT INTO registrations
    (id, nik_hmac, nik_enc, personal_enc, status, reject_reason, submitted_at)
SELECT b.id, b.nik_hmac, b.nik_enc, b.personal_enc,
       CASE WHEN g.nik_hmac IS NULL AND c.registration_id = b.id THEN 'received'
            ELSE 'rejected' END,
       CASE WHEN g.nik_hmac IS NOT NULL THEN 'benefit_received'
            WHEN c.registration_id = b.id THEN NULL
            ELSE 'duplicate_nik' END,
       b.submitted_at
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::timestamptz[])
     AS b (id, nik_hmac, nik_enc, personal_enc, submitted_at)
JOIN nik_claims c ON c.nik_hmac = b.nik_hmac
LEFT JOIN benefit_niks g ON g.nik_hmac = b.nik_hmac
ORDER BY b.id
ON CONFLICT (id) DO NOTHING
RETURNING id, status, reject_reason
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did: rows inserted as received, as duplicates, or refused as their NIK
    had the benefit already; the rest existed."""

    received: int
    duplicates: int
    already_stored: int
    benefit_received: int = 0


@dataclass(slots=True)
class Rows:
    """Registrations encrypted and laid out as the columns of one multi-row insert.

    Preparing (CPU: HMAC, AES-GCM) is separate from writing (I/O) so that a worker can prepare
    the next batch while PostgreSQL writes the current one.
    """

    ids: list[uuid.UUID] = field(default_factory=list)
    nik_hmacs: list[bytes] = field(default_factory=list)
    nik_enc: list[bytes] = field(default_factory=list)
    personal_enc: list[bytes] = field(default_factory=list)
    submitted_at: list[dt.datetime] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def unique(self) -> Rows:
        """The rows without repeated ids, keeping each id's first row. A repeated id (a client
        reusing an ``Idempotency-Key``) must not claim a second NIK."""
        seen: set[uuid.UUID] = set()
        out = Rows()
        for i, registration_id in enumerate(self.ids):
            if registration_id in seen:
                continue
            seen.add(registration_id)
            out.ids.append(registration_id)
            out.nik_hmacs.append(self.nik_hmacs[i])
            out.nik_enc.append(self.nik_enc[i])
            out.personal_enc.append(self.personal_enc[i])
            out.submitted_at.append(self.submitted_at[i])
        return out

    def extend(self, other: Rows) -> None:
        self.ids += other.ids
        self.nik_hmacs += other.nik_hmacs
        self.nik_enc += other.nik_enc
        self.personal_enc += other.personal_enc
        self.submitted_at += other.submitted_at


def prepare(keyring: Keyring, envelopes: Sequence[Envelope]) -> Rows:
    """Encrypt registrations for storage: the NIK as HMAC and ciphertext, the other personal
    fields as one ciphertext, each bound to the registration id."""
    rows = Rows()
    for e in envelopes:
        r, context = e.registration, e.id.bytes
        personal = orjson.dumps(
            {
                "full_name": r.full_name,
                "birth_place": r.birth_place,
                "birth_date": r.birth_date,
                "email": r.email,
                "phone": r.phone,
            }
        )
        rows.ids.append(e.id)
        rows.nik_hmacs.append(keyring.nik_hmac(r.nik))
        rows.nik_enc.append(keyring.encrypt(r.nik.encode(), context))
        rows.personal_enc.append(keyring.encrypt(personal, context))
        rows.submitted_at.append(e.submitted_at)
    return rows


class RegistrationStore:
    """Writes prepared registrations; one transaction per batch.

    With ``nik_limit_window_s``, every registration inserted also counts against its NIK's
    limit (``core.limits``, windows of that length), in the batch's transaction and one
    statement: the edges refuse a NIK's registrations once it reached its limit, without a
    database round trip on their accept path (``intake/limits.py``).
    """

    def __init__(self, pool: asyncpg.Pool, nik_limit_window_s: int | None = None) -> None:
        self._pool = pool
        self._nik_limit_window_s = nik_limit_window_s

    @classmethod
    def configured(cls, pool: asyncpg.Pool, settings: Settings) -> RegistrationStore:
        """The store as ``settings`` say: counting each NIK's registrations when its limit is
        on (``INTAKE_LIMIT_NIK_ATTEMPTS``)."""
        window_s = settings.limit_nik_window_s if settings.limit_nik_attempts > 0 else None
        return cls(pool, nik_limit_window_s=window_s)

    async def write(self, rows: Rows) -> WriteResult:
        """Store a batch in one transaction; idempotent for ids already stored (including the
        same id twice in one batch: the first is kept)."""
        if not rows:
            return WriteResult(0, 0, 0)
        total = len(rows)
        if len(set(rows.ids)) != total:
            rows = rows.unique()
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(_CLAIM_SQL, rows.ids, rows.nik_hmacs, rows.submitted_at)
                inserted = await connection.fetch(
                    _INSERT_SQL,
                    rows.ids,
                    rows.nik_hmacs,
                    rows.nik_enc,
                    rows.personal_enc,
                    rows.submitted_at,
                )
                if any(row["status"] == "received" for row in inserted):
                    await connection.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
                if self._nik_limit_window_s is not None and inserted:
                    # Only rows inserted now: a redelivered batch counts nothing twice.
                    nik_of = dict(zip(rows.ids, rows.nik_hmacs, strict=True))
                    hits = Counter(nik_of[row["id"]] for row in inserted)
                    await limits.count(connection, limits.NIK, hits, self._nik_limit_window_s)
        except database.FAILOVER as exc:
            await database.expire_on_failover(self._pool, exc)
            raise
        received = sum(1 for row in inserted if row["status"] == "received")
        benefit = sum(1 for row in inserted if row["reject_reason"] == "benefit_received")
        duplicates = len(inserted) - received - benefit
        return WriteResult(received, duplicates, total - len(inserted), benefit)
