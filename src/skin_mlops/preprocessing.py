"""The ONE image preprocessing used by training, evaluation and serving.

Only Pillow and numpy: the API image imports this module without TensorFlow, so the
pixels a served model sees are produced by exactly the code that produced the pixels it
was trained on (no training/serving skew).

Contract of every exported model (see ``docs/architecture.md``):
input ``float32[N, S, S, 3]``, RGB, values in ``[0, 255]`` (backbone-specific scaling,
e.g. Lite0's ``(x - 127.5) / 127.5``, lives *inside* the model graph); output: logits.

Steps, in order (:func:`load_rgb` then :func:`to_model_input`):
1. check the declared size before decoding anything (decompression bombs);
2. decode, apply the EXIF orientation;
3. convert any mode (grayscale, 16-bit, palette, RGBA/LA on white, CMYK) to 8-bit RGB;
   (a JPEG is decoded at the smallest DCT scale that keeps both sides >= ``S``);
4. resize the short side to ``S`` (bilinear with antialias), centre-crop ``S x S``.

Bump :data:`PREPROCESSING_VERSION` whenever the output of these steps can change: it is
part of the feature-cache key and is written to ``signature.json``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PREPROCESSING_VERSION = 1
PREPROCESSING_ID = f"pil-exif-rgb-shortside-bilinear-centercrop-v{PREPROCESSING_VERSION}"
DEFAULT_IMAGE_SIZE = 224
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG"})
DEFAULT_MAX_PIXELS = 40_000_000
_MAX_RESIZED_AREA_FACTOR = 16  # resized image > 16 crops: aspect ratio > 16:1

# We do our own bomb check before decoding; disable Pillow's global warning/limit so the
# check is ours and explicit (Pillow's default would raise only *after* parsing anyway).
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """Base class for image problems; ``str()`` is a message safe to show a user."""


class NotAnImageError(ImageError):
    """The bytes are not an image of a supported format."""


class CorruptImageError(ImageError):
    """The bytes claim to be an image but cannot be decoded (truncated, damaged)."""


class ImageTooLargeError(ImageError):
    """The declared pixel count exceeds the limit (decompression bomb guard)."""


class EmptyImageError(ImageError):
    """No bytes at all."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding the pixels."""

    format: str
    width: int
    height: int
    mode: str


def probe(data: bytes, *, formats: frozenset[str] = SUPPORTED_FORMATS) -> ImageInfo:
    """Identify an image from its header only (cheap; no pixel decoding).

    Raises:
        EmptyImageError: ``data`` is empty.
        NotAnImageError: not a JPEG/PNG (judged by content, not by file name).
    """
    if not data:
        raise EmptyImageError("empty file")
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as img:
            return ImageInfo(img.format or "", img.width, img.height, img.mode)
    except UnidentifiedImageError:
        raise NotAnImageError(
            f"not a supported image (expected one of {', '.join(sorted(formats))})"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"corrupt image header: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image.

    With ``min_side``, a JPEG is decoded directly at a reduced scale (libjpeg's DCT
    scaling, 1/2, 1/4 or 1/8) that keeps both sides >= ``min_side``: 2-4x faster and
    deterministic, so training and serving (which both go through here) agree.

    Raises:
        EmptyImageError, NotAnImageError, CorruptImageError, ImageTooLargeError.
    """
    info = probe(data)
    if info.width * info.height > max_pixels:
        raise ImageTooLargeError(
            f"image declares {info.width}x{info.height} pixels, over the limit of "
            f"{max_pixels:,} pixels"
        )
    try:
        with Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS)) as img:
            if min_side is not None and img.format == "JPEG":
                img.draft(None, (min_side, min_side))
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            return _to_rgb(upright).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"corrupt or truncated image: {exc}") from None


def resize_center_crop(img: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Resize the short side to ``size`` (bilinear, antialiased), then centre-crop."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h > _MAX_RESIZED_AREA_FACTOR * size * size:
        # Extreme aspect ratio (e.g. a 1x20000 strip would be upscaled to 224x4.5M pixels):
        # resample only the source box that lands in the crop. Same geometry, bounded memory
        # (may differ by 1/255 from the full resize, so it is kept for such images only).
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    return resized.crop((left, top, left + size, top + size))


def to_model_input(img: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """An RGB image -> ``float32[size, size, 3]`` in ``[0, 255]`` (the model's input)."""
    return np.asarray(resize_center_crop(img, size), dtype=np.float32)


def preprocess_bytes(
    data: bytes, size: int = DEFAULT_IMAGE_SIZE, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Bytes of a JPEG/PNG -> model input ``float32[size, size, 3]``."""
    return to_model_input(load_rgb(data, max_pixels=max_pixels, min_side=size), size)
