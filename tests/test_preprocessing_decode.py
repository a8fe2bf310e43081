"""The libjpeg-turbo decode path (``simplejpeg``) gives Pillow's pixels exactly.

Training and serving share :mod:`skin_mlops.preprocessing`, so a decoder that changed one
pixel would change the features every model was trained on (and would need a new
``PREPROCESSING_ID``). Every test compares the two decoders on the same bytes: generated
JPEGs of many kinds, and the dermnet5 photos when they are on this machine.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops import preprocessing

DERMNET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dermnet5"


@pytest.fixture(autouse=True)
def _restore_decoder() -> Iterator[None]:
    before = preprocessing.jpeg_decoder()
    yield
    preprocessing.set_jpeg_decoder(before)


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients, a blob and noise: the frequencies a skin photo has."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (7 + seed)) * np.cos(y / 11)
    g = 90 + 60 * np.cos((x + y) / 23)
    b = 140 + 80 * np.sin(y / (5 + seed % 3))
    blob = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(width, height) / 4) ** 2
    pixels = np.stack([r, g, b], axis=-1)
    pixels[blob] *= 0.6
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **save_args)
    return buffer.getvalue()


def both(data: bytes, size: int) -> tuple[np.ndarray, np.ndarray]:
    preprocessing.set_jpeg_decoder("pillow")
    slow = preprocessing.preprocess_bytes(data, size)
    preprocessing.set_jpeg_decoder("simplejpeg")
    fast = preprocessing.preprocess_bytes(data, size)
    return slow, fast


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(img, quality=92, exif=exif.tobytes())


CASES = {
    "640x480 q90 4:2:0": (640, 480, {"quality": 90}),
    "480x640 portrait": (480, 640, {"quality": 85}),
    "odd 333x301 4:4:4": (333, 301, {"quality": 95, "subsampling": 0}),
    "4:2:2": (500, 400, {"quality": 80, "subsampling": 1}),
    "progressive": (640, 480, {"quality": 75, "progressive": True}),
    "optimised q30": (600, 450, {"quality": 30, "optimize": True}),
    "smaller than the input": (200, 150, {"quality": 90}),
    "DCT-scaled by Pillow": (1300, 900, {"quality": 90}),  # Pillow path, same answer
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("size", [224, 288])
def test_generated_jpegs_decode_to_identical_tensors(case: str, size: int) -> None:
    width, height, save_args = CASES[case]
    data = jpeg(photo_like(width, height, seed=len(case)), **save_args)
    slow, fast = both(data, size)
    assert slow.shape == fast.shape == (size, size, 3)
    assert np.array_equal(slow, fast)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_the_same_way(orientation: int) -> None:
    data = with_orientation(photo_like(320, 240, seed=orientation), orientation)
    preprocessing.set_jpeg_decoder("pillow")
    slow = np.asarray(preprocessing.load_rgb(data, min_side=224))
    preprocessing.set_jpeg_decoder("simplejpeg")
    fast = np.asarray(preprocessing.load_rgb(data, min_side=224))
    assert np.array_equal(slow, fast)
    expected_shape = (320, 240, 3) if orientation >= 5 else (240, 320, 3)
    assert fast.shape == expected_shape


def test_the_fast_path_is_the_one_that_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = preprocessing._load_jpeg_turbo

    def spy(*args: object, **kwargs: object) -> Image.Image | None:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(result is not None)
        return result

    monkeypatch.setattr(preprocessing, "_load_jpeg_turbo", spy)
    preprocessing.set_jpeg_decoder("simplejpeg")
    colour = jpeg(photo_like(640, 480, seed=1), quality=90)
    preprocessing.preprocess_bytes(colour, 288)
    assert calls == [True]
    grey = jpeg(photo_like(640, 480, seed=1).convert("L"))
    big = jpeg(photo_like(1300, 900, seed=1))  # Pillow's DCT scaling shrinks it
    png = io.BytesIO()
    photo_like(64, 64, seed=1).save(png, "PNG")
    for data in (grey, big, png.getvalue()):
        preprocessing.preprocess_bytes(data, 288)
    assert calls == [True]  # none of those took it


def test_grayscale_and_cmyk_jpegs_are_unchanged() -> None:
    grey = jpeg(photo_like(400, 300, seed=3).convert("L"))
    cmyk = jpeg(photo_like(400, 300, seed=4).convert("CMYK"))
    for data in (grey, cmyk):
        slow, fast = both(data, 224)
        assert np.array_equal(slow, fast)


def test_damaged_jpegs_get_pillows_answer() -> None:
    data = jpeg(photo_like(640, 480, seed=5), quality=90)
    truncated = data[: len(data) // 2]
    messages = []
    for decoder in ("pillow", "simplejpeg"):
        preprocessing.set_jpeg_decoder(decoder)
        with pytest.raises(preprocessing.CorruptImageError) as caught:
            preprocessing.preprocess_bytes(truncated, 224)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    # bytes after the end-of-image marker: libjpeg warns, Pillow decodes it; so do we
    trailing = data + b"\x00garbage" * 10
    slow, fast = both(trailing, 224)
    assert np.array_equal(slow, fast)


def test_decoder_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown JPEG decoder"):
        preprocessing.set_jpeg_decoder("libjpeg")
    preprocessing.set_jpeg_decoder("pillow")
    assert preprocessing.jpeg_decoder() == "pillow"
    preprocessing.set_jpeg_decoder("simplejpeg")
    assert preprocessing.jpeg_decoder() == "simplejpeg"


def test_timings_are_filled_without_changing_the_tensor() -> None:
    data = jpeg(photo_like(640, 480, seed=6), quality=90)
    timings: dict[str, float] = {}
    timed = preprocessing.preprocess_bytes(data, 288, timings=timings)
    assert np.array_equal(timed, preprocessing.preprocess_bytes(data, 288))
    assert set(timings) == {"probe", "decode", "exif", "resize", "normalise"}
    assert all(seconds >= 0 for seconds in timings.values())


@pytest.mark.skipif(not (DERMNET / "val").is_dir(), reason="dermnet5 photos not on this machine")
def test_dermnet5_val_photos_decode_to_identical_tensors() -> None:
    photos = sorted((DERMNET / "val").glob("*/*.jpg"))
    assert photos
    different = [p.name for p in photos if not np.array_equal(*both(p.read_bytes(), 288))]
    assert different == []
