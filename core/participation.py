"""The messages of taking part in a wave: a test's answers and a join, edge to worker.

The edge checks what it can (the registrant's token, the attempt, the deadline, the wave) and
publishes one of these, confirmed, with its own receive time; the participation worker
(``workers/participation.py``) writes it once, and only if that time was in time (before the
attempt's deadline, while the wave was open). The time is the edge's because the registrant's
deadline is what the edge saw: a submission that waited in the queue is not late for it.

No personal data: ids, question ids, the chosen option indexes, a declared situation. The
messages are sealed (authenticated and encrypted with a key derived from the secret) like the
registration batches, so that nothing else that can publish to the broker forges a score.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from core.keys import DecryptionError, Keyring
from core.waves import Situation

SCHEMA_VERSION = 1
TEST_SEAL_CONTEXT = b"participation.test.v1"
JOIN_SEAL_CONTEXT = b"participation.join.v1"


class MessageError(ValueError):
    """A message that cannot be opened or does not follow the contract."""


def _time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise MessageError("a time is an ISO 8601 string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise MessageError("not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise MessageError("a time carries its offset")
    return parsed


def _open(keyring: Keyring, sealed: bytes, context: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(keyring.open_message(sealed, context))
    except (DecryptionError, orjson.JSONDecodeError, ValueError):
        raise MessageError("the message cannot be opened") from None
    if not isinstance(obj, dict) or obj.get("v") != SCHEMA_VERSION:
        raise MessageError("unknown message version")
    return obj


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise MessageError("not a registration id") from None


def _int(value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise MessageError("not a whole number in range")
    return value


@dataclass(frozen=True, slots=True)
class Submission:
    """A registrant's answers to one attempt, as the edge received them at ``received_at``."""

    registration_id: uuid.UUID
    wave_id: int
    attempt: int
    answers: dict[str, int]
    received_at: dt.datetime

    def seal(self, keyring: Keyring) -> bytes:
        body = {
            "v": SCHEMA_VERSION,
            "registration_id": str(self.registration_id),
            "wave_id": self.wave_id,
            "attempt": self.attempt,
            "answers": self.answers,
            "received_at": self.received_at.isoformat(),
        }
        return keyring.seal_message(orjson.dumps(body), TEST_SEAL_CONTEXT)

    @classmethod
    def open(cls, keyring: Keyring, sealed: bytes) -> Submission:
        obj = _open(keyring, sealed, TEST_SEAL_CONTEXT)
        answers = obj.get("answers")
        if not isinstance(answers, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in answers.items()
        ):
            raise MessageError("answers map question ids to option indexes")
        return cls(
            _uuid(obj.get("registration_id")),
            _int(obj.get("wave_id"), 1),
            _int(obj.get("attempt"), 1),
            answers,
            _time(obj.get("received_at")),
        )


@dataclass(frozen=True, slots=True)
class Join:
    """A registrant's join of a wave, as the edge received it at ``received_at``."""

    registration_id: uuid.UUID
    wave_id: int
    situation: Situation
    received_at: dt.datetime

    def seal(self, keyring: Keyring) -> bytes:
        body = {
            "v": SCHEMA_VERSION,
            "registration_id": str(self.registration_id),
            "wave_id": self.wave_id,
            "situation": self.situation.value,
            "received_at": self.received_at.isoformat(),
        }
        return keyring.seal_message(orjson.dumps(body), JOIN_SEAL_CONTEXT)

    @classmethod
    def open(cls, keyring: Keyring, sealed: bytes) -> Join:
        obj = _open(keyring, sealed, JOIN_SEAL_CONTEXT)
        try:
            situation = Situation(str(obj.get("situation")))
        except ValueError:
            raise MessageError("unknown situation") from None
        return cls(
            _uuid(obj.get("registration_id")),
            _int(obj.get("wave_id"), 1),
            situation,
            _time(obj.get("received_at")),
        )
