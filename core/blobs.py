"""Blob store on a local (or mounted) filesystem: registrants' photos, sealed.

A blob lives at ``root/ab/cd/<name>``, its name 64 lower-case hex digits: for photos the keyed
HMAC of the uploaded bytes (``core.photo_vault``), so equal photos have one name (a retried
upload is one file) and a copy of a photo does not reveal whether it is stored. The store keeps
bytes it is given; what they are (a photo sealed with its own data key) is the caller's.

A write goes to a temporary file under ``root/.tmp`` (the same filesystem, so the final rename
is atomic), which is fsynced, renamed into place and its directory fsynced before
:meth:`BlobStore.put` returns. A crash leaves at most an orphan in ``root/.tmp``, never a
partial blob under its name; orphans older than the longest upload are safe to delete. A name
that exists already is kept: its bytes are as good as the new ones (a sealed photo's data key is
the name's, ``core.photo_vault``).

An upload is received whole in memory before it is stored (:func:`receive`): it is at most
``INTAKE_PHOTO_MAX_BYTES`` (5 MiB), and it must be read whole anyway to be named, stripped of
its metadata and encrypted before any byte of it reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

_NAME_HEX = re.compile(r"[0-9a-f]{64}")
_TMP_DIR: Final = ".tmp"


class BlobError(Exception):
    """Base class of the blob store's errors."""


class BlobTooLarge(BlobError):
    """The blob is larger than the caller's limit; nothing was stored."""


class BlobNotFound(BlobError, LookupError):
    """No blob has this name."""


class BlobCorrupt(BlobError):
    """The stored bytes are not what was stored under the name (disk damage or tampering)."""


class InvalidBlobHash(BlobError, ValueError):
    """Not a blob name (64 lower-case hex digits): never used to build a path."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored photo: its blob's name (64 lower-case hex digits) and its size as uploaded."""

    name: str
    size_bytes: int

    def __post_init__(self) -> None:
        _check_hash(self.name)
        if self.size_bytes < 0:
            raise ValueError("size_bytes must not be negative")


async def receive(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """The bytes ``chunks`` yields, whole. Raises :class:`BlobTooLarge` as soon as more than
    ``max_bytes`` have arrived, without reading further."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    size = 0
    buffer = bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise BlobTooLarge(f"blob exceeds {max_bytes} bytes")
        buffer += chunk
    return bytes(buffer)


class BlobStore:
    """Blobs under ``root``, one file per name.

    Promises: once :meth:`put` returns, the bytes are durable under their name (file and
    directory entries fsynced) and complete; storing a name again, even concurrently, leaves
    one file; a failed or cancelled write leaves nothing behind. File I/O runs in worker
    threads, never for long on the event loop.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Directories whose own entry this process has fsynced (at most 1 + 256 + 65,536).
        self._durable_dirs: set[Path] = set()

    async def put(self, name: str, data: bytes, *, replace: bool = False) -> None:
        """Store ``data`` as ``name`` (kept as it is if the name exists, unless ``replace``),
        durably.

        A failed write's temporary file is removed before the error is raised; on cancellation,
        by a worker thread just after (a write already running in its thread cannot be stopped,
        and the event loop must not wait for it).
        """
        final = self.path(name)
        pending = _PendingBlob(self.root / _TMP_DIR, self._ensure_dir)
        try:
            await asyncio.to_thread(pending.write, data)
            await asyncio.to_thread(pending.commit, final, replace)
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

    def path(self, ref_or_name: BlobRef | str) -> Path:
        """Where the blob lives (whether or not it exists). Raises :class:`InvalidBlobHash` for
        anything but 64 lower-case hex digits, so no input can reach outside ``root``."""
        name = _hash_of(ref_or_name)
        return self.root / name[:2] / name[2:4] / name

    def exists(self, ref_or_name: BlobRef | str) -> bool:
        """Whether the blob is stored (one ``stat``)."""
        return self.path(ref_or_name).is_file()

    async def read(self, ref_or_name: BlobRef | str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes as stored. Raises :class:`BlobNotFound`; :class:`BlobTooLarge` if
        the file is larger than ``max_bytes`` (checked before reading it into memory)."""
        path = self.path(ref_or_name)
        return await asyncio.to_thread(_read_limited, path, max_bytes)

    async def delete(self, ref_or_name: BlobRef | str) -> bool:
        """Remove the blob, durably (its directory fsynced); False if it was not there. A
        sealed photo is unreadable once its key row is deleted (``core.photo_vault``): this
        removes the ciphertext too."""
        path = self.path(ref_or_name)
        return await asyncio.to_thread(_unlink_durably, path)

    def stored_before(self, before_s: float) -> Iterator[str]:
        """The names of blobs last written before ``before_s`` (a Unix time), walking the whole
        store (blocking: call it in a thread); a name that vanishes meanwhile is skipped."""
        for first in sorted(_subdirs(self.root)):
            for second in sorted(_subdirs(first)):
                for path in sorted(second.iterdir()):
                    if not _NAME_HEX.fullmatch(path.name):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_mtime < before_s:
                            yield path.name

    def remove_stale_temporaries(self, before_s: float) -> int:
        """Delete the temporary files of writes that crashed, older than ``before_s`` (blocking)."""
        removed = 0
        tmp = self.root / _TMP_DIR
        for path in tmp.iterdir() if tmp.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < before_s:
                    path.unlink()
                    removed += 1
        return removed

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
        self._lock = threading.Lock()
        self._done = False

    def write(self, data: bytes) -> None:
        with self._lock:
            self._ensure_open().write(data)

    def commit(self, final: Path, replace: bool = False) -> None:
        """fsync, then rename into place (or drop, if the blob is there already and not to be
        replaced)."""
        with self._lock:
            file = self._ensure_open()
            tmp_path = self._tmp_path
            assert tmp_path is not None
            self._done = True
            try:
                file.flush()
                os.fsync(file.fileno())
                file.close()
                self._ensure_dir(final.parent)
                if replace or not final.is_file():
                    # Atomic: a reader sees no file or the whole file. Two uploads of the same
                    # photo may both get here; the second replaces a sealing of the same photo
                    # under the same data key, harmlessly.
                    os.replace(tmp_path, final)
                    self._tmp_path = None  # the name may be reused by another upload now
                # Ours, or a concurrent upload's that may not have fsynced it yet: either way
                # the entry is durable before the blob is promised.
                _fsync_dir(final.parent)
            finally:
                self._remove()

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


def _subdirs(path: Path) -> list[Path]:
    """The two-hex-digit directories of the store's layout under ``path``."""
    if not path.is_dir():
        return []
    return [p for p in path.iterdir() if len(p.name) == 2 and p.is_dir() and p.name != _TMP_DIR]


def _unlink_durably(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_limited(path: Path, max_bytes: int | None) -> bytes:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise BlobTooLarge(f"blob is {size} bytes, more than {max_bytes}")
            return f.read()
    except FileNotFoundError:
        raise BlobNotFound(path.name) from None


def _hash_of(ref_or_name: BlobRef | str) -> str:
    return _check_hash(ref_or_name.name if isinstance(ref_or_name, BlobRef) else ref_or_name)


def _check_hash(name: str) -> str:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not isinstance(name, str) or not _NAME_HEX.fullmatch(name):
        raise InvalidBlobHash("a blob name is 64 lower-case hex digits")
    return name
