"""Which skin tones a photo collection covers: the Individual Typology Angle (ITA).

ITA is the standard colorimetric proxy for Fitzpatrick skin type (Chardon et al. 1991;
Del Bino & Bernerd 2013), from the CIELAB lightness ``L*`` and yellow-blue ``b*`` of the
skin: ``ITA = atan((L* - 50) / b*)`` in degrees; lighter skin has a larger angle.

Per photo (:func:`photo_ita`), on a copy decoded at most 128 px wide:

1. skin pixels: the classic YCbCr skin box (Cb 77-127, Cr 133-173; Chai & Ngan 1999),
   also true of darker skin, which differs in luminance more than in chrominance;
2. lesion-free skin: of those, the lighter half (``L*`` at or above their median) - lesions,
   hair and shadow are darker than the skin around them in these photos;
3. the photo's ITA: the median of the per-pixel angles, or NaN when under 5 % of the
   pixels are skin (a close-up of the lesion alone, or not a skin photo).

This is a proxy: the lighting, white balance and camera of a clinical photo move it, and
the lesion-free skin is found by colour, not segmented. The model card reports it as
such, per :data:`ITA_GROUPS` (the Chardon / Del Bino categories).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from skin_mlops.modeling.photo_cache import PhotoCache

METHOD = "ita-ycbcr-skin-lighter-half-v1"  # logged with the angles; bump when it changes
MAX_SIDE = 128
MIN_SKIN_SHARE = 0.05
CB_RANGE = (77, 127)
CR_RANGE = (133, 173)
# (name, lowest ITA in degrees) from lightest to darkest; the last group has no floor
ITA_GROUPS: tuple[tuple[str, float], ...] = (
    ("very light (>55)", 55.0),
    ("light (41-55)", 41.0),
    ("intermediate (28-41)", 28.0),
    ("tan (10-28)", 10.0),
    ("brown (-30 to 10)", -30.0),
    ("dark (<-30)", -np.inf),
)
NO_SKIN = "no skin found"


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """``bool[H, W]``: pixels inside the YCbCr skin box (:data:`CB_RANGE`, :data:`CR_RANGE`)."""
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"), dtype=np.int16)
    cb, cr = ycbcr[..., 1], ycbcr[..., 2]
    return (cb >= CB_RANGE[0]) & (cb <= CB_RANGE[1]) & (cr >= CR_RANGE[0]) & (cr <= CR_RANGE[1])


def image_ita(image: Image.Image) -> float:
    """ITA of the lesion-free skin of one photo (see the module docstring), or NaN."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    rgb = np.asarray(image)
    mask = skin_mask(rgb)
    if mask.mean() < MIN_SKIN_SHARE:
        return float("nan")
    from skimage.color import rgb2lab

    skin = rgb[mask]
    lab = rgb2lab(skin.reshape(-1, 1, 3))[:, 0, :]
    lighter = lab[lab[:, 0] >= np.median(lab[:, 0])]
    return float(np.median(np.degrees(np.arctan2(lighter[:, 0] - 50.0, lighter[:, 2]))))


def photo_ita(data: bytes) -> float:
    """:func:`image_ita` of encoded photo bytes (decoded at a reduced DCT scale)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        return image_ita(image)


def ita_group(ita: float) -> str:
    """The :data:`ITA_GROUPS` name of an angle (``"no skin found"`` for NaN)."""
    if not np.isfinite(ita):
        return NO_SKIN
    return next(name for name, floor in ITA_GROUPS if ita > floor)


class ItaCache:
    """``sha256 -> ITA`` in ``<feature cache>/ita.sqlite`` (each photo decoded once)."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache = PhotoCache(cache_dir, "ita", lambda data: struct.pack("<d", photo_ita(data)))

    def angles(self, images: Sequence[tuple[str, Callable[[], bytes]]]) -> np.ndarray:
        """``float64[N]`` ITA of ``(sha256, load bytes)`` pairs (NaN: no skin found)."""
        return np.asarray(
            [struct.unpack("<d", value)[0] for value in self._cache.values(images)], np.float64
        )
