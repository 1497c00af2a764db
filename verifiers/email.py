"""Email: a signed, expiring, single-use link, sent over SMTP; the check passes when the
registrant follows it (``GET /v1/verify/email`` on the edge).

The link's token carries the registration id, a fresh 128-bit secret and the expiry, signed
with the ``email-link`` key; the database keeps only the secret's HMAC. Sent at most once per
generation (:mod:`verifiers.contact`). Neither the address nor the link is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import html
import secrets
import smtplib
from email.message import EmailMessage
from typing import ClassVar

import asyncpg

from core.keys import LINK_SECRET_BYTES, Keyring
from core.settings import Settings
from core.verification import Check, Failure, Passed, Subject, Task
from verifiers.contact import ContactSender, NotSent

CHANNEL = "email"
SUBJECT = "Verifikasi email Kartu Prakerja"


class EmailVerifier:
    """Sends the verification link; :class:`~core.verification.Passed` with ``waiting``."""

    check: ClassVar[Check] = Check.EMAIL

    def __init__(self, settings: Settings, keyring: Keyring, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._keyring = keyring
        self._sender = ContactSender(pool, CHANNEL)

    async def verify(self, task: Task, subject: Subject) -> Passed:
        secret = secrets.token_bytes(LINK_SECRET_BYTES)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires_at = now + dt.timedelta(seconds=self._settings.email_link_ttl_s)
        token = self._keyring.email_link_token(
            subject.registration_id, secret, int(expires_at.timestamp())
        )
        link = f"{self._settings.public_base_url.rstrip('/')}/v1/verify/email?token={token}"
        message = self._message(subject, link)

        def digest(generation: int) -> bytes:
            return self._keyring.contact_code_hmac(
                CHANNEL, subject.registration_id, generation, secret
            )

        async def send() -> None:
            await asyncio.to_thread(self._send, message, subject.email)

        return await self._sender.send_once(subject.registration_id, digest, expires_at, send)

    def _message(self, subject: Subject, link: str) -> EmailMessage:
        hours = max(1, self._settings.email_link_ttl_s // 3600)
        message = EmailMessage()
        message["From"] = self._settings.mail_from
        message["To"] = subject.email
        message["Subject"] = SUBJECT
        message.set_content(
            f"Halo {subject.full_name},\n\n"
            "Untuk memverifikasi alamat email pendaftaran Kartu Prakerja Anda, buka tautan ini:\n\n"
            f"{link}\n\n"
            f"Tautan berlaku {hours} jam dan hanya dapat dipakai sekali. Jika Anda tidak "
            "mendaftar, abaikan email ini.\n"
        )
        href = html.escape(link, quote=True)
        message.add_alternative(
            f"<p>Halo {html.escape(subject.full_name)},</p>"
            "<p>Untuk memverifikasi alamat email pendaftaran Kartu Prakerja Anda, "
            f'<a href="{href}">klik di sini</a>.</p>'
            f"<p>Tautan berlaku {hours} jam dan hanya dapat dipakai sekali. Jika Anda tidak "
            "mendaftar, abaikan email ini.</p>",
            subtype="html",
        )
        return message

    def _send(self, message: EmailMessage, to: str) -> None:
        send_mail(self._settings, self._settings.mail_from, message, to)


def send_mail(settings: Settings, sender: str, message: EmailMessage, to: str) -> None:
    """One SMTP transaction, blocking (run it in a thread). A failure before the content
    was handed over, or any refusal by the server, raises :class:`NotSent`; a connection
    lost once DATA began may have delivered the mail and is raised as is."""
    try:
        client = smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.ministry_timeout_s
        )
    except (OSError, smtplib.SMTPException) as exc:
        reason = f"smtp_unreachable:{type(exc).__name__}"
        raise NotSent(reason, None, Failure.UNREACHABLE) from None
    handed_over = False
    try:
        client.ehlo_or_helo_if_needed()
        _expect(client.mail(sender), 250)
        _expect(client.rcpt(to), 250, 251)
        handed_over = True
        code, _ = client.data(message.as_bytes(policy=email.policy.SMTP))  # CRLF lines
        if code != 250:  # the server refused the content: it delivers nothing
            raise NotSent(f"smtp_{code}", None, _smtp_failure(code))
    except smtplib.SMTPResponseException as exc:  # a refusal (DATA's before the content)
        raise NotSent(f"smtp_{exc.smtp_code}", None, _smtp_failure(exc.smtp_code)) from None
    except (OSError, smtplib.SMTPException) as exc:
        if not handed_over:
            reason = f"smtp_unreachable:{type(exc).__name__}"
            raise NotSent(reason, None, Failure.UNREACHABLE) from None
        raise
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()


def _smtp_failure(code: int) -> Failure:
    """421: the server is closing (overloaded, or going down); another 4xx: a temporary failure
    on its side; a 5xx: it refuses this message (nothing about its health)."""
    if code == 421:
        return Failure.OVERLOAD
    return Failure.BROKEN if 400 <= code < 500 else Failure.LOCAL


def _expect(reply: tuple[int, bytes], *codes: int) -> None:
    if reply[0] not in codes:
        raise smtplib.SMTPResponseException(reply[0], reply[1])
