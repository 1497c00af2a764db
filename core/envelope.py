"""The registration message contract between the edge and the persist worker.

A registration travels as an :class:`Envelope` (id, schema version, submission time, the
validated and normalised fields). The edge packs the envelopes accepted in one short window
into one AMQP message, a *batch*, so that a single publisher confirm covers all of them (see
``docs/architecture.md``, "Batched confirms"). The batch body is a JSON array of envelopes,
sealed with AES-GCM (``core.keys``) so that personal data never rests in clear in the broker.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = 1
BATCH_CONTENT_TYPE = "application/vnd.intake.registrations+json"
# Authenticated data for the seal: a sealed body cannot be replayed as another kind of message.
BATCH_SEAL_CONTEXT = b"registrations.batch.v1"
FIELDS = ("nik", "full_name", "birth_place", "birth_date", "email", "phone")


class EnvelopeError(ValueError):
    """A message or one of its envelopes does not follow the contract."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registration as validated and normalised by the edge (phone in ``+62`` form)."""

    nik: str
    full_name: str
    birth_place: str
    birth_date: dt.date
    email: str
    phone: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """One accepted registration: the unit that must reach the database exactly once."""

    id: uuid.UUID
    submitted_at: dt.datetime
    registration: Registration
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        r = self.registration
        return orjson.dumps(
            {
                "id": self.id,
                "v": self.schema_version,
                "submitted_at": self.submitted_at,
                "nik": r.nik,
                "full_name": r.full_name,
                "birth_place": r.birth_place,
                "birth_date": r.birth_date,
                "email": r.email,
                "phone": r.phone,
            }
        )

    @classmethod
    def from_obj(cls, obj: Any) -> Envelope:
        """Rebuild an envelope from its decoded JSON; raises :class:`EnvelopeError`."""
        try:
            if obj["v"] != SCHEMA_VERSION:
                raise EnvelopeError(f"unsupported schema version {obj['v']!r}")
            registration = Registration(
                nik=_str(obj["nik"]),
                full_name=_str(obj["full_name"]),
                birth_place=_str(obj["birth_place"]),
                birth_date=dt.date.fromisoformat(obj["birth_date"]),
                email=_str(obj["email"]),
                phone=_str(obj["phone"]),
            )
            submitted_at = dt.datetime.fromisoformat(obj["submitted_at"])
            if submitted_at.tzinfo is None:
                raise EnvelopeError("submitted_at without a time zone")
            return cls(
                id=uuid.UUID(obj["id"]), submitted_at=submitted_at, registration=registration
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EnvelopeError):
                raise
            # The exception text could quote a personal value: keep only its kind.
            raise EnvelopeError(f"malformed envelope ({type(exc).__name__})") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise EnvelopeError("expected a string")
    return value


def join_batch(items: list[bytes]) -> bytes:
    """Concatenate serialised envelopes into a batch body (a JSON array) without re-encoding."""
    return b"[" + b",".join(items) + b"]"


def split_batch(body: bytes) -> list[Any]:
    """Decode a batch body into raw envelope objects; raises :class:`EnvelopeError`."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EnvelopeError("batch is not JSON") from None
    if not isinstance(items, list):
        raise EnvelopeError("batch is not a JSON array")
    return items
