"""Photo analysis for the selfie check: is the upload a decodable JPEG or PNG of a sensible size,
how many faces does it show, and what is its perceptual hash.

Pure, synchronous and CPU-bound: no I/O besides the bytes it is given, so the photo worker runs
it in a process pool (face detection takes tens of milliseconds; it must not run on an event
loop). :func:`analyse` never raises on any input: every upload, hostile or broken, gets an
outcome.

The photo is decoded to a grey copy scaled down to at most :attr:`PhotoLimits.detect_max_pixels`
(JPEGs are decoded at that scale already, with libjpeg's DCT scaling), so the cost per photo is
bounded whatever the camera's resolution; the perceptual hash is taken from that copy. Detection
works on a smaller copy still, where the smallest face that counts is
:data:`_DETECT_MIN_FACE_PX` pixels: the cascade's cost grows with the pixels it scans, and a face
60 px wide is found as well at 32 px.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import cv2
import cv2.data
import imagehash
import numpy as np
from PIL import ExifTags, Image

PhotoOutcome = Literal[
    "ok",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "too_many_pixels",
    "too_small",
    "too_large",
    "no_face",
    "multiple_faces",
]

# Hamming distance (of 64 bits) up to which two perceptual hashes are "the same selfie".
# Measured with analyse() on 20 scikit-image samples (PNG as the original):
#   the same photo re-encoded as JPEG quality 70 and resized to 90%: 0 bits for most, 2 at most
#   (moon, colorwheel, two astronauts side by side); JPEG quality 30, half size, +20%
#   brightness or grey: 0; cropped by 5%: 8; rotated by 3 degrees: 10.
#   different photos: 20 at the least (hubble_deep_field/cell, hubble_deep_field/retina), then
#   22 (coffee/colorwheel, rocket/gravel); astronaut/coffee 36, astronaut/camera 36,
#   astronaut/chelsea 32, coffee/chelsea 30, camera/chelsea 32, astronaut/its mirror image 32.
# 10 sits 8 bits above the re-encodings and 10 below the nearest different photo.
SAME_PHOTO_MAX_DISTANCE: Final = 10

# OpenCV's frontal-face cascade "alt2" (haarcascade_frontalface_alt2.xml), with steps of 1.2
# between window sizes. The design used the "default" cascade with steps of 1.1 (one face on
# skimage's astronaut, two on two of them side by side, none on coffee or rocket); issue 14
# measured both (analyse() on one core, 200 demo compositions of 512 px): default at 1.1 about
# 24 photos a CPU second on a loaded machine, alt2 at 1.2 about 45; default at 1.2 misses the
# face on 23 of the 1,274 cached one-face demo selfies of 256 px (1.15: 2), alt2 at 1.2 on none.
# alt2 at 1.2 also counts all 1,364 cached demo selfies, 2x400 fresh compositions (256 and
# 512 px, not picked by any detector) and the 200 benchmark compositions right, where default at
# 1.1 counts 4 fresh ones and 1 benchmark one wrong; on astronauts (one, 300 to 4096 px, PNG and
# JPEG 90/70; two side by side, 600 to 2048 px) and 20 scikit-image photos without a face it
# miscounts 1 of 48 (the 4096 px PNG astronaut), default at 1.1 2 (that one and coins).
_CASCADE_FILE: Final = "haarcascade_frontalface_alt2.xml"
_SCALE_FACTOR: Final = 1.2
_MIN_NEIGHBORS: Final = 5
_CASCADE_WINDOW_PX: Final = 20  # the alt2 cascade's own window: nothing smaller exists
# The detector runs on a copy scaled so that the smallest face that counts (min_face_fraction of
# the shorter side) is this wide. Issue 14: on the full 512 px copy the cascade took 52 ms a
# selfie, over 90% of the analysis (it scans every window from 61 px up); at 32 px it takes
# about half. Measured with the default cascade at steps of 1.1 over 230 demo selfies of 512 px
# (150 one face, 40 two, 40 none), astronauts (one, 300 to 4096 px, PNG and JPEG 90/70; two side
# by side, 600 to 2048 px) and 20 scikit-image photos without a face: 3 miscounted (a 4096 px PNG
# astronaut, which the full copy missed too, a cell micrograph and coins), against 5 on the full
# copy; 28 px misses demo faces, 36 or 40 px miscount more. Photos up to about 266 px (the
# demo's 256 px selfies) are not scaled at all.
_DETECT_MIN_FACE_PX: Final = 32
# Measured over astronauts (one and two, 300 to 4096 px, PNG and JPEG 90/70) and 14 photos without
# a face: bilinear down to 640x640 pixels counts them all right but a 300 px JPEG; box filtering,
# or 448x448 to 576x576, miscounts 6 to 11 of them.
_DOWNSCALE: Final = Image.Resampling.BILINEAR
_PHASH_HEX = re.compile(r"[0-9a-f]{16}")

# EXIF orientation -> the transposition that shows the photo upright. Phones store selfies
# sideways with this tag, and the frontal-face cascade finds no face lying on its side.
_ORIENTATION: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class PhotoLimits:
    """What the photo check accepts, and how hard it looks for faces.

    ``detect_max_pixels`` bounds the detector's work: the photo is scaled down to at most that
    many pixels (by area, so that a wide photo does not shrink its faces below what the cascade
    sees reliably). A face counts when its side is at least ``min_face_fraction`` of the shorter
    side of the scaled photo: 0.12 is the design's 60 px on a 512 px portrait. Faces in the
    background, on a poster or on a coin stay below it.
    """

    max_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 24_000_000
    min_side_px: int = 200
    formats: frozenset[str] = field(default_factory=lambda: frozenset({"JPEG", "PNG"}))
    detect_max_pixels: int = 640 * 640
    min_face_fraction: float = 0.12

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.min_side_px, self.detect_max_pixels) < 1:
            raise ValueError("photo limits must be positive")
        if not 0.0 < self.min_face_fraction <= 1.0:
            raise ValueError("min_face_fraction must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class PhotoAnalysis:
    """The verdict on one upload.

    ``width`` and ``height`` are the stored pixel dimensions from the file's header (before EXIF
    orientation), 0 when the header could not be read. ``faces`` is the number of faces found
    (0 unless the photo was decoded). ``phash`` is the 64-bit perceptual hash as 16 hex digits,
    set whenever the photo was decoded (also for ``no_face`` and ``multiple_faces``), so that a
    reused selfie can be spotted with :func:`hamming` and :data:`SAME_PHOTO_MAX_DISTANCE`.
    """

    outcome: PhotoOutcome
    width: int = 0
    height: int = 0
    faces: int = 0
    phash: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two perceptual hashes (16 lower-case hex digits each).

    Raises ``ValueError`` for anything else, so that a corrupted stored hash is not compared as
    if it were one.
    """
    if not (_PHASH_HEX.fullmatch(a_hex) and _PHASH_HEX.fullmatch(b_hex)):
        raise ValueError("a perceptual hash is 16 lower-case hex digits")
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


def analyse(data: bytes, limits: PhotoLimits) -> PhotoAnalysis:
    """Check one uploaded photo against ``limits``.

    Promises: never raises on any input bytes (it does raise when OpenCV's face cascade is
    missing: a broken installation, not a bad photo); never decodes more than
    ``limits.max_pixels`` pixels (the dimensions are read from the header first); a truncated or
    corrupt file is never "ok". Meant for one thread per process (a process pool, see
    :func:`init_worker_process`); calls from several threads are correct too, but a process-wide
    lock serialises their header parsing.
    """
    detector = _face_detector()
    try:
        decoded = _decode(data, limits)
    except Exception:
        # Last resort for the promise above: a decoder failing in a way not classified in
        # _decode (a corrupt chunk, an exotic pixel mode) is an unreadable upload, not a crash.
        return PhotoAnalysis("not_an_image")
    if isinstance(decoded, PhotoAnalysis):
        return decoded
    faces = _count_faces(detector, decoded.grey, limits.min_face_fraction)
    outcome: PhotoOutcome = "ok" if faces == 1 else "no_face" if faces == 0 else "multiple_faces"
    return PhotoAnalysis(outcome, decoded.width, decoded.height, faces, decoded.phash)


def init_worker_process() -> None:
    """Initializer for the worker's process pool: one OpenCV thread per process (the pool is the
    parallelism; OpenCV's own threads would oversubscribe the cores) and the detector loaded
    before the first photo arrives."""
    cv2.setNumThreads(1)
    _face_detector()


@dataclass(frozen=True, slots=True)
class _Decoded:
    grey: Image.Image  # upright, scaled to at most detect_max_pixels
    width: int
    height: int
    phash: str


def _decode(data: bytes, limits: PhotoLimits) -> _Decoded | PhotoAnalysis:
    """The photo decoded and scaled for detection, or the outcome that stopped it."""
    if len(data) > limits.max_bytes:
        return PhotoAnalysis("too_large")
    try:
        with _guarded():
            img = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return PhotoAnalysis("too_many_pixels")
    except Exception:
        return PhotoAnalysis("not_an_image")
    with img:
        width, height = img.size
        # Pillow reads a JPEG holding several frames (a phone's MPO) as "MPO"; its first frame,
        # the one decoded here, is a plain JPEG.
        image_format = "JPEG" if img.format == "MPO" else img.format
        if image_format not in limits.formats:
            return PhotoAnalysis("unsupported_format", width, height)
        if width * height > limits.max_pixels:
            return PhotoAnalysis("too_many_pixels", width, height)
        if min(width, height) < limits.min_side_px:
            return PhotoAnalysis("too_small", width, height)
        scale = min(1.0, math.sqrt(limits.detect_max_pixels / (width * height)))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if image_format == "JPEG":
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free, still reading the whole stream
            # (so truncation is still found); grey only, as phash and the cascade use nothing else.
            img.draft("L", target)
        try:
            img.load()
        except (OSError, EOFError) as exc:
            truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
            return PhotoAnalysis("truncated" if truncated else "not_an_image", width, height)
        grey = _upright(img, _grey(img).resize(target, _DOWNSCALE))
    return _Decoded(grey, width, height, str(imagehash.phash(grey)))


# Guards the process-wide warning filters (see _guarded).
_warnings_lock = threading.Lock()


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    """Header parsing that behaves the same whatever the process's warning filters are.

    Pillow warns about a decompression bomb (above ``Image.MAX_IMAGE_PIXELS``, about 89 Mpx)
    before it raises (above twice that): here the warning is raised, so it cannot let the call
    go on, and Pillow's other warnings about odd headers (a broken APNG, EXIF tags) are ignored
    rather than becoming errors under a strict filter. ``catch_warnings`` restores the filters on
    exit, but they are process-wide before Python 3.14: two threads interleaving their enter and
    exit would leave one thread's filters in place for good, hence the lock. Only header and EXIF
    parsing run under it.
    """
    with _warnings_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _grey(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):
        # 16-bit grey (PNG): Pillow's conversion to "L" clips at 255, which turns it white.
        values = np.clip(np.asarray(img), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        # Straight to "L", Pillow warns that per-entry transparency cannot be kept.
        img = img.convert("RGBA")
    return img.convert("L")


def _upright(original: Image.Image, grey: Image.Image) -> Image.Image:
    """``grey`` (a scaled copy of ``original``) turned the way the EXIF orientation says."""
    try:
        with _guarded():
            orientation = original.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return grey  # unreadable EXIF: analyse the pixels as stored
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return grey if method is None else grey.transpose(method)


def _count_faces(
    detector: cv2.CascadeClassifier, grey: Image.Image, min_face_fraction: float
) -> int:
    width, height = grey.size
    scale = _DETECT_MIN_FACE_PX / (min_face_fraction * min(width, height))
    if scale < 1.0:
        grey = grey.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), _DOWNSCALE
        )
    min_side_px = max(_CASCADE_WINDOW_PX, round(min_face_fraction * min(grey.size)))
    found = detector.detectMultiScale(
        np.asarray(grey),
        scaleFactor=_SCALE_FACTOR,
        minNeighbors=_MIN_NEIGHBORS,
        minSize=(min_side_px, min_side_px),
    )
    return len(found)


# One classifier per thread, loaded on first use (not at import: importing stays cheap): parsing
# the alt2 cascade's XML takes 7 to 8 ms of CPU here (the default cascade's 12 to 14), about
# a third of a photo's analysis, so never per photo.
# detectMultiScale is not a const method in OpenCV and not documented as thread-safe, so threads
# do not share one. In a pool worker (one thread) that is one load per process.
_detectors = threading.local()


def _face_detector() -> cv2.CascadeClassifier:
    detector: cv2.CascadeClassifier | None = getattr(_detectors, "detector", None)
    if detector is None:
        path = cv2.data.haarcascades + _CASCADE_FILE
        detector = cv2.CascadeClassifier(path)
        if detector.empty():
            raise RuntimeError(f"cannot load the face cascade {path}")
        _detectors.detector = detector
    return detector
