"""Skin-tone angle (ITA): the CIELAB formula, the lesion-free skin, the groups, the cache."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skin_mlops.modeling import skin_tone
from skin_mlops.modeling.photo_cache import PhotoCache

# sRGB skin colours from light to dark (inside the YCbCr skin box)
LIGHT, MEDIUM, DARK = (236, 200, 178), (198, 134, 96), (100, 62, 44)


def _ita(rgb: tuple[int, int, int]) -> float:
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray([[rgb]], np.uint8))[0, 0]
    return float(np.degrees(np.arctan((lab[0] - 50) / lab[2])))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_flat_skin_gets_the_ita_of_its_colour_and_darker_skin_a_smaller_angle() -> None:
    angles = [skin_tone.image_ita(Image.new("RGB", (200, 150), c)) for c in (LIGHT, MEDIUM, DARK)]
    for angle, colour in zip(angles, (LIGHT, MEDIUM, DARK), strict=True):
        assert angle == pytest.approx(_ita(colour), abs=0.5)
    assert angles[0] > angles[1] > angles[2]
    assert [skin_tone.ita_group(a) for a in angles] == [
        skin_tone.ita_group(_ita(c)) for c in (LIGHT, MEDIUM, DARK)
    ]


def test_a_dark_red_lesion_does_not_move_the_skin_s_angle() -> None:
    image = Image.new("RGB", (240, 180), LIGHT)
    ImageDraw.Draw(image).ellipse((70, 40, 170, 140), fill=(150, 60, 60))  # ~20 % of pixels
    with_lesion = skin_tone.photo_ita(_jpeg(image))
    assert with_lesion == pytest.approx(_ita(LIGHT), abs=2.0)


def test_a_photo_without_skin_has_no_angle() -> None:
    blue = Image.new("RGB", (100, 100), (30, 80, 200))
    assert np.isnan(skin_tone.image_ita(blue))
    assert skin_tone.ita_group(float("nan")) == skin_tone.NO_SKIN


def test_groups_follow_the_chardon_thresholds() -> None:
    names = [name for name, _ in skin_tone.ITA_GROUPS]
    assert [skin_tone.ita_group(a) for a in (60, 50, 30, 20, 0, -45)] == names
    assert skin_tone.ita_group(55.0) == names[1]  # a threshold belongs to the darker group


def test_photo_cache_decodes_each_photo_once(tmp_path: Path) -> None:
    calls: list[bytes] = []

    def compute(data: bytes) -> bytes:
        calls.append(data)
        return data[::-1]

    photos = [("a", lambda: b"ab"), ("b", lambda: b"cd")]
    assert PhotoCache(tmp_path, "t", compute).values(photos) == [b"ba", b"dc"]
    again = PhotoCache(tmp_path, "t", compute)  # a new process: read from the file
    assert again.values([*photos, ("c", lambda: b"ef")]) == [b"ba", b"dc", b"fe"]
    assert calls == [b"ab", b"cd", b"ef"]


def test_ita_cache_round_trips_nan(tmp_path: Path) -> None:
    skin = _jpeg(Image.new("RGB", (64, 64), MEDIUM))
    blue = _jpeg(Image.new("RGB", (64, 64), (30, 80, 200)))
    angles = skin_tone.ItaCache(tmp_path).angles([("s", lambda: skin), ("b", lambda: blue)])
    assert angles[0] == pytest.approx(_ita(MEDIUM), abs=1.0) and np.isnan(angles[1])


def test_a_cache_file_of_another_layout_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "phash.sqlite") as db:  # the layout before PhotoCache
        db.execute("CREATE TABLE phash (sha256 TEXT PRIMARY KEY, bits BLOB)")
        db.execute("INSERT INTO phash VALUES ('a', x'00')")
    cache = PhotoCache(tmp_path, "phash", lambda data: data + b"!")
    assert cache.values([("a", lambda: b"x")]) == [b"x!"]
