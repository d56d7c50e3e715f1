"""Cover images: PNG, JPEG or WebP, recognised by their magic bytes and header, bounded in bytes and in
pixels (a small file can declare an enormous canvas that a browser or thumbnailer would then allocate)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from django.conf import settings

from core.errors import ApplicationError

MAX_SIDE = 8192
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    ext: str
    width: int
    height: int


def cover_max_bytes() -> int:
    return int(getattr(settings, "MEMHUB_COVER_MAX_BYTES", 2 * 1024 * 1024))


def _bad(message: str) -> ApplicationError:
    return ApplicationError(message, {"field": "file"}, code="invalid_image")


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _bad("The PNG image has no IHDR header.")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise _bad("The JPEG image is corrupt (bad marker).")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            raise _bad("The JPEG image is corrupt (bad segment length).")
        if marker in SOF_MARKERS:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise _bad("The JPEG image has no frame header (size unknown).")


def _webp(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    raise _bad("The WebP image has no VP8, VP8L or VP8X header.")


def check_image(data: bytes) -> ImageInfo:
    limit = cover_max_bytes()
    if len(data) > limit:
        raise ApplicationError(
            f"The cover image is {len(data)} bytes; the limit is {limit} (MEMHUB_COVER_MAX_BYTES).",
            {"field": "file", "limit_bytes": limit},
            status=413,
            code="too_large",
        )
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        info = ImageInfo("image/png", "png", *_png(data))
    elif data.startswith(b"\xff\xd8\xff"):
        info = ImageInfo("image/jpeg", "jpg", *_jpeg(data))
    elif len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        info = ImageInfo("image/webp", "webp", *_webp(data))
    else:
        raise _bad("The cover must be a PNG, JPEG or WebP image (checked by its content, not its name).")
    if (
        not (1 <= info.width <= MAX_SIDE and 1 <= info.height <= MAX_SIDE)
        or info.width * info.height > MAX_PIXELS
    ):
        raise _bad(
            f"The cover image is {info.width}x{info.height} pixels; each side must be 1-{MAX_SIDE} "
            f"and the area at most {MAX_PIXELS} pixels."
        )
    return info
