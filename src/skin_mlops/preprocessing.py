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

**Decoder.** A colour (YCbCr/RGB) JPEG that needs no DCT scaling (under 2x ``S`` on a side,
e.g. 640x480 at 288 px) is decoded by libjpeg-turbo through ``simplejpeg`` straight into a
numpy array (0.83 against Pillow's 1.49 ms for a 640x480 dermnet5 photo, measured in
``benchmarks/serve_stages.py``), with the same default settings as Pillow's decoder
(accurate integer DCT, fancy upsampling): the pixels are identical to Pillow's (every
dermnet5 train and val photo, and the generated images of ``tests/test_preprocessing_decode.py``),
so :data:`PREPROCESSING_ID` did not change. The EXIF orientation is read by Pillow from the
same header and applied with Pillow's own transposes. Everything else (PNG, grayscale,
CMYK, a photo DCT scaling can shrink, a JPEG libjpeg warns about, or ``simplejpeg`` not
installed) goes through Pillow as before, with its own error messages.

``timings``: pass a dict to :func:`preprocess_bytes` / :func:`load_rgb` and the seconds
spent in each step (``probe``, ``decode``, ``exif``, ``resize``, ``normalise``) are added
to it (the API reports them in ``Server-Timing``); ``None`` (default) costs nothing.

Bump :data:`PREPROCESSING_VERSION` whenever the output of these steps can change: it is
part of the feature-cache key and is written to ``signature.json``.
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from time import perf_counter
from types import ModuleType

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


def _import_simplejpeg() -> ModuleType | None:
    """libjpeg-turbo straight into numpy; optional (Pillow decodes the same pixels)."""
    try:
        return importlib.import_module("simplejpeg")  # (no type information shipped)
    except ImportError:  # pragma: no cover - an install without it
        return None


_simplejpeg = _import_simplejpeg()

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


# EXIF orientation -> the transpose that makes the image upright (ImageOps.exif_transpose's)
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def probe(data: bytes, *, formats: frozenset[str] = SUPPORTED_FORMATS) -> ImageInfo:
    """Identify an image from its header only (cheap; no pixel decoding).

    Raises:
        EmptyImageError: ``data`` is empty.
        NotAnImageError: not a JPEG/PNG (judged by content, not by file name).
    """
    return _probe(data, formats)[0]


def _probe(data: bytes, formats: frozenset[str]) -> tuple[ImageInfo, int | None]:
    """:func:`probe`, plus the EXIF orientation of a colour JPEG (None for anything else)."""
    if not data:
        raise EmptyImageError("empty file")
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as img:
            info = ImageInfo(img.format or "", img.width, img.height, img.mode)
            orientation = None
            if info.format == "JPEG" and info.mode == "RGB" and _simplejpeg is not None:
                try:  # odd EXIF: Pillow's path below decides (and words any refusal)
                    value = img.getexif().get(ExifTags.Base.Orientation, 1)
                    orientation = value if isinstance(value, int) else None
                except Exception:
                    orientation = None
            return info, orientation
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
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    timings: dict[str, float] | None = None,
) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image.

    With ``min_side``, a JPEG is decoded directly at a reduced scale (libjpeg's DCT
    scaling, 1/2, 1/4 or 1/8) that keeps both sides >= ``min_side``: 2-4x faster and
    deterministic, so training and serving (which both go through here) agree.

    A colour JPEG that DCT scaling cannot shrink is decoded by libjpeg-turbo through
    ``simplejpeg`` (identical pixels, see the module docstring); ``timings`` (a dict)
    gets the seconds of ``probe``, ``decode`` and ``exif`` added.

    Raises:
        EmptyImageError, NotAnImageError, CorruptImageError, ImageTooLargeError.
    """
    started = perf_counter()
    info, orientation = _probe(data, SUPPORTED_FORMATS)
    if info.width * info.height > max_pixels:
        raise ImageTooLargeError(
            f"image declares {info.width}x{info.height} pixels, over the limit of "
            f"{max_pixels:,} pixels"
        )
    probed = perf_counter()
    if timings is not None:
        _add(timings, "probe", probed - started)
    if orientation is not None and _draft_scale(info, min_side) == 1:
        fast = _load_jpeg_turbo(data, orientation, timings)
        if fast is not None:
            return fast
        probed = perf_counter()  # a libjpeg warning: Pillow decides, with its messages
    try:
        with Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS)) as img:
            if min_side is not None and img.format == "JPEG":
                img.draft(None, (min_side, min_side))
            img.load()
            decoded = perf_counter()
            upright = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(upright).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"corrupt or truncated image: {exc}") from None
    if timings is not None:
        _add(timings, "decode", decoded - probed)
        _add(timings, "exif", perf_counter() - decoded)
    return rgb


def set_jpeg_decoder(name: str) -> None:
    """``"simplejpeg"`` (the default when installed) or ``"pillow"``: who decodes a colour
    JPEG that needs no DCT scaling. Same pixels either way, only the speed differs (the
    API's ``JPEG_DECODER`` setting; the benchmarks compare the two).

    Raises:
        ValueError: another name, or ``simplejpeg`` asked for and not installed.
    """
    global _simplejpeg
    if name == "pillow":
        _simplejpeg = None
    elif name == "simplejpeg":
        _simplejpeg = _import_simplejpeg()
        if _simplejpeg is None:
            raise ValueError("JPEG decoder simplejpeg is not installed (pip install simplejpeg)")
    else:
        raise ValueError(f"unknown JPEG decoder {name!r} (simplejpeg or pillow)")


def jpeg_decoder() -> str:
    """The decoder in use for colour JPEGs: ``"simplejpeg"`` or ``"pillow"``."""
    return "pillow" if _simplejpeg is None else "simplejpeg"


def _add(timings: dict[str, float], step: str, seconds: float) -> None:
    timings[step] = timings.get(step, 0.0) + seconds


def _draft_scale(info: ImageInfo, min_side: int | None) -> int:
    """The DCT scale Pillow's ``draft(None, (min_side, min_side))`` picks (1, 2, 4 or 8)."""
    if min_side is None or min_side <= 0:
        return 1
    scale = min(info.width // min_side, info.height // min_side)
    return next((s for s in (8, 4, 2, 1) if scale >= s), 1)


def _load_jpeg_turbo(
    data: bytes, orientation: int, timings: dict[str, float] | None
) -> Image.Image | None:
    """A colour JPEG decoded by libjpeg-turbo (``simplejpeg``), made upright; None when
    libjpeg reports anything (corrupt, truncated, extraneous bytes): Pillow then decodes
    it, or refuses it, exactly as it always did."""
    assert _simplejpeg is not None
    started = perf_counter()
    try:
        pixels = _simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except (ValueError, OSError):
        return None
    decoded = perf_counter()
    img = Image.fromarray(pixels)
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        img = img.transpose(method)
    if timings is not None:
        _add(timings, "decode", decoded - started)
        _add(timings, "exif", perf_counter() - decoded)
    return img


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
    data: bytes,
    size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Bytes of a JPEG/PNG -> model input ``float32[size, size, 3]``.

    ``timings`` (a dict) gets the seconds of each step added: ``probe``, ``decode``,
    ``exif``, ``resize`` (resize + crop), ``normalise`` (to ``float32``).
    """
    img = load_rgb(data, max_pixels=max_pixels, min_side=size, timings=timings)
    if timings is None:
        return to_model_input(img, size)
    started = perf_counter()
    cropped = resize_center_crop(img, size)
    resized = perf_counter()
    pixels = np.asarray(cropped, dtype=np.float32)
    _add(timings, "resize", resized - started)
    _add(timings, "normalise", perf_counter() - resized)
    return pixels
