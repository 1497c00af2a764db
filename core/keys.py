"""Keys and the cryptography around personal data.

One master secret (``INTAKE_SECRET_KEY``) is stretched with HKDF into independent keys, one per
purpose, so that a leak of one derived key (say, the token key) reveals nothing about another:

- ``nik``: HMAC-SHA256 of the NIK, the stored look-up and uniqueness key ("one NIK, once in a
  lifetime") that does not reveal the NIK itself;
- ``data``: AES-256-GCM for personal values at rest (the NIK, names, contacts);
- ``token``: HMAC that turns a registration id into its access token, so the edge can issue and
  check tokens without a database;
- ``seal``: AES-256-GCM for message bodies, so that personal data never sits in clear in the
  broker, and so that a worker only trusts what an edge holding the key produced;
- ``link``: HMAC that signs the token of an email verification link (the edge checks it
  before it touches the database);
- ``code``: HMAC of the one-time secrets (an email link's, an SMS code), the only form in which
  they are stored.

Ciphertexts start with a one-byte key version so that keys can be rotated later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.ids import uuid8

KEY_VERSION = 1
_NONCE_BYTES = 12
# An email link token: version, registration id, expiry (Unix seconds), the 16-byte secret,
# then the HMAC-SHA256 of all that: 73 bytes, 98 URL-safe base64 characters without padding.
_LINK_PAYLOAD = struct.Struct(">B16sq16s")
LINK_SECRET_BYTES = 16
_LINK_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{98}")


class DecryptionError(ValueError):
    """A ciphertext was tampered with, truncated, or made with another key."""


@dataclass(frozen=True, slots=True)
class EmailLink:
    """What a genuine email link token carries."""

    registration_id: uuid.UUID
    secret: bytes
    expires_at_s: int


class Hmac:
    """HMAC-SHA256 with one key, its padded inner and outer states hashed once (RFC 2104):
    a digest is then two hash copies and updates, less than half the cost of
    :func:`hmac.digest`, which keys itself again on every call. Equal to it for every input
    (``tests/core/test_keys.py``)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _derive(master: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"prakerja-intake", info=purpose.encode()
    ).derive(master)


@dataclass(frozen=True, slots=True)
class Keyring:
    """The derived keys of one deployment. Build it once with :meth:`from_secret`."""

    nik_key: Hmac
    token_key: Hmac
    data: AESGCM
    seal: AESGCM
    link_key: Hmac
    code_key: Hmac

    @classmethod
    def from_secret(cls, secret: str) -> Keyring:
        master = secret.encode()
        return cls(
            nik_key=Hmac(_derive(master, "nik-hmac")),
            token_key=Hmac(_derive(master, "access-token")),
            data=AESGCM(_derive(master, "data-at-rest")),
            seal=AESGCM(_derive(master, "message-seal")),
            link_key=Hmac(_derive(master, "email-link")),
            code_key=Hmac(_derive(master, "contact-code")),
        )

    def nik_hmac(self, nik: str) -> bytes:
        """Keyed HMAC of a NIK: equal NIKs give equal digests; the digest reveals nothing."""
        return self.nik_key.digest(nik.encode())

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt a value at rest, bound to ``context`` (e.g. the registration id)."""
        return _encrypt(self.data, plaintext, context)

    def decrypt(self, ciphertext: bytes, context: bytes) -> bytes:
        return _decrypt(self.data, ciphertext, context)

    def seal_message(self, body: bytes, context: bytes) -> bytes:
        """Encrypt and authenticate a message body for the broker."""
        return _encrypt(self.seal, body, context)

    def open_message(self, sealed: bytes, context: bytes) -> bytes:
        return _decrypt(self.seal, sealed, context)

    def access_token(self, registration_id: uuid.UUID) -> str:
        """The bearer token that lets its holder read one registration's status."""
        digest = self.token_key.digest(registration_id.bytes)
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def check_access_token(self, registration_id: uuid.UUID, token: str) -> bool:
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a header
        # may carry any), and a token is ASCII.
        expected = self.access_token(registration_id).encode()
        return hmac.compare_digest(expected, token.encode("utf-8", "surrogateescape"))

    def idempotent_id(self, idempotency_key: str) -> uuid.UUID:
        """A registration id derived from a client's ``Idempotency-Key``: a retried request
        maps to the same id, which the worker stores at most once."""
        digest = self.token_key.digest(b"idem:" + idempotency_key.encode())
        return uuid8(digest)

    def email_link_token(self, registration_id: uuid.UUID, secret: bytes, expires_at_s: int) -> str:
        """The signed token of an email verification link. The signature only proves that this
        deployment made it; whether its secret is still the live one is the database's word."""
        payload = _LINK_PAYLOAD.pack(KEY_VERSION, registration_id.bytes, expires_at_s, secret)
        signature = self.link_key.digest(payload)
        return base64.urlsafe_b64encode(payload + signature).rstrip(b"=").decode()

    def open_email_link_token(self, token: str) -> EmailLink | None:
        """The content of a genuine token, or None for anything else (any string is safe)."""
        if not _LINK_TOKEN_RE.fullmatch(token):
            return None
        raw = base64.urlsafe_b64decode(token + "==")
        # Only the canonical encoding: no two strings are the same token.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            return None
        payload, signature = raw[: _LINK_PAYLOAD.size], raw[_LINK_PAYLOAD.size :]
        if not hmac.compare_digest(self.link_key.digest(payload), signature):
            return None
        version, id_bytes, expires_at_s, secret = _LINK_PAYLOAD.unpack(payload)
        if version != KEY_VERSION:
            return None
        return EmailLink(uuid.UUID(bytes=id_bytes), secret, expires_at_s)

    def contact_code_hmac(
        self, channel: str, registration_id: uuid.UUID, generation: int, secret: bytes
    ) -> bytes:
        """Keyed HMAC of a one-time secret as stored: bound to its registration, channel and
        generation, so that a digest matches nothing else and a six-digit code cannot be found
        from the database without the key."""
        message = b"%s\0%s%s" % (channel.encode(), registration_id.bytes, generation.to_bytes(8))
        return self.code_key.digest(message + secret)


def _encrypt(aead: AESGCM, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return bytes([KEY_VERSION]) + nonce + aead.encrypt(nonce, plaintext, context)


def _decrypt(aead: AESGCM, ciphertext: bytes, context: bytes) -> bytes:
    if len(ciphertext) < 1 + _NONCE_BYTES + 16 or ciphertext[0] != KEY_VERSION:
        raise DecryptionError("unknown format or key version")
    nonce = ciphertext[1 : 1 + _NONCE_BYTES]
    try:
        return aead.decrypt(nonce, ciphertext[1 + _NONCE_BYTES :], context)
    except InvalidTag:
        raise DecryptionError("authentication failed") from None
