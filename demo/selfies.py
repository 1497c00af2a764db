"""Synthetic selfies for the demo's population, deterministic from a seed.

Every person needs a *distinct* selfie: the photo lane sends a selfie whose perceptual hash is
within :data:`~verifiers.imaging.SAME_PHOTO_MAX_DISTANCE` bits of another registration's to
review as reused. So the picture is a seed-dependent background (smooth random colour fields,
which set the low frequencies the perceptual hash looks at) with a real face pasted on it: the
face of scikit-image's astronaut, cropped generously so that the detector still finds it, at a
seed-dependent position and scale. ``two_faces`` pastes two of them side by side; ``no_face``
pastes a crop of a photo without a face (the coffee or the rocket) instead.

The three crops ship with the package (``demo/samples/``, cut from scikit-image's samples: the
astronaut and the rocket are in the public domain, the coffee is CC0), so the demo needs no
scikit-image.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from verifiers.imaging import SAME_PHOTO_MAX_DISTANCE, PhotoLimits, analyse, hamming

SIDE_PX = 512
QUALITY = 85
_CELLS = (6, 8)
_OUTCOMES = {"one_face": "ok", "two_faces": "multiple_faces", "no_face": "no_face"}
_ATTEMPTS = 10
_LIMITS = PhotoLimits()
_GRAIN = 40.0
_BACKGROUND_LOW, _BACKGROUND_SPAN = 70, 120


def _sample(name: str) -> Image.Image:
    with resources.files("demo").joinpath("samples", f"{name}.png").open("rb") as file:
        image = Image.open(file)
        image.load()
    return image


@functools.cache
def _face() -> Image.Image:
    # The astronaut's face (at x 177-272, y 66-161 of the 512 px sample), with a margin.
    return _sample("face")


@functools.cache
def _objects() -> tuple[Image.Image, ...]:
    return (_sample("coffee"), _sample("rocket"))


def _background(rng: np.random.Generator) -> Image.Image:
    """Smooth random shades: a coarse grid of random greys (tinted), upscaled bicubically. Its
    cells set the low frequencies that the perceptual hash compares."""
    cells = int(rng.integers(_CELLS[0], _CELLS[1] + 1))
    grey = rng.uniform(_BACKGROUND_LOW, _BACKGROUND_LOW + _BACKGROUND_SPAN, size=(cells, cells))
    tint = rng.uniform(0.8, 1.2, size=3)
    coarse = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((SIDE_PX, SIDE_PX), Image.Resampling.BICUBIC)
    # Fine grain on top: invisible to the hash (it averages it away) and it keeps the smooth
    # shades from ever looking like a face to the detector (which normalises by the contrast).
    grain = rng.normal(0.0, _GRAIN, size=(SIDE_PX // 2, SIDE_PX // 2, 1)).repeat(2, 0).repeat(2, 1)
    return Image.fromarray(np.clip(np.asarray(smooth) + grain, 0, 255).astype(np.uint8))


def _paste(canvas: Image.Image, patch: Image.Image, width: int, x: int, y: int) -> None:
    """Paste ``patch`` scaled to ``width``, its edges faded into the canvas (a sharp rectangle's
    edge on the grain sometimes looks like a small face to the detector)."""
    height = round(patch.height * width / patch.width)
    mask = Image.new("L", (width, height), 0)
    inset = max(1, width // 12)
    ImageDraw.Draw(mask).ellipse((inset, inset, width - inset, height - inset), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(inset / 2))
    canvas.paste(patch.resize((width, height), Image.Resampling.BILINEAR), (x, y), mask)


def selfie(kind: str, seed: int, side: int = SIDE_PX) -> bytes:
    """A ``side`` x ``side`` JPEG (quality 85; 512 px unless told) showing what ``kind`` says
    ("one_face", "two_faces" or "no_face"), the same bytes for the same ``kind`` and ``seed``.

    About one composition in 200 fools the face detector (a second "face" where the pasted
    crop meets the grain, or spanning the whole picture): the photo check runs on each one
    here, and the next composition of the same seed is taken until the outcome is the one
    ``kind`` stands for, so that the demo's ground truth holds exactly.
    """
    return _first(kind, seed, lambda _: True, side)[0]


def _first(
    kind: str, seed: int, accept: Callable[[str | None], bool], side: int = SIDE_PX
) -> tuple[bytes, str]:
    """The first composition of ``seed`` showing what ``kind`` says whose perceptual hash
    ``accept`` takes, and that hash."""
    if kind not in _OUTCOMES:
        raise ValueError(f"unknown selfie kind {kind!r}")
    for attempt in range(_ATTEMPTS):
        photo = compose(kind, seed, attempt, side)
        analysis = analyse(photo, _LIMITS)
        if (
            analysis.outcome == _OUTCOMES[kind]
            and analysis.phash is not None
            and accept(analysis.phash)
        ):
            return photo, analysis.phash
    raise RuntimeError(f"no {kind} selfie for seed {seed} in {_ATTEMPTS} attempts")


class DistinctSelfies:
    """Selfies of which the photo check takes no two for one photo: each one's perceptual hash
    is more than ``SAME_PHOTO_MAX_DISTANCE`` bits from every earlier one's. Random backgrounds
    make that almost always so already, but over a few thousand selfies a pair does come
    within the distance now and then, and a demo whose ground truth says "distinct people"
    must not send one. Safe to use from several threads."""

    def __init__(self) -> None:
        self._hashes: list[str] = []
        self._lock = threading.Lock()

    def make(self, kind: str, seed: int) -> bytes:
        return _first(kind, seed, self._take)[0]

    def _take(self, phash: str | None) -> bool:
        if phash is None:
            return True
        with self._lock:
            if any(hamming(phash, seen) <= SAME_PHOTO_MAX_DISTANCE for seen in self._hashes):
                return False
            self._hashes.append(phash)
            return True


def compose(kind: str, seed: int, attempt: int = 0, side: int = SIDE_PX) -> bytes:
    """One composition of the selfie (unchecked): see :func:`selfie`. Composed at 512 px and
    scaled to ``side``."""
    rng = np.random.default_rng([seed, attempt])
    canvas = _background(rng)
    if kind == "one_face":
        width = int(rng.integers(170, 241))
        x = int(rng.integers(0, SIDE_PX - width + 1))
        y = int(rng.integers(0, SIDE_PX - round(width * 215 / 210) + 1))
        _paste(canvas, _face(), width, x, y)
    elif kind == "two_faces":
        width = int(rng.integers(200, 241))
        y = int(rng.integers(0, SIDE_PX - round(width * 215 / 210) + 1))
        gap = int(rng.integers(0, SIDE_PX - 2 * width + 1))
        _paste(canvas, _face(), width, 0, y)
        _paste(canvas, _face(), width, width + gap, y)
    elif kind == "no_face":
        objects = _objects()
        patch = objects[int(rng.integers(0, len(objects)))]
        width = int(rng.integers(220, 321))
        x = int(rng.integers(0, SIDE_PX - width + 1))
        y = int(rng.integers(0, SIDE_PX - round(width * patch.height / patch.width) + 1))
        _paste(canvas, patch, width, x, y)
    else:
        raise ValueError(f"unknown selfie kind {kind!r}")
    if side != SIDE_PX:
        canvas = canvas.resize((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


# --- the demo's selfies, made before the wave and kept on disk -------------------------------

# Small enough that the photo lane analyses one in about 25 ms here (a 512 px one takes 70), and
# above the check's 200 px minimum side.
DEMO_SIDE_PX = 256


def _make_one(job: tuple[str, int, int]) -> tuple[bytes, str]:
    kind, seed, side = job
    return _first(kind, seed, lambda _: True, side)


def _cache_name(kind: str, seed: int, phash: str) -> str:
    return f"{kind}-{seed}-{phash}.jpg"


def prepare(
    wanted: Sequence[tuple[str, int]],
    cache_dir: Path,
    side: int = DEMO_SIDE_PX,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[bytes]:
    """The selfies for ``wanted`` (kind, seed) pairs (one per person: no pair twice), in order,
    no two of them the same photo to the reuse check: read from ``cache_dir`` where an earlier
    run left them, the others made in a pool of ``workers`` processes and kept there.
    ``progress(done, total)`` is called as the missing ones are made."""
    if len(set(wanted)) != len(wanted):
        raise ValueError("a (kind, seed) pair is wanted twice")
    folder = cache_dir / f"{side}px"
    folder.mkdir(parents=True, exist_ok=True)
    cached: dict[tuple[str, int], tuple[Path, str]] = {}
    for path in folder.glob("*.jpg"):
        kind, seed, phash = path.stem.rsplit("-", 2)
        cached[(kind, int(seed))] = (path, phash)
    photos: dict[tuple[str, int], tuple[bytes, str]] = {}
    missing = [key for key in dict.fromkeys(wanted) if key not in cached]
    if missing:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1,
            mp_context=multiprocessing.get_context("forkserver"),
        ) as pool:
            jobs = [(kind, seed, side) for kind, seed in missing]
            for done, (key, made) in enumerate(
                zip(missing, pool.map(_make_one, jobs, chunksize=16), strict=True), 1
            ):
                photos[key] = made
                _keep(folder, key, *made)
                if progress is not None:
                    progress(done, len(missing))
    for key in wanted:
        if key not in photos:
            path, phash = cached[key]
            photos[key] = (path.read_bytes(), phash)
    return _distinct(wanted, photos, folder, side)


def _keep(folder: Path, key: tuple[str, int], photo: bytes, phash: str) -> None:
    for stale in folder.glob(f"{key[0]}-{key[1]}-*.jpg"):
        stale.unlink()
    temporary = folder / f".{_cache_name(key[0], key[1], phash)}.tmp"
    temporary.write_bytes(photo)
    temporary.replace(folder / _cache_name(key[0], key[1], phash))


def _distinct(
    wanted: Sequence[tuple[str, int]],
    photos: dict[tuple[str, int], tuple[bytes, str]],
    folder: Path,
    side: int,
) -> list[bytes]:
    """The photos in order, each one more than ``SAME_PHOTO_MAX_DISTANCE`` bits from every
    earlier one (a later one too close is made again from its next composition, and kept)."""
    kept = np.zeros(len(wanted), dtype=np.uint64)
    result = []
    for index, key in enumerate(wanted):
        photo, phash = photos[key]

        def far(candidate: str | None, index: int = index) -> bool:
            if candidate is None or index == 0:
                return True
            bits = np.bitwise_count(kept[:index] ^ np.uint64(int(candidate, 16)))
            return bool(bits.min() > SAME_PHOTO_MAX_DISTANCE)

        if not far(phash):
            photo, phash = _first(key[0], key[1], far, side)
            photos[key] = (photo, phash)
            _keep(folder, key, photo, phash)
        kept[index] = np.uint64(int(phash, 16))
        result.append(photo)
    return result
