"""Content-addressed blob store on a local (or mounted) filesystem: registrants' photos.

A blob is named by the SHA-256 of its bytes and lives at ``root/ab/cd/<sha256>``. Content
addressing makes writes idempotent: the same photo uploaded twice, or a retried upload, is one
file, and a name can never point at other bytes. Messages carry the :class:`BlobRef`, never the
bytes.

Writes stream to a temporary file under ``root/.tmp`` (the same filesystem, so the final rename is
atomic), hashing on the way, and are fsynced, renamed into place and the directory fsynced before
:meth:`BlobStore.put_stream` returns. A crash leaves at most an orphan in ``root/.tmp``, never a
partial blob under its name; orphans older than the longest upload are safe to delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TMP_DIR: Final = ".tmp"
# Chunks from an HTTP body are often a few KiB, and a trip to a thread costs about 170 us of CPU
# here: storing 5 MiB from 4 KiB chunks took 217 ms of CPU with a thread per chunk, 13 ms with
# writes gathered to 256 KiB (64 KiB: 23 ms; 1 MiB: 11 ms, for four times the memory).
DEFAULT_WRITE_BUFFER_BYTES: Final = 256 * 1024


class BlobError(Exception):
    """Base class of the blob store's errors."""


class BlobTooLarge(BlobError):
    """The blob is larger than the caller's limit; nothing was stored."""


class BlobNotFound(BlobError, LookupError):
    """No blob has this hash."""


class BlobCorrupt(BlobError):
    """The stored bytes no longer match their name (disk damage or tampering)."""


class InvalidBlobHash(BlobError, ValueError):
    """Not a SHA-256 in lower-case hex: never used to build a path."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored blob: its SHA-256 (64 lower-case hex digits) and its size."""

    sha256: str
    size_bytes: int

    def __post_init__(self) -> None:
        _check_hash(self.sha256)
        if self.size_bytes < 0:
            raise ValueError("size_bytes must not be negative")


class BlobStore:
    """Blobs under ``root``, one file per distinct content.

    Promises: a :class:`BlobRef` returned by :meth:`put_stream` names bytes that are durable on
    disk (file and directory entries fsynced) and complete; storing the same bytes again, even
    concurrently, leaves one file; a rejected or cancelled upload leaves nothing behind. File I/O
    runs in worker threads, never for long on the event loop.
    """

    def __init__(self, root: Path, *, write_buffer_bytes: int = DEFAULT_WRITE_BUFFER_BYTES) -> None:
        if write_buffer_bytes < 1:
            raise ValueError("write_buffer_bytes must be positive")
        self.root = root
        self._write_buffer_bytes = write_buffer_bytes
        # Directories whose own entry this process has fsynced (at most 1 + 256 + 65,536).
        self._durable_dirs: set[Path] = set()

    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int) -> BlobRef:
        """Store the bytes ``chunks`` yields and return their reference once they are durable.

        Raises :class:`BlobTooLarge` as soon as more than ``max_bytes`` have arrived, without
        reading further. The partial file is removed before an error is raised; on cancellation,
        by a worker thread just after (a write already running in its thread cannot be stopped,
        and the event loop must not wait for it).
        """
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        pending = _PendingBlob(self.root / _TMP_DIR, self._ensure_dir)
        try:
            size = 0
            buffer = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(f"blob exceeds {max_bytes} bytes")
                buffer += chunk
                if len(buffer) >= self._write_buffer_bytes:
                    await asyncio.to_thread(pending.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(pending.write, bytes(buffer))
            sha256 = await asyncio.to_thread(pending.commit, self._blob_path)
        except BaseException as exc:
            discarded: asyncio.Future[None] | None
            try:
                discarded = asyncio.get_running_loop().run_in_executor(None, pending.discard)
            except RuntimeError:  # the loop's executor is shut down already
                discarded = None
            if discarded is None:
                pending.discard()
            elif isinstance(exc, Exception):
                # Raise once the file is gone; shielded, so a cancellation meanwhile still
                # lets the removal finish.
                await asyncio.shield(discarded)
            raise
        return BlobRef(sha256, size)

    def path(self, ref_or_hash: BlobRef | str) -> Path:
        """Where the blob lives (whether or not it exists). Raises :class:`InvalidBlobHash` for
        anything but 64 lower-case hex digits, so no input can reach outside ``root``."""
        return self._blob_path(_hash_of(ref_or_hash))

    def exists(self, ref_or_hash: BlobRef | str) -> bool:
        """Whether the blob is stored (one ``stat``)."""
        return self.path(ref_or_hash).is_file()

    async def read(self, ref_or_hash: BlobRef | str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes, checked against its name before they are returned.

        Raises :class:`BlobNotFound`; :class:`BlobTooLarge` if the file is larger than
        ``max_bytes`` (checked before reading it into memory); :class:`BlobCorrupt` if its size
        differs from a given :class:`BlobRef` or its SHA-256 from its name.
        """
        path = self.path(ref_or_hash)
        expected_size = ref_or_hash.size_bytes if isinstance(ref_or_hash, BlobRef) else None
        return await asyncio.to_thread(
            _read_checked, path, _hash_of(ref_or_hash), expected_size, max_bytes
        )

    def _blob_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _ensure_dir(self, path: Path) -> None:
        """``mkdir -p`` up to ``root``, fsyncing the parent of each directory once per process
        (whoever created it), so that no blob is promised inside a directory whose own entry
        could still be lost. Runs in worker threads; a race only repeats an fsync."""
        if path in self._durable_dirs:
            return
        if path == self.root:
            path.parent.mkdir(parents=True, exist_ok=True)  # above root: the operator's
        else:
            self._ensure_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        _fsync_dir(path.parent)
        self._durable_dirs.add(path)


class _PendingBlob:
    """One upload's temporary file, created on the first write. Its methods run in worker
    threads; the lock orders a write still running against a discard after a cancellation."""

    def __init__(self, tmp_dir: Path, ensure_dir: Callable[[Path], None]) -> None:
        self._tmp_dir = tmp_dir
        self._ensure_dir = ensure_dir
        self._file: BinaryIO | None = None
        self._tmp_path: Path | None = None
        self._hasher = hashlib.sha256()
        self._lock = threading.Lock()
        self._done = False

    def write(self, data: bytes) -> None:
        with self._lock:
            self._ensure_open().write(data)
            self._hasher.update(data)  # hashlib releases the GIL for buffers this large

    def commit(self, blob_path_of: Callable[[str], Path]) -> str:
        """fsync, then rename into place (or drop, if the blob is there already); the hash."""
        with self._lock:
            file = self._ensure_open()
            tmp_path = self._tmp_path
            assert tmp_path is not None
            self._done = True
            sha256 = self._hasher.hexdigest()
            final = blob_path_of(sha256)
            try:
                file.flush()
                os.fsync(file.fileno())
                file.close()
                self._ensure_dir(final.parent)
                if not final.is_file():
                    # Atomic: a reader sees no file or the whole file. Two uploads of the same
                    # bytes may both get here; the second replaces identical bytes, harmlessly.
                    os.replace(tmp_path, final)
                    self._tmp_path = None  # the name may be reused by another upload now
                # Ours, or a concurrent upload's that may not have fsynced it yet: either way
                # the entry is durable before the blob is promised.
                _fsync_dir(final.parent)
            finally:
                self._remove()
            return sha256

    def discard(self) -> None:
        with self._lock:
            self._done = True
            self._remove()

    def _ensure_open(self) -> BinaryIO:
        if self._done:
            raise BlobError("upload already finished")
        if self._file is None:
            self._ensure_dir(self._tmp_dir)
            fd, name = tempfile.mkstemp(dir=self._tmp_dir, prefix="upload-")
            self._file = os.fdopen(fd, "wb")
            self._tmp_path = Path(name)
        return self._file

    def _remove(self) -> None:
        """Close and delete the temporary file, if it is still there (after the rename, the
        name is gone)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_checked(
    path: Path, sha256: str, expected_size: int | None, max_bytes: int | None
) -> bytes:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise BlobTooLarge(f"blob is {size} bytes, more than {max_bytes}")
            if expected_size is not None and size != expected_size:
                raise BlobCorrupt(f"blob {sha256} is {size} bytes, not {expected_size}")
            data = f.read()
    except FileNotFoundError:
        raise BlobNotFound(sha256) from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise BlobCorrupt(f"blob {sha256} does not match its hash")
    return data


def _hash_of(ref_or_hash: BlobRef | str) -> str:
    return _check_hash(ref_or_hash.sha256 if isinstance(ref_or_hash, BlobRef) else ref_or_hash)


def _check_hash(sha256: str) -> str:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise InvalidBlobHash("a blob hash is 64 lower-case hex digits")
    return sha256
