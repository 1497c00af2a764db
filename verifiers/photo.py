"""The photo check: the selfie with the ID card, once the registrant uploaded it.

The edge stores the upload sealed, without its metadata, named by its keyed hash
(``core.photo_vault``), and its row in ``photos``; the task names only the registration. Here,
the only place a photo is decrypted, the blob is opened, analysed in a process
pool (``verifiers.imaging``: CPU-bound, about 10 photos/s per process, never on the event loop),
and the outcome mapped:

- not a usable photo of one face: :class:`Reject` with ``photo_<outcome>`` (``photo_no_face``,
  ``photo_multiple_faces``, ``photo_truncated``, ...);
- one face, but the same selfie is on another registration (the same bytes, by their keyed
  hash, or a perceptual
  hash within :data:`~verifiers.imaging.SAME_PHOTO_MAX_DISTANCE` bits): :class:`Review` with
  ``photo_reused``. Sharing a photo is suspicious, not proof of fraud: a person decides;
- otherwise :class:`Passed`.

The analysis is written to ``photos`` and committed *before* looking for reuse, so of two
registrations analysed at the same moment with the same selfie at least one sees the other.
A missing blob or a crashed analysis process is a :class:`Retry`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import ClassVar

import asyncpg

from core.blobs import BlobError, BlobNotFound, BlobRef, BlobStore
from core.keys import Keyring
from core.photo_vault import PhotoVault
from core.settings import Settings
from core.verification import Check, Passed, Reject, Retry, Review, Subject, Task
from verifiers.imaging import (
    SAME_PHOTO_MAX_DISTANCE,
    PhotoAnalysis,
    PhotoLimits,
    analyse,
    init_worker_process,
)
from verifiers.phash_chunks import CHUNKS, probes

log = logging.getLogger(__name__)

REUSED = "photo_reused"

_PHOTO_SQL = "SELECT blob_hmac, size_bytes FROM photos WHERE registration_id = $1"
_ANALYSED_SQL = """
UPDATE photos SET phash = $2, outcome = $3, analysed_at = now()
WHERE registration_id = $1 AND blob_hmac = $4
"""


# The same bytes (photos_blob_hmac, the keyed hash of the upload), or a perceptual hash within $4
# bits of $3: multi-index hashing (verifiers/phash_chunks.py, migration 0007), one arm per 16-bit
# chunk that looks up the probe values $5..$8 in the chunk's index and keeps the rows within the
# exact distance; see docs/architecture.md. UNION ALL rather than the arms joined by OR in one
# WHERE: that is planned as a sequential scan, and a bitmap scan, its best plan, would visit a table
# page for each of the thousands of candidates; an arm of its own is an index-only scan. EXISTS
# stops at the first row. The chunk expressions are made from CHUNKS as migration 0007 spells them
# (a test compares).
def _matches_sql() -> str:
    """The keyed-hash arm, then one arm per chunk of :data:`~verifiers.phash_chunks.CHUNKS`
    (values ``$5``, ``$6``, ...), each spelled as migration 0007's index expression."""
    arms = ["SELECT registration_id FROM photos WHERE blob_hmac = $2 AND registration_id <> $1"]
    for index, (width, shift) in enumerate(CHUNKS):
        mask = (1 << width) - 1
        chunk = f"((phash >> {shift}) & {mask})" if shift else f"(phash & {mask})"
        arms.append(
            "SELECT registration_id FROM photos\n"  # noqa: S608 - integers from CHUNKS only
            f"WHERE {chunk} = ANY(${5 + index}::bigint[])\n"
            "  AND bit_count((phash # $3::bigint)::bit(64)) <= $4 AND registration_id <> $1"
        )
    return "\n" + "\nUNION ALL\n".join(arms) + "\n"


MATCHES_SQL = _matches_sql()
REUSED_SQL = "SELECT EXISTS (" + MATCHES_SQL + ")"


def phash_to_bigint(phash_hex: str) -> int:
    """The 16 hex digits of a perceptual hash as PostgreSQL's signed 64-bit integer."""
    value = int(phash_hex, 16)
    return value - (1 << 64) if value >= 1 << 63 else value


class PhotoVerifier:
    """Analyses the uploaded selfie of a registration; see the module's docstring.

    Owns a process pool of ``settings.photo_workers`` processes, started on the first photo
    (spawned, not forked: the lane's process runs threads) and shut down by :meth:`close`.
    """

    check: ClassVar[Check] = Check.PHOTO

    def __init__(self, settings: Settings, keyring: Keyring, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._photos = PhotoVault(BlobStore(Path(settings.blob_dir)), keyring)
        self._limits = PhotoLimits(max_bytes=settings.photo_max_bytes)
        self._workers = settings.photo_workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    async def verify(self, task: Task, subject: Subject) -> Passed:
        row = await self._pool.fetchrow(_PHOTO_SQL, task.registration_id)
        if row is None:
            raise Retry("photo_row_missing")  # written with the pending check: should not happen
        ref = BlobRef(row["blob_hmac"], row["size_bytes"])
        try:
            data = await self._photos.open(self._pool, ref, max_bytes=self._limits.max_bytes)
        except BlobNotFound:
            raise Retry("blob_missing") from None
        except BlobError as exc:
            raise Retry(f"blob_unreadable:{type(exc).__name__}") from None
        analysis = await self._analyse(data)
        phash = phash_to_bigint(analysis.phash) if analysis.phash is not None else None
        await self._pool.execute(
            _ANALYSED_SQL, task.registration_id, phash, analysis.outcome, ref.name
        )
        if not analysis.ok:
            raise Reject(f"photo_{analysis.outcome}")
        if phash is None:
            raise Retry("photo_not_hashed")  # an ok analysis always has a hash: should not happen
        reused = await self._pool.fetchval(
            REUSED_SQL,
            task.registration_id,
            ref.name,
            phash,
            SAME_PHOTO_MAX_DISTANCE,
            *probes(phash, SAME_PHOTO_MAX_DISTANCE),
        )
        if reused:
            raise Review(REUSED)
        return Passed()

    async def close(self) -> None:
        """Shut the process pool down, waiting for analyses in progress."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _analyse(self, data: bytes) -> PhotoAnalysis:
        executor = self._ensure_executor()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, analyse, data, self._limits)
        except BrokenProcessPool:
            # A process died (the OOM killer, a native crash): a new pool for the next try.
            log.error("photo analysis process died; pool restarted")
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise Retry("analysis_process_died") from None

    def _ensure_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker_process,
            )
        return self._executor
