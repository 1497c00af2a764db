"""Photo analysis: every outcome on real photographs (scikit-image's samples, encoded here),
decompression bombs, the perceptual-hash threshold, and fuzzing for "never raises"."""

from __future__ import annotations

import concurrent.futures
import functools
import io
import multiprocessing
import struct
import threading
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.photos import encode, sample
from verifiers.imaging import (
    SAME_PHOTO_MAX_DISTANCE,
    PhotoAnalysis,
    PhotoLimits,
    analyse,
    hamming,
    init_worker_process,
)

LIMITS = PhotoLimits()


@functools.cache
def astronaut() -> Image.Image:
    """A real portrait: exactly one face."""
    return sample("astronaut")


def two_astronauts() -> Image.Image:
    portrait = np.asarray(astronaut())
    return Image.fromarray(np.hstack([portrait, portrait]))


def selfie_1024() -> Image.Image:
    return astronaut().resize((1024, 1024), Image.Resampling.LANCZOS)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid single-colour 1-bit PNG, written by hand: its rows are all zero bytes, so it is
    compressed a block of rows at a time and never exists uncompressed in memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row_bytes = 1 + (width + 7) // 8  # filter byte 0, then the packed pixels
    compressor = zlib.compressobj(9)
    block_rows = 1000
    idat = [compressor.compress(bytes(row_bytes * block_rows)) for _ in range(height // block_rows)]
    idat.append(compressor.compress(bytes(row_bytes * (height % block_rows))))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_one_face_is_ok(image_format: str) -> None:
    result = analyse(encode(astronaut(), image_format), LIMITS)
    assert result == PhotoAnalysis("ok", 512, 512, 1, result.phash)
    assert result.ok
    assert result.phash is not None
    assert len(result.phash) == 16


def test_a_large_selfie_is_scaled_down_and_ok() -> None:
    result = analyse(encode(astronaut().resize((4000, 3000)), "JPEG", quality=90), LIMITS)
    assert (result.outcome, result.width, result.height, result.faces) == ("ok", 4000, 3000, 1)


def test_a_sideways_photo_is_turned_by_its_exif_orientation() -> None:
    sideways = astronaut().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    assert analyse(encode(sideways, "JPEG"), LIMITS).outcome == "no_face"
    upright = analyse(encode(sideways, "JPEG", exif=exif), LIMITS)
    assert upright.outcome == "ok"
    assert upright.phash == analyse(encode(astronaut(), "JPEG"), LIMITS).phash


def test_a_phone_mpo_is_read_as_its_first_jpeg_frame() -> None:
    mpo = encode(astronaut(), "MPO", save_all=True, append_images=[astronaut().convert("L")])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert analyse(mpo, LIMITS).outcome == "ok"


def png_in_mode(mode: str) -> bytes:
    if mode == "I;16":
        grey = np.asarray(astronaut().convert("L")).astype(np.uint16) * 257
        return encode(Image.fromarray(grey), "PNG")
    if mode == "P+transparency":
        paletted = astronaut().convert("P", palette=Image.Palette.ADAPTIVE)
        return encode(paletted, "PNG", transparency=bytes(range(256)))
    return encode(astronaut().convert(mode), "PNG")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P+transparency", "I;16"])
def test_every_png_pixel_mode_is_read(mode: str) -> None:
    assert analyse(png_in_mode(mode), LIMITS).outcome == "ok"


def test_exactly_max_bytes_is_accepted() -> None:
    photo = encode(astronaut(), "JPEG")
    assert analyse(photo, PhotoLimits(max_bytes=len(photo))).outcome == "ok"


# --- rejected ---------------------------------------------------------------------------------


def test_two_faces() -> None:
    result = analyse(encode(two_astronauts(), "JPEG"), LIMITS)
    assert (result.outcome, result.faces, result.width, result.height) == (
        "multiple_faces",
        2,
        1024,
        512,
    )
    assert result.phash is not None


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea", "camera"])
def test_no_face(name: str) -> None:
    result = analyse(encode(sample(name), "PNG"), LIMITS)
    assert (result.outcome, result.faces) == ("no_face", 0)
    assert result.phash is not None


@pytest.mark.parametrize(
    "upload",
    [b"", b"Nama: Siti Nurhaliza\nNIK: 3201014506900001\n", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
    ids=["empty", "text", "png-signature-only", "jpeg-marker-only"],
)
def test_not_an_image(upload: bytes) -> None:
    assert analyse(upload, LIMITS) == PhotoAnalysis("not_an_image")


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF", "WEBP"])
def test_unsupported_format(image_format: str) -> None:
    result = analyse(encode(astronaut(), image_format), LIMITS)
    assert result == PhotoAnalysis("unsupported_format", 512, 512)


def test_formats_are_configurable() -> None:
    png = encode(astronaut(), "PNG")
    assert analyse(png, PhotoLimits(formats=frozenset({"JPEG"}))).outcome == "unsupported_format"


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_truncated(image_format: str) -> None:
    photo = encode(astronaut(), image_format)
    result = analyse(photo[: len(photo) // 2], LIMITS)
    assert result == PhotoAnalysis("truncated", 512, 512)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (30_000, 30_000),  # 900 Mpx: Pillow's DecompressionBombError (over 2 x 89 Mpx)
        (10_000, 10_000),  # 100 Mpx: Pillow's DecompressionBombWarning (over 89 Mpx)
        (6_000, 5_000),  # 30 Mpx: only the limit of 24 Mpx stops it
    ],
)
def test_decompression_bomb_is_refused_before_decoding(width: int, height: int) -> None:
    bomb = bilevel_png(width, height)
    assert len(bomb) < 200_000  # what an attacker uploads
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # outside pytest's "error", the warning must not leak
        with warnings.catch_warnings(record=True) as caught:
            result = analyse(bomb, LIMITS)
    assert result.outcome == "too_many_pixels"
    assert caught == []


def test_pixel_limit_is_configurable() -> None:
    photo = encode(astronaut(), "PNG")
    assert analyse(photo, PhotoLimits(max_pixels=512 * 512)).outcome == "ok"
    assert analyse(photo, PhotoLimits(max_pixels=512 * 512 - 1)) == PhotoAnalysis(
        "too_many_pixels", 512, 512
    )


@pytest.mark.parametrize("size", [(150, 150), (512, 199), (199, 512)])
def test_too_small(size: tuple[int, int]) -> None:
    result = analyse(encode(astronaut().resize(size), "JPEG"), LIMITS)
    assert result == PhotoAnalysis("too_small", *size)


def test_too_large_by_bytes() -> None:
    photo = encode(astronaut(), "JPEG")
    assert analyse(photo, PhotoLimits(max_bytes=len(photo) - 1)) == PhotoAnalysis("too_large")
    padded = photo + bytes(5 * 1024 * 1024)  # still decodes, but is over the default 5 MiB
    assert analyse(padded, LIMITS) == PhotoAnalysis("too_large")


def test_a_very_wide_photo_is_analysed() -> None:
    result = analyse(encode(Image.new("RGB", (8000, 200), "white"), "PNG"), LIMITS)
    assert (result.outcome, result.width, result.height) == ("no_face", 8000, 200)


# --- the same selfie --------------------------------------------------------------------------


def reused(image: Image.Image) -> bytes:
    """The same photo, resized to 90% and saved again as a JPEG of quality 70."""
    smaller = image.resize((round(image.width * 0.9), round(image.height * 0.9)))
    return encode(smaller, "JPEG", quality=70)


def phash_of(photo: bytes) -> str:
    result = analyse(photo, LIMITS)
    assert result.phash is not None, result
    return result.phash


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "chelsea", "rocket"])
def test_a_reencoded_photo_matches_by_phash(name: str) -> None:
    original = sample(name)
    distance = hamming(phash_of(encode(original, "PNG")), phash_of(reused(original)))
    assert distance <= SAME_PHOTO_MAX_DISTANCE


def test_a_reencoded_large_selfie_matches_by_phash() -> None:
    distance = hamming(phash_of(encode(selfie_1024(), "JPEG")), phash_of(reused(selfie_1024())))
    assert distance <= SAME_PHOTO_MAX_DISTANCE


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("astronaut", "coffee"),
        ("astronaut", "camera"),
        ("astronaut", "chelsea"),
        ("coffee", "chelsea"),
        ("camera", "chelsea"),
        ("rocket", "coffee"),
    ],
)
def test_different_photos_do_not_match(first: str, second: str) -> None:
    distance = hamming(
        phash_of(encode(sample(first), "PNG")), phash_of(encode(sample(second), "PNG"))
    )
    assert distance > SAME_PHOTO_MAX_DISTANCE


def test_a_mirrored_selfie_is_a_different_photo() -> None:
    mirrored = astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    distance = hamming(phash_of(encode(astronaut(), "PNG")), phash_of(encode(mirrored, "PNG")))
    assert distance > SAME_PHOTO_MAX_DISTANCE


def test_hamming() -> None:
    assert hamming("0" * 16, "0" * 16) == 0
    assert hamming("0" * 16, "f" * 16) == 64
    assert hamming("c2924c5532bddfc8", "c2924c5532bddfc9") == 1


@pytest.mark.parametrize("bad", ["", "0" * 15, "0" * 17, "g" * 16, "F" * 16, " " + "0" * 15])
def test_hamming_refuses_what_is_not_a_phash(bad: str) -> None:
    with pytest.raises(ValueError, match="16 lower-case hex"):
        hamming(bad, "0" * 16)
    with pytest.raises(ValueError, match="16 lower-case hex"):
        hamming("0" * 16, bad)


# --- never raises ------------------------------------------------------------------------------

# Small enough to analyse fast, large enough to get past min_side_px to the decoder.
FUZZ_LIMITS = PhotoLimits(min_side_px=64)


@functools.cache
def fuzz_bases() -> tuple[bytes, ...]:
    small = astronaut().resize((96, 96))
    return (
        encode(small, "JPEG", quality=80),
        encode(small, "JPEG", progressive=True),
        encode(small, "PNG"),
        encode(small.convert("P"), "PNG"),
    )


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(upload: bytes) -> None:
    assert isinstance(analyse(upload, FUZZ_LIMITS), PhotoAnalysis)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.integers(min_value=0, max_value=3),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(min_value=0),
    insert=st.binary(max_size=32),
)
def test_mutated_photos_never_raise(
    base: int, flips: list[tuple[int, int]], cut: int | None, insert: bytes
) -> None:
    photo = bytearray(fuzz_bases()[base])
    for position, value in flips:
        photo[position % len(photo)] = value
    if insert:
        at = (cut or 0) % len(photo)
        photo[at:at] = insert
    elif cut is not None:
        del photo[cut % len(photo) :]
    result = analyse(bytes(photo), FUZZ_LIMITS)
    assert isinstance(result, PhotoAnalysis)
    if result.outcome == "ok":
        assert result.phash is not None


# --- running it as the worker will -------------------------------------------------------------


def test_in_a_process_pool() -> None:
    """Limits, photos and results cross the process boundary; the initializer runs."""
    photos = [encode(astronaut(), "JPEG"), encode(two_astronauts(), "JPEG"), b"not a photo"]
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker_process,
    ) as pool:
        outcomes = [r.outcome for r in pool.map(analyse, photos, [LIMITS] * len(photos))]
    assert outcomes == ["ok", "multiple_faces", "not_an_image"]


def test_threads_leave_the_warning_filters_as_they_were() -> None:
    before = list(warnings.filters)
    photos = [encode(astronaut(), "JPEG"), bilevel_png(10_000, 10_000)] * 4
    barrier = threading.Barrier(4)

    def run(photo: bytes) -> str:
        barrier.wait()
        return analyse(photo, LIMITS).outcome

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, photos[:4])) + list(pool.map(run, photos[4:]))
    assert outcomes == ["ok", "too_many_pixels"] * 4
    assert warnings.filters == before


@pytest.mark.parametrize(
    "changes",
    [
        {"max_bytes": 0},
        {"max_pixels": -1},
        {"min_side_px": 0},
        {"detect_max_pixels": 0},
        {"min_face_fraction": 0.0},
        {"min_face_fraction": 1.5},
    ],
)
def test_limits_are_validated(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PhotoLimits(**changes)
