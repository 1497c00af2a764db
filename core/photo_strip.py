"""The stored copy of a photo without its metadata: EXIF (a phone's GPS position, its serial
number, the time), XMP, IPTC, ICC profiles, comments, text chunks, thumbnails.

The pixels are kept byte for byte, not re-encoded: the photo check must see what it would have
seen in the upload (``verifiers.imaging`` decodes JPEGs at a reduced scale straight from the
compressed data, so a re-encoded copy would give other pixels, another perceptual hash and, near
the limits, another face count). What is removed are the segments and chunks no decoder needs:

- JPEG: every ``APPn`` segment and ``COM`` but ``APP0`` JFIF (cut to its fixed part, without
  the thumbnail: without it libjpeg may take a colour space from the component ids) and
  ``APP14`` Adobe (its colour transform), wherever they are (between the scans of a progressive
  JPEG too), and whatever follows the first ``EOI`` (a phone's MPO holds its second frames,
  each with its own EXIF, there; the check decodes only the first);
- PNG: every chunk but ``IHDR``, ``PLTE``, ``tRNS``, ``IDAT``, ``IEND`` and the APNG frame
  chunks (``acTL``, ``fcTL``, ``fdAT``).

One value is kept: the **orientation** the photo is shown in. The check turns the photo upright
as Pillow reads its EXIF (a selfie stored sideways has no upright face), so the orientation is
read here the same way, from the upload, and written back as a minimal EXIF (an ``APP1`` of one
tag after ``SOI``; a PNG ``eXIf`` chunk after ``IHDR``), and only when it is not the default.

Only the header is parsed (no pixel is decoded: cheap enough for the edge, and no decompression
bomb can go off here). Bytes that are neither a JPEG nor a PNG are returned unchanged: the check
rejects them (``not_an_image``, ``unsupported_format``), and their outcome must stay the one
their own bytes give. A file whose structure breaks off inside a metadata segment is cut there.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Final

from PIL import ExifTags, Image

JPEG_MAGIC: Final = b"\xff\xd8"
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"

_ORIENTATION_TAG: Final = int(ExifTags.Base.Orientation)
# APP0 "JFIF\0", version (2), units (1), density (2 + 2), thumbnail size (1 + 1): 14 bytes.
_JFIF_FIXED: Final = 14
_APP0, _APP14, _APP15, _COM = 0xE0, 0xEE, 0xEF, 0xFE
_SOS, _EOI, _SOI, _TEM = 0xDA, 0xD9, 0xD8, 0x01
# A marker in entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a restart
# marker or another 0xFF (a fill byte).
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_PNG_KEPT: Final = frozenset(
    {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"}
)
# Text chunks larger than this (decompressed) are not read for an orientation; Pillow refuses
# them as well (PngImagePlugin.MAX_TEXT_CHUNK).
_MAX_TEXT_BYTES: Final = 1024 * 1024


def strip_metadata(data: bytes) -> bytes:
    """``data`` without its metadata, its pixels and orientation kept (see the module)."""
    if data.startswith(JPEG_MAGIC):
        return _strip_jpeg(data)
    if data.startswith(PNG_MAGIC):
        return _strip_png(data)
    return data


# --- JPEG ---------------------------------------------------------------------------------


def _strip_jpeg(data: bytes) -> bytes:
    out = [JPEG_MAGIC]
    orientation = _jpeg_orientation(data)
    if orientation is not None:
        out.append(_segment(0xE1, _minimal_exif(orientation)))
    pos, end = 2, len(data)
    in_scan = False
    while pos < end:
        if in_scan:
            found = _SCAN_MARKER.search(data, pos)
            if found is None:
                out.append(data[pos:])  # entropy-coded data up to the end: a truncated file
                break
            out.append(data[pos : found.start()])
            pos = found.start()
        if data[pos] != 0xFF or pos + 1 >= end:
            out.append(data[pos : pos + 1])  # junk between segments: decoders skip it
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            out.append(data[pos : pos + 1])  # a fill byte
            pos += 1
            continue
        if marker == 0x00 or 0xD0 <= marker <= 0xD7 or marker in (_SOI, _TEM):
            out.append(data[pos : pos + 2])  # a stuffed byte, markers without a length
            pos += 2
            continue
        if marker == _EOI:
            out.append(data[pos : pos + 2])
            break  # what follows (an MPO's other frames) is not the photo checked
        if pos + 4 > end:
            out.append(data[pos:])
            break
        length = struct.unpack_from(">H", data, pos + 2)[0]
        segment_end = pos + 2 + length
        metadata = _APP0 <= marker <= _APP15 or marker == _COM
        if segment_end > end or length < 2:
            if not metadata:
                out.append(data[pos:])  # a broken table or scan header: kept, as decoders see it
            break
        if metadata:
            kept = _kept_app(marker, data[pos + 4 : segment_end])
            if kept is not None:
                out.append(_segment(marker, kept))
        else:
            out.append(data[pos:segment_end])
            in_scan = marker == _SOS or in_scan
        pos = segment_end
    return b"".join(out)


def _kept_app(marker: int, body: bytes) -> bytes | None:
    if marker == _APP0 and body.startswith(b"JFIF\0") and len(body) >= _JFIF_FIXED:
        return body[: _JFIF_FIXED - 2] + b"\0\0"  # no thumbnail
    if marker == _APP14 and body.startswith(b"Adobe"):
        return body
    return None


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _jpeg_orientation(data: bytes) -> int | None:
    """The orientation Pillow reads from the upload's EXIF (or XMP), as the photo check does;
    None for the default (1), for none at all and for EXIF it cannot read."""
    try:
        with _quiet(), Image.open(io.BytesIO(data)) as img:  # the header only
            return _not_default(img.getexif().get(_ORIENTATION_TAG))
    except Exception:
        return None


# --- PNG ----------------------------------------------------------------------------------


def _strip_png(data: bytes) -> bytes:
    out = [PNG_MAGIC]
    info: dict[str, object] = {}
    pos, end = len(PNG_MAGIC), len(data)
    kept: list[bytes] = []
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunk_end = pos + 12 + length
        if kind in _PNG_KEPT:
            kept.append(data[pos : min(chunk_end, end)])  # a truncated IDAT stays truncated
        elif chunk_end <= end:
            _read_png_metadata(kind, data[pos + 8 : pos + 8 + length], info)
        if chunk_end > end:
            break
        pos = chunk_end
    else:
        if pos < end and kept:
            kept.append(data[pos:])  # a few bytes past the last chunk: decoders see them too
    orientation = _png_orientation(info)
    for index, chunk in enumerate(kept):
        out.append(chunk)
        if index == 0 and orientation is not None and chunk[4:8] == b"IHDR":
            out.append(_png_chunk(b"eXIf", _minimal_exif(orientation)[6:]))
    return b"".join(out)


def _read_png_metadata(kind: bytes, body: bytes, info: dict[str, object]) -> None:
    """What Pillow's PNG reader puts in ``info`` from a metadata chunk, as far as the
    orientation goes: ``exif``, ``Raw profile type exif``, ``XML:com.adobe.xmp``, ``xmp``."""
    with contextlib.suppress(Exception):
        if kind == b"eXIf":
            info["exif"] = b"Exif\x00\x00" + body
        elif kind in (b"tEXt", b"zTXt"):
            key, _, value = body.partition(b"\0")
            if kind == b"zTXt":
                value = _inflate(value[1:]) if value[:1] == b"\0" else b""
            if key:
                info[key.decode("latin-1")] = (
                    value if key == b"exif" else value.decode("latin-1", "replace")
                )
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, method, rest = rest[0], rest[1], rest[2:]
            _language, _translated, value = rest.split(b"\0", 2)
            if compressed:
                if method != 0:
                    return
                value = _inflate(value)
            if key == b"XML:com.adobe.xmp":
                info["xmp"] = value
            info[key.decode("latin-1")] = value.decode("utf-8")


def _png_orientation(info: dict[str, object]) -> int | None:
    """Pillow's own reading of the orientation (``Image.getexif``) from that ``info``."""
    try:
        with _quiet():
            img = Image.new("L", (1, 1))
            img.info.update(info)
            return _not_default(img.getexif().get(_ORIENTATION_TAG))
    except Exception:
        return None


def _inflate(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj()
    value = inflater.decompress(compressed, _MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return value


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


# --- both ---------------------------------------------------------------------------------


def _minimal_exif(orientation: int) -> bytes:
    """``Exif\\0\\0`` and a TIFF structure holding one tag, the orientation."""
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    return b"Exif\x00\x00" + exif.tobytes()


def _not_default(value: object) -> int | None:
    return value if isinstance(value, int) and value != 1 and 0 <= value < 65536 else None


# The warning filters are process-wide before Python 3.14 (see verifiers.imaging._guarded).
_warnings_lock = threading.Lock()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Header parsing without Pillow's warnings about odd headers reaching the log."""
    with _warnings_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
