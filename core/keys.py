"""Keys and the cryptography around personal data.

Each master secret is stretched with HKDF into independent keys, one per purpose, so that a leak
of one derived key (say, the token key) reveals nothing about another:

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
  they are stored;
- ``photo-name``: HMAC of a photo's bytes, its blob's name (holding a copy of a photo does not
  tell whether it is stored);
- ``photo-key``: AES-256-GCM that wraps each photo's own random data key.

**Versions.** The master secrets are numbered (``INTAKE_SECRET_KEY`` is version 1,
``INTAKE_SECRET_KEYS`` adds ``2:...``, ``3:...``). Every ciphertext starts with the one-byte
version of the key that made it: new ciphertexts (personal data, message seals, wrapped photo
keys) are made under the *current* version, and any listed version is read. The keyed hashes
that are looked up (the NIK's, a photo's name, the one-time secrets') and the signing keys (access
tokens, email links, ids from an ``Idempotency-Key``) stay on version 1's derivation for ever:
a NIK's HMAC is its uniqueness key across all time, and re-keying it would need every NIK in
clear, which the rows that keep only the HMAC no longer have. See docs/privacy.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.ids import uuid8

# The version of the master secret whose derivations make the look-up and signing keys.
LOOKUP_VERSION = 1
# Kept for the email link token's format, whose first byte is this version.
KEY_VERSION = LOOKUP_VERSION
MAX_KEY_VERSION = 255
_NONCE_BYTES = 12
_TAG_BYTES = 16
DATA_KEY_BYTES = 32
# A wrapped photo key: version, nonce, the 32-byte key, the tag.
WRAPPED_KEY_BYTES = 1 + _NONCE_BYTES + DATA_KEY_BYTES + _TAG_BYTES
# A sealed photo starts with this format byte, then its nonce; the data key is not in it.
_PHOTO_FORMAT = 1
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


class Keyring:
    """The derived keys of one deployment. Build it once with :meth:`from_settings` (or
    :meth:`from_secrets`, :meth:`from_secret`)."""

    __slots__ = (
        "_data",
        "_photo_key",
        "_seal",
        "code_key",
        "current",
        "link_key",
        "nik_key",
        "photo_name_key",
        "token_key",
    )

    def __init__(self, secrets: Mapping[int, str], current: int | None = None) -> None:
        """``secrets``: master secret by version (1 is required: the look-up keys derive from
        it); ``current``: the version new ciphertexts are made under (default: the newest)."""
        if LOOKUP_VERSION not in secrets:
            raise ValueError("the master secret of version 1 is required")
        if not all(1 <= v <= MAX_KEY_VERSION for v in secrets):
            raise ValueError(f"key versions are 1..{MAX_KEY_VERSION}")
        self.current = max(secrets) if current is None else current
        if self.current not in secrets:
            raise ValueError(f"no master secret of the current version {self.current}")
        first = secrets[LOOKUP_VERSION].encode()
        self.nik_key = Hmac(_derive(first, "nik-hmac"))
        self.token_key = Hmac(_derive(first, "access-token"))
        self.link_key = Hmac(_derive(first, "email-link"))
        self.code_key = Hmac(_derive(first, "contact-code"))
        self.photo_name_key = Hmac(_derive(first, "photo-name"))
        masters = {v: secret.encode() for v, secret in secrets.items()}
        self._data = {v: AESGCM(_derive(m, "data-at-rest")) for v, m in masters.items()}
        self._seal = {v: AESGCM(_derive(m, "message-seal")) for v, m in masters.items()}
        self._photo_key = {v: AESGCM(_derive(m, "photo-key")) for v, m in masters.items()}

    @classmethod
    def from_secret(cls, secret: str) -> Keyring:
        """One master secret, version 1 (a deployment that never rotated)."""
        return cls({LOOKUP_VERSION: secret})

    @classmethod
    def from_secrets(cls, secrets: Mapping[int, str], current: int | None = None) -> Keyring:
        return cls(secrets, current)

    @classmethod
    def from_settings(cls, settings: _KeySettings) -> Keyring:
        """The keys ``settings`` name: ``secret_key`` (version 1), ``secret_keys`` (later
        versions) and ``secret_key_current`` (0: the newest)."""
        return cls(settings.master_secrets(), settings.secret_key_current or None)

    @property
    def versions(self) -> tuple[int, ...]:
        """The versions this keyring reads, oldest first."""
        return tuple(sorted(self._data))

    def nik_hmac(self, nik: str) -> bytes:
        """Keyed HMAC of a NIK: equal NIKs give equal digests; the digest reveals nothing."""
        return self.nik_key.digest(nik.encode())

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt a value at rest under the current key, bound to ``context`` (e.g. the
        registration id)."""
        return _encrypt(self._data, self.current, plaintext, context)

    def decrypt(self, ciphertext: bytes, context: bytes) -> bytes:
        """Decrypt a value made under any version this keyring lists."""
        return _decrypt(self._data, ciphertext, context)

    def reencrypt(self, ciphertext: bytes, context: bytes) -> bytes | None:
        """``ciphertext`` made again under the current key, or None if it is under it already."""
        if key_version(ciphertext) == self.current:
            return None
        return self.encrypt(self.decrypt(ciphertext, context), context)

    def seal_message(self, body: bytes, context: bytes) -> bytes:
        """Encrypt and authenticate a message body for the broker."""
        return _encrypt(self._seal, self.current, body, context)

    def open_message(self, sealed: bytes, context: bytes) -> bytes:
        return _decrypt(self._seal, sealed, context)

    def photo_name(self, photo: bytes) -> str:
        """The name of a photo's blob: the keyed HMAC of its bytes as uploaded, 64 hex digits.
        Equal bytes give equal names (a retried upload, a selfie reused on two registrations);
        without the key a name reveals nothing and cannot be computed from a copy."""
        return self.photo_name_key.digest(photo).hex()

    def new_photo_key(self, name: str) -> tuple[bytes, bytes]:
        """A fresh random data key for the photo named ``name``, and that key wrapped under the
        current version (bound to the name: a wrapped key cannot be moved to another photo)."""
        key = AESGCM.generate_key(bit_length=8 * DATA_KEY_BYTES)
        return key, self.wrap_photo_key(key, name)

    def wrap_photo_key(self, key: bytes, name: str) -> bytes:
        return _encrypt(self._photo_key, self.current, key, _photo_key_context(name))

    def unwrap_photo_key(self, wrapped: bytes, name: str) -> bytes:
        return _decrypt(self._photo_key, wrapped, _photo_key_context(name))

    def rewrap_photo_key(self, wrapped: bytes, name: str) -> bytes | None:
        """``wrapped`` wrapped again under the current key, or None if it is under it already."""
        if key_version(wrapped) == self.current:
            return None
        return self.wrap_photo_key(self.unwrap_photo_key(wrapped, name), name)

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


def key_version(ciphertext: bytes) -> int:
    """The version of the key that made a ciphertext (its first byte); 0 for an empty one."""
    return ciphertext[0] if ciphertext else 0


def seal_photo(key: bytes, photo: bytes, name: str) -> bytes:
    """A photo encrypted with its own data key (AES-256-GCM), bound to its blob's name."""
    nonce = os.urandom(_NONCE_BYTES)
    return bytes([_PHOTO_FORMAT]) + nonce + AESGCM(key).encrypt(nonce, photo, name.encode())


def open_photo(key: bytes, sealed: bytes, name: str) -> bytes:
    """The photo :func:`seal_photo` sealed; :class:`DecryptionError` if anything differs."""
    if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or sealed[0] != _PHOTO_FORMAT:
        raise DecryptionError("unknown photo format")
    nonce = sealed[1 : 1 + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, sealed[1 + _NONCE_BYTES :], name.encode())
    except InvalidTag:
        raise DecryptionError("authentication failed") from None


class _KeySettings(Protocol):
    @property
    def secret_key_current(self) -> int: ...

    def master_secrets(self) -> dict[int, str]: ...


def _photo_key_context(name: str) -> bytes:
    return b"photo-key:" + name.encode()


def _encrypt(aeads: Mapping[int, AESGCM], version: int, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return bytes([version]) + nonce + aeads[version].encrypt(nonce, plaintext, context)


def _decrypt(aeads: Mapping[int, AESGCM], ciphertext: bytes, context: bytes) -> bytes:
    aead = aeads.get(key_version(ciphertext))
    if len(ciphertext) < 1 + _NONCE_BYTES + _TAG_BYTES or aead is None:
        raise DecryptionError("unknown format or key version")
    nonce = ciphertext[1 : 1 + _NONCE_BYTES]
    try:
        return aead.decrypt(nonce, ciphertext[1 + _NONCE_BYTES :], context)
    except InvalidTag:
        raise DecryptionError("authentication failed") from None
