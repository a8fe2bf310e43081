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


def non_skin_images(size: tuple[int, int] = (320, 240), seed: int = 0) -> dict[str, Image.Image]:
    """Everyday inputs that are not photos of skin, for the out-of-distribution guard.

    A flat colour, uniform noise, a rendered page of text, a checkerboard and a smooth
    photo-like gradient (sky over ground).
    """
    from PIL import ImageDraw

    width, height = size
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", size, (250, 250, 247))
    draw = ImageDraw.Draw(page)
    words = "the quick brown fox jumps over the lazy dog; invoice total due 42.00 EUR".split()
    for row, top in enumerate(range(8, height - 10, 12)):
        line = " ".join(words[(row + i) % len(words)] for i in range(8))
        draw.text((8, top), line, fill=(20, 20, 25))
    squares = (np.add.outer(np.arange(height) // 20, np.arange(width) // 20) % 2).astype(np.uint8)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([90, 150, 235]) * (1 - y) + np.array([240, 240, 250]) * y
    ground = np.array([70, 120, 40]) * (1.3 - y)
    gradient = np.where(y < 0.6, sky, ground) * np.ones((1, width, 1))
    return {
        "flat colour": Image.new("RGB", size, (120, 160, 200)),
        "noise": Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
        "text page": page,
        "checkerboard": Image.fromarray(np.repeat(squares[..., None] * 255, 3, axis=2)),
        "gradient": Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8)),
    }
