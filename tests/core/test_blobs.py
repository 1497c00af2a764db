"""The blob store: round trip, one file per name, limits, name validation, concurrency,
cancellation and the fsyncs behind "durable after return". (What a photo's blob holds, sealed
and named by its keyed hash, is tests/core/test_photo_vault.py's.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from core import blobs
from core.blobs import (
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobTooLarge,
    InvalidBlobHash,
    receive,
)

PHOTO = os.urandom(700_000)
NAME = hashlib.sha256(b"a name").hexdigest()


async def chunks_of(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def wait_for(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


async def test_round_trip(store: BlobStore) -> None:
    await store.put(NAME, PHOTO)
    ref = BlobRef(NAME, len(PHOTO))
    assert store.path(ref) == store.root / NAME[:2] / NAME[2:4] / NAME
    assert store.exists(ref)
    assert store.exists(NAME)
    assert await store.read(ref) == PHOTO
    assert await store.read(NAME) == PHOTO
    assert files_under(store.root) == [store.path(ref)]  # no temporary file left


async def test_empty_blob(store: BlobStore) -> None:
    await store.put(NAME, b"")
    assert await store.read(NAME) == b""


async def test_a_name_stored_twice_is_one_file_and_keeps_its_first_bytes(store: BlobStore) -> None:
    await store.put(NAME, PHOTO)
    await store.put(NAME, b"other bytes under the same name")
    assert files_under(store.root) == [store.path(NAME)]
    assert await store.read(NAME) == PHOTO


async def test_concurrent_puts_of_the_same_name(store: BlobStore) -> None:
    await asyncio.gather(*(store.put(NAME, PHOTO) for _ in range(8)))
    assert files_under(store.root) == [store.path(NAME)]
    assert await store.read(NAME) == PHOTO


async def test_different_names_are_different_files(store: BlobStore) -> None:
    names = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    await asyncio.gather(*(store.put(name, bytes([i]) * 100) for i, name in enumerate(names)))
    assert files_under(store.root) == sorted(store.path(name) for name in names)


async def test_over_the_limit_aborts_and_leaves_nothing(store: BlobStore) -> None:
    read_after_limit = False

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read_after_limit
        sent = 0
        while True:
            if sent > 300_000:
                read_after_limit = True
            yield bytes(64 * 1024)
            sent += 64 * 1024

    with pytest.raises(BlobTooLarge):
        await receive(endless(), max_bytes=300_000)
    assert not read_after_limit  # aborted on the chunk that crossed the limit


async def test_one_byte_over_the_limit() -> None:
    assert await receive(chunks_of(PHOTO), max_bytes=len(PHOTO)) == PHOTO
    with pytest.raises(BlobTooLarge):
        await receive(chunks_of(PHOTO), max_bytes=len(PHOTO) - 1)


async def test_a_failing_write_leaves_nothing(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        await store.put(NAME, PHOTO)
    assert files_under(store.root) == []


async def test_cancelled_during_a_write_in_its_thread(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread cannot be stopped: the cancellation returns at once, and the write that goes on
    in its thread leaves no file behind."""
    in_thread = threading.Event()
    release = threading.Event()
    real_write = blobs._PendingBlob.write

    def held_write(self: blobs._PendingBlob, data: bytes) -> None:
        in_thread.set()
        release.wait(timeout=10)
        real_write(self, data)

    monkeypatch.setattr(blobs._PendingBlob, "write", held_write)
    upload = asyncio.create_task(store.put(NAME, PHOTO))
    await wait_for(in_thread.is_set)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(upload, timeout=1.0)
    release.set()
    await wait_for(lambda: not files_under(store.root))


BAD_HASHES = [
    "",
    "../" * 20 + "etc/passwd",
    "/etc/passwd",
    "ab/../../" + "0" * 55,
    "0" * 63,
    "0" * 65,
    "A" * 64,  # upper case: one content, one name
    "g" * 64,
    "0" * 64 + "\n",
    "0" * 32 + "\x00" + "0" * 31,
]


@pytest.mark.parametrize("bad", BAD_HASHES)
async def test_a_bad_hash_is_rejected_before_any_path_is_built(store: BlobStore, bad: str) -> None:
    with pytest.raises(InvalidBlobHash):
        store.path(bad)
    with pytest.raises(InvalidBlobHash):
        store.exists(bad)
    with pytest.raises(InvalidBlobHash):
        await store.read(bad)
    with pytest.raises(InvalidBlobHash):
        BlobRef(bad, 0)


def test_invalid_hash_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        BlobRef("nope", 1)


async def test_read_missing(store: BlobStore) -> None:
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound):
        await store.read(missing)


async def test_read_refuses_what_is_larger_than_asked(store: BlobStore) -> None:
    await store.put(NAME, PHOTO)
    assert await store.read(NAME, max_bytes=len(PHOTO)) == PHOTO
    with pytest.raises(BlobTooLarge):
        await store.read(NAME, max_bytes=len(PHOTO) - 1)


async def test_durable_before_it_returns(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file, its directory and every directory created for it are fsynced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await store.put(NAME, PHOTO)
    path = store.path(NAME)
    assert any(Path(name).parent == store.root / ".tmp" for name in synced)  # the file, by fd
    for directory in (path.parent, path.parent.parent, store.root):
        assert str(directory) in synced


async def test_a_slow_disk_does_not_stall_the_event_loop(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes and fsyncs run in threads: with every fsync taking 200 ms, the loop still turns."""
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    worst_gap_s = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst_gap_s
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst_gap_s = max(worst_gap_s, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await store.put(NAME, PHOTO)
    assert time.perf_counter() - started >= 0.2 * 4  # the file and three new directories
    running = False
    await tick
    assert worst_gap_s < 0.15


async def test_negative_limit_is_refused() -> None:
    empty: Iterable[bytes] = []

    async def none() -> AsyncIterator[bytes]:
        for chunk in empty:
            yield chunk

    with pytest.raises(ValueError, match="negative"):
        await receive(none(), max_bytes=-1)
