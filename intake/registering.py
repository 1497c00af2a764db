"""What the two accept paths share: a valid registration's envelope and its ``202`` document.

A registration is accepted either by aiohttp's handler (:func:`intake.app.register`) or, for
the simple requests that are most of a wave, by the express path (:mod:`intake.express`);
both decide with these functions, so that they cannot disagree on what is accepted or on what
is answered.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from core.envelope import Envelope
from core.ids import uuid7
from core.keys import Keyring
from intake.limits import Limited, NikBlocks
from intake.validation import today_wib, validate

IDEMPOTENCY_KEY_MAX_CHARS = 255
REGISTRATIONS_PATH = "/v1/registrations"


class BadIdempotencyKey(ValueError):
    """An ``Idempotency-Key`` that is empty, longer than ``IDEMPOTENCY_KEY_MAX_CHARS`` or not
    UTF-8."""


def envelope_for(
    body: Any,
    idempotency_key: str | None,
    keyring: Keyring,
    now: dt.datetime,
    blocks: NikBlocks | None = None,
) -> tuple[uuid.UUID, bytes]:
    """The id and the serialised envelope of a decoded registration body submitted ``now``
    (UTC). Raises :class:`~intake.validation.ValidationFailed`, :class:`BadIdempotencyKey`, or
    :class:`~intake.limits.Limited` for a NIK in ``blocks`` (one that reached its limit).

    The id is a new UUIDv7, or derived from the ``Idempotency-Key``: a retried request is
    given the same id, which the persist worker stores once.
    """
    registration = validate(body, today_wib(now))
    if blocks is not None and blocks.blocked:  # (usually empty: then no HMAC is computed)
        retry_after_s = blocks.retry_after_s(keyring, registration.nik)
        if retry_after_s is not None:
            raise Limited(retry_after_s)
    if idempotency_key is None:
        registration_id = uuid7()
    elif 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX_CHARS:
        try:
            registration_id = keyring.idempotent_id(idempotency_key)
        except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them escaped)
            raise BadIdempotencyKey from None
    else:
        raise BadIdempotencyKey
    return registration_id, Envelope(registration_id, now, registration).to_json()


def accepted_document(registration_id: uuid.UUID, keyring: Keyring) -> tuple[bytes, str]:
    """The body of the ``202`` for an accepted registration, and its status URL (the
    ``Location``)."""
    text = str(registration_id)
    status_url = f"{REGISTRATIONS_PATH}/{text}"
    # What orjson.dumps writes for {"id", "status", "status_url", "access_token"}: none of
    # the values needs escaping (hex, dashes, slashes, URL-safe base64).
    body = b'{"id":"%b","status":"accepted","status_url":"%b","access_token":"%b"}' % (
        text.encode(),
        status_url.encode(),
        keyring.access_token(registration_id).encode(),
    )
    return body, status_url
