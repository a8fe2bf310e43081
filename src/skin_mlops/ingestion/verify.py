"""Step 2, checking one file (runs in the worker threads): read it, SHA-256 it, sniff the
format from the content and prove the image whole, either by its structure (the default:
JPEG end-of-image after the last scan, every PNG chunk CRC) or by decoding it through the
shared preprocessing. Bad content is a result (:class:`CheckedFile`), never an exception.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Literal

from skin_mlops.preprocessing import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    load_rgb,
    probe,
)

FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}
"""The formats ingested, with the extension their object keys get."""
VERIFY_MIN_SIDE = 8
"""Decode JPEGs for verification at the smallest DCT scale (1/8): every entropy-coded byte
is still decoded (a truncated or damaged stream fails), the IDCT work is skipped."""

VerifyMode = Literal["decode", "structure"]


@dataclass
class CheckedFile:
    """What reading one file found. ``data`` is kept only for valid images (to upload)."""

    sha256: str = ""
    kind: Literal["image", "not_an_image", "corrupt", "unreadable"] = "unreadable"
    format: str | None = None
    width: int | None = None
    height: int | None = None
    problem: str | None = None
    data: bytes | None = None


def check_structure(data: bytes, image_format: str) -> None:
    """Prove a JPEG/PNG is complete without decoding its pixels (cheap: no entropy decoding).

    * JPEG: the last start-of-scan marker (``FFDA``) must be followed by an end-of-image
      marker (``FFD9``); entropy-coded data never contains ``FFD9`` (bytes are stuffed), so
      this catches every truncation, including files whose EXIF thumbnail is complete.
    * PNG: every chunk's CRC-32 must match and the file must end with ``IEND``; this catches
      truncation and any damaged byte.

    Raises:
        CorruptImageError: the file is cut short or damaged.
    """
    if image_format == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise CorruptImageError("truncated JPEG: no end-of-image marker after the last scan")
        return
    if image_format == "PNG":
        offset, end = 8, len(data)
        while offset + 12 <= end:
            length = int.from_bytes(data[offset : offset + 4], "big")
            chunk_end = offset + 8 + length
            if chunk_end + 4 > end:
                raise CorruptImageError("truncated PNG: a chunk runs past the end of the file")
            expected = int.from_bytes(data[chunk_end : chunk_end + 4], "big")
            if zlib.crc32(data[offset + 4 : chunk_end]) != expected:
                chunk = data[offset + 4 : offset + 8].decode("latin-1")
                raise CorruptImageError(f"damaged PNG: CRC mismatch in chunk {chunk!r}")
            if data[offset + 4 : offset + 8] == b"IEND":
                return
            offset = chunk_end + 4
        raise CorruptImageError("truncated PNG: no IEND chunk")


def check_file(path: str, max_pixels: int, verify: VerifyMode = "structure") -> CheckedFile:
    """Read, hash, sniff and verify one file. Never raises for bad content.

    ``verify="decode"`` decodes the image through :func:`skin_mlops.preprocessing.load_rgb`
    (a JPEG at 1/8 scale): whatever is accepted, training and serving can decode.
    ``verify="structure"`` runs :func:`check_structure` instead: ~20x cheaper, catches
    truncated and damaged files, but not a stream that is whole yet undecodable.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return CheckedFile(kind="unreadable", problem=f"cannot read: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        info = probe(data)
        if info.width * info.height > max_pixels:
            raise ImageTooLargeError(
                f"image declares {info.width}x{info.height} pixels, over the limit of "
                f"{max_pixels:,} pixels"
            )
        if verify == "decode":
            load_rgb(data, max_pixels=max_pixels, min_side=VERIFY_MIN_SIDE)
        else:
            check_structure(data, info.format)
    except NotAnImageError as exc:
        return CheckedFile(sha256=sha256, kind="not_an_image", problem=str(exc))
    except (EmptyImageError, CorruptImageError, ImageTooLargeError, ImageError) as exc:
        return CheckedFile(sha256=sha256, kind="corrupt", problem=str(exc))
    if info.format not in FORMAT_EXTENSIONS:
        return CheckedFile(sha256=sha256, kind="not_an_image", problem=f"format {info.format}")
    return CheckedFile(sha256, "image", info.format, info.width, info.height, None, data)
