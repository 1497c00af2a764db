"""The registrant's upload of the selfie with the ID card.

    PUT /v1/registrations/{id}/photo    the JPEG or PNG bytes, with the bearer token

The body is received (at most ``INTAKE_PHOTO_MAX_BYTES``, checked while it streams), stripped of its
metadata, encrypted with a data key of its own and stored under its keyed hash
(``core.photo_vault``); it is never put in a message: the photo lane gets a task naming the
registration and opens the blob. The rule: a photo is accepted while the photo check *waits* for one
(the registration is stored, started and not decided). The upload then makes the check pending again
in the outbox (``dispatched_at`` NULL, ``NOTIFY``), in the transaction that records the photo, so
its task cannot be lost. Sending the same bytes again while they are being checked is answered 202
again (a client retrying an upload whose answer it lost); anything else later is a 409.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from core import checks
from core.blobs import BlobError, BlobRef, BlobStore, BlobTooLarge, receive
from core.photo_vault import PhotoVault
from core.verification import Check
from intake.access import authorized_id
from intake.appkeys import DB, KEYRING, SETTINGS
from intake.limits import per_client
from intake.problems import problem, unavailable

log = logging.getLogger(__name__)

PHOTOS = web.AppKey("photos", PhotoVault)
PHOTO_TYPES = frozenset({"image/jpeg", "image/png"})
_CHUNK_BYTES = 64 * 1024
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

_STATE_SQL = """
SELECT r.status, c.state, p.blob_hmac
FROM registrations r
LEFT JOIN checks c ON c.registration_id = r.id AND c.check_name = 'photo'
LEFT JOIN photos p ON p.registration_id = r.id
WHERE r.id = $1
"""
_UPSERT_SQL = """
INSERT INTO photos (registration_id, blob_hmac, size_bytes) VALUES ($1, $2, $3)
ON CONFLICT (registration_id) DO UPDATE SET blob_hmac = $2, size_bytes = $3, uploaded_at = now(),
    phash = NULL, analysed_at = NULL, outcome = NULL
"""


def add_routes(app: web.Application) -> None:
    """Add the photo upload route and the photo store it writes to."""
    app[PHOTOS] = PhotoVault(BlobStore(Path(app[SETTINGS].blob_dir)), app[KEYRING])
    app.router.add_put("/v1/registrations/{id}/photo", per_client(upload_photo))


async def upload_photo(request: web.Request) -> web.StreamResponse:
    """``PUT /v1/registrations/{id}/photo``: 202 once the photo is durable and its check queued."""
    registration_id = _bearer(request)
    if registration_id is None:
        return problem(404, "not-found", "No such registration")
    max_bytes = request.app[SETTINGS].photo_max_bytes
    if request.content_type not in PHOTO_TYPES:
        return problem(415, "unsupported-media-type", "The photo must be image/jpeg or image/png")
    if request.content_length is not None and request.content_length > max_bytes:
        return problem(413, "too-large", "The photo is too large")
    try:
        # Checked before the upload too, so that no blob is stored for nothing in the usual case.
        refusal = _refusal(await _state(request, registration_id), None)
        if refusal is not None:
            return refusal
        try:
            photo = await receive(request.content.iter_chunked(_CHUNK_BYTES), max_bytes)
        except BlobTooLarge:
            return problem(413, "too-large", "The photo is too large")
        ref = await request.app[PHOTOS].store(request.app[DB], photo)
        async with request.app[DB].acquire() as connection, connection.transaction():
            return await _record(connection, registration_id, ref)
    except (*_DB_ERRORS, BlobError) as exc:
        log.warning("photo upload failed: %s", type(exc).__name__)
        return unavailable("database_unreachable", request.app[SETTINGS].edge_retry_after_s)


async def _state(request: web.Request, registration_id: uuid.UUID) -> asyncpg.Record | None:
    async with request.app[DB].acquire() as connection:
        row: asyncpg.Record | None = await connection.fetchrow(_STATE_SQL, registration_id)
        return row


def _refusal(row: asyncpg.Record | None, name: str | None) -> web.Response | None:
    """The 409 for a registration that takes no photo now, or None if it does (or if ``name``
    is the photo being checked already: a retried upload; None before the upload, when the
    bytes are not known yet)."""
    if row is None:
        return problem(409, "not-ready", "The registration is not stored yet; try again shortly")
    # Before the check's state: a repeated NIK is rejected when stored and never gets checks.
    if row["status"] != "received":
        return problem(409, "registration-closed", "The registration is decided already")
    if row["state"] is None:
        return problem(409, "not-ready", "The registration is not started yet; try again shortly")
    if row["state"] == "waiting":
        return None
    if row["state"] in ("pending", "retrying") and name in (None, row["blob_hmac"]):
        return None
    return problem(409, "photo-already-uploaded", "A photo was uploaded already")


async def _record(
    connection: asyncpg.Connection, registration_id: uuid.UUID, ref: BlobRef
) -> web.Response:
    """Under the check's lock: record the photo and put the check in the outbox."""
    state = await checks.lock_state(connection, registration_id, Check.PHOTO)
    row = await connection.fetchrow(_STATE_SQL, registration_id)
    refusal = _refusal(row, ref.name)
    if refusal is not None:
        return refusal  # the blob stays, unreferenced (named by its content: harmless)
    if state == "waiting":
        await connection.execute(_UPSERT_SQL, registration_id, ref.name, ref.size_bytes)
        await checks.requeue(connection, registration_id, Check.PHOTO)
    body: dict[str, Any] = {
        "id": str(registration_id),
        "check": Check.PHOTO.value,
        "size_bytes": ref.size_bytes,
    }
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


def _bearer(request: web.Request) -> uuid.UUID | None:
    return authorized_id(request, request.app[KEYRING])
