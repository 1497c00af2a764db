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
