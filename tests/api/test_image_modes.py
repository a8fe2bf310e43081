"""Every image mode the issue names is converted and predicted like its RGB equivalent."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from utils.images import encode, two_tone, with_exif_orientation


def probabilities(client: TestClient, data: bytes) -> np.ndarray:
    """All five calibrated probabilities, in label order."""
    response = client.post("/predict?top_k=5", files={"file": ("img", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    labels = client.get("/model").json()["labels"]
    by_label = {item["label"]: item["probability"] for item in body["top_k"]}
    return np.array([by_label[label] for label in labels])


def test_exif_rotated_png_predicts_like_the_upright_image(client: TestClient) -> None:
    upright = two_tone("red", size=(96, 64), accent=(0, 255, 255))
    expected = probabilities(client, encode(upright))
    rotated = probabilities(client, with_exif_orientation(upright, "PNG"))
    np.testing.assert_allclose(rotated, expected, atol=1e-6)
    # the same rotated pixels without the EXIF tag give other numbers: orientation matters
    raw_rotated = probabilities(client, encode(upright.transpose(Image.Transpose.ROTATE_90)))
    assert np.abs(raw_rotated - expected).max() > 1e-3  # 1000x the tolerance above


def test_exif_rotated_jpeg_predicts_like_the_upright_jpeg(client: TestClient) -> None:
    upright = two_tone("blue", size=(96, 64))
    expected = probabilities(client, encode(upright, "JPEG", quality=95))
    rotated = probabilities(client, with_exif_orientation(upright, "JPEG"))
    assert rotated.argmax() == expected.argmax()
    np.testing.assert_allclose(rotated, expected, atol=5e-3)


def test_grayscale_equals_its_rgb_copy(client: TestClient) -> None:
    gray = two_tone("white").convert("L")
    np.testing.assert_allclose(
        probabilities(client, encode(gray)),
        probabilities(client, encode(gray.convert("RGB"))),
        atol=1e-6,
    )


def test_rgba_transparent_pixels_are_white(client: TestClient) -> None:
    """Fully transparent pixels count as white whatever colour they store."""
    base = np.array(two_tone("green"))
    rgba = np.dstack([base, np.full(base.shape[:2], 255, np.uint8)])
    rgba[:, :20, :3] = (255, 0, 255)  # garbage colour ...
    rgba[:, :20, 3] = 0  # ... fully transparent
    on_white = base.copy()
    on_white[:, :20] = 255
    np.testing.assert_allclose(
        probabilities(client, encode(Image.fromarray(rgba, "RGBA"))),
        probabilities(client, encode(Image.fromarray(on_white))),
        atol=1e-6,
    )


def test_palette_equals_rgb(client: TestClient) -> None:
    rgb = two_tone("blue")  # two colours: the palette conversion is lossless
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert palette.mode == "P"
    np.testing.assert_allclose(
        probabilities(client, encode(palette)), probabilities(client, encode(rgb)), atol=1e-6
    )


def test_cmyk_jpeg_predicts_like_the_rgb_jpeg(client: TestClient) -> None:
    rgb = two_tone("red")
    cmyk_bytes = encode(rgb.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(__import__("io").BytesIO(cmyk_bytes)).mode == "CMYK"
    served = probabilities(client, cmyk_bytes)
    reference = probabilities(client, encode(rgb, "JPEG", quality=95))
    assert served.argmax() == reference.argmax() == 0  # red
    np.testing.assert_allclose(served, reference, atol=0.02)


@pytest.mark.parametrize("label", ["white", "black"])
def test_16_bit_grayscale_png_is_scaled_to_8_bits(client: TestClient, label: str) -> None:
    gray8 = np.array(two_tone(label).convert("L"), dtype=np.uint16)
    img16 = Image.fromarray(gray8 * 257)  # 0..255 -> 0..65535 exactly
    assert img16.mode == "I;16"
    np.testing.assert_allclose(
        probabilities(client, encode(img16)),
        probabilities(client, encode(Image.fromarray(gray8.astype(np.uint8)).convert("RGB"))),
        atol=1e-6,
    )
    assert (
        client.post("/predict", files={"file": ("x.png", encode(img16))}).json()["label"] == label
    )
