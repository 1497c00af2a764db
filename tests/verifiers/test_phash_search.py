"""The reused-selfie search by multi-index hashing (``verifiers/phash_chunks.py``, migration
0007, ``verifiers.photo.REUSED_SQL``) finds exactly what a scan with the exact Hamming distance
finds: on PostgreSQL, against random photos and near-duplicates planted at every distance up to
:data:`~verifiers.imaging.SAME_PHOTO_MAX_DISTANCE` and a few bits past it, with their flipped
bits spread over the chunks in the ways closest to escaping the search."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import uuid
from dataclasses import dataclass, field
from math import comb

import asyncpg

from core.migrate import available
from verifiers.imaging import SAME_PHOTO_MAX_DISTANCE
from verifiers.phash_chunks import CHUNKS, probes, radii
from verifiers.photo import MATCHES_SQL, REUSED_SQL

D = SAME_PHOTO_MAX_DISTANCE
# The query the chunks replace, the reference: every photo within the exact distance.
SCAN_SQL = """
SELECT registration_id FROM photos
WHERE registration_id <> $1 AND (blob_hmac = $2 OR bit_count((phash # $3::bigint)::bit(64)) <= $4)
"""
RANDOM_PHOTOS = 20_000
PLANTED_PROBES = 150
RANDOM_PROBES = 100


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _chunk_bits(index: int) -> list[int]:
    width, shift = CHUNKS[index]
    return list(range(shift, shift + width))


def _spread_against_the_chunks(rng: random.Random, distance: int) -> list[int]:
    """``distance`` bit positions, placed to escape the search if anything can: chunk after
    chunk (in a random order) gets one flip more than its radius, so that at distance d the
    last chunk filled sits exactly on its radius and past d none is within it."""
    flips: list[int] = []
    left = distance
    limits = radii(D)
    for index in rng.sample(range(len(CHUNKS)), len(CHUNKS)):
        take = min(left, limits[index] + 1)
        flips += rng.sample(_chunk_bits(index), take)
        left -= take
    spare = [bit for bit in range(64) if bit not in flips]
    return flips + rng.sample(spare, left)


def _near(rng: random.Random, phash: int, distance: int, pattern: str) -> int:
    if pattern == "random":
        bits = rng.sample(range(64), distance)
    elif pattern == "run":  # neighbouring bits, across a chunk boundary or not
        start = rng.randrange(64 - distance + 1)
        bits = list(range(start, start + distance))
    else:
        bits = _spread_against_the_chunks(rng, distance)
    return _signed(_flip(phash & (1 << 64) - 1, bits))


@dataclass
class Photos:
    """Rows for ``photos`` (and their registrations), and the look-ups to make."""

    rng: random.Random
    rows: list[tuple[uuid.UUID, str, int | None]] = field(default_factory=list)
    # (registration looking, its sha256, its phash, planted ids within D, planted ids past D)
    lookups: list[tuple[uuid.UUID, str, int, set[uuid.UUID], set[uuid.UUID]]] = field(
        default_factory=list
    )

    def add(self, phash: int | None, sha256: str | None = None) -> uuid.UUID:
        registration_id = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        self.rows.append((registration_id, sha256 or self.sha256(), phash))
        return registration_id

    def sha256(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"

    def random_phash(self) -> int:
        return _signed(self.rng.getrandbits(64))


def _population(seed: int) -> Photos:
    photos = Photos(random.Random(seed))
    rng = photos.rng
    for _ in range(RANDOM_PHOTOS):
        photos.add(photos.random_phash())
    for _ in range(PLANTED_PROBES):
        phash, sha256 = photos.random_phash(), photos.sha256()
        own = photos.add(phash, sha256)  # committed before the look-up, as the lane does
        within: set[uuid.UUID] = set()
        past: set[uuid.UUID] = set()
        for distance, pattern in itertools.product(range(D + 4), ("random", "run", "spread")):
            planted = photos.add(_near(rng, phash, distance, pattern))
            (within if distance <= D else past).add(planted)
        # One chunk equal, the rest random: found by an index, dropped by the exact distance.
        width, shift = rng.choice(CHUNKS)
        mask = ((1 << width) - 1) << shift
        lookalike = (phash & mask) | (rng.getrandbits(64) & ~mask)
        past.add(photos.add(_signed(lookalike)))
        # The same bytes: with a far hash, and not analysed yet (no hash).
        within.add(photos.add(photos.random_phash(), sha256))
        within.add(photos.add(None, sha256))
        photos.lookups.append((own, sha256, phash, within, past))
    for _ in range(RANDOM_PROBES):
        _, _, stored = rng.choice(photos.rows[:RANDOM_PHOTOS])
        assert stored is not None
        phash = _near(rng, stored, rng.randrange(D + 4), "random")
        photos.lookups.append((uuid.uuid4(), photos.sha256(), phash, set(), set()))
    return photos


async def _store(db: asyncpg.Pool, photos: Photos) -> None:
    now = dt.datetime.now(dt.UTC)
    async with db.acquire() as connection, connection.transaction():
        await connection.copy_records_to_table(
            "registrations",
            records=[(r, b"\x00", b"\x00", b"\x00", "received", now) for r, _, _ in photos.rows],
            columns=["id", "nik_hmac", "nik_enc", "personal_enc", "status", "submitted_at"],
        )
        await connection.copy_records_to_table(
            "photos",
            records=[
                (
                    r,
                    sha256,
                    1000,
                    phash,
                    None if phash is None else now,
                    None if phash is None else "ok",
                )
                for r, sha256, phash in photos.rows
            ],
            columns=[
                "registration_id",
                "blob_hmac",
                "size_bytes",
                "phash",
                "analysed_at",
                "outcome",
            ],
        )
    await db.execute("VACUUM ANALYZE photos")  # the visibility map, for index-only scans


def test_the_radii_leave_no_way_round_the_chunks() -> None:
    """Every way of spreading at most d flipped bits over the chunks leaves one chunk within its
    radius (checked by enumeration, for d = 0..20), and the probe values of a chunk are all its
    values within its radius, each once."""
    assert sorted(bit for index in range(len(CHUNKS)) for bit in _chunk_bits(index)) == list(
        range(64)
    )
    for d in range(21):
        limits = radii(d)
        assert sum(r + 1 for r in limits) == d + 1
        for counts in itertools.product(*(range(width + 1) for width, _ in CHUNKS)):
            if sum(counts) <= d:
                assert any(c <= r for c, r in zip(counts, limits, strict=True)), (d, counts)
    phash = _signed(random.Random(3).getrandbits(64))
    for (width, shift), radius, values in zip(CHUNKS, radii(D), probes(phash, D), strict=True):
        chunk = (phash >> shift) & ((1 << width) - 1)
        assert len(set(values)) == len(values) == sum(comb(width, k) for k in range(radius + 1))
        assert all((value ^ chunk).bit_count() <= radius for value in values)


def test_the_migration_and_the_query_spell_the_chunks_of_the_module() -> None:
    """The planner uses an expression index only for the very same expression."""
    migration = next(sql for version, _, sql in available() if version == 7)

    def expressions(text: str) -> list[tuple[int, int]]:
        found = re.findall(r"\(\(phash >> (\d+)\) & (\d+)\)|\(phash & (\d+)\)", text)
        return [(int(shift or 0), int(mask or low)) for shift, mask, low in found]

    expected = [(shift, (1 << width) - 1) for width, shift in CHUNKS]
    assert expressions(migration) == expected
    assert expressions(MATCHES_SQL) == expected


async def test_the_chunked_search_finds_what_the_scan_finds(db: asyncpg.Pool) -> None:
    photos = _population(seed=14)
    await _store(db, photos)
    async with db.acquire() as connection:
        for own, sha256, phash, within, past in photos.lookups:
            args = (own, sha256, phash, D)
            scanned = {r["registration_id"] for r in await connection.fetch(SCAN_SQL, *args)}
            chunked = [
                r["registration_id"]
                for r in await connection.fetch(MATCHES_SQL, *args, *probes(phash, D))
            ]
            assert set(chunked) == scanned, phash
            assert within <= scanned  # the planted rows are on the side of D they were meant
            assert not past & scanned
            reused = await connection.fetchval(REUSED_SQL, *args, *probes(phash, D))
            assert reused == bool(scanned)


async def test_the_look_up_reads_the_chunk_indexes(db: asyncpg.Pool) -> None:
    """One index-only scan per chunk: the expressions match the indexes, and the candidates are
    checked without visiting the table. Also in the generic plan, which PostgreSQL may choose
    for the lane's prepared statement after its fifth run."""
    photos = _population(seed=15)
    await _store(db, photos)
    own, sha256, phash, *_ = photos.lookups[0]
    args = (own, sha256, phash, D, *probes(phash, D))
    async with db.acquire() as connection, connection.transaction():
        custom = await connection.fetch("EXPLAIN " + REUSED_SQL, *args)
        await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await connection.execute("PREPARE reused AS " + REUSED_SQL)
        # EXECUTE takes no parameters: the values as literals (the generic plan ignores them).
        arrays = ", ".join("'{" + ",".join(map(str, v)) + "}'" for v in probes(phash, D))
        generic = await connection.fetch(
            f"EXPLAIN EXECUTE reused ('{own}', '{sha256}', {phash}, {D}, {arrays})"
        )
        await connection.execute("DEALLOCATE reused")
    for rows in (custom, generic):
        plan = "\n".join(row[0] for row in rows)
        assert "Seq Scan" not in plan, plan
        for index in range(len(CHUNKS)):
            assert f"Index Only Scan using photos_phash_chunk{index} " in plan, plan
