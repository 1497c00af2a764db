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

import functools
import io
import threading
from collections.abc import Callable
from importlib import resources

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


def selfie(kind: str, seed: int) -> bytes:
    """A 512x512 JPEG (quality 85) showing what ``kind`` says ("one_face", "two_faces" or
    "no_face"), the same bytes for the same ``kind`` and ``seed``.

    About one composition in 200 fools the face detector (a second "face" where the pasted
    crop meets the grain, or spanning the whole picture): the photo check runs on each one
    here, and the next composition of the same seed is taken until the outcome is the one
    ``kind`` stands for, so that the demo's ground truth holds exactly.
    """
    return _first(kind, seed, lambda _: True)


def _first(kind: str, seed: int, accept: Callable[[str | None], bool]) -> bytes:
    """The first composition of ``seed`` showing what ``kind`` says whose perceptual hash
    ``accept`` takes."""
    if kind not in _OUTCOMES:
        raise ValueError(f"unknown selfie kind {kind!r}")
    for attempt in range(_ATTEMPTS):
        photo = compose(kind, seed, attempt)
        analysis = analyse(photo, _LIMITS)
        if analysis.outcome == _OUTCOMES[kind] and accept(analysis.phash):
            return photo
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
        return _first(kind, seed, self._take)

    def _take(self, phash: str | None) -> bool:
        if phash is None:
            return True
        with self._lock:
            if any(hamming(phash, seen) <= SAME_PHOTO_MAX_DISTANCE for seen in self._hashes):
                return False
            self._hashes.append(phash)
            return True


def compose(kind: str, seed: int, attempt: int = 0) -> bytes:
    """One composition of the selfie (unchecked): see :func:`selfie`."""
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
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()
