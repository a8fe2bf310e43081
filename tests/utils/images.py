"""Images generated in code for the API tests (no files from disk).

``two_tone`` images have a dominant colour (which decides the tiny model's top-1 label)
and a second colour in the top part (which the spatial branch sees, so orientation matters).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 220, 30),
    "blue": (25, 20, 230),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
}


def two_tone(
    label: str, size: tuple[int, int] = (96, 64), accent: tuple[int, int, int] = (128, 128, 0)
) -> Image.Image:
    """An RGB image mostly of ``label``'s colour with an accent stripe in the top fifth."""
    width, height = size
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:] = COLOURS[label]
    array[: height // 5, : width // 2] = accent
    return Image.fromarray(array)


def encode(img: Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    """``img`` saved as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def with_exif_orientation(img: Image.Image, fmt: str = "PNG") -> bytes:
    """``img`` stored rotated, with the EXIF tag (orientation 6) that rotates it back upright.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are
    the upright image rotated 90 degrees counter-clockwise.
    """
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
