"""Test photographs made from scikit-image's bundled samples (no download at test time)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from skimage import data


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def sample(name: str) -> Image.Image:
    """A scikit-image sample as an RGB image."""
    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


def selfie() -> bytes:
    """A real portrait, 512x512: exactly one face."""
    return encode(sample("astronaut"), "JPEG", quality=85)


def phone_selfie() -> bytes:
    """The portrait as a phone stores it: on its side, with EXIF saying how to turn it upright,
    the phone's maker and serial number, and the GPS position where it was taken."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees to show it upright
    exif[0x010F] = "TelefonPintar-X9"
    exif[0xA431] = "SN-3174011234567890"
    exif[0x8825] = {1: "S", 2: (6.0, 54.0, 53.0), 3: "E", 4: (107.0, 36.0, 35.0)}
    sideways = sample("astronaut").transpose(Image.Transpose.ROTATE_90)
    return encode(sideways, "JPEG", quality=85, exif=exif.tobytes())
