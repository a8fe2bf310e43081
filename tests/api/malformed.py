"""A catalogue of malformed and hostile uploads, generated in code.

Each case names the statuses a correct server may answer; none of them is a 5xx.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from utils.images import encode, two_tone


@dataclass(frozen=True)
class Case:
    """One hostile upload: multipart ``files`` (or raw ``content``) and the allowed statuses."""

    name: str
    expected: frozenset[int]
    data: bytes | None = None
    field: str = "file"
    path: str = "/predict"
    content: bytes | None = None
    content_type: str | None = None


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(width: int, height: int, idat: bytes, *, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG with the given header and raw IDAT payload (not checked against the size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(two_tone("red", size=(16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def catalogue(max_upload_bytes: int) -> list[Case]:
    """The hostile inputs (>= 20), for a server with ``max_upload_bytes`` per file."""
    good_png = encode(two_tone("red"))
    good_jpeg = encode(two_tone("blue"), "JPEG", quality=90)
    rng = np.random.default_rng(7)
    corrupted_jpeg = bytearray(good_jpeg)
    corrupted_jpeg[len(good_jpeg) // 2 : len(good_jpeg) // 2 + 64] = rng.bytes(64)
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    ztxt_bomb = (
        good_png[:-12]
        + png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"\x00" * 20_000_000, 9))
        + good_png[-12:]
    )
    gif, bmp, tiff, webp = (
        encode(two_tone("green"), fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP")
    )
    rows = b"".join(b"\x00" + b"\x00" * 3 * 5000 for _ in range(5000))
    big_legal_png = png(5000, 5000, zlib.compress(rows, 9))
    strip = encode(Image.new("RGB", (1, 20_000), (200, 30, 30)))
    tiny = encode(Image.new("RGB", (1, 1), (0, 0, 255)))
    interlaced_truncated = encode(two_tone("red", size=(300, 200)), optimize=False)[:400]
    ok, decode_error = frozenset({200}), frozenset({422})
    unsupported, too_large = frozenset({415}), frozenset({413})
    return [
        Case("empty file", decode_error, b""),
        Case("plain text", unsupported, b"hello, I am a text file\n" * 10),
        Case("html", unsupported, b"<!doctype html><html><body><img src=x></body></html>"),
        Case("json", unsupported, b'{"image": "not really"}'),
        Case("random bytes", unsupported, rng.bytes(10_000)),
        Case("pdf header", unsupported, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
        Case(
            "svg", unsupported, b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
        ),
        Case("gif", unsupported, gif),
        Case("bmp", unsupported, bmp),
        Case("tiff", unsupported, tiff),
        Case("webp", unsupported, webp),
        Case("truncated jpeg", decode_error, good_jpeg[: len(good_jpeg) // 2]),
        Case("truncated png", decode_error, good_png[: len(good_png) // 2]),
        Case("jpeg SOI marker only", decode_error | unsupported, b"\xff\xd8\xff"),
        Case("png signature only", decode_error | unsupported, PNG_SIGNATURE),
        Case("png with a bad IHDR CRC", decode_error | unsupported, bytes(bad_crc)),
        Case("png with garbage IDAT", decode_error, png(64, 64, b"not zlib data at all")),
        Case("png zero width", decode_error | unsupported, png(0, 10, zlib.compress(b""))),
        Case(
            "png bomb 100000x100000",
            too_large,
            png(100_000, 100_000, zlib.compress(b"\x00" * 1000)),
        ),
        Case("jpeg bomb 65000x65000", too_large, jpeg_with_dimensions(65_000, 65_000)),
        Case("png zTXt decompression bomb", ok | decode_error, ztxt_bomb),
        Case("jpeg with corrupted scan data", ok | decode_error, bytes(corrupted_jpeg)),
        Case("interlaced png truncated", decode_error, interlaced_truncated),
        Case("file over the size limit", too_large, good_jpeg + rng.bytes(max_upload_bytes)),
        Case("big but legal 5000x5000 png", ok, big_legal_png),
        Case("1x20000 strip", ok, strip),
        Case("1x1 pixel", ok, tiny),
        Case("wrong form field", decode_error, good_png, field="image"),
        Case(
            "json body instead of multipart",
            decode_error,
            content=b'{"file": "x"}',
            content_type="application/json",
        ),
        Case(
            "broken multipart boundary",
            frozenset({400, 422}),
            content=b"--xyz\r\nContent-Disposition: form-data; name=file\r\n\r\nabc",
            content_type="multipart/form-data; boundary=other",
        ),
        Case("batch of hostile files", ok, b"hello", field="files", path="/predict/batch"),
        Case("path traversal file name", ok, good_png),
    ]
