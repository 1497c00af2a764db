"""Phone: a six-digit one-time code sent through the SMS gateway; the check passes when the
registrant enters it (``POST /v1/registrations/{id}/otp`` on the edge).

The code comes from :func:`secrets.randbelow` and is stored only as a keyed HMAC bound to the
registration and the generation: without the key, the table does not even allow trying the
million codes. It is never logged. Sent at most once per generation (:mod:`verifiers.contact`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import ClassVar

import aiohttp
import asyncpg

from core.keys import Keyring
from core.settings import Settings
from core.verification import Check, Passed, Retry, Subject, Task
from verifiers.contact import ContactSender, NotSent
from verifiers.ministry import post_json

CHANNEL = "sms"
CODE_DIGITS = 6


class PhoneVerifier:
    """Sends the one-time code; :class:`~core.verification.Passed` with ``waiting``."""

    check: ClassVar[Check] = Check.PHONE

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        pool: asyncpg.Pool,
        http: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._http = http
        self._url = settings.sms_url.rstrip("/") + "/v1/messages"
        self._sender = ContactSender(pool, CHANNEL, attempts=settings.otp_max_attempts)

    async def verify(self, task: Task, subject: Subject) -> Passed:
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._settings.otp_ttl_s)
        minutes = max(1, self._settings.otp_ttl_s // 60)
        text = (
            f"Kode verifikasi Kartu Prakerja: {code}. Berlaku {minutes} menit. "
            "JANGAN berikan kode ini kepada siapa pun."
        )

        def digest(generation: int) -> bytes:
            return self._keyring.contact_code_hmac(
                CHANNEL, subject.registration_id, generation, code.encode()
            )

        async def send() -> None:
            try:
                await post_json(
                    self._http,
                    self._url,
                    {"to": subject.phone, "text": text},
                    timeout_s=self._settings.ministry_timeout_s,
                    expected=frozenset({202}),
                )
            except Retry as exc:
                # A refusal, or no connection: nothing reached the gateway. A timeout or a
                # dropped connection may have sent the message: never sent twice.
                if exc.not_done:
                    raise NotSent(exc.reason, exc.after_s, exc.failure) from None
                raise

        return await self._sender.send_once(subject.registration_id, digest, expires_at, send)
