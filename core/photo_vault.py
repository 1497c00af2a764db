"""Photos at rest: stripped of their metadata, encrypted with a data key of their own, named by a
keyed hash. The edge stores them (:meth:`PhotoVault.store`); only the photo lane opens them
(:meth:`PhotoVault.open`).

- **Name**: the keyed HMAC of the uploaded bytes (``Keyring.photo_name``, version 1's key for
  ever), the blob's file name and ``photos.blob_hmac``. Equal uploads get equal names: a retried
  upload is recognised, and the photo lane finds the same selfie on two registrations, as it did
  with the plain SHA-256, which anyone holding a copy could compute.
- **Content**: the upload without EXIF and other metadata, its pixels and orientation kept
  (``core.photo_strip``), sealed with AES-256-GCM under a random 256-bit data key, bound to the
  name.
- **Data key**: one per name, made when the name is first stored, kept in ``photo_keys``
  wrapped (AES-256-GCM) under the current version's ``photo-key``; rotation re-wraps it there
  (``core.rotation``), the blob is never rewritten. The wrapped key is committed *before* the
  blob is written (``INSERT ... ON CONFLICT DO NOTHING``, then the row that won), so every
  blob's key is durable before the blob, and two uploads of one photo at the same moment seal it
  under the same key. Deleting the key row makes the blob unreadable (backups included); a new
  key for a name replaces the file that has it (one an erasure left when it crashed between
  deleting the key and the file), a key that exists keeps it.

The upload is encrypted in memory once received: it is at most ``INTAKE_PHOTO_MAX_BYTES``
(5 MiB), and naming, stripping and sealing need it whole.
"""

from __future__ import annotations

import asyncio

import asyncpg

from core.blobs import BlobCorrupt, BlobNotFound, BlobRef, BlobStore
from core.keys import DecryptionError, Keyring, open_photo, seal_photo
from core.photo_strip import strip_metadata

_KEY_INSERT_SQL = """
INSERT INTO photo_keys (blob_hmac, key_enc) VALUES ($1, $2)
ON CONFLICT (blob_hmac) DO NOTHING
RETURNING true
"""
_KEY_SQL = "SELECT key_enc FROM photo_keys WHERE blob_hmac = $1"
# The sealing adds a format byte, a nonce and a tag.
_SEAL_OVERHEAD_BYTES = 1 + 12 + 16
# The stripped copy can carry a minimal EXIF (the orientation) the upload had in another form.
_STRIP_SLACK_BYTES = 256


class PhotoKeyMissing(BlobNotFound):
    """No data key is stored for this photo's name (it was never stored, or it was erased)."""


class PhotoVault:
    """The photo store over a :class:`~core.blobs.BlobStore` and ``photo_keys``."""

    def __init__(self, blobs: BlobStore, keyring: Keyring) -> None:
        self.blobs = blobs
        self._keyring = keyring

    async def store(self, db: asyncpg.Pool | asyncpg.Connection, photo: bytes) -> BlobRef:
        """Store an upload; its reference once the sealed blob and its key are durable."""
        name = await asyncio.to_thread(self._keyring.photo_name, photo)
        key, new = await self._data_key(db, name)
        sealed = await asyncio.to_thread(_strip_and_seal, key, photo, name)
        # A new key replaces whatever file has the name: one left by an erasure that deleted
        # the old key and crashed before the file, sealed under a key that no longer exists.
        await self.blobs.put(name, sealed, replace=new)
        return BlobRef(name, len(photo))

    async def open(
        self, db: asyncpg.Pool | asyncpg.Connection, ref: BlobRef, *, max_bytes: int
    ) -> bytes:
        """The stored copy of a photo, decrypted. Raises :class:`~core.blobs.BlobNotFound`
        (:class:`PhotoKeyMissing` without a key), :class:`~core.blobs.BlobTooLarge`,
        :class:`~core.blobs.BlobCorrupt` if the blob does not open with its key."""
        wrapped = await db.fetchval(_KEY_SQL, ref.name)
        if wrapped is None:
            raise PhotoKeyMissing(ref.name)
        sealed = await self.blobs.read(
            ref, max_bytes=max_bytes + _SEAL_OVERHEAD_BYTES + _STRIP_SLACK_BYTES
        )
        try:
            key = self._keyring.unwrap_photo_key(wrapped, ref.name)
            return await asyncio.to_thread(open_photo, key, sealed, ref.name)
        except DecryptionError:
            raise BlobCorrupt(ref.name) from None

    async def _data_key(
        self, db: asyncpg.Pool | asyncpg.Connection, name: str
    ) -> tuple[bytes, bool]:
        """The photo's data key and whether it is new: a new one stored (committed) first, or
        the one stored already (a retried upload, the same photo on another registration, a
        concurrent upload's). One round trip for a new photo: its new key costs microseconds
        to make and wrap."""
        key, wrapped_new = self._keyring.new_photo_key(name)
        if await db.fetchval(_KEY_INSERT_SQL, name, wrapped_new) is not None:
            return key, True
        wrapped = await db.fetchval(_KEY_SQL, name)
        if wrapped is None:
            raise PhotoKeyMissing(name)  # deleted between the two statements: try again
        try:
            return self._keyring.unwrap_photo_key(wrapped, name), False
        except DecryptionError:
            raise BlobCorrupt(name) from None


def _strip_and_seal(key: bytes, photo: bytes, name: str) -> bytes:
    return seal_photo(key, strip_metadata(photo), name)
