"""What protecting photos at rest costs, per photo: the upload route's storing step and the photo
lane's opening step plus analysis, plain against sealed, side by side in one run.

- **plain** (what the system did before migration 0013): the upload named by its SHA-256 and
  written as it came (``BlobStore.put``: temporary file, fsync, rename, directory fsync); the
  lane reads it, checks its SHA-256 and analyses it;
- **sealed** (now): ``PhotoVault.store`` (the keyed name, the data key fetched or made and
  committed in PostgreSQL, the metadata stripped, AES-256-GCM, the same durable write); the lane
  fetches and unwraps the key, reads and decrypts the blob and analyses it.

Both start from the upload's bytes in memory and use the same blob store and disk; the rest of
the route (the token, the registration's state, the transaction that records the photo) and of
the lane (the task, the outcome's transaction, the reuse query) is the same before and after
and is not timed. Two kinds of photos: the demo's 512 px selfies (about 60 KB) and phone-sized
ones (4000 x 3000, JPEG quality 90 with a phone's EXIF and GPS position, about 2 MB). Each
photo goes through plain then sealed then plain again alternately (the order swapped every
photo), ``--rounds`` times; the figures are medians of wall time and of the process's CPU time
(threads included) per photo. A fresh database ``intake_bench_photo_at_rest`` is migrated for
the key rows and dropped at the end.

    .venv/bin/python -m benchmarks.photo_at_rest [--count 30] [--large 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
from PIL import Image

from benchmarks._support import (
    BenchError,
    machine_info,
    markdown_table,
    median,
    progress,
    run_benchmark,
    with_path,
)
from core.blobs import BlobRef, BlobStore
from core.keys import Keyring
from core.migrate import migrate
from core.photo_vault import PhotoVault
from core.settings import Settings
from demo.selfies import compose
from verifiers.imaging import PhotoLimits, analyse, init_worker_process

DATABASE = "intake_bench_photo_at_rest"
LIMITS = PhotoLimits()
STEPS = ("route", "lane")


def small_photos(count: int) -> list[bytes]:
    return [compose("one_face", seed) for seed in range(count)]


def large_photos(count: int) -> list[bytes]:
    """Phone-sized JPEGs with a phone's EXIF (maker, serial, GPS position, orientation 1)."""
    exif = Image.Exif()
    exif[0x010F] = "TelefonPintar-X9"
    exif[0xA431] = "SN-3174011234567890"
    exif[0x8825] = {1: "S", 2: (6.0, 54.0, 53.0), 3: "E", 4: (107.0, 36.0, 35.0)}
    photos = []
    for seed in range(count):
        with Image.open(io.BytesIO(compose("one_face", 1000 + seed))) as small:
            big = small.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
        photos.append(buffer.getvalue())
    return photos


class Plain:
    """The store as it was: named by SHA-256, the bytes as they came."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def route(self, photo: bytes) -> BlobRef:
        name = hashlib.sha256(photo).hexdigest()
        await self.blobs.put(name, photo)
        return BlobRef(name, len(photo))

    async def lane(self, ref: BlobRef) -> str:
        data = await self.blobs.read(ref, max_bytes=LIMITS.max_bytes)
        if hashlib.sha256(data).hexdigest() != ref.name:
            raise BenchError("plain blob does not match its hash")
        return analyse(data, LIMITS).outcome


class Sealed:
    """The store as it is: keyed name, stripped, sealed, its key in PostgreSQL."""

    def __init__(self, vault: PhotoVault, pool: asyncpg.Pool) -> None:
        self.vault = vault
        self.pool = pool

    async def route(self, photo: bytes) -> BlobRef:
        return await self.vault.store(self.pool, photo)

    async def lane(self, ref: BlobRef) -> str:
        data = await self.vault.open(self.pool, ref, max_bytes=LIMITS.max_bytes)
        return analyse(data, LIMITS).outcome


async def _timed(step: Awaitable[Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await step
    return time.perf_counter() - wall, time.process_time() - cpu, result


async def _measure(
    root: Path, keyring: Keyring, pool: asyncpg.Pool, photos: list[bytes], rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        way: {step: {"wall": [], "cpu": []} for step in STEPS} for way in ("plain", "sealed")
    }
    for round_ in range(rounds):
        # Every round stores every photo for the first time: new directories, no key rows.
        await pool.execute("TRUNCATE photo_keys")
        plain = Plain(BlobStore(root / f"plain-{round_}"))
        sealed = Sealed(PhotoVault(BlobStore(root / f"sealed-{round_}"), keyring), pool)
        for index, photo in enumerate(photos):
            ways: list[tuple[str, Plain | Sealed]] = [("plain", plain), ("sealed", sealed)]
            if (index + round_) % 2:
                ways.reverse()
            for way, store in ways:
                wall, cpu, ref = await _timed(store.route(photo))
                samples[way]["route"]["wall"].append(wall)
                samples[way]["route"]["cpu"].append(cpu)
                wall, cpu, outcome = await _timed(store.lane(ref))
                if outcome != "ok":
                    raise BenchError(f"{way}: photo {index} analysed as {outcome}")
                samples[way]["lane"]["wall"].append(wall)
                samples[way]["lane"]["cpu"].append(cpu)
    return {
        way: {
            step: {k: median(v) * 1000 for k, v in values.items()} for step, values in steps.items()
        }
        for way, steps in samples.items()
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    init_worker_process()
    progress("making photos")
    kinds = {
        "512 px selfie": small_photos(args.count),
        "4000x3000 phone JPEG": large_photos(args.large),
    }
    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    results: dict[str, Any] = {"machine": machine_info(), "config": vars(args), "kinds": {}}
    try:
        url = with_path(settings.database_url, DATABASE)
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            async with pool.acquire() as connection:
                await migrate(connection)
            keyring = Keyring.from_settings(settings)
            for kind, photos in kinds.items():
                progress(f"{kind}: {len(photos)} photos x {args.rounds} rounds")
                with tempfile.TemporaryDirectory(prefix="intake-bench-at-rest-") as root:
                    ms = await _measure(Path(root), keyring, pool, photos, args.rounds)
                results["kinds"][kind] = {"bytes": median([len(p) for p in photos]), "ms": ms}
    finally:
        admin = await asyncpg.connect(settings.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        finally:
            await admin.close()
    return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for kind, found in results["kinds"].items():
        ms = found["ms"]
        for step in STEPS:
            plain, sealed = ms["plain"][step], ms["sealed"][step]
            rows.append(
                [
                    kind,
                    f"{found['bytes'] / 1000:,.0f} KB",
                    step,
                    f"{plain['wall']:.2f} / {plain['cpu']:.2f}",
                    f"{sealed['wall']:.2f} / {sealed['cpu']:.2f}",
                    f"{sealed['wall'] / plain['wall']:.2f} x"
                    f" / {sealed['cpu'] / plain['cpu']:.2f} x",
                ]
            )
    header = ["photo", "size", "step", "plain ms (wall / CPU)", "sealed ms (wall / CPU)", "ratio"]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=30, help="512 px selfies")
    parser.add_argument("--large", type=int, default=6, help="phone-sized JPEGs")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos")
    args = parser.parse_args(argv)
    if min(args.count, args.large, args.rounds) < 1:
        parser.error("--count, --large and --rounds must be positive")
    code, _ = run_benchmark("photo_at_rest", lambda: run(args), report)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
