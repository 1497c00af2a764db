"""Photos at rest on a real PostgreSQL: one data key per photo, committed before its blob, shared
by concurrent uploads of the same bytes; a blob opens only with its own key and under its own
name; deleting the key makes the blob unreadable."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import asyncpg
import pytest
from PIL import Image

from core.blobs import BlobCorrupt, BlobNotFound, BlobRef, BlobStore
from core.keys import Keyring
from core.photo_strip import strip_metadata
from core.photo_vault import PhotoKeyMissing, PhotoVault
from core.settings import Settings
from tests.support.photos import encode, sample

MAX_BYTES = 1_000_000


def photo(seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TelefonPintar-X9"
    exif[0x8825] = {1: "S", 2: (6.0, 54.0, 53.0), 3: "E", 4: (107.0, 36.0, 35.0)}
    image = sample("astronaut").rotate(seed)
    return encode(image, "JPEG", quality=85, exif=exif.tobytes())


@pytest.fixture
def vault(settings: Settings, tmp_path: Path) -> PhotoVault:
    return PhotoVault(BlobStore(tmp_path / "blobs"), Keyring.from_settings(settings))


async def test_a_photo_round_trips_without_its_metadata(
    vault: PhotoVault, db: asyncpg.Pool, settings: Settings
) -> None:
    upload = photo()
    ref = await vault.store(db, upload)
    assert ref == BlobRef(Keyring.from_settings(settings).photo_name(upload), len(upload))
    assert ref.name != hashlib.sha256(upload).hexdigest()
    clear = await vault.open(db, ref, max_bytes=MAX_BYTES)
    assert clear == strip_metadata(upload)
    with Image.open(io.BytesIO(clear)) as img:
        assert not img.getexif().get_ifd(0x8825)
    assert b"TelefonPintar-X9" not in vault.blobs.path(ref).read_bytes()


async def test_concurrent_uploads_of_one_photo_share_one_key_and_one_blob(
    vault: PhotoVault, db: asyncpg.Pool
) -> None:
    upload = photo(1)
    refs = await asyncio.gather(*(vault.store(db, upload) for _ in range(8)))
    assert len(set(refs)) == 1
    assert await db.fetchval("SELECT count(*) FROM photo_keys") == 1
    files = [p for p in vault.blobs.root.rglob("*") if p.is_file()]
    assert files == [vault.blobs.path(refs[0])]
    assert await vault.open(db, refs[0], max_bytes=MAX_BYTES) == strip_metadata(upload)


async def test_a_key_committed_without_its_blob_is_used_by_the_next_upload(
    vault: PhotoVault, db: asyncpg.Pool
) -> None:
    """A crash between the key's commit and the blob's rename leaves a key and no blob: the
    lane retries (blob missing) and the registrant's next upload stores it under that key."""
    upload = photo(2)
    ref = await vault.store(db, upload)
    key_before = await db.fetchval("SELECT key_enc FROM photo_keys")
    vault.blobs.path(ref).unlink()
    with pytest.raises(BlobNotFound):
        await vault.open(db, ref, max_bytes=MAX_BYTES)
    assert await vault.store(db, upload) == ref
    assert await db.fetchval("SELECT key_enc FROM photo_keys") == key_before
    assert await vault.open(db, ref, max_bytes=MAX_BYTES) == strip_metadata(upload)


async def test_a_blob_opens_only_with_its_key_under_its_name(
    vault: PhotoVault, db: asyncpg.Pool
) -> None:
    first, second = await vault.store(db, photo(3)), await vault.store(db, photo(4))
    # Moved under the other photo's name: its key does not open it.
    vault.blobs.path(second).write_bytes(vault.blobs.path(first).read_bytes())
    with pytest.raises(BlobCorrupt):
        await vault.open(db, second, max_bytes=MAX_BYTES)
    # One bit changed.
    sealed = bytearray(vault.blobs.path(first).read_bytes())
    sealed[len(sealed) // 2] ^= 1
    vault.blobs.path(first).write_bytes(bytes(sealed))
    with pytest.raises(BlobCorrupt):
        await vault.open(db, first, max_bytes=MAX_BYTES)


async def test_deleting_the_key_makes_the_blob_unreadable(
    vault: PhotoVault, db: asyncpg.Pool
) -> None:
    ref = await vault.store(db, photo(5))
    await db.execute("DELETE FROM photo_keys WHERE blob_hmac = $1", ref.name)
    assert vault.blobs.exists(ref)
    with pytest.raises(PhotoKeyMissing):
        await vault.open(db, ref, max_bytes=MAX_BYTES)


async def test_a_file_an_erasure_left_behind_is_replaced_by_the_next_upload(
    vault: PhotoVault, db: asyncpg.Pool
) -> None:
    """An erasure deletes the key, then the file: a crash in between leaves the file, sealed
    under a key that no longer exists. The same photo uploaded again (a person registering
    anew) gets a new key and a new file, which opens; not the old file kept under its name."""
    upload = photo(6)
    ref = await vault.store(db, upload)
    left = vault.blobs.path(ref).read_bytes()
    await db.execute("DELETE FROM photo_keys WHERE blob_hmac = $1", ref.name)
    assert await vault.store(db, upload) == ref
    assert vault.blobs.path(ref).read_bytes() != left
    assert await vault.open(db, ref, max_bytes=MAX_BYTES) == strip_metadata(upload)
    # An upload under the key that exists keeps the file (a retry, a second registration).
    kept = vault.blobs.path(ref).read_bytes()
    assert await vault.store(db, upload) == ref
    assert vault.blobs.path(ref).read_bytes() == kept
