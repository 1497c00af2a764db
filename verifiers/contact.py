"""Sending a one-time secret to the registrant (an email link, an SMS code) at most once.

Deliveries are at least once, so a task can run again after its secret was sent: a worker
killed between the send and the acknowledgement is the usual cause. Sending again would put a
second secret in the registrant's hands, and only the newer one would work. So each send is
bracketed by two commits in ``contact_codes``:

1. the *intent*: a fresh secret's HMAC, its expiry and ``send_started_at``, committed under the
   row lock for the current generation, but only if no send of that generation was started;
2. the send itself;
3. ``sent_at``, committed.

A task that finds the intent of its generation committed never sends again, whatever happened
to the earlier send: **at most once per generation** (the first send, then one per resend the
registrant asks for). The price is that a send lost in a crash is not repeated by the system: a
registrant who got nothing asks for a resend, which starts a new generation. A send that
*certainly* did not happen (connection refused, the server said no: :class:`NotSent`) releases
its intent and is retried.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from core.verification import Failure, Passed, Retry

log = logging.getLogger(__name__)

_CREATE_SQL = (
    "INSERT INTO contact_codes (registration_id, channel) VALUES ($1, $2) ON CONFLICT DO NOTHING"
)
_LOCK_SQL = (
    "SELECT generation, send_started_at FROM contact_codes"
    " WHERE registration_id = $1 AND channel = $2 FOR UPDATE"
)
_INTENT_SQL = """
UPDATE contact_codes SET secret_hmac = $3, expires_at = $4, attempts_left = $5,
    send_started_at = now(), sent_at = NULL, used_at = NULL
WHERE registration_id = $1 AND channel = $2
"""
_SENT_SQL = (
    "UPDATE contact_codes SET sent_at = now()"
    " WHERE registration_id = $1 AND channel = $2 AND generation = $3"
)
_RELEASE_SQL = """
UPDATE contact_codes SET secret_hmac = NULL, expires_at = NULL, send_started_at = NULL
WHERE registration_id = $1 AND channel = $2 AND generation = $3 AND sent_at IS NULL
"""


class NotSent(Exception):
    """The send certainly did not happen (nothing reached the registrant): safe to retry.
    ``failure`` is what it says about the gateway or mail server (see :class:`Failure`)."""

    def __init__(
        self, reason: str, after_s: float | None = None, failure: Failure = Failure.LOCAL
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s
        self.failure = failure


Digest = Callable[[int], bytes]


class ContactSender:
    """At-most-once sending of one channel's secrets (``"email"`` or ``"sms"``)."""

    def __init__(self, pool: asyncpg.Pool, channel: str, attempts: int | None = None) -> None:
        self._pool = pool
        self._channel = channel
        self._attempts = attempts

    async def send_once(
        self,
        registration_id: uuid.UUID,
        digest: Digest,
        expires_at: dt.datetime,
        send: Callable[[], Awaitable[None]],
    ) -> Passed:
        """Send the secret whose stored HMAC ``digest(generation)`` gives, unless a send of the
        current generation was started already; either way the check now waits for the
        registrant. Raises :class:`Retry` when the send certainly failed."""
        generation = await self._intend(registration_id, digest, expires_at)
        if generation is None:
            return Passed(waiting=True)
        try:
            await send()
        except NotSent as exc:
            await self._pool.execute(_RELEASE_SQL, registration_id, self._channel, generation)
            raise Retry(exc.reason, exc.after_s, failure=exc.failure, not_done=True) from None
        except Exception as exc:  # the send may or may not have happened: never repeat it
            log.warning(
                "send outcome unknown; not repeated",
                extra={"fields": {"channel": self._channel, "error": type(exc).__name__}},
            )
            return Passed(waiting=True)
        await self._pool.execute(_SENT_SQL, registration_id, self._channel, generation)
        return Passed(waiting=True)

    async def _intend(
        self, registration_id: uuid.UUID, digest: Digest, expires_at: dt.datetime
    ) -> int | None:
        """Commit the intent to send and return its generation; None if one was started."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_CREATE_SQL, registration_id, self._channel)
            row = await connection.fetchrow(_LOCK_SQL, registration_id, self._channel)
            if row["send_started_at"] is not None:
                return None
            generation: int = row["generation"]
            await connection.execute(
                _INTENT_SQL,
                registration_id,
                self._channel,
                digest(generation),
                expires_at,
                self._attempts,
            )
        return generation
