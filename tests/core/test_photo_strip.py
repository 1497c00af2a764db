"""The stored copy of a photo carries no metadata, and the photo check sees in it exactly what
it sees in the upload: the same decoded pixels, the same orientation, the same analysis."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.photo_strip import strip_metadata
from tests.support.photos import encode, sample, selfie
from verifiers.imaging import PhotoLimits, analyse

LIMITS = PhotoLimits()
MAKER = b"TelefonPintar-X9"
SERIAL = b"SN-3174011234567890"
COMMENT = b"rumah: Jl. Melati 12, Bandung"
# Bandung: 6 deg 54' 53" S, 107 deg 36' 35" E.
GPS = {1: "S", 2: (6.0, 54.0, 53.0), 3: "E", 4: (107.0, 36.0, 35.0)}
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation='
    b'"6" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" photoshop:City="Bandung"/>'
    b"</rdf:RDF></x:xmpmeta>"
)
SECRETS = (MAKER, SERIAL, COMMENT, b"Bandung")


def phone_exif(orientation: int | None = 6) -> Image.Exif:
    """EXIF as a phone writes it: maker, serial number, GPS position, orientation."""
    exif = Image.Exif()
    exif[0x010F] = MAKER.decode()
    exif[0xA431] = SERIAL.decode()
    exif[0x8825] = GPS
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


def sideways_selfie(**options: object) -> bytes:
    """The portrait stored on its side, with EXIF saying how to turn it upright (as phones do):
    without the orientation the check finds no face."""
    stored = sample("astronaut").transpose(Image.Transpose.ROTATE_90)
    return encode(stored, "JPEG", quality=85, exif=phone_exif(6).tobytes(), **options)


def same_view(upload: bytes, stored: bytes) -> None:
    """The analysis, the decoded pixels and the upright pixels are equal."""
    assert analyse(stored, LIMITS) == analyse(upload, LIMITS)
    with Image.open(io.BytesIO(upload)) as a, Image.open(io.BytesIO(stored)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert np.array_equal(
            np.asarray(ImageOps.exif_transpose(a)), np.asarray(ImageOps.exif_transpose(b))
        )


def no_metadata(stored: bytes) -> None:
    for secret in SECRETS:
        assert secret not in stored
    with Image.open(io.BytesIO(stored)) as img:
        exif = img.getexif()
        assert set(exif) <= {0x0112}  # the orientation at most
        assert not exif.get_ifd(0x8825)  # no GPS
        assert "icc_profile" not in img.info
        assert "comment" not in img.info
        assert not {"xmp", "XML:com.adobe.xmp"} & set(img.info)


def test_a_phone_jpeg_loses_gps_maker_serial_comment_xmp_and_icc_but_not_its_orientation() -> None:
    upload = sideways_selfie(comment=COMMENT, xmp=XMP, icc_profile=b"\0" * 128 + MAKER)
    assert all(secret in upload for secret in SECRETS)
    with Image.open(io.BytesIO(upload)) as img:
        assert img.getexif().get_ifd(0x8825)  # the test photo does carry a position
    stored = strip_metadata(upload)
    no_metadata(stored)
    with Image.open(io.BytesIO(stored)) as img:
        assert img.getexif().get(0x0112) == 6
    same_view(upload, stored)
    assert analyse(stored, LIMITS).outcome == "ok"
    # Without the orientation the face would lie on its side, and be missed.
    bare = encode(Image.open(io.BytesIO(upload)), "JPEG", quality=85)
    assert analyse(bare, LIMITS).outcome == "no_face"


def test_an_orientation_only_in_xmp_is_kept() -> None:
    stored_sideways = sample("astronaut").transpose(Image.Transpose.ROTATE_90)
    upload = encode(stored_sideways, "JPEG", quality=85, xmp=XMP)
    stored = strip_metadata(upload)
    assert b"Bandung" not in stored
    with Image.open(io.BytesIO(stored)) as img:
        assert img.getexif().get(0x0112) == 6
    same_view(upload, stored)
    assert analyse(stored, LIMITS).outcome == "ok"


def test_a_progressive_jpeg_keeps_every_scan() -> None:
    upload = sideways_selfie(progressive=True, comment=COMMENT)
    stored = strip_metadata(upload)
    no_metadata(stored)
    same_view(upload, stored)


def test_an_mpo_keeps_its_first_frame_only() -> None:
    """A phone's MPO holds further frames after the first EOI, each with its own EXIF."""
    first = sample("astronaut")
    buffer = io.BytesIO()
    first.save(
        buffer, "MPO", save_all=True, append_images=[sample("coffee")], exif=phone_exif(1).tobytes()
    )
    upload = buffer.getvalue()
    assert upload.count(MAKER) >= 1
    stored = strip_metadata(upload)
    no_metadata(stored)
    assert len(stored) < len(upload) // 2
    assert analyse(stored, LIMITS) == analyse(upload, LIMITS)


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
def test_a_png_loses_its_text_and_exif_chunks_but_not_its_orientation(
    orientation: int | None,
) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", COMMENT.decode())
    info.add_text("Author", MAKER.decode(), zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode().replace('tiff:Orientation="6" ', ""))
    image = sample("astronaut")
    upload = encode(image, "PNG", pnginfo=info, exif=phone_exif(orientation).tobytes())
    stored = strip_metadata(upload)
    no_metadata(stored)
    with Image.open(io.BytesIO(stored)) as img:
        expected = None if orientation in (None, 1) else orientation
        assert img.getexif().get(0x0112) == expected
    same_view(upload, stored)


def test_a_png_with_transparency_keeps_it() -> None:
    image = sample("astronaut").convert("P")
    upload = encode(image, "PNG", transparency=0)
    stored = strip_metadata(upload)
    same_view(upload, stored)
    with Image.open(io.BytesIO(stored)) as img:
        assert "transparency" in img.info


def test_photos_without_metadata_are_kept_byte_for_byte() -> None:
    for upload in (selfie(), encode(sample("astronaut"), "PNG")):
        stored = strip_metadata(upload)
        same_view(upload, stored)
        assert len(stored) <= len(upload)


@pytest.mark.parametrize(
    "upload",
    [
        b"this is not a photograph at all",
        b"",
        encode(sample("astronaut"), "GIF"),
        selfie()[: len(selfie()) // 2],  # truncated in the scan
        sideways_selfie()[:400],  # truncated in the EXIF
        selfie()[:2],
        encode(sample("astronaut"), "PNG")[:5000],  # truncated PNG
        b"\xff\xd8\xff\xe1\xff\xff" + b"\0" * 50,  # a segment longer than the file
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHD",
    ],
    ids=[
        "text",
        "empty",
        "gif",
        "truncated-jpeg",
        "truncated-exif",
        "soi-only",
        "truncated-png",
        "long-segment",
        "png-header-cut",
    ],
)
def test_broken_or_other_uploads_keep_their_outcome(upload: bytes) -> None:
    stored = strip_metadata(upload)
    assert analyse(stored, LIMITS).outcome == analyse(upload, LIMITS).outcome
    assert MAKER not in stored
